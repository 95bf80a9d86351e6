"""Stage `import`: a run's prompts and generations from existing reasoning traces, with no teacher
loaded (artifacts/<run>/prepare/ and artifacts/<run>/generate/).

    distill import configs/my-traces.yaml [--set traces.on_error=skip]

Each file of `traces.inputs` (JSONL, a JSON array or an object holding one, Parquet, CSV, a
Hugging Face dataset) is read and every mapped dotted path resolved in every row; a path that no
row has is a one-line error naming the file and the path. A row's prompt goes through prepare's
mapping and cleaning (pipeline/rows.py: the same prompt_id as prepare gives it); its completions
(a string, a list of them, a DeepSeek API {content, reasoning_content} object, separate
reasoning and answer columns, or the final assistant turn of a chat) are cut into reasoning and
answer by the convention each follows, and the conventions are counted:

    think_tags         <think>reasoning</think>answer
    no_opening_tag     reasoning</think>answer (R1's template opens the reasoning in the prompt)
    reasoning_content  {content, reasoning_content}, as the DeepSeek API returns it
    reasoning_column   reasoning and answer in two columns
    no_tags            no reasoning: the whole text is the answer

R1 chat-template tokens (<｜User｜>, <｜Assistant｜>, <｜end▁of▁sentence｜>) and an echoed prompt left
in a completion are stripped, and counted. Reasoning that never closes (opened by the tag, by the
prompt's think_start, or in an input whose traces open it in the prompt) is finish_reason
`length`, like a generated trace cut at max_new_tokens, so clean's `truncated` and
`unclosed_reasoning` rules apply. The tokenizer (traces.tokenizer, default models.teacher)
renders prompt_text and counts tokens as generate would. Outputs: the prompts table, generation
shards in generate's layout with no teacher_topk sidecar yet, and prepare and generate manifests
marked `imported`, so clean, sql, report and SFT training (kd_weight 0) run as on a generated run.
`distill generate CONFIG --score` then attaches a local teacher's top-k to every imported sample
(generate.score_imported), and KD trains on the run too.
"""
from __future__ import annotations

import dataclasses
import json
import re
import time
from collections import Counter
from pathlib import Path

import click

from pipeline import manifest, models
from pipeline.config import Config, InputConfig, TraceInputConfig
from pipeline.errors import PipelineError
from pipeline.files import TMP_SUFFIX, remove, replace_dir, write_json, write_table
from pipeline.reasoning import THINK_END, THINK_START, split_completion
from pipeline.render import render
from pipeline.rows import (MISSING, ROLES, RowError, check_unicode, json_cell, lookup, near, read_records,
                           to_prompt)
from pipeline.schema import GENERATIONS, PREPARE_REJECTS, PROMPTS

# DeepSeek-R1's special tokens, spelt with U+FF5C fullwidth bars and U+2581 in their names.
R1_TOKEN = re.compile("<｜[^｜<>\n]{1,40}｜>")
R1_ASSISTANT, R1_END = "<｜Assistant｜>", "<｜end▁of▁sentence｜>"
CONVENTIONS = ("think_tags", "no_opening_tag", "reasoning_content", "reasoning_column", "no_tags")


