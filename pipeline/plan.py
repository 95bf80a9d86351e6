"""What a run will cost, before anything runs: prompts, teacher tokens, generation hours, storage,
training hours, and the total against the "three hours" claim.

    distill plan configs/deepseek-r1.yaml --node 8xH200

Every figure is printed with its unit and its source: measured (this run's artifacts or
`distill bench`), published (a named benchmark or model card), or an assumption stated as one.
Measured beats published beats assumed: once generate has written a shard, the plan uses that
shard's lengths. Nothing here loads a model; input files are counted, not prepared.
"""
from __future__ import annotations

import csv
import json
import os
import struct
from collections import Counter
from pathlib import Path

import click

from pipeline import arithmetic, manifest
from pipeline.config import Config
from pipeline.errors import PipelineError
from pipeline.files import open_parquet, open_table
from pipeline.schema import GENERATIONS, PROMPTS

# ---------------------------------------------------------------------------------------------
# Hardware.

# NVIDIA H100 SXM datasheet: 1,979 bf16 TFLOPS "with sparsity", i.e. ~989 dense; the H200
# datasheet gives the same 1,979 (same GH100 compute, more and faster memory).
GPU_BF16_TFLOPS = 989.0
# Assumption: model FLOPs utilization of a 0.5-8B student's bf16 step on one node (long
# sequences, gradient checkpointing, data parallel); 0.3-0.45 is the range usually quoted on Hopper.
MFU = 0.35
# GPUs and memory per GPU (GB) from the NVIDIA datasheets (H200 141 GB, H100 SXM 80 GB); "cpu" is
# this machine, whose speeds come from `distill bench` only.
NODES = {
    "8xH200": {"gpus": 8, "gpu_memory_gb": 141},
    "8xH100": {"gpus": 8, "gpu_memory_gb": 80},
    "1xH100": {"gpus": 1, "gpu_memory_gb": 80},
    "cpu": {"gpus": 0, "gpu_memory_gb": 0},
}
# Measured (README, `distill bench train` on this 2-core CPU): a KD step of one 4,096-token
# sequence took 21.7 s with the quickstart's 6-layer pruned SmolLM2 (49,552,704 parameters, fp32).
CPU_TRAIN_FLOP_S = 6 * 49_552_704 * 4096 / 21.7

# ---------------------------------------------------------------------------------------------
# Models.

# Teachers, by name key (see _model_key): total parameters, served weight size, layers, hidden
# size, vocabulary, tied embeddings. DeepSeek-R1: its config.json (61 layers, hidden 7168, vocab
# 129280, untied); 671B + 14B MTP parameters in FP8 are ~685 GB (github.com/dzhsurf/
# deepseek-v3-r1-deploy-and-benchmarks), more than an 8xH100 node's 640 GB (Azure HPC blog
# "Performance analysis of DeepSeek R1 AI Inference using vLLM on ND-H100-v5": two nodes needed).
# SmolLM2-135M: counted from artifacts/models/smollm2-135m-instruct/model.safetensors.
TEACHERS = {
    "deepseek-r1": {"params": 671e9, "weights_gb": 685.0, "layers": 61, "hidden": 7168, "vocab": 129_280,
                    "tied": False},
    "smollm2-135m": {"params": 134_515_008, "weights_gb": 0.27, "layers": 30, "hidden": 576, "vocab": 49_152,
                     "tied": True},
}
ALIASES = {"deepseek-r1-0528": "deepseek-r1"}  # later checkpoints of the same architecture
# Students by name key: total parameters from the model cards (Qwen2.5: 0.49B / 1.54B / 3.09B /
# 7.61B; Llama 3.2: 1.23B / 3.21B; Llama 3.1: 8.03B).
STUDENTS = {
    "qwen2.5-0.5b": 0.49e9, "qwen2.5-1.5b": 1.54e9, "qwen2.5-3b": 3.09e9, "qwen2.5-7b": 7.61e9,
    "llama-3.2-1b": 1.23e9, "llama-3.2-3b": 3.21e9, "llama-3.1-8b": 8.03e9,
}

