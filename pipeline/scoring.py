"""Answer extraction and scoring by task type, shared by clean (rejection sampling) and eval.

    extract("... so the total is \\boxed{42}.", "math")  -> "42"
    is_correct("42", "42.0", "math")                     -> True  (math-verify equivalence)

Tasks: math (the last \\boxed{...}, else the last number; equivalence by math-verify), exact
(the last non-empty line, compared after case and whitespace folding), choice (a single option
letter) and tool (function calls, scored as BFCL scores them: pipeline.toolcalls).
"""
from __future__ import annotations

import json
import re
from functools import lru_cache

from pipeline import toolcalls

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
    if task == "tool":  # every call, in order, as a JSON list ([] = no call, itself an answer)
        calls = toolcalls.parse_calls(text)
        return json.dumps([{"name": c.name, "arguments": c.arguments} for c in calls], sort_keys=True,
                          ensure_ascii=False)
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
            return toolcalls.score(extracted, reference).correct
        except ValueError:  # a reference in no known format
            return False
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