def run(cfg: Config) -> dict:
    started = time.time()
    t = cfg.traces
    if not t.inputs:
        raise PipelineError(f"{cfg.file}: traces.inputs: list the trace files to import")
    if cfg.generate.think_end != THINK_END:  # clean and train split and rebuild traces on it
        raise PipelineError(f"{cfg.file}: generate.think_end is {cfg.generate.think_end!r}; imported traces close "
                            f"their reasoning with {THINK_END!r} (use preset default or deepseek-r1)")
    out = cfg.run_dir / "generate"
    settings_path = out / "settings.json"
    if settings_path.is_file() and not json.loads(settings_path.read_text()).get("imported"):
        raise PipelineError(f"{out}: holds a teacher's generated samples; import into a new run name or delete "
                            "that directory")
    tokenizer_dir = _tokenizer_dir(t.tokenizer or cfg.models.teacher, cfg)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)

    # Every row of every input parsed before anything is written: a bad row fails the import whole.
    counts: Counter = Counter()
    rejects: list[dict] = []
    prompts: dict[str, dict] = {}
    traces: dict[str, list[tuple[dict, bool, str]]] = {}  # prompt_id -> (completion, opened, model), in order
    for spec in t.inputs:
        pspec, rows = _prompt_spec(spec), []
        for line, row in _resolved_rows(spec):
            counts["read"] += 1
            try:
                if isinstance(row, RowError):
                    raise row
                rows.append(_parse(row, spec, pspec, cfg.prepare.unicode_form, t.source_model))
            except RowError as e:
                if t.on_error == "fail":
                    raise PipelineError(f"{spec.path}:{line}: {e}") from None
                rejects.append({"source": spec.path, "line": line, "reason": str(e)})
                counts["rejected"] += 1
        # a trace that neither opens nor closes its reasoning was cut inside it when the prompt
        # opened it: by think_start, or as this input's other traces show theirs did
        opened = bool(cfg.generate.think_start) or any(
            "text" in c and THINK_END in c["text"] and not c["text"].startswith(THINK_START)
            for _, completions, _ in rows for c in completions)
        # one prompts row per prompt; its completions, from any row, become samples 0..n-1
        for prompt, completions, model in rows:
            if prompt is None:
                counts["dropped_empty"] += 1
                continue
            if prompt["prompt_id"] in prompts:
                counts["merged_duplicate"] += 1
            prompts.setdefault(prompt["prompt_id"], prompt)
            traces.setdefault(prompt["prompt_id"], []).extend((c, opened, model) for c in completions)
    if not any(traces.values()):
        raise PipelineError(f"{cfg.file}: no traces left to import ({dict(counts)})")

    kinds: Counter = Counter()

    def samples():
        for pid, prompt in prompts.items():
            text, ids = render(tokenizer, prompt, cfg.generate.system_prompt, cfg.generate.think_start)
            for idx, (c, opened, model) in enumerate(traces[pid]):
                reasoning, answer, closed, ends, kind = split_completion(c, opened)
                kinds.update({kind: 1, "unclosed": not closed, "template_tokens": c["template"],
                              "echoed_prompt": c["echo"]})
                yield {"sample_id": f"{pid}-{idx}", "prompt_id": pid, "sample_idx": idx, "split": prompt["split"],
                       "prompt_text": text, "prompt_token_ids": ids, "reasoning": reasoning, "answer": answer,
                       "reasoning_closed": closed, "think_end_count": ends, "prompt_tokens": len(ids),
                       "finish_reason": "stop" if closed else "length", "model": model, "seed": None,
                       "latency_s": 0.0}

    # a scored import's top-k, and the scoring of an earlier import (finished or not), belong to
    # other traces: gone before the new ones are in place, so no top-k is ever paired with them
    for stale in (manifest.staging_dir(cfg.run_dir), out / "teacher_topk", out / "unscored", *out.glob("skipped-*")):
        remove(stale)
    written = _write_generations(samples(), out, cfg.generate.shard_size, tokenizer)
    prompt_rows = list(prompts.values())
    write_table(PROMPTS, PROMPTS.from_pylist(prompt_rows), cfg.run_dir / "prepare/prompts.parquet")
    write_table(PREPARE_REJECTS, PREPARE_REJECTS.from_pylist(rejects), cfg.run_dir / "prepare/rejects.parquet")
    identity = manifest.tokenizer_identity(tokenizer_dir)
    settings = {"imported": True, "inputs": [s.path for s in t.inputs], "tokenizer": str(tokenizer_dir),
                "tokenizer_sha": identity["tokenizer_sha"], "vocab_sha": identity["vocab_sha"],
                "think_end": THINK_END, "think_start": cfg.generate.think_start,
                "system_prompt": cfg.generate.system_prompt}
    write_json(settings_path, settings)  # `distill generate` refuses to add to this run

    prompt_counts = {"read": counts["read"], "rejected": counts["rejected"], "dropped_empty": counts["dropped_empty"],
                     "merged_duplicate": counts["merged_duplicate"], "kept": len(prompt_rows),
                     "split_train": sum(p["split"] == "train" for p in prompt_rows),
                     "split_eval": sum(p["split"] == "eval" for p in prompt_rows)}
    conventions = {k: kinds[k] for k in CONVENTIONS}
    stripped = {k: kinds[k] for k in ("template_tokens", "echoed_prompt")}
    manifest.write(cfg, "prepare", started, prompt_counts, imported=True)
    m = manifest.write(cfg, "generate", started, {**written, "unclosed": kinds["unclosed"]}, imported=True,
                       settings=settings, conventions=conventions, stripped=stripped)

    click.echo("import: " + ", ".join(f"{k} {v}" for k, v in prompt_counts.items()))
    click.echo("import: conventions: " + ", ".join(f"{k} {v}" for k, v in conventions.items())
               + f"; unclosed (finish_reason length) {kinds['unclosed']}")
    click.echo(f"import: stripped: R1 template tokens from {stripped['template_tokens']}, an echoed prompt from "
               f"{stripped['echoed_prompt']} completions")
    if rejects:
        click.echo(f"import: {len(rejects)} rejected rows in {cfg.run_dir / 'prepare/rejects.parquet'}")
    click.echo(f"import: {written['samples']} samples, {written['completion_tokens']} completion tokens "
               f"-> {out / 'generations'}")
    return m


