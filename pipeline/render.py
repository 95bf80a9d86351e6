"""The one prompt renderer: generate (the teacher), train and eval (every student) turn a prompts
row into chat-template text and ids here, so every model sees the prompt the teacher saw.

    text, ids = render(tokenizer, prompt, system_prompt=cfg.generate.system_prompt,
                       think_start=cfg.generate.think_start)
"""
from __future__ import annotations

import json
from pathlib import Path

from pipeline.errors import PipelineError


def signatures(tools: list[dict]) -> str:
    """Function definitions as compact signatures, one a line: `set_fan(level: int 0..7, zone?:
    driver|passenger)`; `?` marks an optional argument."""
    lines = []
    for tool in tools:
        f = tool.get("function", tool)
        params = f.get("parameters") or {}
        required = set(params.get("required", []))
        args = []
        for name, spec in (params.get("properties") or {}).items():
            if "enum" in spec:
                kind = "|".join(map(str, spec["enum"]))
            else:
                kind = spec.get("type", "any")
                if "minimum" in spec or "maximum" in spec:
                    kind += f" {spec.get('minimum', '')}..{spec.get('maximum', '')}"
            args.append(f"{name}{'' if name in required else '?'}: {kind}")
        line = f"{f['name']}({', '.join(args)})"
        lines.append(line + (f": {f['description']}" if f.get("description") else ""))
    return "\n".join(lines)


def _with_system(messages: list[dict], text: str) -> list[dict]:
    """`text` appended to the system message (one is added when there is none)."""
    if messages and messages[0]["role"] == "system":
        return [{"role": "system", "content": messages[0]["content"] + "\n\n" + text}, *messages[1:]]
    return [{"role": "system", "content": text}, *messages]


def teacher_context(setting: str, base: Path | None = None) -> list[dict]:
    """generate.teacher_context -> chat messages for the teacher only: [] for "", the built-in
    vehicle task's system prompt and worked examples for "vehicle", else a JSON file holding a list
    of {role, content} messages (relative to `base`, the config file's folder)."""
    if not setting:
        return []
    if setting == "vehicle":
        from pipeline import vehicle

        return [{"role": "system", "content": vehicle.SYSTEM_PROMPT}, *vehicle.TEACHER_CONTEXT]
    path = Path(setting) if base is None or Path(setting).is_absolute() else Path(base) / setting
    try:
        messages = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise PipelineError(f"generate.teacher_context: {path}: {e}") from None
    if not (isinstance(messages, list) and messages and all(
            isinstance(m, dict) and m.get("role") in ("system", "user", "assistant") and isinstance(m.get("content"), str)
            for m in messages)):
        raise PipelineError(f"generate.teacher_context: {path}: expected a JSON list of {{role, content}} messages")
    return messages


def context_of(cfg) -> list[dict]:
    """A config's teacher-only context (generate.teacher_context), a file relative to the config's folder."""
    return teacher_context(cfg.generate.teacher_context, Path(cfg.file).parent if cfg.file else None)


def with_context(prompt: dict, context: list[dict]) -> dict:
    """The prompt as the teacher sees it: the context's system message joined before the prompt's
    own, then the context's worked examples, then the prompt's conversation."""
    if not context:
        return prompt
    system = [m["content"] for m in context + prompt["messages"] if m["role"] == "system"]
    rest = [m for m in context if m["role"] != "system"] + [m for m in prompt["messages"] if m["role"] != "system"]
    head = [{"role": "system", "content": "\n\n".join(system)}] if system else []
    return {**prompt, "messages": head + rest}


def render(tokenizer, prompt: dict, system_prompt: bool, think_start: str = "") -> tuple[str, list[int]]:
    """A prompts row (messages, tools) -> (text, ids): the model's own chat template with the
    generation prompt, the tools passed to it, system messages dropped unless `system_prompt`
    (the preset's rule: R1 is trained without one). `think_start` (R1's "<think>\\n") is appended
    unless the template already ends with it, so a student is conditioned as the teacher was.
    Ids are the text encoded without adding special tokens again (the template has them)."""
    messages = [m for m in prompt["messages"] if system_prompt or m["role"] != "system"]
    tools = json.loads(prompt["tools"]) if prompt["tools"] else None
    if tools and "tools" not in (tokenizer.chat_template or ""):
        # a template that ignores tools (SmolLM2's): the functions go into the system message as
        # one signature a line, so the model still sees what it may call
        messages = _with_system(messages, "You can call these functions:\n" + signatures(tools))
        tools = None
    text = tokenizer.apply_chat_template(messages, tools=tools, add_generation_prompt=True, tokenize=False)
    if think_start and not text.endswith(think_start):
        text += think_start
    return text, tokenizer.encode(text, add_special_tokens=False)
