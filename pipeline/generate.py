"""Stage `generate`: the teacher writes reasoning traces and, in the same pass, its top-k logprobs
for every generated token (artifacts/<run>/generate/).

    distill generate configs/quickstart.yaml [--shard i/N | --data-parallel N] [--dry-run] [--score]

Prompts are rendered once with the teacher's chat template and passed to vLLM as token ids. The
engine is driven incrementally (at most `max_in_flight` prompts inside it), each finished request
is turned into arrays at once, and every `shard_size` samples become one pair of Parquet files
(generations + teacher_topk) written to temporary names and renamed. A rerun skips the samples
already on disk, so a killed job redoes at most one shard's work; a rerun whose settings would
change the outputs refuses to mix into the existing ones. With --score, nothing is sampled: the
teacher's top-k is attached to completions that already exist (the prompts' `completion` column)
by teacher forcing, written to the same tables. A chat API (backend openai-chat) gets messages
instead; when it returns no logprobs the run is text-only: generations with no teacher_topk.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import click
import numpy as np
import pyarrow as pa
import pyarrow.compute  # noqa: F401  (pa.compute)
import pyarrow.parquet as pq

from pipeline import manifest, topk
from pipeline.config import Config, section_hash
from pipeline.engine import TextCompletion
from pipeline.errors import PipelineError
from pipeline.files import TMP_SUFFIX, atomic_path, read_table, write_json, write_table
from pipeline.render import context_of, render, with_context
from pipeline.schema import GENERATE_SKIPPED, GENERATIONS, PROMPTS, TEACHER_TOPK

PART = re.compile(r"part-(\d+)of(\d+)-(\d+)\.parquet$")


def run(cfg: Config, shard: tuple[int, int] = (0, 1), score: bool = False) -> dict | None:
    started = time.time()
    gen = cfg.generate
    if score and gen.n != 1:
        raise PipelineError(f"{cfg.file}: generate.n must be 1 with --score (each prompt has one given completion)")
    out = cfg.run_dir / "generate"
    teacher = manifest.require(cfg, "models")["models"]["teacher"]
    if cfg.augment.n > 0:
        manifest.require(cfg, "augment")  # its prompts table, with the variants, is the one to generate for
    tokenizer = _tokenizer(teacher["path"])
    think_end_ids = _think_end_ids(tokenizer, gen.think_end)

    # Refuse to mix outputs of different settings into one run.
    settings = _check_settings(out / "settings.json", {**output_settings(cfg, teacher),
                                                       "mode": "score" if score else "sample"})

    # Prompts of this shard not yet on disk; rendered lazily, so memory holds ids only for the
    # prompts inside the engine.
    prompts = [p for p in read_table(PROMPTS, manifest.prompts_path(cfg)).to_pylist()
               if _wanted(p, gen, score) and _in_shard(p["prompt_id"], shard)]
    done = done_samples(out)
    pending = [p for p in prompts if not all(f"{p['prompt_id']}-{i}" in done for i in range(gen.n))]
    skipped: list[dict] = []
    total = len(prompts) * gen.n
    click.echo(f"generate: shard {shard[0]}/{shard[1]}: {len(prompts)} prompts x {gen.n} samples; "
               f"{len(done)} samples on disk, {len(pending) * gen.n} pending")

    stats = {"samples": 0, "tokens": 0, "seconds": 0.0, "bytes": 0}
    if pending:
        writer = ShardWriter(out, shard, gen.shard_size)
        from pipeline.engine import teacher_engine

        if score and gen.backend != "vllm":
            raise PipelineError(f"{cfg.file}: --score needs generate.backend: vllm (prompt logprobs)")
        engine = teacher_engine(cfg, teacher["path"], tokenizer, score=score)
        rendered = _render(tokenizer, pending, gen, skipped, score, context_of(cfg))
        t0 = time.time()
        with progress(total, len(done), "generate", "sample") as bar:
            for prompt, text, ids, completions in (engine.score(rendered) if score else engine.generate(rendered)):
                for i, c in enumerate(completions):
                    if settings.get("topk") != (has_topk := not isinstance(c, TextCompletion)):
                        settings = _record_topk(out / "settings.json", has_topk)
                    gen_row, topk_row = sample_rows(prompt, text, ids, i, c, tokenizer, think_end_ids, teacher["path"])
                    writer.add(gen_row, topk_row)
                    stats["tokens"] += gen_row["completion_tokens"]
                stats["samples"] += len(completions)
                bar.update(len(completions))
                bar.set_postfix_str(f"{stats['tokens'] / (time.time() - t0):.0f} tok/s", refresh=False)
        writer.flush()
        stats["seconds"] = time.time() - t0
        stats["bytes"] = writer.bytes
        tps = stats["tokens"] / max(stats["seconds"], 1e-9)
        click.echo(f"generate: {stats['samples']} samples, {stats['tokens']} tokens in {stats['seconds']:.1f}s "
                   f"({tps:.0f} tok/s), {writer.bytes / 1e6:.2f} MB written "
                   f"({writer.topk_bytes / max(stats['tokens'], 1):.1f} bytes of top-k per token)")
        if settings.get("topk") is False:
            click.echo("generate: no logprobs from the server: a text-only run with no teacher_topk sidecar; "
                       "training on it will be SFT (kd_weight 0)")

    if skipped:
        click.echo(f"generate: {len(skipped)} prompts skipped (longer than max_model_len), listed in {out}/skipped-*.parquet")
        write_table(GENERATE_SKIPPED, GENERATE_SKIPPED.from_pylist(skipped),
                    out / f"skipped-{shard[0]:03d}of{shard[1]:03d}.parquet")
    return _finish_if_complete(cfg, started, settings, stats)


# ---------------------------------------------------------------------------------------------
# Settings: what would change the outputs. Stored at the first start; a rerun must match.


def output_settings(cfg: Config, teacher: dict) -> dict:
    """A chat API's run learns whether it has top-k from the server's first reply (_record_topk)."""
    gen = cfg.generate
    known = {} if gen.backend == "openai-chat" and gen.openai.logprobs else {"topk": gen.backend != "openai-chat"}
    return {
        **known,
        "teacher_weights_sha": teacher["weights_sha"], "tokenizer_sha": teacher["tokenizer_sha"],
        "vocab_sha": teacher["vocab_sha"], "n": gen.n, "temperature": gen.temperature, "top_p": gen.top_p,
        "eval_temperature": gen.eval_temperature, "eval_top_p": gen.eval_top_p, "think_start": gen.think_start,
        "teacher_context": section_hash(context_of(cfg)),
        "max_new_tokens": gen.max_new_tokens, "max_model_len": gen.engine.max_model_len, "top_k": gen.top_k,
        "think_end": gen.think_end, "system_prompt": gen.system_prompt, "seed": cfg.run.seed,
        "per_request_seed": gen.per_request_seed, "logprobs_mode": "raw_logprobs",
        "logprob_step": topk.STEP, "topk_codec": 2, "dtype": gen.engine.dtype, "quantization": gen.engine.quantization,
    }


def _check_settings(path: Path, settings: dict) -> dict:
    """The run's settings: these, plus what an earlier pass learnt (topk)."""
    if path.is_file():
        old = json.loads(path.read_text())
        if old.get("imported"):
            raise PipelineError(f"{path.parent}: holds traces written by `distill import`; generate into a new run name")
        changed = [k for k in settings if old.get(k) != settings[k]]
        if changed:
            k = changed[0]
            raise PipelineError(f"{path.parent}: holds samples generated with {k}={old.get(k)!r}, not {settings[k]!r}"
                                f" ({len(changed)} setting(s) differ); use a new run name or delete that directory")
        return {**old, **settings}
    write_json(path, settings)
    return settings


