"""Where reasoning ends: a completion's text split into reasoning and answer by R1's think tags,
for traces that arrive as text (`distill import`, the chat-API teacher) rather than as token ids.

    reasoning, answer, closed, ends, kind = split_completion({"text": "...</think>42"}, opened=True)
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
