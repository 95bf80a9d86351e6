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
by teacher forcing, written to the same tables. On a run written by `distill import`, --score
attaches the teacher's top-k to every imported sample (score_imported): the run becomes one that
KD can train on. A chat API (backend openai-chat) gets messages instead; when it returns no
logprobs the run is text-only: generations with no teacher_topk.
"""
from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import itertools
import json
import os
import re
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import click
import pyarrow as pa
import pyarrow.compute  # noqa: F401  (pa.compute)
import pyarrow.parquet as pq

from pipeline import manifest, topk
from pipeline.config import Config, section_hash
from pipeline.engine import TextCompletion, progress, sample_rows, tries_of
from pipeline.errors import PipelineError
from pipeline.files import (
    TMP_SUFFIX,
    atomic_path,
    open_table,
    read_table,
    remove,
    replace_dir,
    write_json,
    write_table,
)
from pipeline.reasoning import THINK_END, THINK_START, join_completion
from pipeline.render import TeacherContext, context_of, render, with_context
from pipeline.schema import GENERATE_SKIPPED, GENERATIONS, PROMPTS, TEACHER_TOPK
from pipeline.scoring import extract, is_correct

PART = re.compile(r"part-(\d+)of(\d+)-(\d+)\.parquet$")


def run(cfg: Config, shard: tuple[int, int] = (0, 1), score: bool = False) -> dict | None:
    started = time.time()
    gen = cfg.generate
    out = cfg.run_dir / "generate"
    imported = _imported_settings(cfg)
    if imported is not None:
        if not score:
            raise PipelineError(f"{out}: holds traces written by `distill import`; generate into a new run name, "
                                "or attach the teacher's top-k to them with --score")
        return score_imported(cfg, shard, imported)
    if score and gen.n != 1:
        raise PipelineError(f"{cfg.file}: generate.n must be 1 with --score (each prompt has one given completion)")
    if score and gen.backend != "vllm":
        raise PipelineError(f"{cfg.file}: --score needs generate.backend: vllm (prompt logprobs)")
    teacher = manifest.require(cfg, "models")["models"]["teacher"]
    if cfg.augment.n > 0:
        manifest.require(cfg, "augment")  # its prompts table, with the variants, is the one to generate for
    tokenizer = _tokenizer(teacher["path"])

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

    sampler = Sampler(cfg, teacher["path"], tokenizer, out, shard, score, done, settings)
    if pending:
        sampler.run(_render(tokenizer, pending, gen, skipped, score, context_of(cfg)), total, len(done), "generate")
    if gen.retries and not score:
        owed, _ = retry_state(out, prompts, gen)
        if owed:
            click.echo(f"generate: {len(owed)} train prompts failed their reference in all {gen.n} tries; "
                       f"{gen.retries} sampled tries more each at temperature {gen.retry_temperature}")
            retry = [{**p, "retry": True, "request_id": f"{p['prompt_id']}-retry"} for p in owed]
            sampler.run(_render(tokenizer, retry, gen, skipped, score, context_of(cfg)), len(owed) * gen.retries, 0,
                        "generate retries")
    stats, settings = sampler.stats, sampler.settings
    if stats["samples"]:
        tps = stats["tokens"] / max(stats["seconds"], 1e-9)
        click.echo(f"generate: {stats['samples']} samples, {stats['tokens']} tokens in {stats['seconds']:.1f}s "
                   f"({tps:.0f} tok/s), {stats['bytes'] / 1e6:.2f} MB written "
                   f"({stats['topk_bytes'] / max(stats['tokens'], 1):.1f} bytes of top-k per token)")
        if settings.get("topk") is False:
            click.echo("generate: no logprobs from the server: a text-only run with no teacher_topk sidecar; "
                       "training on it will be SFT (kd_weight 0)")

    if skipped:
        click.echo(f"generate: {len(skipped)} prompts skipped (longer than max_model_len), listed in {out}/skipped-*.parquet")
        write_table(GENERATE_SKIPPED, GENERATE_SKIPPED.from_pylist(skipped),
                    out / f"skipped-{shard[0]:03d}of{shard[1]:03d}.parquet")
    return _finish_if_complete(cfg, started, settings, stats)


class Sampler:
    """Turns rendered prompts into shards, pass after pass (first tries, then retries): the engine
    starts at the first pass and serves the rest. A sample already on disk is not written again:
    a kill can leave part of a prompt's samples in a finished shard."""

    def __init__(self, cfg: Config, model: str, tokenizer, out: Path, shard: tuple[int, int], score: bool,
                 done: set[str], settings: dict):
        self.cfg, self.model, self.tokenizer, self.out, self.shard, self.score = cfg, model, tokenizer, out, shard, score
        self.done, self.settings = done, settings
        self.think_end_ids = _think_end_ids(tokenizer, cfg.generate.think_end)
        self.engine = None
        self.stats = {"samples": 0, "tokens": 0, "seconds": 0.0, "bytes": 0, "topk_bytes": 0}

    def run(self, rendered, total: int, initial: int, desc: str) -> None:
        from pipeline.engine import teacher_engine

        if self.engine is None:
            self.engine = teacher_engine(self.cfg, self.model, self.tokenizer, score=self.score)
        writer = ShardWriter(self.out, self.shard, self.cfg.generate.shard_size)
        stats, t0 = self.stats, time.time()
        with progress(total, initial, desc, "sample") as bar:
            for prompt, text, ids, completions in (self.engine.score(rendered) if self.score
                                                   else self.engine.generate(rendered)):
                for i, c in enumerate(completions, start=tries_of(prompt, self.cfg.generate).first):
                    if self.settings.get("topk") != (has_topk := not isinstance(c, TextCompletion)):
                        self.settings = _record_topk(self.out / "settings.json", has_topk)
                    gen_row, topk_row = sample_rows(prompt, text, ids, i, c, self.tokenizer, self.think_end_ids,
                                                    self.model)
                    if gen_row["sample_id"] in self.done:
                        continue
                    writer.add(gen_row, topk_row)
                    stats["tokens"] += gen_row["completion_tokens"]
                    stats["samples"] += 1
                bar.update(len(completions))
                bar.set_postfix_str(f"{stats['tokens'] / (time.time() - t0):.0f} tok/s", refresh=False)
        writer.flush()
        stats["seconds"] += time.time() - t0
        stats["bytes"] += writer.bytes
        stats["topk_bytes"] += writer.topk_bytes