def _record_topk(path: Path, topk: bool) -> dict:
    """Record whether the run has teacher top-k, as the server's reply shows; a run never mixes
    samples with and without it (another shard's process may have recorded it first)."""
    settings = json.loads(path.read_text())
    if settings.get("topk", topk) != topk:
        raise PipelineError(f"{path.parent}: holds samples {'with' if settings['topk'] else 'without'} teacher top-k "
                            f"but the server now returns {'logprobs' if topk else 'none'}; use a new run name")
    settings["topk"] = topk
    write_json(path, settings)
    return settings


# ---------------------------------------------------------------------------------------------
# Prompts.


def _tokenizer(path: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


def _render(tokenizer, prompts: list[dict], gen, skipped: list[dict], score: bool, context: list[dict]):
    """Yield (prompt, text, ids) for the engine, or with `score` (prompt, text, ids, completion ids
    ending in EOS); a prompt (plus completion) too long for the context goes to `skipped`."""
    for p in prompts:
        text, ids = render(tokenizer, with_context(p, context), gen.system_prompt, gen.think_start)
        completion = tokenizer.encode(p["completion"], add_special_tokens=False) + [tokenizer.eos_token_id] \
            if score else []
        need = len(ids) + (len(completion) if score else 1)
        if need > gen.engine.max_model_len:
            what = "prompt + completion" if score else "prompt"
            skipped.append({"prompt_id": p["prompt_id"], "prompt_tokens": len(ids),
                            "reason": f"{what} is {need} tokens; max_model_len is {gen.engine.max_model_len}"})
            continue
        yield (p, text, ids, completion) if score else (p, text, ids)


def _wanted(prompt: dict, gen, score: bool) -> bool:
    """Sampling covers the configured splits; scoring covers the prompts that carry a completion."""
    return prompt["split"] in gen.splits and (prompt["completion"] is not None or not score)


def _think_end_ids(tokenizer, think_end: str) -> list[int]:
    return tokenizer.encode(think_end, add_special_tokens=False) if think_end else []


def _in_shard(prompt_id: str, shard: tuple[int, int]) -> bool:
    return int(prompt_id[:8], 16) % shard[1] == shard[0]


def prompt_seed(run_seed: int, prompt_id: str, n: int) -> int:
    """Spaced by n because vLLM seeds sample i with seed + i: no two samples share a seed."""
    return int(hashlib.sha256(f"{run_seed}:{prompt_id}".encode()).hexdigest()[:12], 16) * n


# ---------------------------------------------------------------------------------------------
# One finished completion -> one generations row and one teacher_topk row.


def sample_rows(prompt: dict, text: str, ids: list[int], idx: int, c, tokenizer, think_end_ids: list[int],
                model: str) -> tuple[dict, dict | None]:
    """`c` has token_ids, token_logprobs [P], topk_ids [P, k], topk_logprobs [P, k], finish_reason,
    seed and latency_s (see engine.Completion), or is an engine.TextCompletion: its columns as they
    are and no teacher_topk row."""
    gen_row = {
        "sample_id": f"{prompt['prompt_id']}-{idx}", "prompt_id": prompt["prompt_id"], "sample_idx": idx,
        "split": prompt["split"], "prompt_text": text, "prompt_token_ids": ids, "prompt_tokens": len(ids),
        "finish_reason": c.finish_reason, "model": model, "seed": c.seed, "latency_s": c.latency_s,
    }
    if isinstance(c, TextCompletion):
        return {**gen_row, **c.columns}, None
    tokens = np.asarray(c.token_ids, dtype=np.int32)
    reasoning_ids, answer_ids, end_index, end_count = split_reasoning(tokens, think_end_ids)
    closed = end_index is not None or not think_end_ids
    gen_row.update({
        "reasoning": tokenizer.decode(reasoning_ids, skip_special_tokens=True),
        "answer": tokenizer.decode(answer_ids, skip_special_tokens=True) if closed else "",
        "reasoning_closed": closed, "think_end_count": end_count, "think_end_index": end_index,
        "completion_tokens": len(tokens), "reasoning_tokens": len(reasoning_ids),
        "answer_tokens": len(answer_ids) if closed else 0,
    })
    topk_row = {"sample_id": gen_row["sample_id"], "token_ids": tokens, "token_logprobs": c.token_logprobs,
                "topk_ids": c.topk_ids, "topk_logprobs": c.topk_logprobs}  # encoded per shard by topk.write_part
    return gen_row, topk_row


def split_reasoning(tokens: np.ndarray, think_end_ids: list[int]):
    """Split on token ids: (reasoning ids, answer ids, index of the first think-end, how many).
    A teacher without a think-end token has no reasoning: everything is the answer."""
    if not think_end_ids:
        return tokens[:0], tokens, None, 0
    m = len(think_end_ids)
    windows = np.lib.stride_tricks.sliding_window_view(tokens, m) if len(tokens) >= m else np.empty((0, m))
    hits = np.flatnonzero((windows == np.asarray(think_end_ids)).all(axis=1))
    if len(hits) == 0:
        return tokens, tokens[:0], None, 0
    first = int(hits[0])
    return tokens[:first], tokens[first + m:], first, len(hits)


# ---------------------------------------------------------------------------------------------
# Shards on disk.


class ShardWriter:
    """Buffers rows; every shard_size samples writes teacher_topk (none in a text-only run) then
    generations (the commit mark)."""

    def __init__(self, out: Path, shard: tuple[int, int], size: int):
        self.out, self.shard, self.size = out, shard, size
        self.gen_rows, self.topk_rows = [], []
        self.bytes = self.topk_bytes = 0
        self.seq = _next_seq(out, shard)

    def add(self, gen_row: dict, topk_row: dict | None) -> None:
        self.gen_rows.append(gen_row)
        if topk_row is not None:
            self.topk_rows.append(topk_row)
        if len(self.gen_rows) >= self.size:
            self.flush()

    def flush(self) -> None:
        if not self.gen_rows:
            return
        name = f"part-{self.shard[0]:03d}of{self.shard[1]:03d}-{self.seq:05d}.parquet"
        topk_path, gen_path = self.out / "teacher_topk" / name, self.out / "generations" / name
        if self.topk_rows:
            with atomic_path(topk_path) as tmp:
                topk.write_part(self.topk_rows, tmp, TEACHER_TOPK.arrow_schema)
            self.topk_bytes += topk_path.stat().st_size
            self.bytes += topk_path.stat().st_size
        write_table(GENERATIONS, GENERATIONS.from_pylist(self.gen_rows), gen_path)
        self.bytes += gen_path.stat().st_size
        self.gen_rows, self.topk_rows = [], []
        self.seq += 1


def _next_seq(out: Path, shard: tuple[int, int]) -> int:
    """Next part number for this shard. A teacher_topk part of this shard with no generations part
    is an orphan of a killed write (generations is written last) and is removed, as are this
    shard's stale temporary files; other shards' files are left alone, since their jobs may be
    writing right now."""
    prefix = f"part-{shard[0]:03d}of{shard[1]:03d}-"
    seqs = [int(m[3]) for p in (out / "generations").glob(f"{prefix}*.parquet") if (m := PART.search(p.name))]
    for p in (out / "teacher_topk").glob(f"{prefix}*.parquet"):
        if not (out / "generations" / p.name).exists():
            p.unlink()
    for d in ("generations", "teacher_topk"):
        for p in (out / d).glob(f".{prefix}*{TMP_SUFFIX}"):
            p.unlink(missing_ok=True)
    return max(seqs, default=-1) + 1


def done_samples(out: Path) -> set[str]:
    """sample_ids of every complete part on disk (any shard), reading only the key column."""
    done: set[str] = set()
    for p in sorted((out / "generations").glob("part-*.parquet")):
        try:
            done.update(pq.read_table(p, columns=["sample_id"]).column(0).to_pylist())
        except (pa.ArrowInvalid, OSError) as e:
            raise PipelineError(f"{p}: corrupt shard ({str(e).splitlines()[0]}); delete it to regenerate") from None
    return done


def progress(total: int, initial: int, desc: str, unit: str):
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, unit=unit, desc=desc, dynamic_ncols=True, mininterval=1.0)


