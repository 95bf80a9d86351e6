"""Stage `augment`: the teacher rewrites prompts into variants (paraphrase, synonyms, restructured
sentences, translation); those that pass every check join the prompts table (artifacts/<run>/augment/).

    distill augment configs/quickstart.yaml --set augment.n=4

Variant i of a prompt is written with template i % len(augment.templates): the template's
instruction, with the prompt's last user message in it, is one user message rendered with the
teacher's chat template and sent to generate's backend (vLLM in this process, or a served
endpoint), sampled at augment.temperature with a seed per request. A variant is its parent's
row (split, reference, tools, task) with the new user message, `parent_prompt_id` and `template`;
a translation gets its target language. The checks run in order and a variant's first failure
is recorded: too_long, empty, reference (the parent's reference still fits the text),
near_duplicate_parent and near_duplicate_variant (clean's MinHash signatures), exact_duplicate
(the messages of another prompt of the run) and contaminated (clean's `contaminated` rule; train
variants only). Outputs: prompts.parquet (prepare's prompts and the kept variants: what generate
reads when augment.n > 0), variants.parquet (every variant and its first failed check) and the
funnel in the manifest.
"""
from __future__ import annotations

import dataclasses
import re
import time
from decimal import Decimal
from pathlib import Path
from typing import Iterator

import click
import duckdb
import pyarrow as pa

from pipeline import manifest, minhash, rules, toolcalls
from pipeline.config import SQL_DIR, AugmentConfig, Config
from pipeline.errors import PipelineError
from pipeline.files import read_table, write_table
from pipeline.reasoning import join_completion
from pipeline.render import render
from pipeline.rows import clean_text, prompt_id
from pipeline.schema import AUGMENT, PROMPTS
from pipeline.vehicle import words

CHECKS = ("too_long", "empty", "reference", "near_duplicate_parent", "near_duplicate_variant", "exact_duplicate",
          "contaminated")


def run(cfg: Config) -> dict:
    started = time.time()
    a = cfg.augment
    if a.n == 0:
        raise PipelineError(f"{cfg.file}: augment.n is 0, which turns the stage off; set it to the variants per prompt")
    if cfg.traces.inputs:
        raise PipelineError(f"{cfg.file}: a run of imported traces (traces.inputs) has its generations already; "
                            "augment a run whose teacher generates")
    out = manifest.stage_dir(cfg, "augment")
    teacher = manifest.require(cfg, "models")["models"]["teacher"]
    manifest.require(cfg, "prepare")
    source = manifest.stage_dir(cfg, "prepare") / "prompts.parquet"
    prompts = read_table(PROMPTS, source).to_pylist()
    parents = [p for p in prompts if p["split"] in a.splits]
    click.echo(f"augment: {len(parents)} prompts in splits {a.splits} x {a.n} variants "
               f"(templates {', '.join(a.templates)})")

    # The teacher writes every variant; they come back as they finish, and are put in order.
    requests = (rewrite_request(p, i, a) for p in parents for i in range(a.n))
    replies = rewrite(cfg, teacher["path"], requests, len(parents) * a.n) if parents else []
    variants = [variant(request, reply, answer, finish, cfg.prepare.unicode_form)
                for request, reply, answer, finish in replies]
    order = {p["prompt_id"]: i for i, p in enumerate(parents)}
    variants.sort(key=lambda v: (order[v["parent_prompt_id"]], v["variant_idx"]))

    # Checks, in order: each sees the variants no earlier check rejected.
    check_variants(cfg, prompts, variants, source)
    funnel = funnel_of(variants)
    kept = [v["prompt"] for v in variants if v["rejected"] is None]
    write_table(AUGMENT, AUGMENT.from_pylist(variants), out / "variants.parquet")
    write_table(PROMPTS, PROMPTS.from_pylist(prompts + kept), out / "prompts.parquet")

    per_template = {name: {"variants": sum(v["template"] == name for v in variants),
                           "kept": sum(v["template"] == name for v in kept)} for name in a.templates}
    counts = {"prompts": len(prompts), "parents": len(parents), "variants": len(variants), "kept": len(kept),
              "prompts_out": len(prompts) + len(kept)}
    click.echo(f"augment: kept {len(kept)} of {len(variants)} variants ("
               + ", ".join(f"{name} {t['kept']}/{t['variants']}" for name, t in per_template.items())
               + f") -> {out / 'prompts.parquet'} ({counts['prompts_out']} prompts)")
    return manifest.write(cfg, "augment", started, counts, funnel=funnel, per_template=per_template,
                          templates={name: dataclasses.asdict(a.template(name)) for name in a.templates})