# ---------------------------------------------------------------------------------------------
# Teacher speed, per (teacher, node): output tokens/s of the whole node at high batch.

DSTACK = ("published: dstack, 'DeepSeek R1 inference performance: MI300X vs. H200' (dstack.ai/blog/"
          "h200-mi300x-deepskeek-benchmark, 2025-03-18), raw_data/offline_results.csv in github.com/dstackai/"
          "benchmarks: SGLang offline, 1,024 requests of 3,200 in / 3,200 out, 3,276,800 output tokens in 1,877.9 s")
# 1,745 tok/s from DSTACK: the longest outputs measured there, so the closest to R1 traces, and
# conservative (GPUStack's later SGLang 0.5.3 + DP-attention run reaches 3,415 output tok/s, but on
# ShareGPT's short outputs). No 8xH100 entry: R1's FP8 weights do not fit one H100 node (TEACHERS),
# and SGLang's 22.3k output tok/s per H100 node (lmsys.org/blog/2025-05-05-large-scale-ep) needs
# 12 nodes with prefill-decode disaggregation.
TEACHER_TOK_S = {("deepseek-r1", "8xH200"): (1745.0, DSTACK)}
# Prompt tokens/s of the whole node: GPUStack performance lab, vLLM 0.11 TP8 baseline on 100
# random 32k-token prompts: 3,199,900 input tokens in 206.9 s.
PREFILL_TOK_S = {("deepseek-r1", "8xH200"): (15466.0, "published: GPUStack, 'Optimizing DeepSeek-R1 Throughput on "
                                            "NVIDIA H200 GPUs' (docs.gpustack.ai/latest/performance-lab/deepseek-r1/"
                                            "h200): vLLM TP8, 3,199,900 input tokens in 206.9 s")}

# ---------------------------------------------------------------------------------------------
# Lengths, storage, cleaning.

# Published: Open R1 Update #1 (huggingface.co/blog/open-r1/update-1): DeepSeek-R1's responses in
# OpenThoughts-114k average ~6,000 tokens, some over 20,000. Math-only traces run shorter (Open R1
# Update #2: 75% of OpenR1-Math problems finish within 8k tokens), so this errs high for maths.
R1_TOKENS_PER_SAMPLE = 6000
BUDGET_SHARE = 0.5  # assumption: a teacher with no published length fills half of max_new_tokens
CHARS_PER_TOKEN = 4  # assumption: ~4 characters of English text or maths per BPE token
DEFAULT_PROMPT_TOKENS = 100  # assumption: a word problem's length when its text is not at hand
SAMPLE_ROWS = 1000  # rows of an input file read for its mean prompt length (all rows are counted)
BYTES_PER_CANDIDATE = 1.954  # measured: README, `distill bench generate` (quickstart traces, k=20)
# Assumption: the generations table keeps ~4 characters of text per token (prompt and completion)
# plus the prompt's ids; zstd takes that to ~4 bytes per token.
TEXT_BYTES_PER_TOKEN = 4.0
# Published: Open R1 Update #2 (huggingface.co/blog/open-r1/update-2): R1 answered 400k problems,
# 220k kept at least one verified-correct trace; that per-problem share stands in for the share
# of samples rejection sampling keeps.
KEEP_RATE_VERIFIED = 0.55
KEEP_RATE_UNVERIFIED = 0.9  # assumption: without the `incorrect` rule, only truncation, format and duplicates drop
CHECKPOINTING = 8 / 6  # gradient checkpointing reruns the forward: 8·N·T FLOPs instead of 6·N·T
THREE_HOURS = 3.0  # the claim: Baidu Qianfan distilled DeepSeek-R1 into ERNIE Speed end to end in about three hours
GB = 1e9