def _tokenizer_dir(name: str, cfg: Config) -> Path:
    """A local directory as it is (a tokenizer alone will do), else what models.resolve makes of
    the name (an embedded model converted once, a hub id when online)."""
    return Path(name) if Path(name).is_dir() else models.resolve(name, cfg)


# ---------------------------------------------------------------------------------------------
# Reading: rows with every mapped path resolved.


def _resolved_rows(spec: TraceInputConfig) -> list[tuple[int, dict | RowError]]:
    """(line, {path: value}) of one input, the paths a row lacks left out; a path that no row has
    is a misspelling, an error, never a column of nulls. JSON records count as lines."""
    paths = [p for p in (spec.messages or spec.conversations or spec.prompt, spec.system, spec.tools, spec.reference,
                         spec.id, spec.source, spec.difficulty, spec.split_column, spec.completion, spec.reasoning,
                         spec.answer, spec.language, spec.model) if p]
    rows, seen, first = [], set(), None
    for line, row in read_records(spec):
        if isinstance(row, dict):
            first = row if first is None else first
            row = {p: v for p in paths if (v := lookup(row, p)) is not MISSING}
            seen.update(row)
        rows.append((line, row))
    for p in paths:
        if p not in seen:
            raise PipelineError(f"{spec.path}: no row has '{p}'{near(first, p)}")
    return rows


# ---------------------------------------------------------------------------------------------
# One row -> its prompt (pipeline.rows.to_prompt), its completions, its model.


def _parse(row: dict, spec: TraceInputConfig, pspec: InputConfig, form: str,
           source_model: str) -> tuple[dict | None, list[dict], str]:
    """(prompts row, None when the prompt is empty after cleaning; the completions, each a text or
    a reasoning and an answer, with what was stripped from it; the source model)."""
    turns_path = spec.messages or spec.conversations
    completions = []
    if turns_path:
        turns = _turns(row.get(turns_path), turns_path, spec)
        if not (spec.completion or spec.reasoning):
            if not turns or turns[-1]["role"] != "assistant":
                raise RowError(f"column '{turns_path}' must end with the assistant's turn (the completion) "
                               "unless completion or reasoning + answer is mapped")
            completions.append(_completion(turns.pop(), turns_path))
        row = {**row, turns_path: [{"role": m["role"], "content": m["content"]} for m in turns]}
    prompt = to_prompt(row, pspec, form)
    if spec.completion:
        value = row.get(spec.completion)
        completions += [_completion(v, spec.completion) for v in (value if isinstance(value, list) else [value])]
    elif spec.reasoning:
        completions += _columns(row.get(spec.reasoning), row.get(spec.answer), spec)
    model = row.get(spec.model) if spec.model else source_model
    if not isinstance(model, str) or not model:
        raise RowError(f"column '{spec.model}' must be a model name, got {model!r}")
    said = next((m["content"] for m in reversed(prompt["messages"]) if m["role"] == "user"), "") if prompt else ""
    return prompt, [_strip(c, said) for c in completions], model


def _prompt_spec(spec: TraceInputConfig) -> InputConfig:
    """The prompt side of a trace input, as prepare maps it: the chat at the turns' path, no completion."""
    shared = {f.name: getattr(spec, f.name) for f in dataclasses.fields(InputConfig)}
    return InputConfig(**{**shared, "format": "auto", "messages": spec.messages or spec.conversations,
                          "completion": ""})


def _turns(value, path: str, spec: TraceInputConfig) -> list[dict]:
    """OpenAI {role, content} or ShareGPT {from, value} turns, roles renamed through `roles`."""
    value = json_cell(value, f"column '{path}' is not a JSON list of turns")
    role_key, text_key = ("from", "value") if spec.conversations else ("role", "content")
    if not isinstance(value, list) or not all(isinstance(m, dict) and role_key in m for m in value):
        raise RowError(f"column '{path}' must be a list of {{{role_key}, {text_key}}} turns")
    turns = []
    for m in value:
        role = spec.roles.get(m[role_key], m[role_key])
        if role not in ROLES:
            raise RowError(f"column '{path}': unknown role {m[role_key]!r}; map it with roles "
                           f"(known: {', '.join(ROLES)})")
        turns.append({**m, "role": role, "content": m.get(text_key)})
    return turns


def _completion(value, path: str) -> dict:
    """A completion as {text} or, where the source keeps them apart, {reasoning, answer, kind}; an
    answer of None means the reasoning never reached one."""
    if isinstance(value, dict) and value.get("reasoning_content"):  # the DeepSeek API's message
        answer = value.get("content")
        if not isinstance(value["reasoning_content"], str) or not isinstance(answer, (str, type(None))):
            raise RowError(f"column '{path}': content and reasoning_content must be strings")
        check_unicode(path, value["reasoning_content"])
        check_unicode(path, answer)
        return {"reasoning": value["reasoning_content"], "answer": answer, "kind": "reasoning_content"}
    if isinstance(value, dict) and "content" in value:
        value = value["content"]
    if not isinstance(value, str):
        raise RowError(f"column '{path}' must be a completion: a string, a list of strings or a "
                       f"{{content, reasoning_content}} object, got {type(value).__name__} {str(value)[:40]!r}")
    check_unicode(path, value)
    return {"text": value}


