"""Rows from users' files, and a row as a prompts row: what prepare, import (traces), clean's
decontamination files and augment all read and map the same way.

Readers yield (line, row) with 1-based lines (a JSON document's records count as lines); a broken
row is yielded as a RowError so that skip mode can continue past it, and file-level problems
raise PipelineError at once. `to_prompt` maps, type-checks and cleans one row; `prompt_id` keys a
prompt by its canonical messages and tools.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import re
import unicodedata
from pathlib import Path
from typing import Iterator

from pipeline.config import SUFFIX_FORMATS, InputConfig, TraceInputConfig
from pipeline.errors import PipelineError
from pipeline.files import open_parquet


class RowError(Exception):
    """A problem with one row; becomes a PipelineError (fail) or a rejects row (skip)."""


MISSING = object()


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


def read_records(spec) -> Iterator[tuple[int, dict | RowError]]:
    """(line, row) of the file a trace input (or clean's eval set) names, as it is: a JSON document's
    records, or what prepare reads."""
    fmt = _format(spec)
    return _read_json(spec) if fmt == "json" else read_rows(spec.path, fmt, spec.hf_split)


def _format(spec: TraceInputConfig) -> str:
    """`auto` takes a .json file for one JSON document when `records` is set or it opens with '['
    (a trace dump); otherwise prepare's rule applies (a .json file of one object a line is JSONL)."""
    path = Path(spec.path)
    if spec.format == "auto" and path.suffix.lower() == ".json" and path.is_file():
        with open(path, "rb") as f:
            head = f.read(256).lstrip(b"\xef\xbb\xbf \t\r\n")
        if spec.records or head.startswith(b"["):
            return "json"
    return spec.format if spec.format == "json" else resolve_format(spec.path, spec.format)


def _read_json(spec: TraceInputConfig):
    """(record number, record) of a JSON array, or of the array at `records` in a JSON object."""
    if not Path(spec.path).is_file():
        raise PipelineError(f"{spec.path}: no such file")
    data = Path(spec.path).read_bytes()
    try:
        doc = json.loads(data.decode("utf-8-sig"))
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        raise PipelineError(f"{spec.path}:{line}: invalid UTF-8") from None
    except json.JSONDecodeError as e:
        raise PipelineError(f"{spec.path}:{e.lineno}: malformed JSON ({e.msg} at column {e.colno})") from None
    if spec.records:
        found = lookup(doc, spec.records)
        if found is MISSING:
            raise PipelineError(f"{spec.path}: no key '{spec.records}'{near(doc, spec.records)}")
        doc = found
    if not isinstance(doc, list):
        hint = "; set records: to the key holding the list" if isinstance(doc, dict) and not spec.records else ""
        raise PipelineError(f"{spec.path}: expected a JSON array of records, got {type(doc).__name__}{hint}")
    if not doc:
        raise PipelineError(f"{spec.path}: no rows")
    for i, row in enumerate(doc, 1):
        yield i, row if isinstance(row, dict) else RowError(f"expected a JSON object, got {type(row).__name__}")


def lookup(obj, path: str):
    """The value at a dotted path (`model_answers.thinking_model`; a number indexes a list), or
    MISSING. A key that itself holds the dots (a CSV header `a.b`) is taken whole first."""
    if isinstance(obj, dict) and path in obj:
        return obj[path]
    for part in path.split("."):
        if isinstance(obj, dict) and part in obj:
            obj = obj[part]
        elif isinstance(obj, list) and part.isdigit() and int(part) < len(obj):
            obj = obj[int(part)]
        else:
            return MISSING
    return obj


def near(row: dict | None, path: str) -> str:
    """Where the path leaves the first row, and what is there: the misspelling shows."""
    if row is None:
        return ""
    done = []
    for part in path.split("."):
        if not isinstance(row, dict) or part not in row:
            break
        row = row[part]
        done.append(part)
    where = f"'{'.'.join(done)}'" if done else "a row"
    if isinstance(row, dict):
        return f" ({where} has: {', '.join(map(str, list(row)[:20]))})"
    return f" ({where} is {type(row).__name__})"


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


def json_cell(value, problem: str):
    """A cell that may hold JSON as text (CSV, Parquet strings) as its value; any other value as
    it is. Text that is not JSON is RowError(problem)."""
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except json.JSONDecodeError:
        raise RowError(problem) from None


def _messages(value, column: str, form: str) -> list[dict]:
    value = json_cell(value, f"column '{column}' is not a JSON list of messages")
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
    value = json_cell(value, f"column '{column}' is not valid JSON")
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
