"""Stage `prepare`: ingest prompts from JSONL, Parquet, CSV or a Hugging Face dataset into the
prompts table (artifacts/<run>/prepare/prompts.parquet).

    distill prepare configs/quickstart.yaml [--on-error skip]

Each row is mapped through its input's column mapping, cleaned (Unicode normalization, control
characters, surrounding whitespace), keyed by a hash of its canonical messages, and dropped when
empty or an exact duplicate; a prompt given in train and in eval is kept in eval only, and
counted. An input's `reference_file` supplies its references by id (BFCL's possible_answer
files). A bad row is a one-line error naming file and line, or with `on_error: skip` a row of
prepare/rejects.parquet.
"""
from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Iterator

import click

from pipeline import arithmetic, manifest, vehicle
from pipeline.config import Config, InputConfig
from pipeline.errors import PipelineError
from pipeline.files import write_table
from pipeline.rows import RowError, read_rows, resolve_format, to_prompt
from pipeline.schema import PREPARE_REJECTS, PROMPTS


def run(cfg: Config) -> dict:
    started = time.time()
    out_dir = cfg.run_dir / "prepare"
    counts: Counter = Counter()
    rejects: list[dict] = []
    kept: dict[str, dict] = {}
    in_both: set[str] = set()  # prompt_ids given in train and in eval

    # Gather (where, line, row, spec) from every input; generated arithmetic problems first.
    sources = []
    if cfg.prepare.arithmetic is not None:
        a = cfg.prepare.arithmetic
        for split, rows in arithmetic.splits(a.n_train, a.n_eval, a.levels, a.seed).items():
            spec = InputConfig(path="arithmetic", split=split, prompt="question", reference="answer", id="id",
                               difficulty="difficulty", task="math")
            sources.append((spec, ((i + 1, r) for i, r in enumerate(rows))))
    if cfg.prepare.vehicle is not None:
        v = cfg.prepare.vehicle
        for split, rows in vehicle.splits(v.n_train, v.n_eval, v.seed).items():
            spec = InputConfig(path="vehicle", split=split, prompt="question", reference="reference", id="id",
                               tools="tools", difficulty="difficulty", language="language", source="source", task="tool")
            sources.append((spec, ((i + 1, r) for i, r in enumerate(rows))))
    for spec in cfg.prepare.inputs:
        sources.append((spec, _read(spec)))

    for spec, rows in sources:
        ids_seen: dict[str, tuple[int, dict]] = {}
        for line, row in rows:
            counts["read"] += 1
            where = f"{spec.path}:{line}"
            try:
                if isinstance(row, RowError):
                    raise row
                prompt = to_prompt(row, spec, cfg.prepare.unicode_form)
                if prompt is not None and prompt["source_id"] is not None:
                    first = ids_seen.get(prompt["source_id"])
                    if first is not None and first[1] != prompt:  # the same row twice is a duplicate, dropped below
                        raise RowError(f"duplicate id {prompt['source_id']!r} with other content (first at line "
                                       f"{first[0]})")
                    ids_seen.setdefault(prompt["source_id"], (line, prompt))
            except RowError as e:
                if cfg.prepare.on_error == "fail":
                    raise PipelineError(f"{where}: {e}") from None
                rejects.append({"source": spec.path, "line": line, "reason": str(e)})
                counts["rejected"] += 1
                continue
            if prompt is None:
                counts["dropped_empty"] += 1
            elif (held := kept.get(prompt["prompt_id"])) is None:
                kept[prompt["prompt_id"]] = prompt
            else:
                counts["dropped_duplicate"] += 1
                if held["split"] != prompt["split"]:
                    # a prompt trained on would score the student's memory: it stays in eval only,
                    # with the eval input's row (its reference, task and source)
                    in_both.add(prompt["prompt_id"])
                    if prompt["split"] == "eval":
                        kept[prompt["prompt_id"]] = prompt

    rows = list(kept.values())
    counts["kept"] = len(rows)
    counts["in_both_splits"] = len(in_both)
    for r in rows:
        counts[f"split_{r['split']}"] += 1
    if not rows:
        raise PipelineError(f"{cfg.file}: no prompts left after cleaning ({dict(counts)})")
    write_table(PROMPTS, PROMPTS.from_pylist(rows), out_dir / "prompts.parquet")
    write_table(PREPARE_REJECTS, PREPARE_REJECTS.from_pylist(rejects), out_dir / "rejects.parquet")
    counts = {k: counts[k] for k in ("read", "rejected", "dropped_empty", "dropped_duplicate", "kept",
                                     "split_train", "split_eval", "in_both_splits")}
    click.echo("prepare: " + ", ".join(f"{k} {v}" for k, v in counts.items()) + ": eval wins")
    if rejects:
        click.echo(f"prepare: {len(rejects)} rejected rows in {out_dir / 'rejects.parquet'}")
    return manifest.write(cfg, "prepare", started, counts)