# ---------------------------------------------------------------------------------------------
# The teacher's rewrites.


def rewrite_request(parent: dict, i: int, a: AugmentConfig) -> dict:
    """The request for variant i of `parent`: a prompts-like row (what render and the engine read:
    prompt_id, the request's id and seed; split; messages; tools) whose one user message is the
    template's instruction, carrying what the variant needs."""
    name = a.templates[i % len(a.templates)]
    template = a.template(name)
    return {"prompt_id": f"{parent['prompt_id']}-aug{i}", "split": parent["split"], "tools": None,
            "messages": [{"role": "user", "content": template.instruction.replace("{prompt}", last_message(parent))}],
            "parent": parent, "variant_idx": i, "template": name, "language": template.language}


def rewriter_config(cfg: Config) -> Config:
    """generate's backend, engine and preset (chat template rule, reasoning split) with augment's
    sampling, one sample per request and one logprob (the engines always ask for some), and no
    teacher-only context: it would show the teacher worked examples of the task instead."""
    a = cfg.augment
    gen = dataclasses.replace(cfg.generate, n=1, temperature=a.temperature, top_p=a.top_p,
                              eval_temperature=a.temperature, eval_top_p=a.top_p, max_new_tokens=a.max_new_tokens,
                              top_k=1, teacher_context="")
    return dataclasses.replace(cfg, generate=gen)


def rewrite(cfg: Config, model_path: str, requests, total: int) -> Iterator[tuple[dict, str, str, str]]:
    """(request, reply, answer, finish_reason) for every request as the teacher finishes it: its whole
    reply and the answer in it (after the reasoning, if it reasons; "" when that never closed); a
    request longer than max_model_len gets ("", "", "too_long")."""
    from transformers import AutoTokenizer

    from pipeline.engine import progress, sample_rows, teacher_engine

    rcfg = rewriter_config(cfg)
    gen = rcfg.generate
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    think_end_ids = tokenizer.encode(gen.think_end, add_special_tokens=False) if gen.think_end else []
    too_long = []

    def rendered():  # lazily, as generate does: ids are held only for the requests inside the engine
        for r in requests:
            text, ids = render(tokenizer, r, gen.system_prompt, gen.think_start)
            if len(ids) + 1 > gen.engine.max_model_len:
                too_long.append(r)
                continue
            yield r, text, ids

    engine = teacher_engine(rcfg, model_path, tokenizer)
    with progress(total, 0, "augment", "variant") as bar:
        for request, text, ids, (c,) in engine.generate(rendered()):
            row, _ = sample_rows(request, text, ids, 0, c, tokenizer, think_end_ids, model_path)
            reply = join_completion(row["reasoning"], row["answer"], gen.think_end, row["reasoning_closed"],
                                    row["think_end_count"])
            yield request, reply, row["answer"], row["finish_reason"]
            bar.update(1)
    for r in too_long:
        yield r, "", "", "too_long"


# What small teachers wrap a rewrite in: a label ("Paraphrased text:", "Translation:", "改写：")
# and enclosing quotes.
LABEL = re.compile(r"^(?:here is |here's )?(?:the |a )?(?:(?:new|rewritten|paraphrased|restructured|translated) )?"
                   r"(?:text|version|question|problem|task|prompt|paraphrase|translation|rewrite)"
                   r"(?: \w+){0,3} ?[:：]\s*|^(?:改写|翻译|译文)[^\n:：]{0,6}[:：]\s*", re.IGNORECASE)
QUOTES = {'"': '"', "“": "”", "'": "'", "「": "」", "『": "』", "«": "»"}


def rewritten_text(answer: str, form: str) -> str:
    """The new user message in a reply's answer: a leading label and enclosing quotes removed, cleaned as
    prepare cleans prompts (Unicode `form`, control characters, surrounding whitespace)."""
    text = LABEL.sub("", answer.strip(), count=1).strip()
    if len(text) >= 2 and QUOTES.get(text[0]) == text[-1]:
        text = text[1:-1]
    return clean_text(text, form)


