"""`distill bench NAME [CONFIG]`: measured speed, size and memory, side by side in one run, into
artifacts/bench/NAME.json. Ratios, not absolute times, are the targets: these machines are noisy.

    distill bench generate configs/arithmetic.yaml
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

import click
import numpy as np

from pipeline import arithmetic, engine, generate, models, topk
from pipeline.config import Config
from pipeline.files import write_json
from pipeline.render import render


def bench_generate(cfg: Config, n_prompts: int, max_new_tokens: int) -> dict:
    """One engine, the same prompts, seeds and sampling for three passes: plain vLLM, vLLM with
    logprobs=20 in its default per-token dict form, and this pipeline's capture path writing
    Parquet. Same seeds -> the same tokens, so tokens/s compare like with like."""
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    from pipeline.engine import VLLMTeacher, cpu_seed_workaround, engine_args, start_llm

    gen = cfg.generate
    gen.max_new_tokens = max_new_tokens
    teacher = models.resolve(cfg.models.teacher, cfg)
    tokenizer = generate._tokenizer(str(teacher))
    rows = arithmetic.problems(n_prompts, [1, 2, 3], seed=12345)
    prompts = [{"prompt_id": f"{i:016x}", "messages": [{"role": "user", "content": r["question"]}], "tools": None,
                "split": "train"} for i, r in enumerate(rows)]
    rendered = [(p, *render(tokenizer, p, gen.system_prompt, gen.think_start)) for p in prompts]
    seeds = [generate.prompt_seed(cfg.run.seed, p["prompt_id"], gen.n) for p in prompts]

    # Prefix caching off: later passes must not get the earlier passes' prefills for free.
    llm = start_llm(str(teacher), **{**engine_args(cfg), "enable_prefix_caching": False, **cpu_seed_workaround(cfg)})
    token_prompts = [TokensPrompt(prompt_token_ids=ids) for _, _, ids in rendered]

    def vllm_pass(**logprob_args) -> float:
        params = [SamplingParams(n=gen.n, temperature=gen.temperature, top_p=gen.top_p, max_tokens=max_new_tokens,
                                 seed=s, **logprob_args) for s in seeds]
        t = time.perf_counter()
        outs = llm.generate(token_prompts, params, use_tqdm=False)
        return sum(len(c.token_ids) for o in outs for c in o.outputs) / (time.perf_counter() - t)

    def pipeline_pass(out_dir: Path) -> tuple[float, float, int, int, float]:
        teacher_engine = VLLMTeacher(str(teacher), cfg, llm=llm)
        writer = generate.ShardWriter(out_dir, (0, 1), gen.shard_size)
        think_end_ids = generate._think_end_ids(tokenizer, gen.think_end)
        tokens, raw = 0, {}
        t = time.perf_counter()
        for prompt, text, ids, completions in teacher_engine.generate(rendered):
            for i, c in enumerate(completions):
                gen_row, topk_row = engine.sample_rows(prompt, text, ids, i, c, tokenizer, think_end_ids, str(teacher))
                writer.add(gen_row, topk_row)
                tokens += len(c.token_ids)
                raw[gen_row["sample_id"]] = c
        writer.flush()
        seconds = time.perf_counter() - t
        # Outside the timed part: decode what was written and compare it with vLLM's own floats
        # (the codec's error) and with a float32 transformers forward pass over the same ids (whether
        # the stored values are the untempered model's, whatever the sampling temperature).
        import torch
        from transformers import AutoModelForCausalLM

        hf = AutoModelForCausalLM.from_pretrained(teacher, dtype=torch.float32).eval()
        prompt_ids = {p["prompt_id"]: ids for p, _, ids in rendered}
        err = err_hf = 0.0
        for part in (out_dir / "teacher_topk").glob("*.parquet"):
            table, order = topk.read_part(part)
            for row in table.to_pylist():
                c = raw[row["sample_id"]]
                token_ids, sampled, top_ids, top_lp = topk.decode(row, order)
                assert (top_ids == c.topk_ids).all() and (token_ids == np.asarray(c.token_ids)).all()
                err = max(err, float(np.abs(top_lp - c.topk_logprobs).max()),
                          float(np.abs(sampled - c.token_logprobs).max()))
                prompt = prompt_ids[row["sample_id"].rsplit("-", 1)[0]]
                with torch.no_grad():
                    logits = hf(torch.tensor([prompt + token_ids.tolist()])).logits[0, len(prompt) - 1:-1]
                ref = torch.log_softmax(logits.float(), -1).numpy()
                positions = np.arange(len(token_ids))
                err_hf = max(err_hf, float(np.abs(top_lp - ref[positions[:, None], top_ids]).max()),
                             float(np.abs(sampled - ref[positions, token_ids]).max()))
        return tokens / seconds, err, tokens, writer.topk_bytes, err_hf

    click.echo(f"bench generate: {teacher.name}, {n_prompts} prompts x {gen.n}, {max_new_tokens} new tokens, "
               f"k={gen.top_k}, dtype {gen.engine.dtype}")
    vllm_pass()  # warm-up: first-step allocations and caches are not what we measure
    plain = vllm_pass()
    click.echo(f"  plain vLLM:                  {plain:8.1f} tok/s")
    default = vllm_pass(logprobs=gen.top_k)
    click.echo(f"  vLLM default logprobs={gen.top_k}:    {default:8.1f} tok/s")
    with tempfile.TemporaryDirectory() as d:
        piped, err, tokens, topk_bytes, err_hf = pipeline_pass(Path(d))
    click.echo(f"  distill generate (k={gen.top_k}):    {piped:8.1f} tok/s")
    result = {
        "teacher": teacher.name, "prompts": n_prompts, "n": gen.n, "max_new_tokens": max_new_tokens, "k": gen.top_k,
        "dtype": gen.engine.dtype, "generated_tokens": tokens,
        "plain_tok_s": round(plain, 1), "vllm_default_logprobs_tok_s": round(default, 1),
        "pipeline_tok_s": round(piped, 1), "capture_ratio": round(piped / plain, 3),
        "default_logprobs_ratio": round(default / plain, 3),
        "bytes_per_candidate": round(topk_bytes / (tokens * gen.top_k), 3),  # one top-k row per token
        "codec_max_abs_error": round(err, 5), "max_abs_logprob_error_vs_hf": round(err_hf, 5),
        "temperature": gen.temperature,
        "targets": {"capture_ratio": ">= 0.90", "bytes_per_candidate": "<= 2.0", "max_abs_logprob_error_vs_hf": "<= 0.02"},
    }
    return result


# benchmark -> (function, the keys its targets are stated in)
BENCHMARKS = {
    "generate": ("pipeline.bench:bench_generate", ("capture_ratio", "bytes_per_candidate",
                                                   "max_abs_logprob_error_vs_hf")),
    "clean": ("pipeline.bench_clean:bench_clean", ("rows_per_s", "rules_rows_per_s", "peak_rss_mb",
                                                   "near_dup_rows_per_s", "verify_rows_per_s", "speedup_vs_pandas")),
    "train": ("pipeline.bench_train:bench_train", ("kd_over_sft_time", "kd_over_sft_peak_memory", "dataloader_share",
                                                   "cross_over_same_time", "kd_over_ce_time")),
    "quality": ("pipeline.bench_quality:bench_quality", ("kd_over_sft_kl", "cross_over_sft_kl", "kd_vs_full_logit_gain")),
}


def run(cfg: Config, name: str, **options) -> dict:
    import importlib

    target, keys = BENCHMARKS[name]
    module, fn = target.split(":")
    result = getattr(importlib.import_module(module), fn)(cfg, **options)
    out = Path(cfg.run.artifacts_dir) / "bench" / f"{name}.json"
    write_json(out, result)
    click.echo(f"bench {name}: " + ", ".join(f"{k} {result[k]}" for k in keys) + f" -> {out}")
    return result
