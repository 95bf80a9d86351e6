"""`distill sql RUN [QUERY]`: DuckDB over a run's tables, as views, read-only.

    distill sql quickstart "SELECT finish_reason, count(*) FROM generations GROUP BY ALL"
    distill sql quickstart --file sql/inspect/drop_reasons.sql --format csv --output reasons.csv
    distill sql quickstart            # interactive prompt with the views defined

Views (those whose files exist): prompts, generations, teacher_topk (encoded; see
pipeline.topk), verdicts, clean, rejects, eval. The database is in memory and the Parquet files are
only read, so nothing a query does changes the run.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import click
import duckdb
import pyarrow.csv as pacsv

from pipeline.errors import PipelineError
from pipeline.files import TMP_SUFFIX

# view -> files under the run directory (a glob for sharded tables)
VIEWS = {
    "prompts": "prepare/prompts.parquet",
    "generations": "generate/generations/*.parquet",
    "teacher_topk": "generate/teacher_topk/*.parquet",
    "verdicts": "clean/verdicts.parquet",
    "clean": "clean/clean.parquet",
    "rejects": "clean/rejects.parquet",
    "eval": "eval/results.parquet",
}


def resolve_run(run: str, artifacts_dir: str = "artifacts") -> Path:
    for candidate in (Path(run), Path(artifacts_dir) / run):
        if candidate.is_dir():
            return candidate
    raise PipelineError(f"{run}: no such run (neither a directory nor {Path(artifacts_dir) / run})")


def connect(run_dir: Path) -> tuple[duckdb.DuckDBPyConnection, list[str]]:
    """An in-memory DuckDB with one view per table the run has; returns the view names."""
    con = duckdb.connect()
    defined = []
    for view, pattern in VIEWS.items():
        files = sorted(str(p) for p in run_dir.glob(pattern) if not p.name.endswith(TMP_SUFFIX))
        if files:
            con.execute(f"CREATE VIEW {view} AS SELECT * FROM read_parquet({files})")
            defined.append(view)
    if not defined:
        raise PipelineError(f"{run_dir}: no tables yet (run `distill prepare` first)")
    return con, defined


def run(run_dir: Path, query: str | None, file: str | None, fmt: str, output: str | None) -> None:
    con, views = connect(run_dir)
    if file:
        path = Path(file)
        if not path.is_file():
            raise PipelineError(f"{file}: no such file")
        query = path.read_text(encoding="utf-8")
    if query is None:
        return repl(con, views)
    query = query.strip().rstrip(";")
    try:
        if output:
            options = {"csv": "FORMAT csv, HEADER", "json": "FORMAT json, ARRAY true", "parquet": "FORMAT parquet"}[fmt]
            con.execute(f"COPY ({query}) TO '{output}' ({options})")
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
    except duckdb.Error as e:
        raise PipelineError(f"{file or 'query'}: {str(e).strip().splitlines()[0]}") from None


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
                con.sql(buffer).show(max_width=200, max_rows=100)
            except duckdb.Error as e:
                click.secho(f"error: {str(e).strip().splitlines()[0]}", fg="red", err=True)
            buffer = ""
