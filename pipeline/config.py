"""Run configuration: one YAML file, one section per stage, loaded into validated dataclasses.

    distill run configs/quickstart.yaml --set train.learning_rate=1e-5

Unknown keys, wrong types and out-of-range values fail at load time with the file and the
dotted key named. Every field has a default and a one-line reason beside it.
"""
from __future__ import annotations

import dataclasses
import hashlib
import ipaddress
import json
import math
import os
import re
import types
import typing
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from pipeline.errors import PipelineError


class ConfigError(PipelineError):
    pass


def _finite(x: float) -> bool:
    return math.isfinite(x)


def _check(ok: bool, key: str, msg: str) -> None:
    """Range checks in __post_init__ raise with the field name; the loader adds the path and file."""
    if not ok:
        raise ConfigError(f"{key}: {msg}")


# ---------------------------------------------------------------------------------------------
# Sections. A section holds only what its stage reads.


@dataclass
class RunConfig:
    name: str = "default"  # artifacts/<name>/ holds every output of this run
    artifacts_dir: str = "artifacts"  # root of all runs and the shared model cache
    seed: int = 0  # one seed for every stage that samples
    # Directories the pipeline replaces (train.output_dir's model) must lie under artifacts_dir
    # unless this is set: a typo must not delete a directory elsewhere.
    allow_outside_artifacts: bool = False

    def __post_init__(self):
        _check(bool(self.name) and self.name not in (".", "..") and not re.search(r"[/\\\x00]", self.name),
               "name", "must be a plain name (no '/', '\\', not '.' or '..')")


@dataclass
class ModelsConfig:
    teacher: str = "smollm2-135m-instruct"  # embedded name, local HF directory, or hub id (online only)
    # "pruned" = depth-pruned copy of the teacher; "pruned-retokenized" = the same with a tokenizer
    # of its own (cross-tokenizer KD on CPU); or a directory / hub id
    student: str = "pruned"
    student_vocab_size: int = 16384  # pruned-retokenized: pieces in the student's own BPE vocabulary
    student_layers: list[int] = field(default_factory=lambda: [0, 1, 2, 3, 28, 29])  # teacher layers kept
    dtype: str = "bfloat16"  # storage dtype of converted weights

    def __post_init__(self):
        _check(bool(self.teacher), "teacher", "must not be empty")
        _check(512 <= self.student_vocab_size <= 1_000_000, "student_vocab_size", "in 512..1000000")
        _check(len(self.student_layers) > 0, "student_layers", "must keep at least one layer")
        _check(all(i >= 0 for i in self.student_layers), "student_layers", "layer indices must be >= 0")
        _check(len(set(self.student_layers)) == len(self.student_layers), "student_layers", "has repeats")
        _check(self.dtype in ("bfloat16", "float16", "float32"), "dtype", "one of bfloat16, float16, float32")


@dataclass
class ArithmeticConfig:
    n_train: int = 256  # generated training problems
    n_eval: int = 64  # generated held-out problems
    levels: list[int] = field(default_factory=lambda: [1, 2, 3])  # difficulty = number of operations
    seed: int = 0  # the same seed gives the same problems

    def __post_init__(self):
        _check(self.n_train >= 0, "n_train", ">= 0")
        _check(self.n_eval >= 0, "n_eval", ">= 0")
        _check(bool(self.levels) and all(1 <= lv <= 5 for lv in self.levels), "levels", "each in 1..5")


@dataclass
class VehicleConfig:
    n_train: int = 400  # generated in-car requests for training
    n_eval: int = 100  # generated held-out requests (other templates and values than train's)
    seed: int = 0  # the same seed gives the same requests

    def __post_init__(self):
        _check(self.n_train >= 0, "n_train", ">= 0")
        _check(self.n_eval >= 0, "n_eval", ">= 0")


@dataclass
class InputConfig:
    path: str = ""  # JSONL, Parquet or CSV file, a saved HF dataset directory, or a hub id (online)
    format: str = "auto"  # auto (by suffix), jsonl, parquet, csv or hf
    split: str = "train"  # split of every row, unless split_column says otherwise
    split_column: str = ""  # column holding each row's split (train / eval)
    hf_split: str = "train"  # which split of a Hugging Face dataset to read
    prompt: str = "prompt"  # column with the prompt text (ignored when messages is set)
    # column with chat messages [{role, content}, ...] instead of prompt text; a list of turns (lists of
    # messages, BFCL's `question`) is read as one conversation, the turns in order
    messages: str = ""
    system: str = ""  # column with a per-row system prompt
    system_prompt: str = ""  # one system prompt for every row of this input
    tools: str = ""  # column with tool (function) schemas, a JSON string or a list
    reference: str = ""  # column with the reference answer
    # a second file (JSONL, Parquet, CSV) holding `reference` per `id`: BFCL keeps its answers apart from its questions
    reference_file: str = ""
    reference_pattern: str = ""  # regex whose one group is the final answer in a worked-solution reference (GSM8K: "#### (.+)$")
    id: str = ""  # column with the user's own row id (must be unique)
    source: str = ""  # column naming each row's source; default: the input's file name
    difficulty: str = ""  # column with an integer difficulty level
    completion: str = ""  # column with an existing completion (e.g. a public R1 trace) for generate --score
    language: str = ""  # column with the row's language code (en, zh, ...): eval reports accuracy per language
    task: str = "math"  # how answers are scored: math, exact, choice or tool

    FORMATS = ("auto", "jsonl", "parquet", "csv", "hf")  # a class constant, not a field

    def __post_init__(self):
        _check(bool(self.path), "path", "is required")
        _check(self.format in self.FORMATS, "format", "|".join(self.FORMATS))
        _check(self.split in ("train", "eval"), "split", "train or eval")
        _check(self.task in TASKS, "task", "|".join(TASKS))
        if self.reference_pattern:
            try:
                groups = re.compile(self.reference_pattern, re.MULTILINE).groups
            except re.error as e:
                raise ConfigError(f"reference_pattern: not a regular expression ({e})") from None
            _check(groups == 1, "reference_pattern", f"needs exactly one (group), has {groups}")
        if self.reference_file:
            _check(bool(self.id and self.reference), "reference_file", "needs id and reference: the join key and the "
                   "answer column")


