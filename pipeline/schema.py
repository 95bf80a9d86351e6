"""Every Parquet table the stages exchange: column names, Arrow types and one line of meaning each.

Writers build tables with `TABLE.arrow_schema` and readers call `TABLE.validate(...)`, so a shard
written by an older or foreign tool fails with the file and column named instead of deep inside
a stage. The README's table reference is checked against this module by a test.
"""
from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa

from pipeline.errors import PipelineError


@dataclass(frozen=True)
class Column:
    name: str
    type: pa.DataType
    doc: str
    nullable: bool = False


@dataclass(frozen=True)
class Table:
    name: str
    doc: str
    columns: tuple[Column, ...]

    @property
    def arrow_schema(self) -> pa.Schema:
        return pa.schema([pa.field(c.name, c.type, nullable=c.nullable) for c in self.columns])

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.columns]

    def validate(self, schema: pa.Schema, where: str) -> None:
        """Raise naming `where` and the first column that is missing or of the wrong type."""
        for c in self.columns:
            idx = schema.get_field_index(c.name)
            if idx < 0:
                raise PipelineError(f"{where}: not a {self.name} table: column '{c.name}' is missing")
            got = schema.field(idx).type
            if not got.equals(c.type):
                raise PipelineError(f"{where}: column '{c.name}' is {got}, the {self.name} schema says {c.type}")

    def from_pylist(self, rows: list[dict]) -> pa.Table:
        return pa.Table.from_pylist(rows, schema=self.arrow_schema)


MESSAGE = pa.struct([pa.field("role", pa.string()), pa.field("content", pa.string())])

PROMPTS = Table(
    "prompts",
    "One row per unique, cleaned prompt (prepare/prompts.parquet; with augment on, augment/prompts.parquet: "
    "those and the variants that passed its checks).",
    (
        Column("prompt_id", pa.string(), "sha256 (16 hex) of the canonical messages and tools: stable across runs"),
        Column("messages", pa.list_(MESSAGE), "chat messages [{role, content}], system prompt first if any"),
        Column("tools", pa.string(), "tool (function) schemas as a JSON list, for function-calling prompts", True),
        Column("reference", pa.string(), "reference answer, if the input has one", True),
        Column("task", pa.string(), "how answers are scored: math, exact, choice or tool"),
        Column("source", pa.string(), "where the row came from (input file name or its source column)"),
        Column("source_id", pa.string(), "the user's own id for the row, if the input has one", True),
        Column("difficulty", pa.int32(), "difficulty level, if known", True),
        Column("split", pa.string(), "train or eval"),
        Column("completion", pa.string(), "an existing completion to score with `generate --score`, if given", True),
        Column("language", pa.string(), "the row's language code (en, zh, ...), if known", True),
        Column("parent_prompt_id", pa.string(), "a variant written by `distill augment`: the prompt it rewrites", True),
        Column("template", pa.string(), "a variant: the augment template that wrote it (paraphrase, translate_zh, ...)",
               True),
    ),
)

AUGMENT = Table(
    "augment",
    "Every variant the teacher wrote in `distill augment`, kept or not (augment/variants.parquet).",
    (
        Column("prompt_id", pa.string(), "the variant's prompt_id: the hash of its messages and tools, as prepare's"),
        Column("parent_prompt_id", pa.string(), "the prompt it rewrites"),
        Column("template", pa.string(), "the template that asked for it"),
        Column("variant_idx", pa.int32(), "0..augment.n-1 among the parent's variants"),
        Column("split", pa.string(), "the parent's split, which the variant keeps"),
        Column("reply", pa.string(), "the teacher's whole reply, reasoning included"),
        Column("text", pa.string(), "the new user message: its answer, a leading label and enclosing quotes removed"),
        Column("finish_reason", pa.string(), "stop, length, or too_long (the request itself does not fit max_model_len)"),
        Column("rejected", pa.string(), "the first check it failed (empty, too_long, reference, near_duplicate_parent, "
               "near_duplicate_variant, exact_duplicate, contaminated); null when kept", True),
    ),
)