# ---------------------------------------------------------------------------------------------
# An input's rows (read by pipeline/rows.py), every mapped column checked to exist and the
# references of a reference_file joined.


def _read(spec: InputConfig) -> Iterator[tuple[int, dict | RowError]]:
    fmt = resolve_format(spec.path, spec.format)
    references = _references(spec) if spec.reference_file else None
    first = True
    seen: set = set()
    for line, row in read_rows(spec.path, fmt, spec.hf_split):
        if isinstance(row, dict):
            if first and fmt != "jsonl":
                _require_columns(spec, row.keys(), _mapped(spec))
            first = False
            seen.update(row.keys())
            if references is not None:
                row = _joined(row, spec, references)
        yield line, row
    # JSONL rows may omit an optional key, but a mapped key that no row has is a misspelling
    _require_columns(spec, seen, _mapped(spec))


def _references(spec: InputConfig) -> dict[str, object]:
    """id -> reference of the input's reference_file (BFCL's possible_answer files). A broken
    answer file is a file error: skipping a line would only reject its question later."""
    path = spec.reference_file
    if not Path(path).is_file():
        raise PipelineError(f"{path}: no such file")
    references: dict[str, object] = {}
    first_line: dict[str, int] = {}
    for line, row in read_rows(path, resolve_format(path, "auto")):
        if isinstance(row, RowError):
            raise PipelineError(f"{path}:{line}: {row}")
        key = row.get(spec.id)
        if not isinstance(key, (str, int)) or spec.reference not in row:
            raise PipelineError(f"{path}:{line}: needs a string or integer '{spec.id}' and a '{spec.reference}' "
                                f"(columns: {', '.join(map(str, row))})")
        key = str(key)
        if key in references:
            raise PipelineError(f"{path}:{line}: duplicate id {key!r} (first at line {first_line[key]})")
        references[key], first_line[key] = row[spec.reference], line
    return references


def _joined(row: dict, spec: InputConfig, references: dict[str, object]) -> dict | RowError:
    """The row with its reference from reference_file, found by id; a row with none is a row error."""
    key = row.get(spec.id)
    if key is None:
        return RowError(f"column '{spec.id}' is empty: no id to find its reference by")
    if str(key) not in references:
        return RowError(f"id {str(key)!r} has no row in {Path(spec.reference_file).name}")
    return {**row, spec.reference: references[str(key)]}


def _mapped(spec: InputConfig) -> list[str]:
    reference = "" if spec.reference_file else spec.reference  # that column is in the other file
    return [c for c in (spec.messages or spec.prompt, spec.system, spec.tools, reference, spec.id, spec.source,
                        spec.difficulty, spec.split_column, spec.completion, spec.language) if c]


def _require_columns(spec: InputConfig, columns, needed: list[str]) -> None:
    """Every mapped column must exist in the file: a misspelt one is an error, never a column of nulls."""
    for name in needed:
        if name not in columns:
            raise PipelineError(f"{spec.path}: missing column '{name}' (columns: {', '.join(map(str, columns))})")


# ---------------------------------------------------------------------------------------------
# One row -> one prompts row.