TASKS = ("math", "exact", "choice", "tool")
# What format `auto` reads a file as, by its suffix; any other name is a Hugging Face dataset.
SUFFIX_FORMATS = {".jsonl": "jsonl", ".json": "jsonl", ".parquet": "parquet", ".csv": "csv"}


@dataclass
class TraceInputConfig(InputConfig):
    """A file of existing traces for `distill import`: the fields of a prepare input, every column a
    dotted path into the row (`model_answers.thinking_model`; a number indexes a list), and where a
    row's completions are: `completion` (a string, a list of them, or a {content,
    reasoning_content} object), `reasoning` + `answer`, or the final assistant turn of `messages`
    or `conversations`."""

    FORMATS = InputConfig.FORMATS + ("json",)  # json: one JSON document, an array of records
    records: str = ""  # json: the dotted key of the records' list in a JSON object ("" = the file is an array)
    # ShareGPT list of {from, value} turns; as with messages, a final assistant turn is the completion
    conversations: str = ""
    # the file's role names -> system, user or assistant (messages and conversations); others pass as they are
    roles: dict[str, str] = field(default_factory=lambda: {"system": "system", "human": "user", "gpt": "assistant"})
    reasoning: str = ""  # column with the reasoning alone (with `answer`: traces stored in two columns)
    answer: str = ""  # column with the answer alone
    model: str = ""  # column naming each row's source model; default: traces.source_model

    def __post_init__(self):
        super().__post_init__()
        _check(not (self.messages and self.conversations), "conversations", "give messages or conversations, not both")
        _check(not self.reference_file, "reference_file", "is read by prepare only; import takes reference from the row")
        _check(not self.records or self.format in ("auto", "json"), "records", "only for a JSON document (format json)")
        _check(all(r in ("system", "user", "assistant") for r in self.roles.values()), "roles",
               "maps the file's role names to system, user or assistant")
        _check(bool(self.reasoning) == bool(self.answer), "answer" if self.reasoning else "reasoning",
               "reasoning and answer come together (two columns of one trace)")
        _check(not (self.completion and self.reasoning), "completion", "give completion or reasoning + answer, not both")
        _check(bool(self.completion or self.reasoning or self.messages or self.conversations), "completion",
               "give completion, reasoning + answer, or messages/conversations ending in the assistant's turn")


@dataclass
class TracesConfig:
    """`distill import`: existing traces instead of a teacher's generation."""

    inputs: list[TraceInputConfig] = field(default_factory=list)  # the trace files
    tokenizer: str = ""  # counts tokens and renders prompt_text: local model dir or embedded name; "" = models.teacher
    source_model: str = "unknown"  # the generations' `model` where an input maps no model column
    on_error: str = "fail"  # fail on the first bad row, or skip it into prepare/rejects.parquet

    def __post_init__(self):
        _check(self.on_error in ("fail", "skip"), "on_error", "fail or skip")
        _check(bool(self.source_model), "source_model", "must not be empty")


@dataclass
class PrepareConfig:
    arithmetic: ArithmeticConfig | None = None  # built-in word problems (offline quickstart data)
    vehicle: VehicleConfig | None = None  # built-in in-car function-calling requests (English and Chinese)
    inputs: list[InputConfig] = field(default_factory=list)  # the user's prompt files
    unicode_form: str = "NFC"  # NFC keeps math symbols intact; NFKC also folds look-alikes
    on_error: str = "fail"  # fail on the first bad row, or skip it into the rejects table

    def __post_init__(self):
        _check(self.arithmetic is not None or self.vehicle is not None or bool(self.inputs), "inputs",
               "give inputs, arithmetic or vehicle")
        _check(self.unicode_form in ("NFC", "NFKC", "NFD", "NFKD"), "unicode_form", "NFC|NFKC|NFD|NFKD")
        _check(self.on_error in ("fail", "skip"), "on_error", "fail or skip")


@dataclass
class EngineConfig:
    """Passed to vllm.LLM as is; `extra` carries any other engine argument."""

    tensor_parallel_size: int = 1  # GPUs per model replica (8 for DeepSeek-R1 on one H200 node)
    pipeline_parallel_size: int = 1  # pipeline stages, for models larger than one node
    enable_expert_parallel: bool = False  # shard MoE experts across GPUs instead of slicing them
    max_model_len: int = 4096  # prompt + completion tokens per sequence
    gpu_memory_utilization: float = 0.9  # share of GPU memory vLLM may take
    quantization: str | None = None  # e.g. fp8; None uses what the checkpoint declares
    kv_cache_dtype: str = "auto"  # fp8 halves KV memory on Hopper
    distributed_executor_backend: str | None = None  # "ray" for multi-node tensor/pipeline parallel
    dtype: str = "auto"  # auto = the checkpoint's; float32 is faster on CPUs without AVX-512 BF16
    enforce_eager: bool = False  # True skips graph capture/compilation (needed on CPU)
    max_num_seqs: int | None = None  # sequences batched per step; None = vLLM's default
    extra: dict = field(default_factory=dict)  # any other vllm.LLM argument, passed through

    def __post_init__(self):
        _check(self.tensor_parallel_size >= 1, "tensor_parallel_size", ">= 1")
        _check(self.pipeline_parallel_size >= 1, "pipeline_parallel_size", ">= 1")
        _check(self.max_num_seqs is None or self.max_num_seqs >= 1, "max_num_seqs", ">= 1")
        _check(self.max_model_len >= 16, "max_model_len", ">= 16")
        _check(0 < self.gpu_memory_utilization <= 1, "gpu_memory_utilization", "in (0, 1]")