def retry_state(out: Path, prompts: list[dict], gen) -> tuple[list[dict], dict]:
    """(prompts owed retries, counts). A train prompt with a reference is owed generate.retries
    sampled tries once its first n are on disk and none is right by the verifier clean uses
    (scoring.extract / is_correct), until they are all on disk. counts: prompts retried, and those
    a retry got right."""
    mine = {p["prompt_id"]: p for p in prompts if p["split"] == "train" and p["reference"] is not None}
    answers: dict[str, dict[int, str]] = {pid: {} for pid in mine}
    for part in sorted((out / "generations").glob("part-*.parquet")):
        table = pq.read_table(part, columns=["prompt_id", "sample_idx", "answer"])
        for pid, idx, answer in zip(*(c.to_pylist() for c in table.columns)):
            if pid in answers:
                answers[pid][idx] = answer

    def right(p: dict, tries: range) -> bool:
        return any(is_correct(extract(answers[p["prompt_id"]][i], p["task"]), p["reference"], p["task"]) for i in tries)

    first, retries = range(gen.n), range(gen.n, gen.n + gen.retries)
    owed, counts = [], {"prompts_retried": 0, "retries_right": 0}
    for pid, p in mine.items():
        if not all(i in answers[pid] for i in first) or right(p, first):
            continue
        if all(i in answers[pid] for i in retries):
            counts["prompts_retried"] += 1
            counts["retries_right"] += right(p, retries)
        else:
            owed.append(p)
    return owed, counts


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
        "teacher_context": section_hash(dataclasses.asdict(context_of(cfg))),
        "max_new_tokens": gen.max_new_tokens, "max_model_len": gen.engine.max_model_len, "top_k": gen.top_k,
        "think_end": gen.think_end, "system_prompt": gen.system_prompt, "seed": cfg.run.seed,
        # only when on, so runs written before retries existed still resume
        **({"retries": gen.retries, "retry_temperature": gen.retry_temperature} if gen.retries else {}),
        "per_request_seed": gen.per_request_seed, "logprobs_mode": "raw_logprobs",
        "logprob_step": topk.STEP, "topk_codec": 2, "dtype": gen.engine.dtype, "quantization": gen.engine.quantization,
    }


