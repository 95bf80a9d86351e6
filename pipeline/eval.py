"""Stage `eval`: teacher, baseline (the student's starting checkpoint) and trained student on the
held-out eval prompts, in numbers (artifacts/<run>/eval/).

    distill eval configs/quickstart.yaml

Accuracy: each model generates `eval.n` samples per eval prompt with vLLM (one engine process per
model directory), scored by task type (pipeline.scoring): pass@1 averaged over n, majority vote, output
length, truncation, tokens/s and per-request latency. Fidelity, without the teacher: on the
teacher's held-out traces (eval split of generate), the model's per-token KL from the stored
top-k (same tail handling as training), its top-1 agreement, and for any tokenizer the KL to the
teacher per byte of text (see teacher_fidelity), from one forward pass each.
"""
from __future__ import annotations

import json
import multiprocessing
import time
from collections import Counter
from pathlib import Path

import click
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from pipeline import crosstok, manifest, toolcalls, topk
from pipeline.config import Config
from pipeline.errors import PipelineError
from pipeline.files import atomic_path, read_table, write_json
from pipeline.losses import token_losses
from pipeline.render import TeacherContext, context_of, render, with_context
from pipeline.schema import EVAL_RESULTS, PROMPTS
from pipeline.scoring import extract, is_correct


def run(cfg: Config) -> dict:
    started = time.time()
    out = cfg.run_dir / "eval"
    contenders = models_to_evaluate(cfg)
    prompts = [p for p in read_table(PROMPTS, manifest.prompts_path(cfg)).to_pylist()
               if p["split"] == "eval"]
    if cfg.eval.max_prompts:
        prompts = prompts[:cfg.eval.max_prompts]
    unscorable = [p["prompt_id"] for p in prompts if p["reference"] is None]
    if unscorable:
        raise PipelineError(f"{manifest.prompts_path(cfg)}: {len(unscorable)} eval prompts have no "
                            f"reference to score against (e.g. {unscorable[0]}); give prepare a reference column")
    rows, summary = [], {}
    context = context_of(cfg)
    for name, model_dir, (generated, timing) in _runs(cfg, contenders, prompts, context):
        click.echo(f"eval: {name} ({model_dir}) on {len(prompts)} prompts x {cfg.eval.n} ...")
        model_rows = score(name, prompts, generated)
        rows += model_rows
        summary[name] = {"path": str(model_dir), "size_mb": round(model_size(model_dir) / 2**20, 1),
                         **metrics(model_rows, timing, cfg.eval.n), **tool_metrics(model_rows)}
        fidelity = teacher_fidelity(cfg, model_dir) if not name.startswith("teacher") else None
        if fidelity:
            summary[name].update(fidelity)
        click.echo("  " + ", ".join(f"{k} {v}" for k, v in summary[name].items()
                                    if k not in ("path", "per_class", "confusion", "per_language", "per_source")))
    with atomic_path(out / "results.parquet") as tmp:
        pq.write_table(pa.Table.from_pylist(rows, schema=EVAL_RESULTS.arrow_schema), tmp, compression="zstd")
    write_json(out / "summary.json", summary)
    return manifest.write(cfg, "eval", started, {"prompts": len(prompts), "rows": len(rows)}, summary=summary)


def _runs(cfg: Config, contenders: dict[str, Path], prompts: list[dict], context: TeacherContext):
    """(name, model directory, (generations, timing)): every model on the plain prompts, and with a
    teacher-only context the teacher a second time with it (`teacher_context`), so the report shows
    what the context buys and how much of it the student absorbed. One engine per directory: the
    teacher's two runs share it."""
    for name, model_dir in contenders.items():
        runs = {name: prompts}
        if name == "teacher" and context:
            runs["teacher_context"] = [with_context(p, context) for p in prompts]
        for run_name, result in zip(runs, generate_in_subprocess(cfg, model_dir, list(runs.values()))):
            yield run_name, model_dir, result


def model_size(model_dir: Path) -> int:
    """Bytes of weights on disk."""
    return sum(p.stat().st_size for p in Path(model_dir).glob("*.safetensors"))


