"""Stage `clean`: filter, verify and deduplicate the teacher's traces with DuckDB SQL
(artifacts/<run>/clean/).

    distill clean configs/quickstart.yaml

Every rule is a file sql/<rule>.sql: one SELECT of named CTEs over the view `candidates` (the
samples no earlier rule dropped) returning the `sample_id`s it drops. `clean.rules` lists the
rules that run, in order; parameters reach the SQL as DuckDB variables (getvariable('max_tokens')),
one per scalar field of the `clean` section plus `seed`, `teacher_reasons`, `lsh_bands`, `lsh_rows`.
Only the text columns of the generation shards are read; the top-k sidecar never enters.

Two inputs are computed in Python because they need it: `verdicts` (answers checked against the
reference with math-verify, before the rules) and `minhash` (shingle signatures, built over the
current candidates just before a rule that mentions it). One SQL function is Python too:
script_share (pipeline/scripts.py), sql/language_mix.sql's letter count. Outputs: clean.parquet (the selection),
rejects.parquet (the first rule that dropped each sample), verdicts.parquet, and the funnel in
the manifest.
"""
from __future__ import annotations

import dataclasses
import itertools
import json
import math
import os
import re
import shutil
import socket
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from pathlib import Path

import click
import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
from duckdb import sqltypes

from pipeline import manifest, minhash, scripts, toolcalls
from pipeline.config import CleanConfig, Config
from pipeline.errors import PipelineError, sql_error
from pipeline.files import (
    TMP_SUFFIX,
    atomic_path,
    open_parquet,
    open_table,
    pid_alive,
    sql_quote,
)
from pipeline.rules import define_view, load_eval_texts, rule_sql, strip_comments
from pipeline.schema import CLEAN, CLEAN_REJECTS, GENERATIONS, PROMPTS, VERDICTS
from pipeline.scoring import extract, is_correct

# Generation columns the rules may read: text and metadata, never token ids.
SAMPLE_COLUMNS = ("sample_id", "prompt_id", "sample_idx", "split", "reasoning", "answer", "reasoning_closed",
                  "think_end_count", "completion_tokens", "finish_reason")


def run(cfg: Config) -> dict:
    started = time.time()
    gen = manifest.require(cfg, "generate")
    out = cfg.run_dir / "clean"
    files = generation_files(cfg.run_dir / "generate" / "generations")
    prompts = manifest.prompts_path(cfg)
    open_table(PROMPTS, prompts)  # schema check with the file named
    if not files:
        click.secho(f"warning: {cfg.run_dir / 'generate/generations'}: no shards; the clean selection is empty",
                    fg="yellow", err=True)

    seconds = {}
    with connect(cfg.clean, out) as con:
        set_variables(con, cfg, teacher_reasons=bool(gen["config"]["generate"]["think_end"]))
        t = time.time()
        n = load_samples(con, files, prompts)
        load_eval_texts(con, prompts, cfg.clean.decontam_files, cfg.prepare.unicode_form)
        seconds["load"] = time.time() - t
        t = time.time()
        verify(con)
        seconds["verify"] = time.time() - t
        t = time.time()
        funnel = apply_rules(con, cfg.clean)
        seconds["rules"] = time.time() - t
        t = time.time()
        counts = {"samples": n, "kept": funnel[-1]["rows_out"] if funnel else n}
        clean_sql, sql = rule_sql(Path(cfg.clean.sql_dir), "clean")
        define_view(con, "clean", clean_sql, sql)
        written = {
            "clean": export_by_sample_id(con, "clean", out / "clean.parquet", CLEAN, clean_sql,
                                         DUCKDB_SHARE * cfg.clean.memory_limit_mb * 2**20),
            "rejects": export(con, "SELECT d.sample_id, s.prompt_id, s.split, d.rule FROM dropped d JOIN samples s "
                                   "USING (sample_id) ORDER BY d.rule_order, d.sample_id", out / "rejects.parquet",
                              CLEAN_REJECTS, "rejects"),
            "verdicts": export(con, "SELECT * FROM verdicts", out / "verdicts.parquet", VERDICTS, "verdicts")}
        # The books must balance: what the funnel says was kept and dropped is what the files hold.
        expected = {"clean": counts["kept"], "rejects": n - counts["kept"]}
        for name, rows in expected.items():
            if written[name] != rows:
                raise PipelineError(f"{out / (name + '.parquet')}: holds {written[name]} rows, the funnel counts {rows}; "
                                    f"{clean_sql} must select every kept sample once")
        seconds["write"] = time.time() - t

    m = manifest.write(cfg, "clean", started, counts, funnel=funnel,
                       seconds={k: round(v, 3) for k, v in seconds.items()})
    click.echo(f"clean: kept {counts['kept']} of {n} samples -> {out / 'clean.parquet'}")
    return m


