"""Answer extraction and scoring by task type, shared by clean (rejection sampling) and eval.

    extract("... so the total is \\boxed{42}.", "math")  -> "42"
    is_correct("42", "42.0", "math")                     -> True  (math-verify equivalence)

Tasks: math (the last \\boxed{...}, else the last number; equivalence by math-verify), exact
(the last non-empty line, compared after case and whitespace folding), choice (the option letter
A-J of the last explicit answer statement: choice_letter below) and tool (function calls, scored
as BFCL scores them: pipeline.toolcalls).
"""
from __future__ import annotations

import json
import re
import unicodedata
from functools import lru_cache

from pipeline import toolcalls

NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:/\d+)?")


def extract(text: str, task: str) -> str | None:
    """The answer a completion commits to, or None when it gives none."""
    if task == "math":
        boxed = last_boxed(text)
        if boxed is not None:
            return boxed.strip()
        numbers = NUMBER.findall(text)
        return numbers[-1].replace(",", "") if numbers else None
    if task == "choice":
        return choice_letter(text)
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


# ---------------------------------------------------------------------------------------------
# Multiple choice. Real answers state the letter in many ways (markdown, \boxed{}, other languages)
# and name other letters on the way ("A is wrong, so..."), so every statement found is ranked by
# how explicit its kind is, and the last one of the most explicit kind found wins. Letters are
# upper case (lower case only inside parentheses) so that the article "a" is never an answer.

# A letter, "(C)" or "C)", not the start of a word ("A train", "Bob").
LETTER = r"(?:\(?([A-J])\)?|\(([a-j])\))(?![A-Za-z0-9])"
# "... is wrong" takes the letter back; "I think" is the pronoun, not option I.
NOT_TAKEN_BACK = (r"(?!\s*(?:is|are|was)\s+(?:not|incorrect|wrong|false)\b|\s*isn't)"
                  r"(?!(?<=I)(?:'m|\s+(?:think|believe|guess|am|was|would|will)\b))")
ANSWER_WORDS = ("answer", r"(?:correct|right|best)\s+(?:option|choice)", "答案", "正确选项", "故选", "应选", "উত্তর",
                "उत्तर", r"respuesta(?:\s+correcta)?", r"réponse(?:\s+correcte)?", r"resposta(?:\s+correta)?",
                r"risposta(?:\s+corretta)?", "antwort", r"jawaban(?:\s+yang\s+benar)?", "答え", "正解", "정답")
LINK_WORDS = ("is", "was", "would be", "should be", "must be", "will be", "=", "是", "为", "為", "应该是", "应为", "选",
              "হলো", "হল", "है", "es", "est", "ist", "é", "è", "adalah", "は", "은", "는")
# tier 1: "the answer is B", "**Answer:** (B)", "答案是 B", "সঠিক উত্তর: B" (and \boxed{B}, found apart)
STATED = re.compile(rf"(?i:{'|'.join(ANSWER_WORDS)})\s*(?i:(?:{'|'.join(LINK_WORDS)})\s*)?:?\s*"
                    rf"(?i:(?:option|choice|选项)\s*)?{LETTER}{NOT_TAKEN_BACK}")
# tier 2: "B is the correct option", "(C) is correct", "B 正确"
AFFIRMED = re.compile(rf"(?<![A-Za-z0-9]){LETTER}\s*(?i:is\s+(?:the\s+)?(?:correct|right|best)\b|是?正确)")
# tier 3: a line of its own: "(C)", "C)", "Option D", "**B. 42**"
ALONE = re.compile(rf"^[ \t]*(?i:(?:option|choice|选项)\s*)?{LETTER}[.:]?[ \t]*$", re.MULTILINE)
BOLD_ALONE = re.compile(rf"^[ \t]*\*\*{LETTER}[.:]?[^*\n]*\*\*[ \t.]*$", re.MULTILINE)
# \boxed{} holds a letter as LETTER reads it, or one lower-case letter alone (\boxed{b})
BOXED_LETTER = re.compile(rf"\s*(?:{LETTER}|\(?([a-j])\)?\s*$)")
TEX_WRAPPER = re.compile(r"\\[A-Za-z]+\{([^{}]*)\}")  # \text{B}, \textbf{(B)}
EMPHASIS = re.compile(r"[*_$]")


def choice_letter(text: str) -> str | None:
    """The option letter of the last, most explicit answer statement after the reasoning, or None."""
    text = unicodedata.normalize("NFKC", text.rsplit("</think>", 1)[-1])  # full-width Ｂ and ： too
    plain = EMPHASIS.sub(" ", text)  # markdown and $ as blanks: offsets stay those of text
    tiers = ([*_letters(STATED, plain), *_boxed_letter(text)], _letters(AFFIRMED, plain),
             [*_letters(ALONE, plain), *_letters(BOLD_ALONE, text)])
    for found in tiers:
        if found:
            return max(found)[1].upper()
    return None


def _letters(pattern: re.Pattern, text: str) -> list[tuple[int, str]]:
    # LETTER's alternatives are the only groups: the one that matched is the last
    return [(m.start(), m[m.lastindex]) for m in pattern.finditer(text)]


def _boxed_letter(text: str) -> list[tuple[int, str]]:
    boxed = last_boxed(text)
    m = BOXED_LETTER.match(TEX_WRAPPER.sub(r"\1", boxed)) if boxed is not None else None
    return [(text.rfind("\\boxed{"), m[m.lastindex])] if m else []


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