def models_to_evaluate(cfg: Config) -> dict[str, Path]:
    models = manifest.require(cfg, "models")["models"]
    contenders = {"teacher": Path(models["teacher"]["path"]), "baseline": Path(models["student"]["path"])}
    trained = manifest.read(cfg, "train")
    if trained is not None:
        contenders["student"] = Path(trained["model"])
    extras = cfg.eval.models.items() if isinstance(cfg.eval.models, dict) else \
        ((_label(Path(d)), d) for d in cfg.eval.models)
    for name, d in extras:
        if name in contenders:
            raise PipelineError(f"eval.models: two models are named '{name}' ({contenders[name]} and {d}); "
                                "name them with a mapping (name: directory)")
        contenders[name] = Path(d)
    for name, d in contenders.items():
        if not (d / "config.json").is_file():
            raise PipelineError(f"{d}: not a model directory (no config.json) for eval model '{name}'")
        if not any((d / f).is_file() for f in ("tokenizer.json", "tokenizer.model", "vocab.json")):
            raise PipelineError(f"{d}: has no tokenizer (eval model '{name}')")
    return contenders


def _label(model_dir: Path) -> str:
    """A readable name for a model directory: a training output's directory (every one ends in
    .../model), else the directory's own name."""
    return model_dir.parent.name if model_dir.name == "model" and model_dir.parent.name else model_dir.name


# ---------------------------------------------------------------------------------------------
# Generation: one spawned process per model, so each vLLM engine starts and ends cleanly.


def generate_in_subprocess(cfg: Config, model_dir: Path, prompt_sets: list[list[dict]]) -> list[tuple]:
    """_generate in a process of its own, so each engine's memory is returned when it ends."""
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(1) as pool:
        return pool.apply(_generate, (cfg, str(model_dir), prompt_sets))


def _generate(cfg: Config, model_dir: str, prompt_sets: list[list[dict]]) -> list[tuple]:
    """(generations, timing) of each prompt set, from one engine."""
    from transformers import AutoTokenizer
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    from pipeline.engine import engine_args, start_llm

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    llm = start_llm(model_dir, **engine_args(cfg))
    params = SamplingParams(n=cfg.eval.n, temperature=cfg.eval.temperature, top_p=cfg.eval.top_p,
                            max_tokens=cfg.eval.max_new_tokens, seed=cfg.run.seed)
    results = []
    for prompts in prompt_sets:
        ids = [render(tokenizer, p, cfg.generate.system_prompt, cfg.generate.think_start)[1] for p in prompts]
        llm.generate([TokensPrompt(prompt_token_ids=ids[0])], params, use_tqdm=False)  # warm-up, not timed
        started = time.perf_counter()
        outputs = llm.generate([TokensPrompt(prompt_token_ids=i) for i in ids], params, use_tqdm=True)  # progress
        wall = time.perf_counter() - started
        generated = [[(c.text, len(c.token_ids), c.finish_reason) for c in o.outputs] for o in outputs]
        # single-request latency: a few prompts alone, as one user of a small on-device model sees it
        latencies = []
        for i in ids[:cfg.eval.latency_prompts]:
            t = time.perf_counter()
            llm.generate([TokensPrompt(prompt_token_ids=i)], SamplingParams(max_tokens=cfg.eval.max_new_tokens,
                                                                              temperature=0), use_tqdm=False)
            latencies.append(time.perf_counter() - t)
        results.append((generated, {"wall_s": wall, "latencies": latencies}))
    return results


def score(name: str, prompts: list[dict], generated: list[list[tuple]]) -> list[dict]:
    rows = []
    for p, samples in zip(prompts, generated):
        for i, (text, tokens, finish) in enumerate(samples):
            got = extract(text, p["task"])
            row = {"model": name, "prompt_id": p["prompt_id"], "sample_idx": i, "task": p["task"],
                   "source": p["source"], "difficulty": p["difficulty"], "completion": text, "extracted": got,
                   "reference": p["reference"], "correct": is_correct(got, p["reference"], p["task"]),
                   "output_tokens": tokens, "finish_reason": finish, "language": p.get("language")}
            if p["task"] == "tool":
                v = toolcalls.score(text, p["reference"], json.loads(p["tools"]) if p["tools"] else None)
                row.update(correct=v.correct, expected_class=v.expected_names[0], predicted_class=v.predicted_names[0],
                           arg_tp=v.arg_tp, arg_fp=v.arg_fp, arg_fn=v.arg_fn)
            rows.append(row)
    return rows