def _columns(reasoning, answer, spec: TraceInputConfig) -> list[dict]:
    """Separate reasoning and answer columns: two strings, or two lists of the same length."""
    pairs = list(zip(reasoning, answer)) if isinstance(reasoning, list) and isinstance(answer, list) and \
        len(reasoning) == len(answer) else [(reasoning, answer)]
    for r, a in pairs:
        if not isinstance(r, str) or not isinstance(a, (str, type(None))):
            raise RowError(f"columns '{spec.reasoning}' and '{spec.answer}' must be strings (or lists of strings "
                           f"of the same length), got {type(r).__name__} and {type(a).__name__}")
        check_unicode(spec.reasoning, r)
        check_unicode(spec.answer, a)
    return [{"reasoning": _unwrap(r), "answer": a, "kind": "reasoning_column"} for r, a in pairs]


def _unwrap(reasoning: str) -> str:
    """A reasoning column may keep its tags: <think>...</think> around it are not reasoning."""
    reasoning = reasoning.strip()
    reasoning = reasoning[len(THINK_START):] if reasoning.startswith(THINK_START) else reasoning
    return reasoning[:-len(THINK_END)] if reasoning.endswith(THINK_END) else reasoning


def _strip(c: dict, prompt: str) -> dict:
    """R1 chat-template tokens and an echoed prompt out of a completion, with a mark for each. A
    dump of the whole sequence holds the prompt before <｜Assistant｜> and ends at <｜end▁of▁sentence｜>."""
    out = {**c, "template": False, "echo": False}
    for key in ("text", "reasoning", "answer"):
        if c.get(key) is None:
            continue
        text = c[key]
        if R1_ASSISTANT in text:
            text = text.rsplit(R1_ASSISTANT, 1)[1]
        text = R1_TOKEN.sub("", text.split(R1_END, 1)[0])
        out["template"] |= text != c[key]
        if key != "answer":  # an answer keeps its whitespace, as generate decodes it after </think>
            text = text.strip()
            if prompt and text.startswith(prompt):
                text, out["echo"] = text[len(prompt):].lstrip(), True
        out[key] = text
    return out


# ---------------------------------------------------------------------------------------------
# Writing: generate's shard layout, replaced whole.


def _write_generations(rows, out: Path, size: int, tokenizer) -> dict:
    """Rows into part-000of001-NNNNN.parquet files of `size` samples in a temporary directory that
    then replaces generate/generations whole: a failed import leaves the previous one in place."""
    tmp = out / f".generations{TMP_SUFFIX}"
    remove(tmp)
    tmp.mkdir(parents=True)
    end_tokens = len(tokenizer.encode(THINK_END, add_special_tokens=False))
    stats = {"samples": 0, "completion_tokens": 0, "generations_bytes": 0, "parts": 0}
    try:
        batch = []
        for row in rows:
            batch.append(row)
            if len(batch) == size:
                _write_part(batch, tmp, stats, tokenizer, end_tokens)
                batch = []
        if batch:
            _write_part(batch, tmp, stats, tokenizer, end_tokens)
        replace_dir(tmp, out / "generations")
    finally:
        remove(tmp)
    return stats


def _write_part(rows: list[dict], tmp: Path, stats: dict, tokenizer, end_tokens: int) -> None:
    """Token counts as generate records them (completion = reasoning + think-end + answer + the
    final EOS, which a cut trace lacks), one tokenizer call per column, then the part file."""
    reasoning = tokenizer([r["reasoning"] for r in rows], add_special_tokens=False)["input_ids"]
    answer = tokenizer([r["answer"] for r in rows], add_special_tokens=False)["input_ids"]
    for r, rt, at in zip(rows, reasoning, answer):
        split = r["reasoning_closed"] and r["think_end_count"] > 0
        r["reasoning_tokens"] = len(rt)
        r["think_end_index"] = len(rt) if split else None
        r["answer_tokens"] = len(at) + 1 if r["reasoning_closed"] else 0
        r["completion_tokens"] = len(rt) + (end_tokens if split else 0) + r["answer_tokens"]
        stats["completion_tokens"] += r["completion_tokens"]
    path = tmp / f"part-000of001-{stats['parts']:05d}.parquet"
    write_table(GENERATIONS, GENERATIONS.from_pylist(rows), path)
    stats["samples"] += len(rows)
    stats["generations_bytes"] += path.stat().st_size
    stats["parts"] += 1
