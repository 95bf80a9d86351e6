"""The one prompt renderer: generate (the teacher), train and eval (every student) turn a prompts
row into chat-template text and ids here, so every model sees the prompt the teacher saw.

    text, ids = render(tokenizer, prompt, system_prompt=cfg.generate.system_prompt,
                       think_start=cfg.generate.think_start)
"""
from __future__ import annotations

import json


def render(tokenizer, prompt: dict, system_prompt: bool, think_start: str = "") -> tuple[str, list[int]]:
    """A prompts row (messages, tools) -> (text, ids): the model's own chat template with the
    generation prompt, the tools passed to it, system messages dropped unless `system_prompt`
    (the preset's rule: R1 is trained without one). `think_start` (R1's "<think>\\n") is appended
    unless the template already ends with it, so a student is conditioned as the teacher was.
    Ids are the text encoded without adding special tokens again (the template has them)."""
    messages = [m for m in prompt["messages"] if system_prompt or m["role"] != "system"]
    tools = json.loads(prompt["tools"]) if prompt["tools"] else None
    text = tokenizer.apply_chat_template(messages, tools=tools, add_generation_prompt=True, tokenize=False)
    if think_start and not text.endswith(think_start):
        text += think_start
    return text, tokenizer.encode(text, add_special_tokens=False)