@dataclass
class OpenAIConfig:
    base_url: str = "http://127.0.0.1:8000/v1"  # any OpenAI-compatible endpoint (vllm serve, hosted API)
    model: str = ""  # served model name; empty = the first one /v1/models lists
    api_key_env: str = "OPENAI_API_KEY"  # environment variable holding the key (unset: no key)
    concurrency: int = 16  # requests in flight at once
    timeout_s: float = 600.0  # per request; long reasoning traces take minutes
    max_retries: int = 6  # on 429, 5xx and timeouts, with exponential backoff
    # openai-chat: ask for top_k logprobs (vLLM gives them); false for APIs that refuse the fields
    # (the DeepSeek API's reasoner): the run is then text-only
    logprobs: bool = True
    # plain http:// to another host sends prompts and the API key readable on the way; true allows it
    allow_insecure_http: bool = False

    def __post_init__(self):
        _check(self.concurrency >= 1, "concurrency", ">= 1")
        _check(_finite(self.timeout_s) and self.timeout_s > 0, "timeout_s", "a finite number > 0")
        _check(self.max_retries >= 0, "max_retries", ">= 0")
        url = urllib.parse.urlsplit(self.base_url)
        _check(url.scheme in ("http", "https") and bool(url.hostname), "base_url",
               f"{self.base_url!r} is not an http:// or https:// URL")
        _check(url.scheme == "https" or self.allow_insecure_http or _loopback(url.hostname), "base_url",
               f"{self.base_url} is plain http to another host (prompts and API key unencrypted); use https:// "
               "or set allow_insecure_http: true")


def _loopback(host: str) -> bool:
    """localhost, 127.0.0.0/8 or ::1: traffic that never leaves the machine."""
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# Published sampling settings per teacher; a field left unset in the YAML takes its preset's value.
PRESETS = {
    "default": dict(temperature=0.6, top_p=0.95, max_new_tokens=1024, think_end="</think>", think_start="",
                    system_prompt=True),
    # DeepSeek-R1 model card: temperature 0.6, top-p 0.95, up to 32768 tokens, no system prompt.
    # Its chat template ends the prompt with "<think>\n": generated text starts inside the reasoning.
    "deepseek-r1": dict(temperature=0.6, top_p=0.95, max_new_tokens=32768, think_end="</think>",
                        think_start="<think>\n", system_prompt=False),
    # SmolLM2-135M-Instruct is no reasoning model: the whole completion is the answer.
    "smollm2": dict(temperature=0.6, top_p=0.95, max_new_tokens=256, think_end="", think_start="",
                    system_prompt=True),
}


@dataclass
class GenerateConfig:
    preset: str = "default"  # sampling defaults of a known teacher: default, deepseek-r1, smollm2
    # vllm (offline engine in this process), openai (a served /v1/completions, token ids in) or
    # openai-chat (a chat API, messages in: top-k when the server returns logprobs, else text only)
    backend: str = "vllm"
    n: int = 1  # samples per prompt
    temperature: float | None = None  # None: the preset's
    # Rejection sampling's second chance: a train prompt whose n samples all fail its reference
    # (the scorer clean verifies with) gets this many sampled tries more; 0 = none.
    retries: int = 0
    retry_temperature: float = 0.6  # above 0, or a retry repeats a greedy try; the presets' sampling temperature
    top_p: float | None = None  # None: the preset's
    max_new_tokens: int | None = None  # None: the preset's
    think_end: str | None = None  # text closing the reasoning; "" for a teacher that does not reason
    think_start: str | None = None  # text the teacher's template puts after the assistant marker (R1: "<think>\n"); students get it too
    system_prompt: bool | None = None  # False drops system messages (R1 is trained without one)
    # Worked examples and instructions for the teacher only (the student learns from the plain
    # prompt): "" none, "vehicle" the built-in task's, or a JSON file of chat messages.
    teacher_context: str = ""
    # Worked examples of teacher_context per request: the k most like the request (character
    # trigrams), so a long pool fits the context and a small teacher sees the nearest cases; 0: all.
    teacher_examples: int = 4
    top_k: int = 20  # teacher logprobs kept per generated token
    # The eval split's traces measure fidelity: sampled from the teacher's raw distribution, their
    # stored logprobs give its exact log-likelihood, so KL(teacher || student) per byte is unbiased.
    eval_temperature: float = 1.0
    eval_top_p: float = 1.0
    splits: list[str] = field(default_factory=lambda: ["train", "eval"])  # eval traces feed fidelity metrics
    shard_size: int = 512  # samples per Parquet shard: at most this much work is redone after a kill
    max_in_flight: int = 256  # prompts inside the engine at once: bounds memory for any prompt count
    per_request_seed: bool = True  # seed every sample (reproducible); off uses only the engine seed
    score_batch_tokens: int = 2048  # tokens per engine step with --score: prompt logprobs take [tokens x vocab] floats
    engine: EngineConfig = field(default_factory=EngineConfig)
    openai: OpenAIConfig = field(default_factory=OpenAIConfig)

    def __post_init__(self):
        _check(self.preset in PRESETS, "preset", f"unknown preset (known: {', '.join(PRESETS)})")
        for key, value in PRESETS[self.preset].items():
            if getattr(self, key) is None:
                setattr(self, key, value)
        _check(self.backend in ("vllm", "openai", "openai-chat"), "backend", "vllm, openai or openai-chat")
        # a chat reply's text is split on </think>, as `distill import` splits traces
        _check(self.backend != "openai-chat" or self.think_end in ("", "</think>"), "think_end",
               "'</think>' or '' (no reasoning) with backend openai-chat")
        _check(self.openai.logprobs or self.backend == "openai-chat", "openai.logprobs",
               "false only with backend openai-chat (the other backends need the top-k)")
        _check(self.teacher_examples >= 0, "teacher_examples", ">= 0")
        _check(self.n >= 1, "n", ">= 1")
        _check(self.retries >= 0, "retries", ">= 0")
        _check(_finite(self.retry_temperature) and self.retry_temperature > 0, "retry_temperature", "a finite number > 0")
        _check(_finite(self.temperature) and self.temperature >= 0, "temperature", "a finite number >= 0")
        _check(0 < self.top_p <= 1, "top_p", "in (0, 1]")
        _check(_finite(self.eval_temperature) and self.eval_temperature >= 0, "eval_temperature", "a finite number >= 0")
        _check(0 < self.eval_top_p <= 1, "eval_top_p", "in (0, 1]")
        _check(self.max_new_tokens >= 1, "max_new_tokens", ">= 1")
        _check(1 <= self.top_k <= 1024, "top_k", "in 1..1024")
        _check(bool(self.splits) and set(self.splits) <= {"train", "eval"}, "splits", "train and/or eval")
        _check(self.shard_size >= 1, "shard_size", ">= 1")
        _check(self.max_in_flight >= 1, "max_in_flight", ">= 1")
        _check(self.score_batch_tokens >= 1, "score_batch_tokens", ">= 1")