def tool_metrics(rows: list[dict]) -> dict:
    """The function-calling measures, where the task is tool calls: exact-call and function-name
    accuracy, argument precision/recall/F1, per-class precision/recall/F1 (no_call a class), the
    confusion matrix (expected -> predicted -> count), and exact-call accuracy per language and per
    source (the vehicle task's eval halves: new wordings, new values)."""
    rows = [r for r in rows if r["task"] == "tool"]
    if not rows:
        return {}
    tp, fp, fn = (sum(r[k] for r in rows) for k in ("arg_tp", "arg_fp", "arg_fn"))
    precision, recall = tp / max(tp + fp, 1), tp / max(tp + fn, 1)
    classes = sorted({r["expected_class"] for r in rows} | {r["predicted_class"] for r in rows})
    confusion = {e: {p: 0 for p in classes} for e in classes}
    for r in rows:
        confusion[r["expected_class"]][r["predicted_class"]] += 1
    per_class = {}
    for c in classes:
        hit = confusion[c][c]
        called, expected = sum(confusion[e][c] for e in classes), sum(confusion[c].values())
        p, r = hit / max(called, 1), hit / max(expected, 1)
        per_class[c] = {"precision": round(p, 4), "recall": round(r, 4), "f1": round(2 * p * r / max(p + r, 1e-9), 4),
                        "support": expected}
    def accuracy_by(key: str) -> dict:
        groups = sorted({r[key] for r in rows if r[key]})
        return {g: round(float(np.mean([r["correct"] for r in rows if r[key] == g])), 4) for g in groups}

    return {
        "exact_call_accuracy": round(float(np.mean([r["correct"] for r in rows])), 4),
        "name_accuracy": round(float(np.mean([r["expected_class"] == r["predicted_class"] for r in rows])), 4),
        "arg_precision": round(precision, 4), "arg_recall": round(recall, 4),
        "arg_f1": round(2 * precision * recall / max(precision + recall, 1e-9), 4),
        "per_class": per_class, "confusion": confusion,
        "per_language": accuracy_by("language"), "per_source": accuracy_by("source"),
    }


def metrics(rows: list[dict], timing: dict, n: int) -> dict:
    by_prompt: dict[str, list[dict]] = {}
    for r in rows:
        by_prompt.setdefault(r["prompt_id"], []).append(r)
    majority = []
    for samples in by_prompt.values():
        votes = Counter(r["extracted"] for r in samples if r["extracted"] is not None)
        winner = votes.most_common(1)[0][0] if votes else None
        majority.append(any(r["correct"] for r in samples if r["extracted"] == winner) if winner else False)
    tokens = np.array([r["output_tokens"] for r in rows])
    lat = np.array(timing["latencies"]) if timing["latencies"] else np.array([np.nan])
    return {
        "accuracy": round(float(np.mean([r["correct"] for r in rows])), 4),
        "majority_accuracy": round(float(np.mean(majority)), 4),
        "mean_output_tokens": round(float(tokens.mean()), 1),
        "p95_output_tokens": float(np.percentile(tokens, 95)),
        "truncation_rate": round(float(np.mean([r["finish_reason"] == "length" for r in rows])), 4),
        "output_tok_s": round(float(tokens.sum() / timing["wall_s"]), 1),
        "latency_p50_s": round(float(np.percentile(lat, 50)), 3),
        "latency_p95_s": round(float(np.percentile(lat, 95)), 3),
    }


# ---------------------------------------------------------------------------------------------
# Fidelity on the teacher's held-out traces, from the cached top-k (no teacher forward pass).