PREPARE_REJECTS = Table(
    "prepare_rejects",
    "Input rows that prepare skipped with --on-error skip (prepare/rejects.parquet).",
    (
        Column("source", pa.string(), "input file"),
        Column("line", pa.int64(), "1-based line (JSONL, CSV) or row number (Parquet, HF)"),
        Column("reason", pa.string(), "why the row was rejected"),
    ),
)

GENERATIONS = Table(
    "generations",
    "One row per teacher sample, text only (generate/generations/part-*.parquet). Cleaning reads this.",
    (
        Column("sample_id", pa.string(), "prompt_id and sample_idx joined by '-': the key of every per-sample table"),
        Column("prompt_id", pa.string(), "the prompt (prompts.prompt_id)"),
        Column("sample_idx", pa.int32(), "0..n-1 among the prompt's samples"),
        Column("split", pa.string(), "the prompt's split: train or eval"),
        Column("prompt_text", pa.string(), "the prompt rendered by the teacher's chat template"),
        Column("prompt_token_ids", pa.list_(pa.int32()), "the exact prompt ids the teacher saw"),
        Column("reasoning", pa.string(), "decoded completion before the think-end token (empty if the teacher does not reason)"),
        Column("answer", pa.string(), "decoded completion after the think-end token (empty if reasoning never closed)"),
        Column("reasoning_closed", pa.bool_(), "the completion contains the think-end token (always true for a non-reasoning teacher)"),
        Column("think_end_count", pa.int32(), "how many think-end tokens the completion contains"),
        Column("think_end_index", pa.int32(), "completion token index of the first think-end token", True),
        Column("prompt_tokens", pa.int32(), "prompt length in tokens"),
        Column("completion_tokens", pa.int32(), "generated tokens, final EOS included"),
        Column("reasoning_tokens", pa.int32(), "tokens before the think-end token"),
        Column("answer_tokens", pa.int32(), "tokens after the think-end token"),
        Column("finish_reason", pa.string(), "stop (EOS or stop token), length (hit max_new_tokens) or scored (--score)"),
        Column("model", pa.string(), "teacher model path or name"),
        Column("seed", pa.int64(), "this sample's seed (prompt seed + sample_idx), or the engine seed", True),
        Column("latency_s", pa.float32(), "seconds from submission to the finished sample"),
    ),
)

TEACHER_TOPK = Table(
    "teacher_topk",
    "The teacher's distribution at every generated token, one row per sample (generate/teacher_topk/part-*.parquet); "
    "joined to generations by sample_id. Encoded compactly: decode with pipeline.topk.decode and the file's id order.",
    (
        Column("sample_id", pa.string(), "the sample (generations.sample_id)"),
        Column("k", pa.int16(), "candidates stored per position"),
        Column("sampled_index", pa.list_(pa.uint16()),
               "per completion token (final EOS included, P positions): its index in the top k, or k if not there"),
        Column("sampled_off_ids", pa.list_(pa.int32()), "ids of the sampled tokens not in the top k, in order"),
        Column("sampled_off_logprobs_q", pa.list_(pa.uint16()), "their quantized logprobs, in order"),
        Column("topk_ranks_hi", pa.list_(pa.uint16()), "top-k ids as ranks in the file's id order, P x k: rank >> 8"),
        Column("topk_ranks_lo", pa.list_(pa.uint8()), "the same ranks' low byte: rank & 255"),
        Column("topk_logprobs_q", pa.list_(pa.uint8()), "top-k logprobs quantized, gap-coded along k (P x k); 255 = escape"),
        Column("topk_logprobs_big", pa.list_(pa.uint16()), "the escaped gaps (>= 255), in order"),
    ),
)

GENERATE_SKIPPED = Table(
    "generate_skipped",
    "Prompts generate could not run (generate/skipped.parquet).",
    (
        Column("prompt_id", pa.string(), "the prompt"),
        Column("prompt_tokens", pa.int32(), "its rendered length"),
        Column("reason", pa.string(), "why it was skipped"),
    ),
)

VERDICTS = Table(
    "verdicts",
    "Every sample whose prompt has a reference, its answer checked (clean/verdicts.parquet).",
    (
        Column("sample_id", pa.string(), "the sample"),
        Column("extracted", pa.string(), "the answer extracted from the completion (\\boxed{}, last number, letter, JSON calls)", True),
        Column("correct", pa.bool_(), "equal to the reference (math-verify equivalence for math, BFCL rules for tool calls, exact match otherwise)"),
        Column("invalid_call", pa.string(), "tool task: why the first call violates the prompt's tool schemas, if it does", True),
    ),
)

