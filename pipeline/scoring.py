"""Answer extraction and scoring by task type, shared by clean (rejection sampling) and eval.

    extract("... so the total is \\boxed{42}.", "math")  -> "42"
    is_correct("42", "42.0", "math")                     -> True  (math-verify equivalence)

Tasks: math (the last \\boxed{...}, else the last number; equivalence by math-verify), exact
(the last non-empty line, compared after case and whitespace folding), choice (a single option
letter) and tool (a JSON function call {"name", "arguments"} compared as parsed JSON).
"""
from __future__ import annotations

import json
import re
from functools import lru_cache

NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:/\d+)?")
CHOICE = re.compile(r"(?:answer|option|choice)\s*(?:is|:)?\s*\(?([A-J])\)?\b|^\(?([A-J])\)?[.):]?\s*$",
                    re.IGNORECASE | re.MULTILINE)


def extract(text: str, task: str) -> str | None:
    """The answer a completion commits to, or None when it gives none."""
    if task == "math":
        boxed = last_boxed(text)
        if boxed is not None:
            return boxed.strip()
        numbers = NUMBER.findall(text)
        return numbers[-1].replace(",", "") if numbers else None
    if task == "choice":
        boxed = last_boxed(text)
        if boxed is not None and len(boxed.strip().strip("()")) == 1:
            return boxed.strip().strip("()").upper()
        hits = CHOICE.findall(text)
        return (hits[-1][0] or hits[-1][1]).upper() if hits else None
    if task == "tool":
        call = _last_json_object(text)
        return json.dumps(call, sort_keys=True) if call is not None else None
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else None


def is_correct(extracted: str | None, reference: str, task: str) -> bool:
    if extracted is None:
        return False
    if task == "math":
        return _math_equal(extracted, reference.strip())
    if task == "choice":
        return extracted.upper() == reference.strip().strip("()").upper()
    if task == "tool":
        try:
            ref = json.loads(reference)
        except json.JSONDecodeError:
            return False
        return _tool_call(json.loads(extracted)) == _tool_call(ref)
    return _fold(extracted) == _fold(reference)


def last_boxed(text: str) -> str | None:
    """Content of the last \\boxed{...}, braces balanced (\\boxed{\\frac{1}{2}} -> \\frac{1}{2})."""
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    depth, i = 0, start + len("\\boxed")
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[i + 1:j]
    return None


@lru_cache(maxsize=65536)
def _math_equal(pred: str, ref: str) -> bool:
    # Most verdicts are settled by plain comparison; math-verify (sympy) only for the rest.
    if pred.replace(" ", "") == ref.replace(" ", ""):
        return True
    from math_verify import parse, verify

    try:
        return bool(verify(parse(f"${ref}$"), parse(f"${pred}$")))
    except Exception:  # math-verify raises on input sympy cannot parse: not equal
        return False


def _fold(text: str) -> str:
    return " ".join(text.lower().split()).rstrip(".")


def _last_json_object(text: str) -> dict | None:
    decoder = json.JSONDecoder()
    found = None
    for m in re.finditer(r"\{", text):
        try:
            obj, _ = decoder.raw_decode(text, m.start())
        except json.JSONDecodeError:
            continue
        if isinstance(obj, dict) and "name" in obj:
            found = obj
    return found


def _tool_call(obj) -> tuple[str, str] | None:
    """(name, arguments as canonical JSON); arguments may be given as a JSON string (OpenAI style)."""
    if not isinstance(obj, dict) or "name" not in obj:
        return None
    args = obj.get("arguments", obj.get("parameters", {}))
    if isinstance(args, str):
        try:
            args = json.loads(args)
        except json.JSONDecodeError:
            pass
    return str(obj["name"]), json.dumps(args, sort_keys=True)