# ---------------------------------------------------------------------------------------------
# Inputs


def check_unique_samples(con) -> None:
    """A sample_id in two shards (or twice in one) would make joins lose or double samples: refuse."""
    dup = con.execute("SELECT sample_id, min(source_file), max(source_file), count(*) FROM samples "
                      "GROUP BY sample_id HAVING count(*) > 1 LIMIT 1").fetchall()
    if dup:
        sid, first, last, count = dup[0]
        where = f"{first} and {last}" if first != last else f"{first} ({count} times)"
        raise PipelineError(f"sample_id {sid} is in {where}: each sample must be in one shard once; "
                            "remove the duplicate shard (or rerun generate into a new run)")


def generation_files(directory: Path) -> list[Path]:
    """The finished generation shards, each checked against the schema with its name in the error."""
    files = sorted(p for p in directory.glob("*.parquet") if not p.name.endswith(TMP_SUFFIX))
    for f in files:
        open_table(GENERATIONS, f)
    return files


DUCKDB_SHARE = 0.82  # of clean.memory_limit; at 0.85 the 1M-row bench peaked 11 MB over its limit


@contextmanager
def connect(c: CleanConfig, out: Path):
    """An in-memory DuckDB database whose tables, beyond memory_limit, spill to a scratch
    directory, so a run larger than RAM completes instead of failing (a database file would write
    every table to disk even when it fits, at three times the load time)."""
    scratch = Path(c.temp_dir) if c.temp_dir else out / "duckdb.tmp"
    scratch.mkdir(parents=True, exist_ok=True)
    _remove_orphans(scratch)
    workdir = Path(tempfile.mkdtemp(dir=scratch, prefix=f"{socket.gethostname()}-{os.getpid()}-"))
    con = duckdb.connect()
    try:
        # DuckDB fills its limit before it spills; the rest is for Python (verdicts, MinHash batches)
        con.execute(f"SET memory_limit = '{DUCKDB_SHARE * c.memory_limit_mb:.0f}MB'")
        con.execute(f"SET temp_directory = {sql_quote(workdir / 'spill')}")
        con.execute("SET preserve_insertion_order = false")
        if c.threads:
            con.execute(f"SET threads = {c.threads}")
        scripts.register(con)  # sql/language_mix.sql's letter count
        yield con
    except duckdb.OutOfMemoryException as e:
        raise PipelineError(f"DuckDB ran out of memory at clean.memory_limit={c.memory_limit}: {sql_error(e)}") from None
    finally:
        con.close()
        shutil.rmtree(workdir, ignore_errors=True)
        for d in (scratch, out):  # nothing empty left behind by a run that failed (other runs' spill stays)
            with suppress(OSError):
                d.rmdir()


def _remove_orphans(scratch: Path) -> None:
    """Spill directories left by a killed clean on this host (their process is gone); those of
    runs still going, or of other hosts sharing temp_dir, are left alone."""
    for d in scratch.glob(f"{socket.gethostname()}-*-*"):
        pid = d.name[len(socket.gethostname()) + 1:].split("-")[0]
        if pid.isdigit() and not pid_alive(int(pid)):
            shutil.rmtree(d, ignore_errors=True)