@dataclass
class TemplateConfig:
    """A rewrite instruction of `distill augment`: the teacher gets `instruction` with {prompt}
    replaced by the prompt's last user message, as a user message of its own."""

    instruction: str = ""  # what the teacher is asked; {prompt} marks where the prompt's text goes
    language: str = ""  # the variant's language code (a translation's target); "" = the parent's

    def __post_init__(self):
        _check("{prompt}" in self.instruction, "instruction", "must hold {prompt}, where the prompt's text goes")


# What every built-in template asks besides its own change: the reference must still hold.
_KEEP = (" Keep its meaning, every number (in digits), every name and any instruction about the answer."
         " Do not answer or solve it. Reply with the new text only.\n\nText:\n{prompt}")
TEMPLATES = {
    "paraphrase": TemplateConfig("Paraphrase the text below: say the same in other words." + _KEEP),
    "synonym": TemplateConfig("Rewrite the text below, replacing some of its words with synonyms and keeping "
                              "its sentence structure." + _KEEP),
    "restructure": TemplateConfig("Rewrite the text below with its sentences restructured: reorder clauses, "
                                  "merge or split sentences, or switch between active and passive voice." + _KEEP),
    "translate_zh": TemplateConfig("Translate the text below into Simplified Chinese." + _KEEP, language="zh"),
    "translate_en": TemplateConfig("Translate the text below into English." + _KEEP, language="en"),
}


@dataclass
class AugmentConfig:
    """`distill augment`: the teacher (generate's backend, engine and preset) rewrites prompts into
    variants; those that pass the checks join the prompts table. Near-duplicate and contamination
    checks use clean's settings (near_dup_*, decontam_*), so a variant is what clean would keep."""

    n: int = 0  # variants per prompt, the i-th written with templates[i % len(templates)]; 0 = the stage is off
    templates: list[str] = field(default_factory=lambda: ["paraphrase", "synonym", "restructure", "translate_zh"])
    # more templates by name, or a built-in's name to replace its instruction
    custom_templates: dict[str, TemplateConfig] = field(default_factory=dict)
    # splits whose prompts are rewritten; a variant keeps its parent's split, so eval's stay eval
    splits: list[str] = field(default_factory=lambda: ["train"])
    temperature: float = 0.7  # sampled with a seed per request: a template used twice gives two variants
    top_p: float = 0.95  # nucleus sampling
    max_new_tokens: int = 256  # a reply cut off here is rejected (too_long); a reasoning teacher needs its budget

    def __post_init__(self):
        _check(self.n >= 0, "n", ">= 0")
        _check(bool(self.templates), "templates", "name at least one template")
        _check(len(set(self.templates)) == len(self.templates), "templates", "has repeats")
        for name in self.templates:
            _check(name in TEMPLATES or name in self.custom_templates, "templates",
                   f"unknown template {name!r} (built in: {', '.join(TEMPLATES)}; or define it in custom_templates)")
        _check(bool(self.splits) and set(self.splits) <= {"train", "eval"}, "splits", "train and/or eval")
        _check(_finite(self.temperature) and self.temperature >= 0, "temperature", "a finite number >= 0")
        _check(0 < self.top_p <= 1, "top_p", "in (0, 1]")
        _check(self.max_new_tokens >= 1, "max_new_tokens", ">= 1")

    def template(self, name: str) -> TemplateConfig:
        return self.custom_templates.get(name) or TEMPLATES[name]


RULES = ("truncated", "unclosed_reasoning", "empty_answer", "garbled", "repetition", "language_mix", "length",
         "invalid_call", "incorrect", "contaminated", "exact_duplicate", "near_duplicate", "per_prompt_cap")


MEMORY = r"([\d.]+)\s*([KMGT]i?B)"
SQL_DIR = Path(__file__).resolve().parent.parent / "sql"  # the project's own rules