def _check_settings(path: Path, settings: dict) -> dict:
    """The run's settings: these, plus what an earlier pass learnt (topk)."""
    if path.is_file():
        old = json.loads(path.read_text())
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


def _render(tokenizer, prompts: list[dict], gen, skipped: list[dict], score: bool, context: TeacherContext):
    """Yield (prompt, text, ids) for the engine, or with `score` (prompt, text, ids, completion ids
    ending in EOS); a prompt (plus completion) too long for the context goes to `skipped`."""
    for p in prompts:
        text, ids = render(tokenizer, with_context(p, context), gen.system_prompt, gen.think_start)
        completion = _completion_ids(tokenizer, p, text) if score else []
        need = len(ids) + (len(completion) if score else 1)
        if need > gen.engine.max_model_len:
            what = "prompt + completion" if score else "prompt"
            what = f"sample {p['sample']['sample_id']}: {what}" if "sample" in p else what
            skipped.append({"prompt_id": p["prompt_id"], "prompt_tokens": len(ids),
                            "reason": f"{what} is {need} tokens; max_model_len is {gen.engine.max_model_len}"})
            continue
        yield (p, text, ids, completion) if score else (p, text, ids)


def _completion_ids(tokenizer, p: dict, prompt_text: str) -> list[int]:
    """A given completion's ids, ending in EOS. An imported sample's is rebuilt as the teacher
    writes it after this prompt: opened by the think tag unless the prompt opens the reasoning
    (think_start, or a template that ends with it), ended by EOS unless the trace was cut."""
    if "sample" not in p:
        return tokenizer.encode(p["completion"], add_special_tokens=False) + [tokenizer.eos_token_id]
    s = p["sample"]
    opening = "" if prompt_text.rstrip().endswith(THINK_START) else OPENING
    text = join_completion(s["reasoning"], s["answer"], THINK_END, s["reasoning_closed"], s["think_end_count"], opening)
    eos = [tokenizer.eos_token_id] if s["reasoning_closed"] else []
    return tokenizer.encode(text, add_special_tokens=False) + eos


def _wanted(prompt: dict, gen, score: bool) -> bool:
    """Sampling covers the configured splits; scoring covers the prompts that carry a completion."""
    return prompt["split"] in gen.splits and (prompt["completion"] is not None or not score)


def _think_end_ids(tokenizer, think_end: str) -> list[int]:
    return tokenizer.encode(think_end, add_special_tokens=False) if think_end else []


def _in_shard(prompt_id: str, shard: tuple[int, int]) -> bool:
    return int(prompt_id[:8], 16) % shard[1] == shard[0]


def prompt_seed(run_seed: int, prompt_id: str, n: int) -> int:
    """Spaced by n (a prompt's samples, retries included) because vLLM seeds sample i with seed + i:
    no two samples share a seed."""
    return int(hashlib.sha256(f"{run_seed}:{prompt_id}".encode()).hexdigest()[:12], 16) * n


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
    owed, retried = retry_state(out, [p for p in prompts if _wanted(p, gen, False)], gen) \
        if gen.retries and settings["mode"] == "sample" else ([], {})
    if not expected <= done or owed:
        click.echo(f"generate: {len(expected - done) + len(owed) * gen.retries} samples still missing (other shards); "
                   "manifest not written yet")
        return None
    # text_only: no teacher_topk (a chat API gave no logprobs): what a run can train is SFT
    counts = {"samples": len(done), "prompts_skipped": len(skipped), **_disk_counts(out, gen.top_k),
              "text_only": settings.get("topk") is False, **retried}
    return manifest.write(cfg, "generate", started, counts, settings=settings, last_pass=stats,
                          sampling={"temperature": gen.temperature, "top_p": gen.top_p,
                                    "logprobs_mode": "raw_logprobs (T=1, before temperature and top-p)"})