def run(cfg: Config, node: str, prompts: int | None = None, teacher_tok_s: float | None = None) -> dict:
    """Estimate every stage's cost on `node`, print the table and return it as a JSON-able dict.
    `prompts` replaces the prompt count (needed when the inputs cannot be counted here);
    `teacher_tok_s` replaces the teacher's throughput (a measurement on that node)."""
    node_key = _node(node)
    gen = cfg.generate
    teacher = _teacher_key(cfg)
    _check_fits(teacher, node_key, cfg)
    sources: dict[str, str] = {}

    counts, chars, sources["prompts"] = _prompts(cfg, prompts)
    n_prompts = sum(counts.get(s, 0) for s in gen.splits)
    # generate.retries: at most that many samples more per train prompt, as if every first try failed
    retried = counts.get("train", 0) * gen.retries if "train" in gen.splits else 0
    samples = n_prompts * gen.n + retried
    tokens, prompt_tokens, sources["tokens_per_sample"], sources["prompt_tokens"] = _lengths(cfg, chars)
    output_tokens = samples * tokens

    rate, sources["teacher_tok_s"], prefill, sources["prefill_tok_s"] = _teacher_rate(cfg, teacher, node_key,
                                                                                     teacher_tok_s)
    decode_hours = output_tokens / rate / 3600
    # Every sample's prompt is counted, as if prefix caching shared nothing between a prompt's n samples.
    prefill_hours = samples * prompt_tokens / prefill / 3600 if prefill else 0.0

    per_candidate, sources["bytes_per_candidate"] = _bytes_per_candidate(cfg)
    topk_gb = output_tokens * gen.top_k * per_candidate / GB
    text_gb = (output_tokens + samples * prompt_tokens) * TEXT_BYTES_PER_TOKEN / GB
    sources["text_bytes_per_token"] = f"assumption: ~{TEXT_BYTES_PER_TOKEN:g} bytes per token of text, zstd-compressed"

    params, sources["student_params"] = _student_params(cfg, teacher)
    keep, sources["keep_rate"] = _keep_rate(cfg)
    train_samples = counts.get("train", 0) * gen.n if "train" in gen.splits else 0
    sequences = _train_sequences(cfg, train_samples * keep, NODES[node_key]["gpus"])
    train_tokens = sequences * min(prompt_tokens + tokens, cfg.train.max_length)
    flop_s, sources["train_flop_s"] = _train_flop_s(cfg, node_key)
    train_flops = 6 * params * train_tokens * (CHECKPOINTING if cfg.train.gradient_checkpointing else 1) \
        if params else None
    train_hours = train_flops / flop_s / 3600 if train_flops is not None else None

    generation_hours = decode_hours + prefill_hours
    total_hours = generation_hours + (train_hours or 0.0)
    sources["three_hours"] = ("claim: Baidu Qianfan distilled DeepSeek-R1 into ERNIE Speed end to end in about "
                              "three hours")
    plan = {
        "node": node_key, "teacher": teacher, "prompts": n_prompts, "prompts_by_split": dict(counts),
        "samples": samples, "tokens_per_sample": tokens, "prompt_tokens_per_sample": prompt_tokens,
        "output_tokens": output_tokens, "teacher_tok_s": rate, "prefill_tok_s": prefill,
        "decode_hours": decode_hours, "prefill_hours": prefill_hours, "generation_hours": generation_hours,
        "bytes_per_candidate": per_candidate, "topk_gb": topk_gb, "text_gb": text_gb, "storage_gb": topk_gb + text_gb,
        "student_params": params, "keep_rate": keep, "train_samples": train_samples, "train_sequences": sequences,
        "train_tokens": train_tokens, "train_flops": train_flops, "train_flop_s": flop_s, "train_hours": train_hours,
        "total_hours": total_hours, "fits_three_hours": total_hours <= THREE_HOURS,
        "dominant": "generation" if generation_hours >= (train_hours or 0.0) else "training",
        "sources": sources,
    }
    _print(cfg, plan)
    return plan


# ---------------------------------------------------------------------------------------------
# Node and teacher.


def _node(name: str) -> str:
    known = {k.lower(): k for k in NODES}
    if name.lower() not in known:
        raise PipelineError(f"unknown node {name!r} (known: {', '.join(NODES)})")
    return known[name.lower()]