def set_variables(con, cfg: Config, teacher_reasons: bool) -> None:
    c = cfg.clean
    values = {f.name: getattr(c, f.name) for f in dataclasses.fields(c) if not isinstance(getattr(c, f.name), list)}
    bands, rows = minhash.lsh_params(c.near_dup_threshold, c.near_dup_num_perm)
    values.update(seed=cfg.run.seed, teacher_reasons=teacher_reasons, lsh_bands=bands, lsh_rows=rows)
    for name, value in values.items():
        con.execute(f"SET VARIABLE {name} = ?", [value])


def load_samples(con, files: list[Path], prompts: Path) -> int:
    """Table `samples`: generation text columns joined to their prompt's task, reference, declared
    language (NULL where unknown) and text. `completion_chars` (characters in reasoning + answer)
    is counted once here: several rules need it, and strlen(reasoning) + strlen(answer) =
    completion_chars tells ASCII text at no cost."""
    cols = ", ".join(f"g.{c}" for c in SAMPLE_COLUMNS)
    source = f"read_parquet([{', '.join(map(sql_quote, files))}], filename = true)" if files else _empty_generations()
    con.execute(f"""
        CREATE TABLE samples AS
        SELECT {cols}, g.filename AS source_file, length(g.reasoning) + length(g.answer) AS completion_chars,
               p.task, p.source, p.difficulty, p.reference, p.tools, p.language,
               array_to_string(list_transform(list_filter(p.messages, lambda m: m.role = 'user'), lambda m: m.content),
                               chr(10)) AS prompt_text,
               true AS kept
        FROM {source} g
        LEFT JOIN read_parquet({sql_quote(prompts)}) p USING (prompt_id)""")
    check_unique_samples(con)
    orphans = con.execute("SELECT count(*), any_value(prompt_id) FROM samples WHERE task IS NULL").fetchall()[0]
    if orphans[0]:
        raise PipelineError(f"{prompts}: {orphans[0]} generations refer to prompts it does not hold "
                            f"(e.g. {orphans[1]}); was prepare rerun after generate?")
    con.execute("CREATE TABLE dropped (sample_id VARCHAR, rule VARCHAR, rule_order INTEGER)")
    # A flag rather than an anti-join with `dropped`: the planner may build that join's hash
    # table on the samples side, text and all.
    con.execute("CREATE VIEW candidates AS SELECT * EXCLUDE (kept, source_file) FROM samples WHERE kept")
    return con.execute("SELECT count(*) FROM samples").fetchall()[0][0]


def _empty_generations() -> str:
    return "(SELECT " + ", ".join(f"NULL::{_duck_type(c)} AS {c}" for c in SAMPLE_COLUMNS) + \
        ", NULL::VARCHAR AS filename WHERE false)"


def _duck_type(column: str) -> str:
    t = GENERATIONS.arrow_schema.field(column).type
    return {pa.string(): "VARCHAR", pa.int32(): "INTEGER", pa.bool_(): "BOOLEAN"}[t]


# ---------------------------------------------------------------------------------------------
# Answer verification (Python: math-verify is a Python package)