@dataclass
class EvalFileConfig:
    """An eval set of clean.decontam_files, its prompt found as an input's is: `prompt` (text) or
    `messages` (a chat; only its user turns count), each a dotted path into the row."""

    path: str = ""  # JSONL, JSON array, Parquet or CSV file, a saved HF dataset directory, or a hub id (online)
    format: str = "auto"  # auto (by suffix), jsonl, json, parquet, csv or hf
    hf_split: str = "test"  # which split of a Hugging Face dataset to read (benchmarks publish theirs as test)
    prompt: str = "prompt"  # column with the prompt text (ignored when messages is set)
    messages: str = ""  # column with chat messages [{role, content}, ...] instead of prompt text
    records: str = ""  # json: the dotted key of the records' list in a JSON object ("" = the file is an array)

    FORMATS = ("auto", "jsonl", "json", "parquet", "csv", "hf")

    def __post_init__(self):
        _check(bool(self.path), "path", "is required")
        _check(self.format in self.FORMATS, "format", "|".join(self.FORMATS))
        _check(not self.records or self.format in ("auto", "json"), "records", "only for a JSON document (format json)")


@dataclass
class CleanConfig:
    """Every rule is a file sql/<rule>.sql; `rules` lists those that run, in order."""

    rules: list[str] = field(default_factory=lambda: list(RULES))  # drop one to switch it off; add your own
    sql_dir: str = str(SQL_DIR)  # where the rule files live; default: the project's sql/
    min_tokens: int = 1  # completions shorter than this are dropped
    max_tokens: int = 32768  # and longer than this
    max_unprintable_share: float = 0.01  # share of format/private-use/unassigned characters tolerated
    repeat_probe_chars: int = 32  # length of the repetition rule's probes (about a 5-word n-gram)
    max_repeated_share: float = 0.3  # share of the text the copies of one probe may cover (loops)
    max_script_mix: float = 0.1  # share of the reasoning's letters outside the prompt's script
    keep_incorrect: bool = False  # False keeps only verified-correct traces (rejection sampling)
    decontam_ngram: int = 8  # word n-gram shared with an eval prompt marks a train prompt (open-r1: 8)
    decontam_max_prompt_share: float = 0.05  # n-grams in more train prompts than this are shared instructions, not leaks
    # extra eval sets: a file with a `prompt` column, or a mapping {path, format, prompt | messages, ...}
    decontam_files: list[EvalFileConfig | str] = field(default_factory=list)
    near_dup_threshold: float = 0.8  # estimated Jaccard of word shingles above which samples are near duplicates
    near_dup_shingle: int = 5  # words per shingle
    near_dup_num_perm: int = 64  # MinHash signature length (bins); Jaccard estimate error ~0.05 at 0.8
    max_per_prompt: int = 4  # passing samples kept per prompt
    per_prompt_policy: str = "shortest"  # shortest or random (seeded by run.seed)
    memory_limit: str = "4GB"  # the clean process's memory; DuckDB spills to temp_dir beyond it instead of failing
    temp_dir: str = ""  # DuckDB spill directory; "" = artifacts/<run>/clean/duckdb.tmp
    threads: int = 0  # DuckDB threads; 0 = all cores

    def __post_init__(self):
        # a bare path is shorthand for {path: ..., prompt: prompt}: the rule reads one kind
        self.decontam_files = [EvalFileConfig(path=f) if isinstance(f, str) else f for f in self.decontam_files]
        _check(len(set(self.rules)) == len(self.rules), "rules", "has repeats")
        _check(all(r.isidentifier() for r in self.rules), "rules", "each a file name stem (letters, digits, _)")
        _check(self.min_tokens >= 0, "min_tokens", ">= 0")
        _check(self.max_tokens >= self.min_tokens, "max_tokens", ">= min_tokens")
        _check(0 <= self.max_unprintable_share <= 1, "max_unprintable_share", "in [0, 1]")
        _check(self.repeat_probe_chars >= 4, "repeat_probe_chars", ">= 4")
        _check(self.decontam_ngram >= 1, "decontam_ngram", ">= 1")
        _check(self.near_dup_shingle >= 1, "near_dup_shingle", ">= 1")
        _check(0 < self.max_repeated_share <= 1, "max_repeated_share", "in (0, 1]")
        _check(0 <= self.max_script_mix <= 1, "max_script_mix", "in [0, 1]")
        _check(0 <= self.decontam_max_prompt_share <= 1, "decontam_max_prompt_share", "in [0, 1]")
        _check(0 < self.near_dup_threshold <= 1, "near_dup_threshold", "in (0, 1]")
        _check(self.near_dup_num_perm >= 16, "near_dup_num_perm", ">= 16")
        _check(self.max_per_prompt >= 1, "max_per_prompt", ">= 1")
        _check(self.per_prompt_policy in ("shortest", "random"), "per_prompt_policy", "shortest or random")
        _check(self.threads >= 0, "threads", ">= 0")
        _check(re.fullmatch(MEMORY, self.memory_limit.strip(), flags=re.IGNORECASE) is not None, "memory_limit",
               "a size such as 4GB, 512MB or 2GiB")

    @property
    def memory_limit_mb(self) -> float:
        number, unit = re.fullmatch(MEMORY, self.memory_limit.strip(), flags=re.IGNORECASE).groups()
        return float(number) * {"K": 1 / 1024, "M": 1, "G": 1024, "T": 1024**2}[unit[0].upper()]


CROSS_TOKENIZER_LOSSES = ("topk+alm", "topk", "alm")