def variant(request: dict, reply: str, answer: str, finish: str, form: str) -> dict:
    """A variants row for one reply and the answer in it, holding under `prompt` the prompts row it would add: the
    parent's, with the new last user message, its own prompt_id, no source_id or completion (they
    belong to the parent's text), and the template's language if it has one."""
    parent = request["parent"]
    text = rewritten_text(answer, form)
    messages = [dict(m) for m in parent["messages"]]
    messages[last_user(messages)]["content"] = text
    prompt = {**parent, "prompt_id": prompt_id(messages, parent["tools"]), "messages": messages, "source_id": None,
              "completion": None, "language": request["language"] or parent["language"],
              "parent_prompt_id": parent["prompt_id"], "template": request["template"]}
    return {"prompt_id": prompt["prompt_id"], "parent_prompt_id": parent["prompt_id"], "template": request["template"],
            "variant_idx": request["variant_idx"], "split": parent["split"], "reply": reply, "text": text,
            "finish_reason": finish, "rejected": None, "prompt": prompt}


def last_user(messages: list[dict]) -> int:
    return max(i for i, m in enumerate(messages) if m["role"] == "user")


def last_message(prompt: dict) -> str:
    """The last user message: what a template rewrites."""
    return prompt["messages"][last_user(prompt["messages"])]["content"]


def user_text(prompt: dict) -> str:
    """The user turns joined by newlines: what clean's rules call a prompt's text."""
    return "\n".join(m["content"] for m in prompt["messages"] if m["role"] == "user")


# ---------------------------------------------------------------------------------------------
# Checks


def check_variants(cfg: Config, prompts: list[dict], variants: list[dict], source: Path) -> None:
    """Set each variant's `rejected` to the first check of CHECKS it fails (None: kept). `prompts`
    are the run's (prepare's table, at `source`); variants are in order, the earlier kept."""
    parents = {p["prompt_id"]: p for p in prompts}
    for v in variants:
        parent = parents[v["parent_prompt_id"]]
        if v["finish_reason"] in ("length", "too_long"):
            v["rejected"] = "too_long"
        elif not v["text"]:
            v["rejected"] = "empty"
        elif parent["reference"] is not None and not reference_holds(last_message(parent), v["text"], parent["task"],
                                                                     parent["reference"]):
            v["rejected"] = "reference"
    near_duplicates(cfg, parents, [v for v in variants if v["rejected"] is None])
    taken = set(parents)
    for v in (v for v in variants if v["rejected"] is None):
        if v["prompt_id"] in taken:
            v["rejected"] = "exact_duplicate"
        taken.add(v["prompt_id"])
    leaked = contaminated(cfg, source, prompts, [v for v in variants if v["rejected"] is None])
    for v in variants:
        if v["rejected"] is None and v["prompt_id"] in leaked:
            v["rejected"] = "contaminated"


def funnel_of(variants: list[dict]) -> list[dict]:
    """Per check in order: variants in, rejected by it, out; printed as clean prints its funnel."""
    funnel, rows_in = [], len(variants)
    click.echo(f"augment funnel: {'check':22s} {'in':>9s} {'rejected':>9s} {'out':>9s}")
    for check in CHECKS:
        dropped = sum(v["rejected"] == check for v in variants)
        funnel.append({"check": check, "rows_in": rows_in, "dropped": dropped, "rows_out": rows_in - dropped})
        click.echo(f"{'':16s}{check:22s} {rows_in:>9,} {dropped:>9,} {rows_in - dropped:>9,}")
        rows_in -= dropped
    return funnel


# A number in digits: 12, 1,000, 2.5 (and other scripts' digits, which Decimal reads).
NUMBER = re.compile(r"\d+(?:,\d{3})*(?:\.\d+)?")
ZH_NUMERAL = "[零〇一二两三四五六七八九十百千万]"


def reference_holds(parent: str, text: str, task: str, reference: str) -> bool:
    """Whether the parent's reference still fits the variant, as far as text tells: for a tool call,
    every argument value of the reference that the parent's text mentions is mentioned in the
    variant ("I'm cold" names no temperature, so none is asked of its variants); for the other
    tasks (math, exact, choice), every number of the parent appears in the variant, and no other
    number in digits does (a new number changes the problem, or is a teacher solving it: "15 + 9
    = 24")."""
    if task == "tool":
        wanted = [allowed for allowed in argument_values(reference) if any(mentions(parent, v) for v in allowed)]
        return all(any(mentions(text, v) for v in allowed) for allowed in wanted)
    return all(mentions(text, number) for number in numbers(parent)) and numbers(text) <= numbers(parent)