def _disk_counts(out: Path, top_k: int) -> dict:
    """Completion tokens and bytes of a generate directory's parts."""
    parts = sorted((out / "generations").glob("part-*.parquet"))
    tokens = sum(int(pa.compute.sum(pq.read_table(p, columns=["completion_tokens"]).column(0)).as_py() or 0)
                 for p in parts)
    topk_bytes = sum(p.stat().st_size for p in (out / "teacher_topk").glob("part-*.parquet"))
    return {"completion_tokens": int(tokens), "generations_bytes": sum(p.stat().st_size for p in parts),
            "teacher_topk_bytes": topk_bytes, "topk_bytes_per_candidate": round(topk_bytes / max(tokens * top_k, 1), 3)}


# ---------------------------------------------------------------------------------------------
# --score on a run written by `distill import`: the teacher's top-k at every imported sample.

OPENING = THINK_START + "\n"  # how R1 opens its reasoning when the prompt has not
IMPORTED_COLUMNS = ["sample_id", "prompt_id", "sample_idx", "reasoning", "answer", "reasoning_closed",
                    "think_end_count", "finish_reason", "model"]


def score_imported(cfg: Config, shard: tuple[int, int], imported: dict) -> dict | None:
    """Every imported sample (every split, every sample_idx) rebuilt as the teacher writes it, its
    prompt rendered again by the teacher's template and all of it tokenized by the teacher's
    tokenizer, then scored by teacher forcing. The scored generate/ is built in staging_dir by the
    resumable machinery of a generated run and replaces the imported one only once every sample is
    in it, so a kill at any moment leaves the imported run as it was or the scored one whole."""
    started = time.time()
    gen = cfg.generate
    out, staging = cfg.run_dir / "generate", manifest.staging_dir(cfg.run_dir)
    if gen.backend != "vllm":
        raise PipelineError(f"{cfg.file}: --score on imported traces needs generate.backend: vllm (prompt logprobs), "
                            f"not {gen.backend}")
    source = imported.get("import", imported)  # what `distill import` recorded
    if gen.think_end != source["think_end"]:
        raise PipelineError(f"{cfg.file}: generate.think_end is {gen.think_end!r}; the imported traces close their "
                            f"reasoning with {source['think_end']!r}")
    teacher = manifest.require(cfg, "models")["models"]["teacher"]
    wanted = scored_settings(cfg, teacher, source)
    if imported.get("scored_with"):
        changed = [k for k in wanted if imported.get(k) != wanted[k]]
        if changed:
            k = changed[0]
            raise PipelineError(f"{out}: imported traces already scored with {k}={imported.get(k)!r}, not "
                                f"{wanted[k]!r}; import them again (`distill import`) to score with other settings")
        click.echo(f"generate: {out}: every imported sample is already scored by {teacher['path']}; nothing to do")
        return manifest.read(cfg, "generate")
    settings = _check_settings(staging / "settings.json", wanted)
    tokenizer = _tokenizer(teacher["path"])

    prompts = {p["prompt_id"]: p for p in read_table(PROMPTS, manifest.prompts_path(cfg)).to_pylist()}
    keys = _imported_keys(out)
    mine = [sid for sid, pid in keys if _in_shard(pid, shard)]
    done = done_samples(staging)
    pending = {sid for sid in mine if sid not in done}
    click.echo(f"generate: scoring imported traces with {teacher['path']}: shard {shard[0]}/{shard[1]}: {len(mine)} "
               f"samples; {len(mine) - len(pending)} scored in {staging}, {len(pending)} pending")
    stats = {"samples": 0, "tokens": 0, "seconds": 0.0}
    skipped: list[dict] = []
    todo = ({**prompts[s["prompt_id"]], "sample": s, "request_id": s["sample_id"]}
            for s in _imported_samples(out, pending))
    rendered = _render(tokenizer, todo, gen, skipped, True, context_of(cfg))
    first = next(rendered, None)  # the engine starts only when some sample fits (a rerun may have only skipped ones)
    if first is not None:
        from pipeline.engine import VLLMTeacher

        writer = ShardWriter(staging, shard, gen.shard_size)
        engine = VLLMTeacher(teacher["path"], cfg, score=True)
        think_end_ids = _think_end_ids(tokenizer, gen.think_end)
        t0 = time.time()
        with progress(len(mine), len(mine) - len(pending), "generate --score", "sample") as bar:
            for prompt, text, ids, (c,) in engine.score(itertools.chain([first], rendered)):
                s = prompt["sample"]
                gen_row, topk_row = sample_rows(prompt, text, ids, s["sample_idx"], c, tokenizer, think_end_ids,
                                                s["model"])
                writer.add(_as_imported(gen_row, s), topk_row)
                stats["samples"] += 1
                stats["tokens"] += gen_row["completion_tokens"]
                bar.update(1)
        writer.flush()
        stats["seconds"] = round(time.time() - t0, 3)
        click.echo(f"generate: scored {stats['samples']} samples, {stats['tokens']} tokens in {stats['seconds']:.1f}s")
    if skipped:
        click.echo(f"generate: {len(skipped)} samples skipped (longer than max_model_len), listed in "
                   f"{out}/skipped-*.parquet; their imported rows are kept in {out}/unscored/")
        write_table(GENERATE_SKIPPED, GENERATE_SKIPPED.from_pylist(skipped),
                    staging / f"skipped-{shard[0]:03d}of{shard[1]:03d}.parquet")
    return _swap_if_complete(cfg, started, settings, stats, keys)