def _model_key(name: str) -> str:
    """'deepseek-ai/DeepSeek-R1' -> 'deepseek-r1', 'meta-llama/Llama-3.2-1B-Instruct' -> 'llama-3.2-1b'."""
    key = Path(name.rstrip("/")).name.lower().removeprefix("meta-").removesuffix("-instruct")
    return ALIASES.get(key, key)


def _teacher_key(cfg: Config) -> str:
    key = _model_key(cfg.models.teacher)
    if key not in TEACHERS and cfg.generate.preset == "deepseek-r1":
        return "deepseek-r1"  # a local copy under another name: its preset says what it is
    return key


def _check_fits(teacher: str, node: str, cfg: Config) -> None:
    """A teacher whose weights exceed the node's memory cannot run there at all."""
    if teacher not in TEACHERS:
        return
    spec = NODES[node]
    memory = spec["gpus"] * spec["gpu_memory_gb"] or os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GB
    need = TEACHERS[teacher]["weights_gb"]
    if need > memory:
        fit = [n for n, s in NODES.items() if s["gpus"] * s["gpu_memory_gb"] >= need]
        raise PipelineError(f"{cfg.models.teacher}: ~{need:g} GB of weights do not fit in {node}'s {memory:.0f} GB; "
                            f"plan on {' or '.join(fit + ['several nodes (not modelled here)'])}")


def _teacher_rate(cfg: Config, teacher: str, node: str, given: float | None) -> tuple[float, str, float | None, str]:
    """(output tok/s, source, prefill tok/s or None, source) for the whole node."""
    no_prefill = "not counted: the decode figure is end to end"
    if given:
        return given, "given: --teacher-tok-s", None, no_prefill
    if node == "cpu":
        bench, path = _bench(cfg, "generate")
        if bench is None:
            raise PipelineError(f"node cpu: {path} is missing; run `distill bench generate {cfg.file or 'CONFIG'}` "
                                "first (it measures this machine)")
        if _model_key(bench.get("teacher", "")) != teacher:
            raise PipelineError(f"{path} measured teacher {bench.get('teacher')!r}, this config's is "
                                f"{cfg.models.teacher!r}: rerun `distill bench generate` with this config")
        return float(bench["pipeline_tok_s"]), f"measured: {path} (pipeline_tok_s)", None, no_prefill
    if (teacher, node) not in TEACHER_TOK_S:
        raise PipelineError(f"no published throughput for teacher {cfg.models.teacher!r} on {node}: measure it there "
                            "with `distill bench generate` and pass --teacher-tok-s")
    rate, source = TEACHER_TOK_S[(teacher, node)]
    prefill, prefill_source = PREFILL_TOK_S.get((teacher, node), (None, no_prefill))
    return rate, source, prefill, prefill_source


def _bench(cfg: Config, name: str) -> tuple[dict | None, Path]:
    path = Path(cfg.run.artifacts_dir) / "bench" / f"{name}.json"
    return (json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None), path


def _bytes_per_candidate(cfg: Config) -> tuple[float, str]:
    bench, path = _bench(cfg, "generate")
    if bench and bench.get("bytes_per_candidate"):
        return float(bench["bytes_per_candidate"]), f"measured: {path}"
    return BYTES_PER_CANDIDATE, "measured: README, `distill bench generate` (quickstart traces, k=20)"


# ---------------------------------------------------------------------------------------------
# Prompts and lengths.


def _prompts(cfg: Config, given: int | None) -> tuple[Counter, float | None, str]:
    """(prompts per split, mean prompt characters or None, source)."""
    if given is not None:
        return Counter({"train": given}), None, f"given: --prompts {given} (all train)"
    path = manifest.prompts_path(cfg)
    if path.is_file():
        table = open_table(PROMPTS, path).read(columns=["split", "messages"]).to_pylist()
        chars = [sum(len(m["content"]) for m in r["messages"]) for r in table]
        return Counter(r["split"] for r in table), sum(chars) / max(len(chars), 1), f"measured: {path}"
    return _config_prompts(cfg)