def _finish_if_complete(cfg: Config, started: float, settings: dict, stats: dict) -> dict | None:
    """Write the stage manifest once every shard's samples are on disk (any process may be last)."""
    gen = cfg.generate
    out = cfg.run_dir / "generate"
    prompts = read_table(PROMPTS, manifest.prompts_path(cfg)).to_pylist()
    skipped = set()
    for p in out.glob("skipped-*.parquet"):
        skipped.update(pq.read_table(p, columns=["prompt_id"]).column(0).to_pylist())
    expected = {f"{p['prompt_id']}-{i}" for p in prompts if _wanted(p, gen, settings["mode"] == "score")
                and p["prompt_id"] not in skipped for i in range(gen.n)}
    done = done_samples(out)
    if not expected <= done:
        click.echo(f"generate: {len(expected - done)} samples still missing (other shards); manifest not written yet")
        return None
    parts = sorted((out / "generations").glob("part-*.parquet"))
    tokens = sum(int(pa.compute.sum(pq.read_table(p, columns=["completion_tokens"]).column(0)).as_py() or 0)
                 for p in parts)
    topk_bytes = sum(p.stat().st_size for p in (out / "teacher_topk").glob("part-*.parquet"))
    gen_bytes = sum(p.stat().st_size for p in parts)
    # text_only: no teacher_topk (a chat API gave no logprobs): what a run can train is SFT
    counts = {"samples": len(done), "prompts_skipped": len(skipped), "completion_tokens": int(tokens),
              "text_only": settings.get("topk") is False,
              "generations_bytes": gen_bytes, "teacher_topk_bytes": topk_bytes,
              "topk_bytes_per_candidate": round(topk_bytes / max(int(tokens) * gen.top_k, 1), 3)}
    return manifest.write(cfg, "generate", started, counts, settings=settings, last_pass=stats,
                          sampling={"temperature": gen.temperature, "top_p": gen.top_p,
                                    "logprobs_mode": "raw_logprobs (T=1, before temperature and top-p)"})