def teacher_fidelity(cfg: Config, model_dir: Path, model=None) -> dict | None:
    """How close a model is to the teacher on the eval split's traces.

    kl_per_byte, for any tokenizer: the mean over traces of (model NLL - teacher NLL) of the
    completion divided by its UTF-8 bytes. The traces were sampled from the teacher's raw
    distribution (generate.eval_temperature 1, eval_top_p 1) and the teacher's NLL is the sum of
    their stored sampled-token logprobs, so this estimates KL(teacher || model) per byte without
    bias. A model with the teacher's vocabulary reads the teacher's exact ids; another spells the
    same text in its own pieces (crosstok). fidelity_kl (same vocabulary only) is the per-token
    top-k KL with the training tail; top1_agreement compares argmaxes on the teacher's positions,
    or across tokenizers on one-to-one aligned positions through the vocabulary map.

    `model`: weights already in memory (a sweep trial's model between epochs, on any device);
    `model_dir` then gives only the tokenizer."""
    from transformers import AutoModelForCausalLM

    teacher_dir = Path(manifest.require(cfg, "models")["models"]["teacher"]["path"])
    same = crosstok.vocabulary_mismatch(teacher_dir, model_dir) is None
    tokenizer = crosstok.load_tokenizer(model_dir)
    if not same:
        _, t_bytes, t_eos, s_bytes, vmap = crosstok.pair(cfg.models_dir, teacher_dir, tokenizer)
    else:
        t_bytes = crosstok.token_bytes(tokenizer)
    prompts = {r["prompt_id"]: r for r in read_table(PROMPTS, manifest.prompts_path(cfg)).to_pylist()}
    if model is None:
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    k = min(cfg.train.top_k, manifest.require(cfg, "generate")["settings"]["top_k"])
    per_byte, kl_sum, agree, positions, unaligned = [], 0.0, 0, 0, 0
    for _, prompt_id, prompt, tokens, sampled, ids, lps in topk.read_traces(
            cfg.run_dir / "generate", lambda s, split: split == "eval", k):
        if same:
            completion, groups = tokens.tolist(), None
        else:
            try:
                completion, groups = crosstok.student_ids_and_groups(tokens.tolist(), t_bytes, t_eos, tokenizer, s_bytes)
            except crosstok.AlignmentError:
                unaligned += 1
                continue
        if not same or cfg.generate.teacher_context:  # the model answers the plain prompt, in its own template
            prompt = render(tokenizer, prompts[prompt_id], cfg.generate.system_prompt, cfg.generate.think_start)[1]
        text_bytes = sum(len(t_bytes[t]) for t in tokens.tolist() if t < len(t_bytes) and t_bytes[t])
        with torch.no_grad():
            logits = model(torch.tensor([list(prompt) + completion], device=model.device)).logits[
                0, len(prompt) - 1:-1].float().cpu()
        logprobs = torch.log_softmax(logits, -1)
        nll = -logprobs.gather(-1, torch.tensor(completion)[:, None]).sum().item()
        if text_bytes:
            per_byte.append((nll + float(sampled.sum())) / text_bytes)
        if same:
            _, kl, _, _ = token_losses(logits, torch.as_tensor(tokens, dtype=torch.long),
                                       torch.as_tensor(ids, dtype=torch.long), torch.as_tensor(lps), 1.0, "forward_kl",
                                       0.5, cfg.train.tail)
            kl_sum += kl.sum().item()
            agree += (logits.argmax(-1) == torch.as_tensor(ids[:, 0])).sum().item()
            positions += len(tokens)
        else:
            for t0, t1, s0, s1 in groups:
                if t1 - t0 == 1 and s1 - s0 == 1:
                    agree += int(logits[s0].argmax().item() == vmap.student_id[ids[t0, 0]])
                    positions += 1
    if not per_byte:
        return None
    out = {"kl_per_byte": round(float(np.mean(per_byte)), 5), "fidelity_traces": len(per_byte),
           "top1_agreement": round(agree / max(positions, 1), 4)}
    if same:
        out.update(fidelity_kl=round(kl_sum / max(positions, 1), 4), fidelity_tokens=positions)
    else:
        out.update(one_to_one_positions=positions, unaligned_traces=unaligned)
    return out