def _config_prompts(cfg: Config) -> tuple[Counter, float | None, str]:
    """Prompts the config will prepare: the built-in tasks' counts plus each input file's rows
    (before prepare drops duplicates, so an upper bound)."""
    counts: Counter = Counter()
    lengths: list[tuple[int, float]] = []  # (prompts, mean characters) where the text is known
    a, v = cfg.prepare.arithmetic, cfg.prepare.vehicle
    if a is not None:
        counts.update({"train": a.n_train, "eval": a.n_eval})
        sample = arithmetic.problems(min(a.n_train, SAMPLE_ROWS), a.levels, a.seed)
        if sample:
            lengths.append((a.n_train + a.n_eval, sum(len(r["question"]) for r in sample) / len(sample)))
    if v is not None:
        counts.update({"train": v.n_train, "eval": v.n_eval})
    for spec in cfg.prepare.inputs:
        rows, mean = _count_input(spec)
        counts.update(rows)
        if mean is not None:
            lengths.append((sum(rows.values()), mean))
    chars = sum(n * m for n, m in lengths) / sum(n for n, _ in lengths) if lengths else None
    return counts, chars, "config: prepare section (built-in counts, input rows before deduplication)"


def _count_input(spec) -> tuple[Counter, float | None]:
    """(rows per split, mean prompt characters) of one input file, read the way prepare reads it."""
    path = Path(spec.path)
    fmt = spec.format
    if fmt == "auto":
        fmt = {".jsonl": "jsonl", ".json": "jsonl", ".parquet": "parquet", ".csv": "csv"}.get(path.suffix.lower(), "hf")
    if fmt == "hf":
        raise PipelineError(f"{spec.path}: a Hugging Face dataset, whose rows are not counted here: pass --prompts N")
    if not path.is_file():
        raise PipelineError(f"{spec.path}: no such file, so its prompts cannot be counted: pass --prompts N")
    column = spec.messages or spec.prompt
    counts: Counter = Counter()
    chars = []
    for i, row in enumerate(_rows(path, fmt, [c for c in (column, spec.split_column) if c])):
        counts[str(row.get(spec.split_column) or spec.split) if spec.split_column else spec.split] += 1
        if i < SAMPLE_ROWS:
            chars.append(_chars(row.get(column)))
    return counts, (sum(chars) / len(chars) if chars else None)


def _rows(path: Path, fmt: str, columns: list[str]):
    if fmt == "jsonl":
        with open(path, encoding="utf-8-sig", errors="replace") as f:
            for line in f:
                if line.strip():
                    try:
                        row = json.loads(line)
                    except json.JSONDecodeError:
                        row = {}  # prepare rejects it; it is still a row to plan for
                    yield row if isinstance(row, dict) else {}
    elif fmt == "csv":
        with open(path, encoding="utf-8-sig", errors="replace", newline="") as f:
            yield from csv.DictReader(f)
    else:
        pf = open_parquet(path)
        missing = [c for c in columns if c not in pf.schema_arrow.names]
        if missing:
            raise PipelineError(f"{path}: missing column '{missing[0]}' (columns: {', '.join(pf.schema_arrow.names)})")
        for batch in pf.iter_batches(batch_size=8192, columns=columns):
            yield from batch.to_pylist()


def _chars(value) -> int:
    """Characters of a prompt cell: text, or chat messages' contents."""
    if isinstance(value, list):
        return sum(len(str(m.get("content", ""))) if isinstance(m, dict) else len(str(m)) for m in value)
    return len(str(value)) if value is not None else 0


