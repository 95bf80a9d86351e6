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

import csv
import hashlib
import io
import json
import re
import time
import unicodedata
from collections import Counter
from pathlib import Path
from typing import Iterator

import click

from pipeline import arithmetic, manifest, vehicle
from pipeline.config import SUFFIX_FORMATS, Config, InputConfig
from pipeline.errors import PipelineError
from pipeline.files import open_parquet, write_table
from pipeline.schema import PREPARE_REJECTS, PROMPTS


class RowError(Exception):
    """A problem with one row; becomes a PipelineError (fail) or a rejects row (skip)."""


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
# Readers: yield (line, row) with 1-based lines; a broken row is yielded as a RowError so that
# skip mode can continue past it. File-level problems raise PipelineError at once.


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


def resolve_format(path: str, fmt: str) -> str:
    """`auto` by the file's suffix; a directory or a name that is no file is a Hugging Face dataset."""
    if fmt != "auto":
        return fmt
    path = Path(path)
    fmt = SUFFIX_FORMATS.get(path.suffix.lower())
    if fmt is None:
        fmt = "hf" if path.is_dir() or not path.exists() else None
    if fmt is None:
        raise PipelineError(f"{path}: cannot tell the format from the suffix; set format: jsonl|parquet|csv|hf")
    return fmt


def read_rows(path: str, fmt: str, hf_split: str = "train") -> Iterator[tuple[int, dict | RowError]]:
    """(line, row) of a JSONL, CSV or Parquet file or a Hugging Face dataset (`fmt` resolved), the
    rows as they are: prepare maps columns, `distill import` dotted paths."""
    if fmt != "hf" and not Path(path).is_file():
        raise PipelineError(f"{path}: no such file")
    readers = {"jsonl": _read_jsonl, "csv": _read_csv, "parquet": _read_parquet,
               "hf": lambda p: _read_hf(p, hf_split)}
    empty = True
    for line, row in readers[fmt](str(path)):
        empty = empty and not isinstance(row, dict)
        yield line, row
    if empty:
        raise PipelineError(f"{path}: no rows")


def _mapped(spec: InputConfig) -> list[str]:
    reference = "" if spec.reference_file else spec.reference  # that column is in the other file
    return [c for c in (spec.messages or spec.prompt, spec.system, spec.tools, reference, spec.id, spec.source,
                        spec.difficulty, spec.split_column, spec.completion, spec.language) if c]


def _require_columns(spec: InputConfig, columns, needed: list[str]) -> None:
    """Every mapped column must exist in the file: a misspelt one is an error, never a column of nulls."""
    for name in needed:
        if name not in columns:
            raise PipelineError(f"{spec.path}: missing column '{name}' (columns: {', '.join(map(str, columns))})")


def _read_jsonl(path: str):
    with open(path, "rb") as f:
        for line, raw in enumerate(f, 1):
            try:
                text = raw.decode("utf-8-sig" if line == 1 else "utf-8")  # a BOM may open the file
            except UnicodeDecodeError as e:
                yield line, RowError(f"invalid UTF-8 at byte {e.start}")
                continue
            if not text.strip():
                continue
            try:
                row = json.loads(text)
            except json.JSONDecodeError as e:
                yield line, RowError(f"malformed JSON ({e.msg} at column {e.colno})")
                continue
            yield line, row if isinstance(row, dict) else RowError(f"expected a JSON object, got {type(row).__name__}")


def _read_csv(path: str):
    data = Path(path).read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        raise PipelineError(f"{path}:{line}: invalid UTF-8") from None
    reader = csv.DictReader(io.StringIO(text, newline=""), strict=True)
    last = 1
    try:
        for row in reader:
            if None in row:  # more fields than the header: a stray separator or an unclosed quote
                yield reader.line_num, RowError(f"{len(row) - 1 + len(row[None])} fields, the header has {len(row) - 1}")
            else:
                yield reader.line_num, row
            last = reader.line_num
    except csv.Error as e:
        raise PipelineError(f"{path}:{last + 1}: malformed CSV ({e}; a quote opened here never closes?)") from None