@dataclass
class KDConfig:
    """The distillation fields, defined once: the YAML's `train.<field>`, DistillConfig's field of
    the same name (pipeline.train) and the loss's `opts.<field>` (pipeline.losses) are this."""

    kd_weight: float = 0.5  # share of the KD term against cross-entropy on the teacher's tokens (0 = SFT)
    kd_temperature: float = 1.0  # re-tempering of the stored raw logprobs; KD is scaled by T**2
    divergence: str = "forward_kl"  # forward_kl, reverse_kl or jsd
    jsd_beta: float = 0.5  # mixture weight of the teacher in jsd (0 = forward KL, 1 = reverse KL)
    tail: str = "bucket"  # bucket (top-k + one bucket for the rest) or renormalize (top-k only)
    top_k: int = 20  # candidates used per position, at most what generate stored
    # the prompt tokens every row of a micro-batch starts with (a function-calling batch's system
    # prompt and tool list) go through the student once per micro-batch, not once per row: the same
    # gradients for less work. Off under FSDP and gradient_checkpointing, which cannot keep the prefix's
    # layers and cache for the rows' pass.
    shared_prefix: bool = True
    kd_chunk_size: int = 1024  # positions projected through the LM head at once (bounds KD memory)
    # Student with another tokenizer: topk = the teacher's top-k mapped into the student's vocabulary
    # where one teacher token starts an aligned group; alm = chunk likelihood matching on groups
    # that are not one-to-one (numerals, merged words); topk+alm = both.
    cross_tokenizer_loss: str = "topk+alm"


@dataclass
class TrainConfig(KDConfig):
    """Student training: the distillation fields (KDConfig), then the TrainingArguments a run
    usually changes under their own names (passed to DistillConfig as they are); `extra` carries
    any other."""

    output_dir: str = ""  # "" = artifacts/<run>/train; a sweep writes elsewhere and reuses the cached data
    learning_rate: float = 1e-4  # AdamW peak learning rate
    num_train_epochs: float = 1.0  # passes over the clean selection
    max_steps: int = -1  # > 0 overrides num_train_epochs
    per_device_train_batch_size: int = 4  # sequences per device per micro-batch
    gradient_accumulation_steps: int = 1  # micro-batches per optimizer step
    max_length: int = 4096  # prompt + completion tokens; longer samples are truncated (and counted)
    warmup_steps: int = 0  # linear warm-up steps
    lr_scheduler_type: str = "cosine"  # any transformers scheduler name
    bf16: bool = False  # bf16 mixed precision (GPUs; slow on CPUs without AVX-512 BF16)
    gradient_checkpointing: bool = False  # recompute activations in backward: less memory, ~30% more time
    lora_r: int = 0  # > 0 trains LoRA adapters of this rank (merged into the saved model)
    lora_alpha: int = 32  # LoRA scaling numerator
    # NEFTune (transformers' TrainingArguments field): uniform noise on the input embeddings while
    # training, scaled by alpha / sqrt(tokens x width); on a few hundred examples it keeps the
    # student from fitting the train wordings alone. None = off.
    neftune_noise_alpha: float | None = None
    logging_steps: int = 5  # TensorBoard / console logging interval
    save_steps: int = 200  # checkpoint interval (resume restarts from the latest)
    save_total_limit: int = 2  # checkpoints kept
    extra: dict = field(default_factory=dict)  # any other SFTConfig / TrainingArguments field

    def __post_init__(self):
        _check(0 <= self.kd_weight <= 1, "kd_weight", "in [0, 1]")
        _check(_finite(self.kd_temperature) and self.kd_temperature > 0, "kd_temperature", "a finite number > 0")
        _check(self.divergence in ("forward_kl", "reverse_kl", "jsd"), "divergence", "forward_kl, reverse_kl or jsd")
        _check(0 <= self.jsd_beta <= 1, "jsd_beta", "in [0, 1]")
        _check(self.tail in ("bucket", "renormalize"), "tail", "bucket or renormalize")
        _check(self.top_k >= 1, "top_k", ">= 1")
        _check(self.kd_chunk_size >= 1, "kd_chunk_size", ">= 1")
        _check(self.cross_tokenizer_loss in CROSS_TOKENIZER_LOSSES, "cross_tokenizer_loss",
               " | ".join(CROSS_TOKENIZER_LOSSES))
        _check(_finite(self.learning_rate) and self.learning_rate > 0, "learning_rate", "a finite number > 0")
        _check(_finite(self.num_train_epochs) and self.num_train_epochs > 0, "num_train_epochs", "a finite number > 0")
        _check(self.max_steps == -1 or self.max_steps > 0, "max_steps", "-1 (use num_train_epochs) or > 0")
        _check(self.per_device_train_batch_size >= 1, "per_device_train_batch_size", ">= 1")
        _check(self.gradient_accumulation_steps >= 1, "gradient_accumulation_steps", ">= 1")
        _check(self.warmup_steps >= 0, "warmup_steps", ">= 0")
        _check(self.logging_steps >= 1, "logging_steps", ">= 1")
        _check(self.save_steps >= 1, "save_steps", ">= 1")
        _check(self.save_total_limit >= 1, "save_total_limit", ">= 1")
        _check(self.lora_alpha > 0, "lora_alpha", "> 0")
        _check(self.neftune_noise_alpha is None or _finite(self.neftune_noise_alpha) and self.neftune_noise_alpha > 0,
               "neftune_noise_alpha", "null (off) or a finite number > 0")
        _check(self.max_length >= 8, "max_length", ">= 8")
        _check(self.lora_r >= 0, "lora_r", ">= 0")


