"""Stage `eval`: teacher, baseline (the student's starting checkpoint) and trained student on the
held-out eval prompts, in numbers (artifacts/<run>/eval/).

    distill eval configs/quickstart.yaml

Accuracy: each model generates `eval.n` samples per eval prompt with vLLM (one engine process per
model), scored by task type (pipeline.scoring): pass@1 averaged over n, majority vote, output
length, truncation, tokens/s and per-request latency. Fidelity, without the teacher: on the
teacher's held-out traces (eval split of generate), the model's per-token KL from the stored
top-k (same tail handling as training) and its top-1 agreement, from one forward pass each.
"""
from __future__ import annotations

import multiprocessing
import time
from collections import Counter
from pathlib import Path

import click
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from pipeline import manifest, topk
from pipeline.config import Config
from pipeline.errors import PipelineError
from pipeline.files import atomic_path, read_table, write_json
from pipeline.losses import token_losses
from pipeline.schema import EVAL_RESULTS, PROMPTS
from pipeline.scoring import extract, is_correct


def run(cfg: Config) -> dict:
    started = time.time()
    out = cfg.run_dir / "eval"
    contenders = models_to_evaluate(cfg)
    prompts = [p for p in read_table(PROMPTS, cfg.run_dir / "prepare/prompts.parquet").to_pylist()
               if p["split"] == "eval"]
    if cfg.eval.max_prompts:
        prompts = prompts[:cfg.eval.max_prompts]
    unscorable = [p["prompt_id"] for p in prompts if p["reference"] is None]
    if unscorable:
        raise PipelineError(f"{cfg.run_dir / 'prepare/prompts.parquet'}: {len(unscorable)} eval prompts have no "
                            f"reference to score against (e.g. {unscorable[0]}); give prepare a reference column")
    rows, summary = [], {}
    for name, model_dir in contenders.items():
        click.echo(f"eval: {name} ({model_dir}) on {len(prompts)} prompts x {cfg.eval.n} ...")
        generated, timing = _generate_in_subprocess(cfg, model_dir, prompts)
        model_rows = score(name, prompts, generated)
        rows += model_rows
        summary[name] = {"path": str(model_dir), **metrics(model_rows, timing, cfg.eval.n)}
        fidelity = teacher_fidelity(cfg, model_dir) if name != "teacher" else None
        if fidelity:
            summary[name].update(fidelity)
        click.echo("  " + ", ".join(f"{k} {v}" for k, v in summary[name].items() if k != "path"))
    with atomic_path(out / "results.parquet") as tmp:
        pq.write_table(pa.Table.from_pylist(rows, schema=EVAL_RESULTS.arrow_schema), tmp, compression="zstd")
    write_json(out / "summary.json", summary)
    return manifest.write(cfg, "eval", started, {"prompts": len(prompts), "rows": len(rows)}, summary=summary)


def models_to_evaluate(cfg: Config) -> dict[str, Path]:
    models = manifest.require(cfg, "models")["models"]
    contenders = {"teacher": Path(models["teacher"]["path"]), "baseline": Path(models["student"]["path"])}
    trained = manifest.read(cfg, "train")
    if trained is not None:
        contenders["student"] = Path(trained["model"])
    for extra in cfg.eval.models:
        contenders[Path(extra).name] = Path(extra)
    for name, d in contenders.items():
        if not (d / "config.json").is_file():
            raise PipelineError(f"{d}: not a model directory (no config.json) for eval model '{name}'")
        if not any((d / f).is_file() for f in ("tokenizer.json", "tokenizer.model", "vocab.json")):
            raise PipelineError(f"{d}: has no tokenizer (eval model '{name}')")
    return contenders


# ---------------------------------------------------------------------------------------------
# Generation: one spawned process per model, so each vLLM engine starts and ends cleanly.


def _generate_in_subprocess(cfg: Config, model_dir: Path, prompts: list[dict]):
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(1) as pool:
        return pool.apply(_generate, (cfg, str(model_dir), prompts))


def _generate(cfg: Config, model_dir: str, prompts: list[dict]):
    from transformers import AutoTokenizer
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    from pipeline.engine import engine_args

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    ids = [tokenizer.apply_chat_template(p["messages"], add_generation_prompt=True, tokenize=True, return_dict=False)
           for p in prompts]
    llm = LLM(model=model_dir, **engine_args(cfg))
    params = SamplingParams(n=cfg.eval.n, temperature=cfg.eval.temperature, top_p=cfg.eval.top_p,
                            max_tokens=cfg.eval.max_new_tokens, seed=cfg.run.seed)
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
    return generated, {"wall_s": wall, "latencies": latencies}


def score(name: str, prompts: list[dict], generated: list[list[tuple]]) -> list[dict]:
    rows = []
    for p, samples in zip(prompts, generated):
        for i, (text, tokens, finish) in enumerate(samples):
            got = extract(text, p["task"])
            rows.append({"model": name, "prompt_id": p["prompt_id"], "sample_idx": i, "task": p["task"],
                         "source": p["source"], "difficulty": p["difficulty"], "completion": text,
                         "extracted": got, "reference": p["reference"],
                         "correct": is_correct(got, p["reference"], p["task"]), "output_tokens": tokens,
                         "finish_reason": finish})
    return rows


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


def teacher_fidelity(cfg: Config, model_dir: Path) -> dict | None:
    from transformers import AutoModelForCausalLM

    from pipeline.train import vocabulary_mismatch

    teacher_dir = Path(manifest.require(cfg, "models")["models"]["teacher"]["path"])
    if vocabulary_mismatch(teacher_dir, model_dir) is not None:
        return None  # KL on the teacher's token ids means nothing for another vocabulary
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    k = min(cfg.train.top_k, manifest.require(cfg, "generate")["settings"]["top_k"])
    kl_sum, agree, positions = 0.0, 0, 0
    traces = topk.read_traces(cfg.run_dir / "generate", lambda s, split: split == "eval", k)
    for _, prompt, tokens, ids, lps in traces:
        with torch.no_grad():
            logits = model(torch.tensor([list(prompt) + tokens.tolist()])).logits[0]
        logits = logits[len(prompt) - 1:len(prompt) - 1 + len(tokens)]
        ids_t = torch.as_tensor(ids, dtype=torch.long)
        _, kl, _, _ = token_losses(logits, torch.as_tensor(tokens, dtype=torch.long), ids_t,
                                   torch.as_tensor(lps), 1.0, "forward_kl", 0.5, cfg.train.tail)
        kl_sum += kl.sum().item()
        agree += (logits.argmax(-1) == ids_t[:, 0]).sum().item()
        positions += len(tokens)
    if positions == 0:
        return None
    return {"fidelity_kl": round(kl_sum / positions, 4), "top1_agreement": round(agree / positions, 4),
            "fidelity_tokens": positions}