def _lengths(cfg: Config, chars: float | None) -> tuple[float, float, str, str]:
    """(completion tokens per sample, prompt tokens per sample, their sources)."""
    shards = sorted((cfg.run_dir / "generate" / "generations").glob("*.parquet"))
    if shards:
        completion, prompt = [], []
        for p in shards:
            t = open_table(GENERATIONS, p).read(columns=["completion_tokens", "prompt_tokens"])
            completion += t.column("completion_tokens").to_pylist()
            prompt += t.column("prompt_tokens").to_pylist()
        if completion:
            where = f"measured: mean of {len(completion)} samples in {shards[0].parent}"
            return sum(completion) / len(completion), sum(prompt) / len(prompt), where, where
    gen = cfg.generate
    if gen.preset == "deepseek-r1":
        tokens = float(min(R1_TOKENS_PER_SAMPLE, gen.max_new_tokens))
        source = ("published: Open R1 Update #1 (huggingface.co/blog/open-r1/update-1): R1 responses average "
                  "~6,000 tokens")
    else:
        tokens = gen.max_new_tokens * BUDGET_SHARE
        source = f"assumption: half of max_new_tokens ({gen.max_new_tokens})"
    if chars is None:
        return tokens, float(DEFAULT_PROMPT_TOKENS), source, "assumption: a word problem's length"
    return tokens, chars / CHARS_PER_TOKEN, source, f"prompt text: characters / {CHARS_PER_TOKEN}"


# ---------------------------------------------------------------------------------------------
# Training.


def _student_params(cfg: Config, teacher: str) -> tuple[float | None, str]:
    student = cfg.models.student
    if student in ("pruned", "pruned-retokenized"):
        t = TEACHERS.get(teacher)
        if t is None:
            return None, f"unknown: teacher {cfg.models.teacher!r} is not in the table"
        # Embeddings stay whole (a new vocabulary when retokenized); the blocks shrink with the layers kept.
        copies = 1 if t["tied"] else 2
        vocab = cfg.models.student_vocab_size if student == "pruned-retokenized" else t["vocab"]
        body = (t["params"] - copies * t["vocab"] * t["hidden"]) * len(cfg.models.student_layers) / t["layers"]
        return copies * vocab * t["hidden"] + body, (f"derived: {teacher} with {len(cfg.models.student_layers)} of "
                                                     f"{t['layers']} layers")
    if Path(student).is_dir():
        counted = _safetensors_params(Path(student))
        if counted:
            return counted, f"measured: {student}/*.safetensors"
    key = _model_key(student)
    if key in STUDENTS:
        return STUDENTS[key], f"published: {student} model card"
    return None, f"unknown: {student!r} is not in the table (give a local directory)"


def _safetensors_params(model_dir: Path) -> int:
    """Parameters from the safetensors headers alone (8-byte length, then JSON): no weights read."""
    total = 0
    for f in sorted(model_dir.glob("*.safetensors")):
        with open(f, "rb") as fh:
            header = json.loads(fh.read(struct.unpack("<Q", fh.read(8))[0]))
        for name, entry in header.items():
            if name != "__metadata__":
                size = 1
                for dim in entry["shape"]:
                    size *= dim
                total += size
    return total


def _keep_rate(cfg: Config) -> tuple[float, str]:
    path = cfg.run_dir / "clean" / "manifest.json"
    if path.is_file():
        counts = json.loads(path.read_text(encoding="utf-8")).get("counts", {})
        if counts.get("samples"):
            return counts["kept"] / counts["samples"], f"measured: {path} (kept / samples)"
    if "incorrect" in cfg.clean.rules and not cfg.clean.keep_incorrect:
        return KEEP_RATE_VERIFIED, ("published: Open R1 Update #2 (huggingface.co/blog/open-r1/update-2): 220k of "
                                    "400k problems kept a verified-correct R1 trace")
    return KEEP_RATE_UNVERIFIED, "assumption: no rejection sampling; truncation, format and duplicates drop ~10%"


def _train_sequences(cfg: Config, kept_samples: float, gpus: int) -> float:
    t = cfg.train
    if t.max_steps > 0:  # HF Trainer: each step takes batch x accumulation sequences per process
        return t.max_steps * t.per_device_train_batch_size * t.gradient_accumulation_steps * max(gpus, 1)
    return kept_samples * t.num_train_epochs