def scored_settings(cfg: Config, teacher: dict, source: dict) -> dict:
    """An imported run's settings once scored: those of --score, the import's own kept under `import`."""
    return {**output_settings(cfg, teacher), "mode": "score", "imported": True, "inputs": source["inputs"],
            "scored_with": teacher["weights_sha"], "import": source,
            # another tokenizer's import is fine: every prompt and completion is tokenized again here
            "retokenized": source["tokenizer_sha"] != teacher["tokenizer_sha"]}


def _imported_settings(cfg: Config) -> dict | None:
    """generate/settings.json when `distill import` wrote the run (scored since, or not), else None."""
    out, staging = cfg.run_dir / "generate", manifest.staging_dir(cfg.run_dir)
    # a kill between replace_dir's two renames leaves generate/ moved aside and the finished
    # staging directory (its manifest is written last) beside it: put that in place
    aside = out.with_name(f".{out.name}.old{TMP_SUFFIX}")
    if aside.is_dir():
        with _run_lock(cfg.run_dir):
            if aside.is_dir() and not out.exists() and (staging / "manifest.json").is_file():
                staging.rename(out)
                remove(aside)
    path = out / "settings.json"
    settings = json.loads(path.read_text()) if path.is_file() else {}
    return settings if settings.get("imported") else None


def _imported_keys(out: Path) -> list[tuple[str, str]]:
    """(sample_id, prompt_id) of every imported sample."""
    keys = []
    for part in sorted((out / "generations").glob("part-*.parquet")):
        t = open_table(GENERATIONS, part).read(columns=["sample_id", "prompt_id"])
        keys += zip(t["sample_id"].to_pylist(), t["prompt_id"].to_pylist())
    return keys