def _read_parquet(path: str):
    f = open_parquet(path)
    line = 0
    for batch in f.iter_batches(batch_size=8192):
        for row in batch.to_pylist():
            line += 1
            yield line, row


def _read_hf(path: str, split: str):
    import datasets

    try:
        if Path(path).is_dir():
            ds = datasets.load_from_disk(path)
        else:
            ds = datasets.load_dataset(path, split=split)
    except Exception as e:  # offline hub misses and bad directories surface as many types
        raise PipelineError(f"{path}: cannot load Hugging Face dataset ({str(e).splitlines()[0]})") from None
    if isinstance(ds, datasets.DatasetDict):
        if split not in ds:
            raise PipelineError(f"{path}: no split '{split}' (has: {', '.join(ds)})")
        ds = ds[split]
    for i, row in enumerate(ds, 1):
        yield i, row


# ---------------------------------------------------------------------------------------------
# One row -> one prompts row.


def to_prompt(row: dict, spec: InputConfig, form: str) -> dict | None:
    """Map, type-check and clean one input row; None when its prompt is empty after cleaning.
    `distill import` passes its trace rows here too, keyed by the dotted paths of its mapping."""
    if spec.messages:
        messages = _messages(row.get(spec.messages), spec.messages, form)
    else:
        messages = [{"role": "user", "content": clean_text(_string(row, spec.prompt), form)}]
    system = clean_text(_string(row, spec.system), form) if spec.system else clean_text(spec.system_prompt, form)
    if system and messages and messages[0]["role"] != "system":
        messages.insert(0, {"role": "system", "content": system})
    if not any(m["content"] for m in messages if m["role"] == "user"):
        return None
    tools = _tools(row.get(spec.tools), spec.tools) if spec.tools else None
    split = spec.split
    if spec.split_column:
        split = _string(row, spec.split_column)
        if split not in ("train", "eval"):
            raise RowError(f"column '{spec.split_column}' must be train or eval, got {split!r}")
    reference = row.get(spec.reference) if spec.reference else None
    if isinstance(reference, (list, dict)) and spec.task == "tool":
        reference = json.dumps(reference, ensure_ascii=False)  # BFCL's possible answers, stored as JSON text
    if reference is not None and not isinstance(reference, (str, int, float)):
        raise RowError(f"column '{spec.reference}' must be a string or number (a list or object only with task: "
                       f"tool), got {type(reference).__name__}")
    source_id = row.get(spec.id) if spec.id else None
    if source_id is not None and not isinstance(source_id, (str, int)):
        raise RowError(f"column '{spec.id}' must be a string or integer, got {type(source_id).__name__}")
    difficulty = row.get(spec.difficulty) if spec.difficulty else None
    if isinstance(difficulty, str) and difficulty.strip().lstrip("-").isdigit():
        difficulty = int(difficulty)  # CSV cells are strings
    if difficulty is not None and (not isinstance(difficulty, int) or isinstance(difficulty, bool)):
        raise RowError(f"column '{spec.difficulty}' must be an integer, got {difficulty!r}")
    for name, value in ((spec.messages or spec.prompt, json.dumps(messages, ensure_ascii=False)), (spec.tools, tools),
                        (spec.reference, reference), (spec.completion, row.get(spec.completion) if spec.completion else None)):
        check_unicode(name, value)
    if reference is not None:
        reference = _final_answer(clean_text(str(reference), form), spec)
    return {
        "prompt_id": prompt_id(messages, tools),
        "messages": messages,
        "tools": tools,
        "reference": reference,
        "task": spec.task,
        "source": _string(row, spec.source) if spec.source else Path(spec.path).name,
        "source_id": None if source_id is None else str(source_id),
        "difficulty": difficulty,
        "split": split,
        "completion": (_string(row, spec.completion) or None) if spec.completion else None,
        "language": (_string(row, spec.language) or None) if spec.language else None,
    }