def verify(con, batch_rows: int = 20000) -> int:
    """Table `verdicts(sample_id, extracted, correct, invalid_call)` for every sample whose prompt
    has a reference; invalid_call says why a tool task's first call breaks the prompt's schemas."""
    query = con.cursor().sql("SELECT sample_id, task, reference, answer, tools FROM samples WHERE reference IS NOT NULL")
    ids, extracted, correct, invalid = [], [], [], []
    for batch in query.to_arrow_reader(batch_rows):
        for sid, task, ref, answer, tools in zip(*(batch.column(i).to_pylist() for i in range(5))):
            got = extract(answer, task)
            ids.append(sid)
            extracted.append(got)
            correct.append(is_correct(got, ref, task))
            calls = toolcalls.parse_calls(answer) if task == "tool" and tools else []
            invalid.append(toolcalls.validate_call(calls[0], json.loads(tools)) if calls else None)
    verdicts = VERDICTS.from_pylist([]) if not ids else pa.table(
        {"sample_id": ids, "extracted": pa.array(extracted, pa.string()), "correct": correct,
         "invalid_call": pa.array(invalid, pa.string())}, schema=VERDICTS.arrow_schema)
    con.register("verdicts_arrow", verdicts)
    con.execute("CREATE TABLE verdicts AS SELECT * FROM verdicts_arrow")
    con.unregister("verdicts_arrow")
    return len(ids)


# ---------------------------------------------------------------------------------------------
# Near-duplicate signatures (pipeline/minhash.py), a table for sql/near_duplicate.sql


def build_minhash(con, c: CleanConfig, seed: int) -> int:
    """Table `minhash(sample_id, rid, sig UINTEGER[num_perm])` over the current candidates (see
    minhash.signatures); `rid` numbers the rows 0.., an integer key for the rule's joins where the
    sample_id strings would make its band table spill. The signatures are a DuckDB function for
    the statement, so DuckDB's threads compute them as they scan."""
    mix, bins = minhash.shingle_mix(c.near_dup_shingle, seed), c.near_dup_num_perm

    def signature(texts: pa.ChunkedArray) -> pa.Array:
        sig = minhash.signatures(texts.combine_chunks(), mix, bins)
        return pa.FixedSizeListArray.from_arrays(pa.array(sig.ravel()), bins)

    con.create_function("minhash_signature", signature, [sqltypes.VARCHAR], duckdb.array_type(sqltypes.UINTEGER, bins),
                        type="arrow", null_handling="special", side_effects=False)
    try:
        # numbered in a second statement: a window in the first would run the function on one thread
        con.execute("""CREATE OR REPLACE TEMP TABLE minhash_unnumbered AS
                       SELECT sample_id, minhash_signature(prompt_text || ' ' || reasoning || ' ' || answer) AS sig
                       FROM candidates""")
    finally:
        con.remove_function("minhash_signature")
    con.execute("CREATE OR REPLACE TABLE minhash AS "
                "SELECT sample_id, (row_number() OVER () - 1)::INTEGER AS rid, sig FROM minhash_unnumbered")
    con.execute("DROP TABLE minhash_unnumbered")
    return con.execute("SELECT count(*) FROM minhash").fetchone()[0]


# Tables computed in Python just before a rule whose SQL mentions them.
PYTHON_TABLES = {"minhash": build_minhash}


# ---------------------------------------------------------------------------------------------
# Rules