@dataclass
class EvalConfig:
    # extra models beside teacher, baseline and student: a mapping name: directory, or a list of
    # directories named after their training output directory (.../train-sft/model -> train-sft)
    models: dict[str, str] | list[str] = field(default_factory=list)
    n: int = 1  # samples per eval prompt (accuracy = pass@1 averaged over n; majority vote over n)
    temperature: float = 0.6  # sampling temperature of every evaluated model
    top_p: float = 0.95  # nucleus sampling
    max_new_tokens: int = 256  # output budget per sample
    max_prompts: int = 0  # evaluate only the first N eval prompts (0 = all)
    latency_prompts: int = 4  # prompts run alone, one by one, for per-request latency

    def __post_init__(self):
        _check(self.n >= 1, "n", ">= 1")
        _check(self.max_new_tokens >= 1, "max_new_tokens", ">= 1")
        _check(_finite(self.temperature) and self.temperature >= 0, "temperature", "a finite number >= 0")
        _check(0 < self.top_p <= 1, "top_p", "in (0, 1]")
        _check(self.max_prompts >= 0, "max_prompts", ">= 0")
        _check(self.latency_prompts >= 0, "latency_prompts", ">= 0")


# Sweep objectives (measured on the eval split's traces by eval.teacher_fidelity) and their direction.
OBJECTIVES = {"kl_per_byte": "minimize", "fidelity_kl": "minimize", "top1_agreement": "maximize"}


@dataclass
class SweepConfig:
    """`distill sweep`: an Optuna search over train settings, every trial trained on the cached train data."""

    trials: int = 8  # complete trials the study ends with; a rerun continues until there are this many
    sampler: str = "tpe"  # tpe (learns from the trials so far) or grid (every combination of the choices)
    # what a trial is judged by, on the eval split's traces with no vLLM: kl_per_byte, fidelity_kl or
    # top1_agreement (accuracy is not one: it needs an engine per trial; `distill eval` the best)
    objective: str = "kl_per_byte"
    direction: str = ""  # minimize or maximize; "" = the objective's own (KL down, agreement up)
    # train field -> {low, high, log} (integers if both bounds are) or {choices: [...]}
    space: dict[str, dict] = field(default_factory=lambda: {"learning_rate": {"low": 1e-5, "high": 1e-3, "log": True}})
    # measure the objective after every epoch and stop a trial that is worse than the median of the
    # earlier trials at that epoch (costs one pass over the eval traces per epoch)
    prune: bool = False

    def __post_init__(self):
        _check(self.trials >= 1, "trials", ">= 1")
        _check(self.sampler in ("tpe", "grid"), "sampler", "tpe or grid")
        _check(self.objective in OBJECTIVES, "objective", f"{', '.join(OBJECTIVES)} (accuracy needs a vLLM engine per "
               "trial: run `distill eval` on the best trial's model)")
        self.direction = self.direction or OBJECTIVES[self.objective]
        _check(self.direction in ("minimize", "maximize"), "direction", "minimize or maximize")
        _check(bool(self.space), "space", "give at least one train field to search")
        self.space = {name: _space_spec(name, spec, self.sampler) for name, spec in self.space.items()}
        if self.sampler == "grid":
            points = math.prod(len(spec["choices"]) for spec in self.space.values())
            _check(self.trials <= points, "trials", f"the grid has {points} points; at most that many trials")


SWEEPABLE = tuple(f.name for f in dataclasses.fields(TrainConfig) if f.name not in ("output_dir", "extra"))


def _space_spec(name: str, spec: dict, sampler: str) -> dict:
    """A sweep.space entry checked and normalized: choices coerced to the train field's type, or
    numeric bounds (int when both are ints), every value in the field's own range."""
    key = f"space.{name}"
    _check(name in SWEEPABLE, key, f"not a train field (those that can be searched: {', '.join(SWEEPABLE)})")
    kind = typing.get_type_hints(TrainConfig)[name]
    if "choices" in spec:
        _check(set(spec) == {"choices"}, key, "choices comes alone: {choices: [...]} or {low, high, log}")
        _check(isinstance(spec["choices"], list) and bool(spec["choices"]), key, "choices: a non-empty list")
        values = [_coerce(kind, v, key) for v in spec["choices"]]
        out = {"choices": values}
    else:
        _check({"low", "high"} <= set(spec) <= {"low", "high", "log"}, key,
               "a spec is {low, high, log} or {choices: [...]}")
        _check(sampler != "grid", key, "the grid sampler takes choices only")
        _check(kind in (int, float), key, f"train.{name} is not a number: give choices")
        integer = all(isinstance(spec[b], int) and not isinstance(spec[b], bool) for b in ("low", "high"))
        low, high = (_coerce(int if integer else kind, spec[b], f"{key}.{b}") for b in ("low", "high"))
        log = spec.get("log", False)
        _check(isinstance(log, bool), f"{key}.log", "true or false")
        _check(low < high, key, f"low ({low}) must be below high ({high})")
        _check(not log or low > 0, key, "log needs low > 0")
        values = [low, high]
        out = {"low": low, "high": high, "log": log}
    for value in values:
        try:
            TrainConfig(**{name: value})
        except ConfigError as e:
            raise ConfigError(f"{key}: {value!r} is out of range ({str(e).split(': ', 1)[1]})") from None
    return out


