"""The one prompt renderer: generate (the teacher), train and eval (every student) turn a prompts
row into chat-template text and ids here, so every model sees the prompt the teacher saw.

    text, ids = render(tokenizer, prompt, system_prompt=cfg.generate.system_prompt,
                       think_start=cfg.generate.think_start)
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
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


@dataclass(frozen=True)
class TeacherContext:
    """What the teacher alone is shown before a request: system text and worked examples (user,
    assistant message pairs). With `per_request` k > 0 and more examples than k, each request gets
    the k whose question is most like its own (Jaccard of character trigrams, which reads Chinese
    as well as English), least alike first so the nearest sits next to the request; a question
    identical to the request's is never shown (it would hand the teacher the answer)."""

    system: tuple[str, ...] = ()
    examples: tuple[tuple[dict, dict], ...] = ()
    per_request: int = 0

    def __bool__(self) -> bool:
        return bool(self.system or self.examples)

    @cached_property
    def _grams(self) -> list[set[str]]:
        return [_trigrams(user["content"]) for user, _ in self.examples]

    def examples_for(self, request: str) -> list[tuple[dict, dict]]:
        k = self.per_request
        if not k or len(self.examples) <= k:
            return list(self.examples)
        mine = _trigrams(request)
        scored = sorted(((-len(mine & g) / max(len(mine | g), 1), i) for i, g in enumerate(self._grams)
                         if self.examples[i][0]["content"] != request))
        return [self.examples[i] for _, i in reversed(scored[:k])]


def _trigrams(text: str) -> set[str]:
    text = " ".join(text.lower().split())
    return {text[i:i + 3] for i in range(max(len(text) - 2, 1))}


def teacher_context(setting: str, base: Path | None = None, per_request: int = 0) -> TeacherContext:
    """generate.teacher_context -> what the teacher alone sees: nothing for "", the built-in
    vehicle task's system prompt and worked examples for "vehicle", else a JSON file holding a list
    of {role, content} messages (relative to `base`, the config file's folder): system messages,
    then worked examples as user/assistant pairs."""
    if not setting:
        return TeacherContext()
    if setting == "vehicle":
        from pipeline import vehicle

        messages = [{"role": "system", "content": vehicle.SYSTEM_PROMPT}, *vehicle.TEACHER_CONTEXT]
        where = "vehicle"
    else:
        path = Path(setting) if base is None or Path(setting).is_absolute() else Path(base) / setting
        try:
            messages = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise PipelineError(f"generate.teacher_context: {path}: {e}") from None
        where = path
        if not (isinstance(messages, list) and messages and all(
                isinstance(m, dict) and m.get("role") in ("system", "user", "assistant")
                and isinstance(m.get("content"), str) for m in messages)):
            raise PipelineError(f"generate.teacher_context: {path}: expected a JSON list of {{role, content}} messages")
    turns = [m for m in messages if m["role"] != "system"]
    pairs = list(zip(turns[::2], turns[1::2]))
    if len(turns) % 2 or any((u["role"], a["role"]) != ("user", "assistant") for u, a in pairs):
        raise PipelineError(f"generate.teacher_context: {where}: after the system messages, expected worked "
                            "examples as user, assistant pairs")
    return TeacherContext(tuple(m["content"] for m in messages if m["role"] == "system"), tuple(pairs), per_request)


def context_of(cfg) -> TeacherContext:
    """A config's teacher-only context (generate.teacher_context, a file relative to the config's
    folder; generate.teacher_examples of its worked examples per request)."""
    return teacher_context(cfg.generate.teacher_context, Path(cfg.file).parent if cfg.file else None,
                           cfg.generate.teacher_examples)


def with_context(prompt: dict, context: TeacherContext) -> dict:
    """The prompt as the teacher sees it: the context's system text joined before the prompt's
    own, then the worked examples chosen for its last user message, then its conversation."""
    if not context:
        return prompt
    own = prompt["messages"]
    system = [*context.system, *(m["content"] for m in own if m["role"] == "system")]
    request = next((m["content"] for m in reversed(own) if m["role"] == "user"), "")
    examples = [m for pair in context.examples_for(request) for m in pair]
    head = [{"role": "system", "content": "\n\n".join(system)}] if system else []
    return {**prompt, "messages": head + examples + [m for m in own if m["role"] != "system"]}


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
