"""Where reasoning ends: a completion's text split into reasoning and answer by R1's think tags,
for traces that arrive as text (`distill import`, the chat-API teacher) rather than as token ids,
and joined again where a model must read the whole completion (SFT, scoring an imported trace).

    reasoning, answer, closed, ends, kind = split_completion({"text": "...</think>42"}, opened=True)
    text = join_completion(reasoning, answer, "</think>", closed, ends)
"""
from __future__ import annotations

THINK_START, THINK_END = "<think>", "</think>"


def split_completion(c: dict, opened: bool) -> tuple[str, str, bool, int, str]:
    """(reasoning, answer, closed, think-end count, convention) of one completion. Reasoning that
    never closes has no answer: the trace was cut inside it. `opened`: the prompt opened the
    reasoning, so a text without tags is reasoning cut short, not an answer."""
    if "text" not in c:
        if c["answer"] is None:
            return c["reasoning"], "", False, 0, c["kind"]
        return c["reasoning"], c["answer"], True, 1 + (c["reasoning"] + c["answer"]).count(THINK_END), c["kind"]
    text = c["text"]
    if text.startswith(THINK_START):
        body, kind = text[len(THINK_START):], "think_tags"
    elif THINK_END in text or opened:
        body, kind = text, "no_opening_tag"
    else:
        return "", text, True, 0, "no_tags"
    reasoning, end, answer = body.partition(THINK_END)
    if not end:
        return reasoning.lstrip(), "", False, 0, kind
    return reasoning.lstrip(), answer, True, body.count(THINK_END), kind


def join_completion(reasoning: str, answer: str, think_end: str, closed: bool = True, ends: int = 1,
                    opening: str = "") -> str:
    """The completion text of a split trace, as the teacher writes it (split_completion undone):
    `opening` (the think tag, where the prompt did not open the reasoning), the reasoning,
    `think_end`, the answer. Reasoning that never closed is all there is of a cut trace; a closed
    trace with no think-end (`no_tags`) is its answer alone, as is every trace of a teacher that
    does not reason (`think_end` "")."""
    if not think_end:
        return answer
    if not closed:
        return opening + reasoning
    return opening + reasoning + think_end + answer if ends else answer