def _final_answer(reference: str, spec: InputConfig) -> str:
    """The reference itself, or with reference_pattern its one group: a worked solution's final answer."""
    if not spec.reference_pattern:
        return reference
    m = re.search(spec.reference_pattern, reference, re.MULTILINE)
    if m is None or not (m[1] or "").strip():
        # the tail, where worked solutions put the answer, shows what the pattern missed
        raise RowError(f"column '{spec.reference}' does not match reference_pattern {spec.reference_pattern!r} "
                       f"(it ends {reference[-40:]!r})")
    return m[1].strip()


def prompt_id(messages: list[dict], tools: str | None) -> str:
    canonical = json.dumps({"messages": messages, "tools": tools}, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def _string(row: dict, column: str) -> str:
    value = row.get(column)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise RowError(f"column '{column}' must be a string, got {type(value).__name__} {str(value)[:40]!r}")
    return value


def _messages(value, column: str, form: str) -> list[dict]:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise RowError(f"column '{column}' is not a JSON list of messages") from None
    if isinstance(value, list) and value and all(isinstance(turn, list) for turn in value):
        value = [m for turn in value for m in turn]  # BFCL's `question`: a list of turns, read as one conversation
    ok = isinstance(value, list) and all(
        isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in value)
    if not ok or not value:
        raise RowError(f"column '{column}' must be a non-empty list of {{role, content}} strings, or of turns "
                       "(lists of them)")
    for m in value:
        if m["role"] not in ROLES:
            raise RowError(f"column '{column}': unknown role {m['role']!r} (known: {', '.join(ROLES)})")
    return [{"role": m["role"], "content": clean_text(m["content"], form)} for m in value]


ROLES = ("system", "user", "assistant", "tool")


def _tools(value, column: str) -> str | None:
    if value is None or value == "":
        return None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise RowError(f"column '{column}' is not valid JSON") from None
    if not isinstance(value, list):
        raise RowError(f"column '{column}' must be a list of tool schemas")
    for i, tool in enumerate(value):
        problem = _tool_problem(tool)
        if problem:
            raise RowError(f"column '{column}': tool {i}: {problem}")
    return json.dumps(value, sort_keys=True, ensure_ascii=False)


def _tool_problem(tool) -> str | None:
    """What makes a tool schema not a function definition ({name, description?, parameters}, bare
    or inside OpenAI's {"type": "function", "function": ...}), or None."""
    if isinstance(tool, dict) and tool.get("type") == "function" and "function" in tool:
        tool = tool["function"]
    if not isinstance(tool, dict):
        return f"expected a function definition object, got {type(tool).__name__}"
    if not isinstance(tool.get("name"), str) or not tool["name"]:
        return "needs a string 'name'"
    params = tool.get("parameters", {"type": "object"})
    if not isinstance(params, dict) or params.get("type", "object") not in ("object", "dict"):  # BFCL says dict
        return "'parameters' must be a JSON Schema object ({\"type\": \"object\", \"properties\": ...})"
    if not isinstance(params.get("properties", {}), dict):
        return "'parameters.properties' must be a mapping"
    return None


_SURROGATE = re.compile("[\ud800-\udfff]")


def check_unicode(column: str, value) -> None:
    """A lone surrogate (JSON may escape one) is no text: Arrow cannot store it."""
    if isinstance(value, str) and (m := _SURROGATE.search(value)):
        raise RowError(f"column '{column}' holds a lone surrogate (invalid Unicode) U+{ord(m.group()):04X}")


# Zero-width and byte-order marks are invisible yet change the prompt's hash and tokens.
_INVISIBLE = {"\ufeff", "\u200b", "\u200c", "\u2060"}


def clean_text(text: str, form: str = "NFC") -> str:
    """Normalize Unicode, drop control characters (keeping newline and tab), trim whitespace."""
    text = unicodedata.normalize(form, text.replace("\r\n", "\n"))
    text = "".join(ch for ch in text if ch in "\n\t" or (unicodedata.category(ch) != "Cc" and ch not in _INVISIBLE))
    return text.strip()