def apply_rules(con, c: CleanConfig, rules: list[str] | None = None) -> list[dict]:
    """Run each rule over the current candidates, recording what it drops; returns the funnel."""
    rules = c.rules if rules is None else rules
    funnel = []
    rows_in = con.execute("SELECT count(*) FROM candidates").fetchall()[0][0]
    seed = con.execute("SELECT getvariable('seed')").fetchall()[0][0]
    click.echo(f"clean funnel: {'rule':20s} {'in':>9s} {'dropped':>9s} {'out':>9s}")
    for order, rule in enumerate(rules):
        path, sql = rule_sql(Path(c.sql_dir), rule)
        t = time.time()
        built = [name for name in PYTHON_TABLES if re.search(rf"\b{name}\b", strip_comments(sql))]
        for name in built:
            PYTHON_TABLES[name](con, c, seed)
        define_view(con, rule, path, sql)
        try:
            con.execute(f'INSERT INTO dropped SELECT DISTINCT sample_id, ?, ? FROM "{rule}"', [rule, order])
        except (duckdb.Error, UnicodeDecodeError) as e:
            raise PipelineError(f"{path}: {sql_error(e)}") from None
        stray = con.execute("SELECT any_value(d.sample_id), count(*) FROM dropped d ANTI JOIN candidates c "
                            "USING (sample_id) WHERE d.rule_order = ?", [order]).fetchall()[0]
        if stray[1]:
            raise PipelineError(f"{path}: returned {stray[1]} sample_ids that are not current candidates "
                                f"(e.g. {stray[0]!r}); a rule selects sample_id FROM candidates")
        con.execute("UPDATE samples SET kept = false FROM dropped d "
                    "WHERE d.rule_order = ? AND samples.sample_id = d.sample_id", [order])
        for name in built:  # rebuilt for the next rule that needs it; the memory goes to the rules and the write
            con.execute(f"DROP TABLE {name}")
        dropped = con.execute("SELECT count(*) FROM dropped WHERE rule_order = ?", [order]).fetchall()[0][0]
        funnel.append({"rule": rule, "rows_in": rows_in, "dropped": dropped, "rows_out": rows_in - dropped,
                       "seconds": round(time.time() - t, 3)})
        click.echo(f"{'':14s}{rule:20s} {rows_in:>9,} {dropped:>9,} {rows_in - dropped:>9,}  ({time.time() - t:.1f}s)")
        rows_in -= dropped
    return funnel


# ---------------------------------------------------------------------------------------------
# Outputs


def export_by_sample_id(con, view: str, path: Path, spec, what, memory_bytes: float) -> int:
    """Write a view's rows to Parquet in sample_id order, atomically, checked against the table's
    schema; returns the rows written. One sample_id range at a time, each a 32nd of DuckDB's
    memory or less (two are in Python's hands at once): one ORDER BY over a selection larger than
    the memory left spills it to disk, at twice the time of the whole write (1M rows of 2 KB)."""
    rows, chars = con.execute("SELECT count(*), coalesce(sum(completion_chars), 0) FROM candidates").fetchone()
    ranges = max(1, min(rows, math.ceil(32 * chars / memory_bytes)))
    inner = con.execute("SELECT quantile_disc(sample_id, ?) FROM candidates",
                        [[i / ranges for i in range(1, ranges)]]).fetchone()[0] if ranges > 1 else []
    bounds = [None, *sorted(set(inner)), None]
    # an ordered fetch can come back out of order at a vector boundary without this
    con.execute("SET preserve_insertion_order = true")

    def fetch(lo, hi) -> pa.Table:
        where = " AND ".join(["true"] + [f"sample_id {op} ?" for op, b in ((">=", lo), ("<", hi)) if b is not None])
        return con.sql(f'SELECT * FROM "{view}" WHERE {where} ORDER BY sample_id',
                       params=[b for b in (lo, hi) if b is not None]).to_arrow_table()

    written = 0
    # DuckDB sorts the next range on its threads while this one compresses Parquet pages on another
    with atomic_path(path) as tmp, ThreadPoolExecutor(1) as fetcher:
        spans = list(itertools.pairwise(bounds))
        pending = fetcher.submit(fetch, *spans[0])
        writer = None
        try:
            for following in [*spans[1:], None]:
                table = pending.result()
                if following is not None:
                    pending = fetcher.submit(fetch, *following)
                if writer is None:
                    spec.validate(table.schema, f"{what}: output")
                    writer = pq.ParquetWriter(tmp, table.schema, compression="zstd")
                writer.write_table(table)
                written += table.num_rows
        finally:
            if writer is not None:
                writer.close()
    return written


def export(con, query: str, path: Path, spec, what) -> int:
    """COPY a query's rows to Parquet atomically, checked against the table's schema; returns the
    rows written."""
    with atomic_path(path) as tmp:
        con.execute(f"COPY ({query}) TO {sql_quote(tmp)} (FORMAT parquet, COMPRESSION zstd)")
        written = open_parquet(tmp)
        spec.validate(written.schema_arrow, f"{what}: output")
        return written.metadata.num_rows

