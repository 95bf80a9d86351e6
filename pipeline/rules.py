"""Clean's rules as DuckDB views: a rule's .sql file read (clean.sql_dir), defined as a view that
must be one SELECT of sample_ids (DuckDB's errors point at the file's line), and the eval texts
the `contaminated` rule reads. clean runs every rule; augment runs `contaminated` on its variants.
"""
from __future__ import annotations

import re
from pathlib import Path

import duckdb
import pyarrow as pa

from pipeline.config import EvalFileConfig, InputConfig
from pipeline.errors import PipelineError, sql_error
from pipeline.files import sql_quote
from pipeline.rows import MISSING, RowError, lookup, read_records, to_prompt


def rule_sql(sql_dir: Path, rule: str) -> tuple[Path, str]:
    path = sql_dir / f"{rule}.sql"
    if not path.is_file():
        what = "clean.sql_dir: no clean.sql (the selection's definition)" if rule == "clean" else \
            f"clean.rules: {rule}: no rule file"
        raise PipelineError(f"{what} {path}")
    try:
        return path, path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise PipelineError(f"{path}: not UTF-8 text (byte {e.start})") from None


def define_view(con, name: str, path: Path, sql: str) -> None:
    """CREATE VIEW name AS <the file>: the file's text starts line 1, so DuckDB's LINE n is the file's."""
    body = sql.strip().rstrip(";")
    try:
        statements = con.extract_statements(body)
        if len(statements) != 1 or statements[0].type != duckdb.StatementType.SELECT:
            raise PipelineError(f"{path}: must be a single SELECT (found {len(statements)} statements)")
        # quoted: a rule's file name may be an SQL keyword (semi.sql, order.sql)
        con.execute(f'CREATE OR REPLACE TEMP VIEW "{name}" AS {body}')
        described = con.execute(f'SELECT * FROM "{name}" LIMIT 0').description
    except (duckdb.Error, UnicodeDecodeError) as e:
        raise PipelineError(f"{path}: {sql_error(e)}{_position(e)}") from None
    types = {d[0]: str(d[1]) for d in described}
    if "sample_id" not in types:
        raise PipelineError(f"{path}: the rule must select a sample_id column (it selects {', '.join(types)})")
    if types["sample_id"] not in ("VARCHAR", "STRING"):
        raise PipelineError(f"{path}: its sample_id column is {types['sample_id']}, not VARCHAR")


def strip_comments(sql: str) -> str:
    return re.sub(r"--[^\n]*", "", sql)


def _position(e: Exception) -> str:
    m = re.search(r"LINE (\d+):", str(e))
    return f" (line {m.group(1)})" if m else ""


def load_eval_texts(con, prompts: Path, extra: list[EvalFileConfig], form: str = "NFC") -> None:
    """Table `eval_texts(text)`: the user text of the run's eval prompts and of every configured
    eval set, whose prompts are mapped and cleaned (Unicode `form`) as prepare does an input's."""
    con.execute(f"""CREATE TABLE eval_texts AS
        SELECT array_to_string(list_transform(list_filter(messages, lambda m: m.role = 'user'), lambda m: m.content),
                               chr(10)) AS text
        FROM read_parquet({sql_quote(prompts)}) WHERE split = 'eval'""")
    texts = []
    for f in extra:
        try:
            texts += _eval_file_texts(f, form)
        except PipelineError as e:
            raise PipelineError(f"clean.decontam_files: {e}") from None
    con.register("eval_files_arrow", pa.table({"text": pa.array(texts, pa.string())}))
    con.execute("INSERT INTO eval_texts SELECT text FROM eval_files_arrow")
    con.unregister("eval_files_arrow")


def _eval_file_texts(f: EvalFileConfig, form: str) -> list[str]:
    """One eval set's prompts, each its user turns joined by newlines, as eval_texts holds the run's."""
    column = f.messages or f.prompt
    spec = InputConfig(path=f.path, prompt=f.prompt, messages=f.messages)
    texts, found = [], False
    for line, row in read_records(f):
        try:
            if isinstance(row, RowError):
                raise row
            value = lookup(row, column)
            if value is MISSING:
                continue
            found = True
            prompt = to_prompt({column: value}, spec, form)
        except RowError as e:
            raise PipelineError(f"{f.path}:{line}: {e}") from None
        if prompt is not None:
            texts.append("\n".join(m["content"] for m in prompt["messages"] if m["role"] == "user"))
    if not found:  # a misspelt column would make the set silently empty
        raise PipelineError(f"{f.path}: no row has '{column}'")
    return texts