def argument_values(reference: str) -> list[list]:
    """Each argument of the reference's calls as its allowed values (BFCL's "" for an optional
    argument left out); [] for no call, or a reference that is not a call."""
    calls = toolcalls.parse_reference(reference) or []
    return [[v for v in allowed if v != ""] for call in calls for arguments in call.values()
            for allowed in arguments.values()]


def numbers(text: str) -> set[str]:
    return {_canonical(m) for m in NUMBER.findall(text)}


def _canonical(number: str) -> str:
    """1,000 -> 1000; 2.50 -> 2.5; 21.0 -> 21."""
    return format(Decimal(number.replace(",", "")).normalize(), "f")


def mentions(text: str, value) -> bool:
    """Whether `text` states `value`: a number in digits, or from 0 to 100 in English or Chinese
    words ("twenty-two", "二十二"); a string case-insensitively. Booleans and objects are not
    stated in so many words: False."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        return False
    if isinstance(value, str) and not NUMBER.fullmatch(value.strip()):
        return bool(value.strip()) and value.strip().casefold() in text.casefold()
    number = _canonical(str(value))
    if number in numbers(text):
        return True
    if not (number.isdigit() and int(number) <= 100):
        return False
    n = int(number)
    english = re.search(rf"(?<![\w-]){re.escape(words(n, 'en'))}(?![\w-])", text, re.IGNORECASE)
    chinese = re.search(rf"(?<!{ZH_NUMERAL}){words(n, 'zh')}(?!{ZH_NUMERAL})", text)
    return bool(english or chinese)


def near_duplicates(cfg: Config, parents: dict, variants: list[dict]) -> None:
    """Reject a variant whose signature's Jaccard estimate with its parent's user message (clean's
    MinHash over word shingles, clean.near_dup_*) reaches clean.near_dup_threshold, or that holds
    the parent's text whole (a copy with words added, or the instruction echoed around it):
    near_duplicate_parent; or whose estimate with an earlier kept variant of the same parent
    reaches it: near_duplicate_variant."""
    c = cfg.clean
    texts = [last_message(parents[v["parent_prompt_id"]]) for v in variants]
    sig = minhash.signatures(pa.array(texts + [v["text"] for v in variants], pa.string()),
                           minhash.shingle_mix(c.near_dup_shingle, cfg.run.seed), c.near_dup_num_perm)
    parent_sig, variant_sig = sig[:len(variants)], sig[len(variants):]
    kept: dict[str, list] = {}
    for v, parent_text, p, s in zip(variants, texts, parent_sig, variant_sig):
        earlier = kept.setdefault(v["parent_prompt_id"], [])
        if minhash.estimated_jaccard(p, s) >= c.near_dup_threshold or parent_text in v["text"]:
            v["rejected"] = "near_duplicate_parent"
        elif any(minhash.estimated_jaccard(k, s) >= c.near_dup_threshold for k in earlier):
            v["rejected"] = "near_duplicate_variant"
        else:
            earlier.append(s)


CANDIDATES = pa.schema([("sample_id", pa.string()), ("prompt_id", pa.string()), ("split", pa.string()),
                        ("prompt_text", pa.string())])


def contaminated(cfg: Config, source: Path, prompts: list[dict], variants: list[dict]) -> set[str]:
    """prompt_ids of the train variants that clean's `contaminated` rule (this project's
    sql/contaminated.sql, clean.decontam_*) drops: sharing an n-gram with an eval prompt of the run
    (in `source`) or of clean.decontam_files. The run's train prompts are candidates beside them,
    so an n-gram that many train prompts share counts as an instruction, as it does in clean."""
    rows = [{"sample_id": p["prompt_id"], "prompt_id": p["prompt_id"], "split": p["split"], "prompt_text": user_text(p)}
            for p in prompts + [v["prompt"] for v in variants] if p["split"] == "train"]
    con = duckdb.connect()
    try:
        for name in ("decontam_ngram", "decontam_max_prompt_share"):
            con.execute(f"SET VARIABLE {name} = ?", [getattr(cfg.clean, name)])
        rules.load_eval_texts(con, source, cfg.clean.decontam_files, cfg.prepare.unicode_form)
        con.register("candidates", pa.Table.from_pylist(rows, schema=CANDIDATES))
        path, sql = rules.rule_sql(SQL_DIR, "contaminated")
        rules.define_view(con, "contaminated", path, sql)
        dropped = {r[0] for r in con.execute('SELECT sample_id FROM "contaminated"').fetchall()}
    finally:
        con.close()
    return dropped & {v["prompt_id"] for v in variants}