CLEAN = Table(
    "clean",
    "The training selection: samples no cleaning rule dropped (clean/clean.parquet), in sample_id order; "
    "sql/clean.sql defines it.",
    (
        Column("sample_id", pa.string(), "the sample (generations.sample_id, teacher_topk.sample_id)"),
        Column("prompt_id", pa.string(), "its prompt"),
        Column("sample_idx", pa.int32(), "0..n-1 among the prompt's samples"),
        Column("split", pa.string(), "train or eval"),
        Column("task", pa.string(), "how the answer is scored"),
        Column("source", pa.string(), "the prompt's source"),
        Column("difficulty", pa.int32(), "the prompt's difficulty, if known", True),
        Column("reasoning", pa.string(), "reasoning text"),
        Column("answer", pa.string(), "answer text"),
        Column("completion_tokens", pa.int32(), "completion length in tokens"),
        Column("finish_reason", pa.string(), "why generation stopped"),
        Column("extracted", pa.string(), "extracted answer, where the prompt has a reference", True),
        Column("correct", pa.bool_(), "verdict, where the prompt has a reference", True),
    ),
)

CLEAN_REJECTS = Table(
    "rejects",
    "Every dropped sample and the first rule that dropped it (clean/rejects.parquet).",
    (
        Column("sample_id", pa.string(), "the sample"),
        Column("prompt_id", pa.string(), "its prompt"),
        Column("split", pa.string(), "train or eval"),
        Column("rule", pa.string(), "the rule (sql/<rule>.sql) that dropped it"),
    ),
)

EVAL_RESULTS = Table(
    "eval",
    "One row per evaluated model, eval prompt and sample (eval/results.parquet).",
    (
        Column("model", pa.string(), "teacher, baseline, student, or an extra model's directory name"),
        Column("prompt_id", pa.string(), "the eval prompt"),
        Column("sample_idx", pa.int32(), "0..n-1"),
        Column("task", pa.string(), "scorer used"),
        Column("source", pa.string(), "the prompt's source"),
        Column("difficulty", pa.int32(), "the prompt's difficulty", True),
        Column("completion", pa.string(), "the model's output text"),
        Column("extracted", pa.string(), "the answer extracted from it", True),
        Column("reference", pa.string(), "the reference answer"),
        Column("correct", pa.bool_(), "extracted answer equals the reference"),
        Column("output_tokens", pa.int32(), "generated tokens"),
        Column("finish_reason", pa.string(), "stop or length"),
        Column("language", pa.string(), "the prompt's language code, if known", True),
        Column("expected_class", pa.string(), "tool task: the expected function (the first, if several) or no_call", True),
        Column("predicted_class", pa.string(), "tool task: the first function called, or no_call", True),
        Column("arg_tp", pa.int32(), "tool task: arguments given and right", True),
        Column("arg_fp", pa.int32(), "tool task: arguments given but wrong or not allowed", True),
        Column("arg_fn", pa.int32(), "tool task: required arguments missing", True),
    ),
)

SWEEP = Table(
    "sweep",
    "One row per trial of `distill sweep`, best or not, in trial order (sweep/sweep.parquet).",
    (
        Column("trial", pa.int32(), "the trial's number in the study; its model is in sweep/trial-NNN/model"),
        Column("params", pa.string(), "the train settings it tried, as a JSON object (field: value)"),
        Column("metric", pa.float64(), "sweep.objective on the eval split's traces (null until complete; a pruned "
               "trial's last per-epoch value)", True),
        Column("state", pa.string(), "COMPLETE, PRUNED, FAIL (an error, a non-finite metric, or killed) or RUNNING"),
        Column("seconds", pa.float64(), "training and measuring time (null while running or when failed)", True),
    ),
)

TABLES = {t.name: t for t in (PROMPTS, PREPARE_REJECTS, AUGMENT, GENERATIONS, TEACHER_TOPK, GENERATE_SKIPPED, VERDICTS,
                              CLEAN, CLEAN_REJECTS, EVAL_RESULTS, SWEEP)}
