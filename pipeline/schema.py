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
    "One row per unique, cleaned prompt (prepare/prompts.parquet).",
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

TABLES = {t.name: t for t in (PROMPTS, PREPARE_REJECTS)}