def _imported_samples(out: Path, wanted: set[str]):
    """The imported rows (text columns) of the `wanted` samples, a batch in memory at a time."""
    for part in sorted((out / "generations").glob("part-*.parquet")):
        for batch in open_table(GENERATIONS, part).iter_batches(batch_size=1024, columns=IMPORTED_COLUMNS):
            yield from (s for s in batch.to_pylist() if s["sample_id"] in wanted)


def _as_imported(row: dict, s: dict) -> dict:
    """A scored sample keeps its imported text, structure and finish_reason; its token columns count
    the teacher's ids (an opening think tag counts as reasoning, as in a generated trace)."""
    row.update({k: s[k] for k in ("reasoning", "answer", "reasoning_closed", "think_end_count", "finish_reason")})
    if s["reasoning_closed"] and not s["think_end_count"]:  # no reasoning (no_tags): every token is the answer
        row.update(reasoning_tokens=0, answer_tokens=row["completion_tokens"], think_end_index=None)
    return row


def _swap_if_complete(cfg: Config, started: float, settings: dict, stats: dict,
                      keys: list[tuple[str, str]]) -> dict | None:
    """Once every imported sample is scored or skipped (any shard's process may be last): the
    skipped samples' imported rows kept in unscored/, the manifest written, and the staging
    directory put in place of generate/ whole."""
    out, staging = cfg.run_dir / "generate", manifest.staging_dir(cfg.run_dir)
    with _run_lock(cfg.run_dir):
        if not (staging / "settings.json").is_file():  # another shard's process swapped it in
            return manifest.read(cfg, "generate")
        skipped = set()
        for p in staging.glob("skipped-*.parquet"):
            skipped.update(pq.read_table(p, columns=["prompt_id"]).column(0).to_pylist())
        done = done_samples(staging)
        missing = [(sid, pid) for sid, pid in keys if sid not in done]
        waiting = sum(pid not in skipped for _, pid in missing)
        if waiting:
            click.echo(f"generate: {waiting} imported samples still to score (other shards); {out} keeps the imported "
                       "traces until every one is")
            return None
        unscored = pa.array(sorted(sid for sid, _ in missing), pa.string())
        for part in sorted((out / "generations").glob("part-*.parquet")) if len(unscored) else []:
            t = read_table(GENERATIONS, part)
            t = t.filter(pa.compute.is_in(t["sample_id"], value_set=unscored))
            if t.num_rows:
                write_table(GENERATIONS, t, staging / "unscored" / part.name)
        imported = manifest.read(cfg, "generate") or {}
        counts = {"samples": len(done), "samples_skipped": len(unscored), **_disk_counts(staging, cfg.generate.top_k),
                  "text_only": False}
        note = ("the import used the teacher's tokenizer" if not settings["retokenized"] else
                f"prompts rendered and completions tokenized again with the teacher's tokenizer; the import used "
                f"{settings['import']['tokenizer']}")
        # the key changes with the scoring, so clean and what follows it run again
        manifest.write(cfg, "generate", started, counts, to=staging,
                       key=section_hash(manifest.cache_key(cfg, "generate"), "scored_with", settings["scored_with"]),
                       imported=True, scored_with=settings["scored_with"], tokenizer=note, settings=settings,
                       last_pass=stats, conventions=imported.get("conventions"), stripped=imported.get("stripped"),
                       import_counts=imported.get("counts"), import_finished_at=imported.get("finished_at"))
        replace_dir(staging, out)
    click.echo(f"generate: {len(done)} imported samples scored ({len(unscored)} skipped); {out} now holds them "
               f"with the teacher's top-{cfg.generate.top_k} (teacher_topk/); clean again, then train with KD")
    return manifest.read(cfg, "generate")


@contextmanager
def _run_lock(run_dir: Path):
    """One process at a time swaps a run's generate/ (shard processes may finish together)."""
    fd = os.open(run_dir, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


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
    retries = f" retries={gen.retries} at temperature {gen.retry_temperature}" if gen.retries else ""
    click.echo(f"sampling:       n={gen.n}{retries} temperature={gen.temperature} top_p={gen.top_p} "
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