@dataclass
class Config:
    run: RunConfig = field(default_factory=RunConfig)
    models: ModelsConfig = field(default_factory=ModelsConfig)
    prepare: PrepareConfig = field(default_factory=lambda: PrepareConfig(arithmetic=ArithmeticConfig()))
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    generate: GenerateConfig = field(default_factory=GenerateConfig)
    clean: CleanConfig = field(default_factory=CleanConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    traces: TracesConfig = field(default_factory=TracesConfig)
    sweep: SweepConfig = field(default_factory=SweepConfig)
    file: str = ""  # the YAML file this was loaded from (set by load, not by users)

    def __post_init__(self):
        if self.train.output_dir and not self.run.allow_outside_artifacts:
            root = Path(self.run.artifacts_dir).resolve()
            out = Path(self.train.output_dir).resolve()
            _check(out != root and root in out.parents, "train.output_dir",
                   f"must lie under run.artifacts_dir ({self.run.artifacts_dir}); set run.allow_outside_artifacts: "
                   "true to write elsewhere")

    @property
    def run_dir(self) -> Path:
        return Path(self.run.artifacts_dir) / self.run.name

    @property
    def models_dir(self) -> Path:
        return Path(self.run.artifacts_dir) / "models"

    def section(self, name: str):
        """A section as a dict, or one of its fields by a dotted name (`clean.decontam_ngram`)."""
        section, _, key = name.partition(".")
        values = dataclasses.asdict(getattr(self, section))
        return values[key] if key else values


def section_hash(*parts) -> str:
    """Stable hash of JSON-able parts: the cache key of a stage's output."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


# ---------------------------------------------------------------------------------------------
# Loading: YAML -> dict -> overrides -> dataclasses, with every error naming file and key.


def read_yaml(path: str | Path):
    """A YAML file's document ({} when empty); a file that is not UTF-8 or not YAML is a one-line
    error naming the file (and line)."""
    path = Path(path)
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text (byte {e.start})") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f":{mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}{where}: invalid YAML ({getattr(e, 'problem', e)})") from None


def load(path: str | Path, overrides: typing.Sequence[str] = ()) -> Config:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such config file")
    raw = read_yaml(path)
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: top level must be a mapping of sections")
    for item in overrides:
        _apply_override(raw, item, path)
    try:
        cfg = _build(Config, raw, "")
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
    cfg.file = str(path)
    _resolve_paths(cfg, path.parent.resolve())
    return cfg


# A Hugging Face hub dataset id: owner/name.
HUB_ID = re.compile(r"[\w-][\w.-]*/[\w-][\w.-]*")


def _resolve_paths(cfg: Config, base: Path) -> None:
    """The data files a config names are relative to its own folder, not to wherever `distill`
    runs, so every stage and manifest sees the same absolute paths. run.artifacts_dir stays
    relative to the working directory: runs go where the command is given."""
    for spec in [*cfg.prepare.inputs, *cfg.traces.inputs, *cfg.clean.decontam_files]:
        spec.path = _beside(base, spec.path, spec.format)
    for spec in cfg.prepare.inputs:
        if spec.reference_file:
            spec.reference_file = _beside(base, spec.reference_file)
    cfg.clean.sql_dir = _beside(base, cfg.clean.sql_dir)


def _beside(base: Path, path: str, fmt: str = "") -> str:
    """`path` under `base` unless absolute, or (for a dataset input) an owner/name that is no local
    path and no file name `auto` would read: a hub id, left for the datasets library."""
    if Path(path).is_absolute():
        return path
    local = base / path
    hub = fmt == "hf" or (fmt == "auto" and Path(path).suffix.lower() not in SUFFIX_FORMATS)
    if hub and not local.exists() and HUB_ID.fullmatch(path):
        return path
    return os.path.normpath(local)


def _apply_override(raw: dict, item: str, path: Path) -> None:
    key, sep, value = item.partition("=")
    if not sep or not key:
        raise ConfigError(f"--set {item!r}: expected key=value, e.g. train.learning_rate=1e-5")
    try:
        value = yaml.safe_load(value)
    except yaml.YAMLError as e:
        raise ConfigError(f"--set {key}: {value!r} is not a YAML value ({getattr(e, 'problem', e)})") from None
    node = raw
    parts = key.split(".")
    for i, p in enumerate(parts):
        where = ".".join(parts[:i])
        if isinstance(node, list):  # a number picks a list's entry: prepare.inputs.0.reference
            if not (p.isdigit() and int(p) < len(node)):
                has = f"has entries 0..{len(node) - 1}" if node else "has no entries"
                raise ConfigError(f"{path}: --set {key}: {where} {has}, no entry {p!r}")
            p = int(p)
        elif not isinstance(node, dict):
            raise ConfigError(f"{path}: --set {key}: {where} is not a section")
        if i == len(parts) - 1:
            node[p] = value
        elif isinstance(node, dict):
            # a number after a key the file leaves out indexes a list that has no entries yet
            node = node.setdefault(p, [] if parts[i + 1].isdigit() else {})
        else:
            node = node[p]


def _build(cls, data, prefix: str):
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'top level'}: expected a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.name != "file"}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"{prefix}{unknown[0]}: unknown key (known: {', '.join(fields)})")
    hints = typing.get_type_hints(cls)
    kwargs = {name: _coerce(hints[name], value, f"{prefix}{name}") for name, value in data.items()}
    try:
        return cls(**kwargs)
    except ConfigError as e:
        raise ConfigError(f"{prefix}{e}") from None


def _coerce(tp, value, key: str):
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        if len(options) > 1:  # e.g. a mapping or a list: the option of the value's own kind
            kinds = [dict if dataclasses.is_dataclass(a) else typing.get_origin(a) or a for a in options]
            options = [a for a, kind in zip(options, kinds) if isinstance(value, kind)] or options[:1]
        return _coerce(options[0], value, key)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, key + ".")
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {type(value).__name__} {value!r}")
        return [_coerce(args[0], v, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {type(value).__name__}")
        if args:
            return {_coerce(args[0], k, f"{key}.{k}"): _coerce(args[1], v, f"{key}.{k}") for k, v in value.items()}
        return dict(value)
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):  # YAML reads 1e-5 (no dot) as a string
        try:
            return float(value)
        except ValueError:
            pass
    if tp in (int, float, str, bool) and not (isinstance(value, tp) and not (tp is int and isinstance(value, bool))):
        raise ConfigError(f"{key}: expected {tp.__name__}, got {type(value).__name__} {value!r}")
    return value
