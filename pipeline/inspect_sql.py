"""`distill sql RUN [QUERY]`: DuckDB over a run's tables, as views, read-only.

    distill sql quickstart "SELECT finish_reason, count(*) FROM generations GROUP BY ALL"
    distill sql quickstart --file sql/inspect/drop_reasons.sql --format csv --output reasons.csv
    distill sql quickstart            # interactive prompt with the views defined

Views (those whose files exist): prompts, prepare_rejects, augment, generations, teacher_topk
(encoded; see pipeline.topk), verdicts, clean, rejects, eval, sweep. Read-only for real: once the views are set up
the connection is locked with DuckDB's own settings (file access only inside the run directory,
no extension install or load, configuration locked), a query must be one SELECT (or EXPLAIN), and
--output is written from Python, so no query can change the run or read or write anything else.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import click
import duckdb
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from pipeline.errors import PipelineError, sql_error
from pipeline.files import TMP_SUFFIX, atomic_path, open_parquet, sql_quote

# view -> files under the run directory (a glob for sharded tables); for prompts, the first that
# exists: an augmented run's table (prepare's prompts and the kept variants), else prepare's
VIEWS = {
    "prompts": ("augment/prompts.parquet", "prepare/prompts.parquet"),
    "prepare_rejects": "prepare/rejects.parquet",
    "augment": "augment/variants.parquet",
    "generations": "generate/generations/*.parquet",
    "teacher_topk": "generate/teacher_topk/*.parquet",
    "verdicts": "clean/verdicts.parquet",
    "clean": "clean/clean.parquet",
    "rejects": "clean/rejects.parquet",
    "eval": "eval/results.parquet",
    "sweep": "sweep/sweep.parquet",
}


def resolve_run(run: str, artifacts_dir: str = "artifacts") -> Path:
    for candidate in (Path(run), Path(artifacts_dir) / run):
        if candidate.is_dir():
            return candidate
    raise PipelineError(f"{run}: no such run (neither a directory nor {Path(artifacts_dir) / run})")


def connect(run_dir: Path) -> tuple[duckdb.DuckDBPyConnection, list[str]]:
    """An in-memory DuckDB with one view per table the run has, locked read-only; returns the view
    names. A file that is not readable Parquet is left out of its view with a one-line warning,
    so the rest of the run can still be queried."""
    con = duckdb.connect()
    defined = []
    for view, patterns in VIEWS.items():
        patterns = (patterns,) if isinstance(patterns, str) else patterns
        pattern = next((p for p in patterns if any(run_dir.glob(p))), patterns[-1])
        files = []
        for p in sorted(run_dir.glob(pattern)):
            if p.name.endswith(TMP_SUFFIX):
                continue
            try:
                open_parquet(p)
                files.append(str(p))
            except PipelineError as e:
                click.secho(f"warning: {e}; left out of view {view}", fg="yellow", err=True)
        if files:
            con.execute(f"CREATE VIEW {view} AS SELECT * FROM read_parquet([{', '.join(map(sql_quote, files))}])")
            defined.append(view)
    if not defined:
        raise PipelineError(f"{run_dir}: no tables yet (run `distill prepare` first)")
    for setting in (f"SET allowed_directories = [{sql_quote(run_dir.resolve())}]", "SET enable_external_access = false",
                    "SET autoinstall_known_extensions = false", "SET autoload_known_extensions = false",
                    "SET lock_configuration = true"):
        con.execute(setting)
    return con, defined


READ_ONLY = (duckdb.StatementType.SELECT, duckdb.StatementType.EXPLAIN)


def check_read_only(con, query: str, where: str) -> None:
    """One SELECT (or EXPLAIN) statement, or a one-line refusal naming what was found."""
    try:
        statements = con.extract_statements(query)
    except (duckdb.Error, UnicodeDecodeError) as e:
        raise PipelineError(f"{where}: {sql_error(e)}") from None
    if len(statements) != 1:
        raise PipelineError(f"{where}: expected one statement, found {len(statements)}; distill sql is read-only")
    kind = statements[0].type
    if kind not in READ_ONLY:
        raise PipelineError(f"{where}: {kind.name} refused: distill sql runs one SELECT, read-only")


def run(run_dir: Path, query: str | None, file: str | None, fmt: str, output: str | None) -> None:
    con, views = connect(run_dir)
    if file:
        path = Path(file)
        if not path.is_file():
            raise PipelineError(f"{file}: no such file")
        try:
            query = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise PipelineError(f"{file}: not UTF-8 text (byte {e.start})") from None
    if query is None:
        return repl(con, views)
    where = file or "query"
    query = query.strip()
    check_read_only(con, query, where)
    try:
        if output:
            write_result(con.sql(query).to_arrow_table(), Path(output), fmt)
            click.echo(f"wrote {output}", err=True)
        elif fmt == "table":
            con.sql(query).show(max_width=200, max_rows=100)
        elif fmt == "csv":
            pacsv.write_csv(con.sql(query).to_arrow_table(), sys.stdout.buffer)
        elif fmt == "json":  # one JSON object per line
            for row in con.sql(query).to_arrow_table().to_pylist():
                click.echo(json.dumps(row, default=str, ensure_ascii=False))
        else:
            raise PipelineError("--format parquet needs --output FILE")
    except (duckdb.Error, UnicodeDecodeError) as e:
        raise PipelineError(f"{where}: {sql_error(e)}") from None


def write_result(table, path: Path, fmt: str) -> None:
    """The result to a file, from Python (the path never enters SQL), written whole or not at all."""
    with atomic_path(path) as tmp:
        if fmt == "parquet":
            pq.write_table(table, tmp, compression="zstd")
        elif fmt == "json":
            tmp.write_text(json.dumps(table.to_pylist(), default=str, ensure_ascii=False) + "\n", encoding="utf-8")
        else:  # csv, and table written as csv
            pacsv.write_csv(table, tmp)


def repl(con, views: list[str]) -> None:
    """A minimal prompt: statements end with ';', .quit or Ctrl-D leaves."""
    click.echo(f"views: {', '.join(views)}   (end statements with ';', .quit to leave)")
    buffer = ""
    while True:
        try:
            line = input("distill> " if not buffer else "     ...> ")
        except EOFError:
            click.echo()
            return
        if not buffer and line.strip() in (".quit", ".exit", "\\q"):
            return
        buffer += line + "\n"
        if buffer.strip().endswith(";"):
            try:
                check_read_only(con, buffer, "query")
                con.sql(buffer).show(max_width=200, max_rows=100)
            except PipelineError as e:
                click.secho(f"error: {e}", fg="red", err=True)
            except (duckdb.Error, UnicodeDecodeError) as e:
                click.secho(f"error: {sql_error(e)}", fg="red", err=True)
            buffer = ""