# ---------------------------------------------------------------------------------------------
# Data parallelism on one node, and the dry run.


def run_data_parallel(cfg: Config, n: int, config_file: str, overrides: tuple[str, ...],
                      score: bool = False) -> dict | None:
    """N engine processes, shard i of N each, each writing its own parts. On GPUs each process gets
    tensor_parallel_size * pipeline_parallel_size devices of its own."""
    per = cfg.generate.engine.tensor_parallel_size * cfg.generate.engine.pipeline_parallel_size
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    devices = visible.split(",") if visible else [str(i) for i in range(n * per)]
    procs = []
    for i in range(n):
        env = dict(os.environ)
        env["CUDA_VISIBLE_DEVICES"] = ",".join(devices[i * per:(i + 1) * per])
        cmd = [sys.executable, "-m", "pipeline.cli", "generate", config_file, "--shard", f"{i}/{n}"]
        cmd += ["--score"] if score else []
        for o in overrides:
            cmd += ["--set", o]
        procs.append(subprocess.Popen(cmd, env=env))
    codes = [p.wait() for p in procs]
    if any(codes):
        raise PipelineError(f"data-parallel generate: shard processes exited with {codes}; rerun to resume")
    return manifest.read(cfg, "generate")


def dry_run(cfg: Config, shard: tuple[int, int], data_parallel: int) -> None:
    """Validate and print the plan without loading a model: engine arguments, shards, estimates."""
    from pipeline.engine import engine_args

    gen = cfg.generate
    click.echo(f"teacher:        {cfg.models.teacher}")
    click.echo(f"backend:        {gen.backend}")
    click.echo(f"engine args:    {json.dumps(engine_args(cfg), sort_keys=True)}")
    click.echo(f"sampling:       n={gen.n} temperature={gen.temperature} top_p={gen.top_p} "
               f"max_new_tokens={gen.max_new_tokens} top_k={gen.top_k} (raw logprobs) think_end={gen.think_end!r} "
               f"system_prompt={gen.system_prompt}")
    per = gen.engine.tensor_parallel_size * gen.engine.pipeline_parallel_size
    procs = data_parallel or 1
    click.echo(f"parallelism:    {procs} engine process(es) x {per} device(s) each; this job: shard {shard[0]}/{shard[1]}")
    prompts_path = manifest.prompts_path(cfg)
    if not prompts_path.is_file():
        click.echo(f"prompts:        {prompts_path} not written yet: run `distill {prompts_path.parent.name}` for "
                   "counts and estimates")
        return
    prompts = [p for p in read_table(PROMPTS, prompts_path).to_pylist() if p["split"] in gen.splits]
    mine = [p for p in prompts if _in_shard(p["prompt_id"], shard)]
    chars = sum(len(m["content"]) for p in mine for m in p["messages"])
    samples = len(mine) * gen.n
    max_tokens = samples * gen.max_new_tokens
    click.echo(f"prompts:        {len(prompts)} in splits {gen.splits}; {len(mine)} in this shard -> {samples} samples")
    click.echo(f"shards:         {-(-samples // gen.shard_size)} part files of <= {gen.shard_size} samples")
    click.echo(f"tokens:         prompts ~{chars // 4 * gen.n:,} (chars/4), completions <= {max_tokens:,} "
               f"(~{max_tokens // 2:,} if traces average half the budget)")
    # ~2 bytes per stored candidate (measured by `distill bench generate`) + ~8 per token of ids/text.
    est = max_tokens // 2 * (2 * gen.top_k + 8)
    click.echo(f"storage:        teacher_topk + generations ~{est / 1e9:.2f} GB at half the budget")