def _train_flop_s(cfg: Config, node: str) -> tuple[float, str]:
    gpus = NODES[node]["gpus"]
    if gpus:
        return gpus * GPU_BF16_TFLOPS * 1e12 * MFU, (f"published: {GPU_BF16_TFLOPS:g} bf16 dense TFLOPS per GPU "
                                                     f"(NVIDIA datasheet) x {gpus} at assumed MFU {MFU}")
    bench, path = _bench(cfg, "train")
    if bench and bench.get("kd_step_s") and Path(bench.get("student", "")).is_dir():
        params = _safetensors_params(Path(bench["student"]))
        if params:
            return 6 * params * bench["seq_len"] / bench["kd_step_s"], f"measured: {path} (KD step)"
    return CPU_TRAIN_FLOP_S, "measured: README, `distill bench train` on this 2-core CPU (KD step 21.7 s)"


# ---------------------------------------------------------------------------------------------
# Output.


def _print(cfg: Config, p: dict) -> None:
    s = p["sources"]
    unknown = "unknown"
    rows = [
        ("prompts", f"{p['prompts']:,}", "prompts", s["prompts"]),
        ("samples", f"{p['samples']:,}", "samples", f"prompts x generate.n ({cfg.generate.n})"
         + (f" + train prompts x generate.retries ({cfg.generate.retries}), at most" if cfg.generate.retries else "")),
        ("completion per sample", f"{p['tokens_per_sample']:,.0f}", "tokens", s["tokens_per_sample"]),
        ("prompt per sample", f"{p['prompt_tokens_per_sample']:,.0f}", "tokens", s["prompt_tokens"]),
        ("teacher output", f"{p['output_tokens']:,.0f}", "tokens", "samples x completion per sample"),
        ("teacher throughput", f"{p['teacher_tok_s']:,.0f}", "tok/s/node", s["teacher_tok_s"]),
        ("prefill throughput", f"{p['prefill_tok_s']:,.0f}" if p["prefill_tok_s"] else "-", "tok/s/node",
         s["prefill_tok_s"]),
        ("generation", f"{p['generation_hours']:,.2f}", "hours", "output / throughput + prompts / prefill"),
        ("top-k logprobs", f"{p['topk_gb']:,.2f}", "GB", f"tokens x k ({cfg.generate.top_k}) x "
                                                         f"{p['bytes_per_candidate']:g} B; {s['bytes_per_candidate']}"),
        ("text", f"{p['text_gb']:,.2f}", "GB", s["text_bytes_per_token"]),
        ("student", f"{p['student_params'] / 1e9:,.3f}" if p["student_params"] else unknown, "B params",
         s["student_params"]),
        ("kept after clean", f"{p['keep_rate']:.0%}", "of samples", s["keep_rate"]),
        ("training tokens", f"{p['train_tokens']:,.0f}", "tokens",
         f"sequences ({p['train_sequences']:,.0f}) x min(prompt + completion, max_length {cfg.train.max_length})"),
        ("training compute", f"{p['train_flop_s'] / 1e12:,.1f}", "TFLOP/s", s["train_flop_s"]),
        ("training", f"{p['train_hours']:,.2f}" if p["train_hours"] is not None else unknown, "hours",
         "6 x params x tokens" + (" x 4/3 (gradient checkpointing)" if cfg.train.gradient_checkpointing else "")
         + "; KD head not added (`distill bench train`: KD step 0.73x SFT's)"),
        ("total", f"{p['total_hours']:,.2f}", "hours", "generation + training (prepare, clean, eval not counted)"),
    ]
    click.echo(f"plan: {cfg.file or 'config'} on {p['node']} (teacher {p['teacher']})")
    for name, value, unit, source in rows:
        click.echo(f"  {name:<22} {value:>16} {unit:<11} {source}")
    share = max(p["generation_hours"], p["train_hours"] or 0.0) / p["total_hours"] if p["total_hours"] else 0.0
    verdict = "fits in" if p["fits_three_hours"] else "does not fit in"
    click.echo(f"three hours ({s['three_hours']}): this plan {verdict} 3 h on {p['node']} "
               f"({p['total_hours']:,.1f} h); {p['dominant']} dominates ({share:.0%})")
    if not p["fits_three_hours"] and p["tokens_per_sample"]:
        budget = THREE_HOURS * 3600 * p["teacher_tok_s"] / p["tokens_per_sample"]
        click.echo(f"  at this throughput, 3 h of generation alone produce ~{budget:,.0f} samples")
