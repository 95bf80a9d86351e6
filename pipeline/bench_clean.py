"""`distill bench clean`: the whole `distill clean` on synthetic generations of realistic shape,
and the rules against a pandas implementation of the same rules, into artifacts/bench/clean.json.

    distill bench clean configs/arithmetic.yaml --rows 1000000

Rows carry ~2 KB of reasoning text and one planted defect in every 40 rows per rule; one prompt in
ten is Chinese with Chinese reasoning, and the English text carries typographic punctuation and
now and then a Chinese word, as R1 writes, so the non-ASCII paths are measured too; a third of the
prompts declare their language (en or zh), the others leave language_mix to infer it.
`rows_per_s` is `distill clean` run as a user runs it, in its own process, wall time from start
to exit (load, verification, every rule, near-duplicates, the three outputs written), and
`peak_rss_mb` is that process's peak. The stage's own timings split it up: `rules_rows_per_s`
(the rules), `verify_rows_per_s` (answer extraction and checking), `near_dup_rows_per_s` (MinHash +
LSH over the survivors). The pandas baseline, vectorized as a competent pandas user writes it
(.str methods and groupby; comprehensions only where pandas has no vectorized form), runs on a
`--sample`-row prefix, where DuckDB runs the same rules again; both must drop the same rows.
"""
from __future__ import annotations

import dataclasses
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import click
import duckdb
import numpy as np
import pandas as pd
import regex

from pipeline import clean
from pipeline.config import RULES as CLEAN_RULES
from pipeline.config import CleanConfig, Config
from pipeline.files import sql_quote
from pipeline.rules import load_eval_texts

WORDS = ("the a of to and we so then is are add take left right total number count each more less sum first next "
         "apples boxes pens coins cards marbles books step check answer result value times plus minus equals "
         "twelve seven three nine five four eight six two one ten hundred group share split half double every "
         "remaining altogether start end carry digit place column row because therefore since given find "
         "“so” “then” it’s we’re —wait— again… 总数 ok").split()  # typographic punctuation and a Chinese word, as R1 writes
CJK_WORDS = "我们 把 这些 数 加 起来 然后 检查 结果 所以 答案 是 每 个 盒子 里 有 支 笔 一共 多少 剩下 因为".split()
DEFECTS = ("truncated", "unclosed_reasoning", "empty_answer", "garbled", "garbled_control", "repetition",
           "language_mix", "length", "incorrect", "exact_duplicate", "contaminated")
RULES = [r for r in CLEAN_RULES if r != "near_duplicate"]
PLANT_EVERY = 40  # one prompt in 40 carries each defect, on its first sample


def synthesize(out: Path, rows: int) -> tuple[Path, Path]:
    """A run directory as generate leaves it (prepare/prompts.parquet, one generations shard with
    every column of the schema, a generate manifest), cached by row count; returns the shard and
    the prompts file."""
    (out / "generate/generations").mkdir(parents=True, exist_ok=True)
    (out / "prepare").mkdir(parents=True, exist_ok=True)
    gens, prompts = out / "generate/generations/part-000of001-00000.parquet", out / "prepare/prompts.parquet"
    manifest = out / "generate/manifest.json"
    if gens.exists() and prompts.exists() and manifest.exists():
        return gens, prompts
    con = duckdb.connect()
    con.execute("SET memory_limit = '4GB'")
    con.execute("SET VARIABLE words = ?", [list(WORDS)])
    con.execute("SET VARIABLE cjk_words = ?", [list(CJK_WORDS)])
    cjk = ("array_to_string(list_transform(range(400), lambda j: getvariable('cjk_words')"
           "[1 + (hash(i, j) % " + str(len(CJK_WORDS)) + ")::BIGINT]), '')")
    text = ("array_to_string(list_transform(range({n}), lambda j: getvariable('words')[1 + (hash({seed}, j) % {v})::BIGINT] "
            "|| CASE WHEN j % 14 = 13 THEN chr(10) ELSE '' END), ' ')")
    con.execute(f"""
        CREATE TABLE p AS
        SELECT q, 'p' || q AS prompt_id, CASE WHEN q % 100 = 0 THEN 'eval' ELSE 'train' END AS split,
               (q % 997)::VARCHAR AS reference,
               -- every 100th prompt is an eval prompt; the train prompt after it copies its question;
               -- every 10th (from the 5th) is Chinese, answered in Chinese
               CASE WHEN q % 10 = 5 THEN {cjk.replace('range(400)', 'range(30)').replace('hash(i, j)', 'hash(q, j)')}
                    ELSE {text.format(n=40, seed='CASE WHEN q % 100 = 1 THEN q - 1 ELSE q END', v=len(WORDS))}
               END AS question, q % 10 = 5 AS chinese,
               -- a third of the prompts declare their language, the others leave it to the rule
               CASE WHEN q % 3 = 0 THEN CASE WHEN chinese THEN 'zh' ELSE 'en' END END AS language
        FROM range({rows // 2}) t(q)""")
    con.execute(f"""COPY (SELECT prompt_id, [{{'role': 'user', 'content': question}}] AS messages, NULL::VARCHAR AS tools,
                                 reference, 'math' AS task, 'synthetic' AS source, NULL::VARCHAR AS source_id,
                                 (q % 5)::INTEGER AS difficulty, split, NULL::VARCHAR AS completion, language,
                                 NULL::VARCHAR AS parent_prompt_id, NULL::VARCHAR AS template FROM p)
                    TO '{prompts}.tmp' (FORMAT parquet)""")
    con.execute(f"""COPY (
        WITH s AS (
            SELECT i, p.prompt_id, p.split, p.reference, p.chinese, (i % 2)::INTEGER AS sample_idx,
                   coalesce(['{"','".join(DEFECTS)}'][1 + (i // 2 % {PLANT_EVERY})::INTEGER], 'none') AS planted
            FROM range({rows}) t(i) JOIN p ON p.q = i // 2
        )
        SELECT prompt_id || '-' || sample_idx AS sample_id, prompt_id, sample_idx, split,
               '' AS prompt_text, []::INTEGER[] AS prompt_token_ids,
               CASE WHEN planted = 'repetition' AND sample_idx = 0 THEN repeat('Let me add these again. ', 90)
                    WHEN planted = 'language_mix' AND sample_idx = 0 AND chinese THEN {text.format(n=330, seed='i', v=len(WORDS))}
                    WHEN planted = 'language_mix' AND sample_idx = 0 THEN {cjk}
                    WHEN chinese AND planted = 'exact_duplicate' THEN {cjk.replace('hash(i, j)', 'hash(-1 - i // 2, j)')}
                    WHEN chinese THEN {cjk}
                    WHEN planted = 'exact_duplicate' THEN {text.format(n=330, seed='-1 - i // 2', v=len(WORDS))}
                    ELSE {text.format(n=330, seed='i', v=len(WORDS))} END
               || CASE WHEN planted = 'garbled' AND sample_idx = 0 THEN chr(65533)
                       WHEN planted = 'garbled_control' AND sample_idx = 0 THEN chr(1) ELSE '' END AS reasoning,
               CASE WHEN planted = 'empty_answer' AND sample_idx = 0 THEN ''
                    WHEN planted = 'incorrect' AND sample_idx = 0 THEN 'The answer is \\boxed{{' || (reference::INTEGER + 1) || '}}.'
                    ELSE 'The answer is \\boxed{{' || reference || '}}.' END AS answer,
               NOT (planted = 'unclosed_reasoning' AND sample_idx = 0) AS reasoning_closed,
               CASE WHEN planted = 'unclosed_reasoning' AND sample_idx = 0 THEN 0 ELSE 1 END AS think_end_count,
               NULL::INTEGER AS think_end_index, 40 AS prompt_tokens,
               CASE WHEN planted = 'length' AND sample_idx = 0 THEN 50000 ELSE 500 + (i % 300)::INTEGER END
                   AS completion_tokens,
               completion_tokens - 10 AS reasoning_tokens, 10 AS answer_tokens,
               CASE WHEN planted = 'truncated' AND sample_idx = 0 THEN 'length' ELSE 'stop' END AS finish_reason,
               'synthetic' AS model, NULL::BIGINT AS seed, 0::FLOAT AS latency_s
        FROM s) TO '{gens}.tmp' (FORMAT parquet, COMPRESSION zstd, ROW_GROUP_SIZE 100000)""")
    Path(f"{prompts}.tmp").rename(prompts)
    Path(f"{gens}.tmp").rename(gens)
    manifest.write_text(json.dumps({"stage": "generate", "key": f"synthetic-{rows}",
                                    "config": {"generate": {"think_end": "</think>"}}}))
    return gens, prompts


def _duckdb_clean(cfg: Config, gens: Path, prompts: Path, rules: list[str], scratch: Path) -> dict:
    timings = {}
    with clean.connect(cfg.clean, scratch) as con:
        clean.set_variables(con, cfg, teacher_reasons=True)
        t = time.perf_counter()
        n = clean.load_samples(con, [gens], prompts)
        load_eval_texts(con, prompts, [])
        timings["load"] = time.perf_counter() - t
        t = time.perf_counter()
        clean.verify(con)
        timings["verify"] = time.perf_counter() - t
        t = time.perf_counter()
        clean.apply_rules(con, cfg.clean, rules)
        timings["rules"] = time.perf_counter() - t
        timings["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        dropped = dict(con.execute("SELECT sample_id, rule FROM dropped").fetchall())
        if "near_duplicate" in cfg.clean.rules:
            survivors = con.execute("SELECT count(*) FROM candidates").fetchone()[0]
            t = time.perf_counter()
            clean.apply_rules(con, cfg.clean, ["near_duplicate"])
            timings["near_dup"] = time.perf_counter() - t
            timings["near_dup_rows"] = survivors
    return {"rows": n, "dropped": dropped, **timings}


# ---------------------------------------------------------------------------------------------
# The baseline: the same rules as a competent pandas user writes them.

# language_mix: the scripts it knows, the language codes it reads, what it cuts before counting
SCRIPTS = {name: cls + r"\p{Inherited}" for name, cls in {
    "latin": r"\p{Latin}", "cyrillic": r"\p{Cyrillic}", "greek": r"\p{Greek}", "armenian": r"\p{Armenian}",
    "georgian": r"\p{Georgian}", "arabic": r"\p{Arabic}", "hebrew": r"\p{Hebrew}", "devanagari": r"\p{Devanagari}",
    "bengali": r"\p{Bengali}", "gurmukhi": r"\p{Gurmukhi}", "gujarati": r"\p{Gujarati}", "tamil": r"\p{Tamil}",
    "telugu": r"\p{Telugu}", "kannada": r"\p{Kannada}", "malayalam": r"\p{Malayalam}", "thai": r"\p{Thai}",
    "hangul": r"\p{Hangul}", "cjk": r"\p{Han}\p{Hiragana}\p{Katakana}\u30FC\uFF70"}.items()}
LANGUAGES = {code: script for script, codes in {
    "latin": "en fr de es it pt nl sv da no nb nn fi is pl cs sk sl hr bs ro hu et lv lt tr az uz vi id ms tl fil "
             "sw ca eu gl ga cy af sq mt la eo ha yo zu so",
    "cyrillic": "ru uk be bg mk kk ky tg mn", "greek": "el", "armenian": "hy", "georgian": "ka",
    "arabic": "ar fa ur ps ug", "hebrew": "he iw yi", "devanagari": "hi mr ne sa", "bengali": "bn as",
    "gurmukhi": "pa", "gujarati": "gu", "tamil": "ta", "telugu": "te", "kannada": "kn", "malayalam": "ml",
    "thai": "th", "hangul": "ko", "cjk": "zh ja yue"}.items() for code in codes.split()}
LATEX_AND_CODE = r"\$\$[^$]*\$\$|\$[^$\n]*\$|\\\((?s:.*?)\\\)|\\\[(?s:.*?)\\\]|`[^`]*`|\\[a-zA-Z]+"  # plain `re`
FOREIGN_WORD = regex.compile(r"(?V1)[[\p{L}\p{M}]--\p{Latin}]{2,}")  # non-Latin letters, two or more
LATIN = regex.compile(r"\p{Latin}")
LETTER_OR_MARK = regex.compile(r"[\p{L}\p{M}]")
# contaminated: words, and each character of a script written without spaces
SEPARATORS = regex.compile(r"[^\p{L}\p{M}\p{N}]+")
SPACELESS = regex.compile(r"[\p{Han}\p{Hiragana}\p{Katakana}\u30FC\uFF70\p{Thai}\p{Lao}\p{Khmer}\p{Myanmar}]")
UNPRINTABLE = regex.compile(r"[\p{Cf}\p{Co}\p{Cs}]")


def _counts(pattern, texts: pd.Series) -> np.ndarray:
    """Matches per text of a Unicode-property pattern: pandas' .str methods use `re`, which has no
    \\p{...}, so a comprehension over the column with the `regex` module (no per-row apply)."""
    compiled = regex.compile(pattern) if isinstance(pattern, str) else pattern
    return np.fromiter((len(compiled.findall(t)) for t in texts), dtype=np.int64, count=len(texts))


def pandas_clean(cfg: Config, gens: Path, prompts: Path, verdicts: pd.DataFrame) -> dict:
    c = cfg.clean
    df = pd.read_parquet(gens, columns=list(clean.SAMPLE_COLUMNS))
    p = pd.read_parquet(prompts)
    users = p["messages"].explode()
    users = users[users.str["role"] == "user"].str["content"]
    p["prompt_text"] = users.groupby(level=0).agg("\n".join)
    df = df.merge(p[["prompt_id", "prompt_text", "task", "reference", "language"]], on="prompt_id", how="left")
    df = df.merge(verdicts, on="sample_id", how="left")
    df["text"] = df["reasoning"] + df["answer"]
    dropped = {}

    def drop(rule: str, mask) -> None:
        nonlocal df
        mask = np.asarray(mask, dtype=bool)
        dropped.update(dict.fromkeys(df.loc[mask, "sample_id"], rule))
        df = df[~mask]

    drop("truncated", df["finish_reason"] == "length")
    drop("unclosed_reasoning", ~df["reasoning_closed"].astype(bool) | (df["think_end_count"] > 1))
    drop("empty_answer", df["answer"].str.strip(" \t\n\r") == "")
    length = df["text"].str.len().clip(lower=1).to_numpy()
    drop("garbled", df["text"].str.contains("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\x80-\x9f\ufffd]")
         | (_counts(UNPRINTABLE, df["text"]) / length > c.max_unprintable_share))
    t = df["text"]
    n, k = t.str.len(), c.repeat_probe_chars
    middle = [x[m // 2 - 1:m // 2 - 1 + k] for x, m in zip(t, n)]  # a probe at a per-row offset: no .str form
    tail = t.str[-k:]
    size = t.str.encode("utf-8").str.len()
    copies = np.maximum([x.count(m) * len(m.encode()) for x, m in zip(t, middle)],
                        [x.count(m) * len(m.encode()) for x, m in zip(t, tail)])
    drop("repetition", (n >= 4 * k) & (copies / size.clip(lower=1) > c.max_repeated_share))
    first = df.drop_duplicates("prompt_id").set_index("prompt_id")
    text = first["prompt_text"].str.replace(LATEX_AND_CODE, " ", regex=True)
    code = first["language"].astype("string").str.replace("_", "-").str.split("-").str[0].str.lower()
    declared = code.map(LANGUAGES)
    foreign = pd.Series(["".join(FOREIGN_WORD.findall(t)) for t in text], index=text.index)
    per_script = pd.DataFrame({name: _counts(f"[{cls}]", foreign) for name, cls in SCRIPTS.items() if name != "latin"},
                              index=first.index)
    total = foreign.str.len()
    dominant = per_script.idxmax(axis=1).where(2 * per_script.max(axis=1) > total, "unknown")
    latin = _counts(LATIN, text)
    inferred = pd.Series(np.where(((total >= 4) & (4 * total >= latin)) | ((total > 0) & (latin == 0)), dominant,
                                  np.where(latin > 0, "latin", "none")), index=text.index)
    df = df.assign(script=df["prompt_id"].map(declared.fillna(inferred)))
    ascii_latin = (df["script"] == "latin") & df["text"].str.isascii()  # nothing outside Latin: no count
    judged = (~df["script"].isin(["none", "unknown"]) & ~ascii_latin).to_numpy()
    stripped = df.loc[judged, "text"].str.replace(LATEX_AND_CODE, " ", regex=True)
    letters = np.zeros(len(df), dtype=np.int64)
    letters[judged] = _counts(LETTER_OR_MARK, stripped)
    outside = np.zeros(len(df), dtype=np.int64)
    for name, cls in SCRIPTS.items():
        rows = (df["script"] == name).to_numpy() & judged
        outside[rows] = _counts(rf"(?V1)[[\p{{L}}\p{{M}}]--[{cls}]]", stripped[rows[judged]])
    mixed = (letters > 0) & (outside / np.maximum(letters, 1) > c.max_script_mix)
    drop("language_mix", mixed)
    drop("length", (df["completion_tokens"] < c.min_tokens) | (df["completion_tokens"] > c.max_tokens))
    drop("invalid_call", df["invalid_call"].notna())
    drop("incorrect", (df["correct"] == False) & (not c.keep_incorrect))  # noqa: E712 (NaN = unchecked)
    words = pd.Series([SPACELESS.sub(r" \g<0> ", SEPARATORS.sub(" ", t)).split() for t in p["prompt_text"].str.lower()],
                      index=p.index)
    n_gram = c.decontam_ngram
    grams = pd.Series([{" ".join(w[i:i + n_gram]) for i in range(len(w) - n_gram + 1)} for w in words], index=p.index)
    eval_grams = set().union(*grams[p["split"] == "eval"])
    train = p["prompt_id"].isin(df.loc[df["split"] == "train", "prompt_id"]) & (p["split"] == "train")
    exploded = grams[train].explode().dropna()
    freq = exploded.value_counts()
    common = set(freq[freq > max(1, c.decontam_max_prompt_share * int(train.sum()))].index)
    leaked = set(p.loc[exploded[exploded.isin(eval_grams - common)].index.unique(), "prompt_id"])
    drop("contaminated", (df["split"] == "train") & df["prompt_id"].isin(leaked))
    key = df["prompt_id"] + "\x00" + df["text"].str.lower()
    drop("exact_duplicate", df.assign(key=key).sort_values("sample_idx").groupby("key").cumcount()
         .reindex(df.index) > 0)
    order = df.sort_values(["completion_tokens", "sample_idx"])
    drop("per_prompt_cap", order.groupby("prompt_id").cumcount().reindex(df.index) >= c.max_per_prompt)
    return dropped


# ---------------------------------------------------------------------------------------------


def bench_clean(cfg: Config, rows: int, sample: int) -> dict:
    base = Path(cfg.run.artifacts_dir) / "bench"
    scratch = base / "clean.tmp"
    run_dir = base / f"clean_run-{rows}"
    t = time.perf_counter()
    gens, prompts = synthesize(run_dir, rows)
    click.echo(f"  synthetic data: {rows:,} rows ({gens.stat().st_size / 1e6:.0f} MB Parquet) "
               f"in {time.perf_counter() - t:.0f}s")
    # the rules' default parameters, whatever the config file tunes for its own data
    cfg.clean = dataclasses.replace(CleanConfig(), memory_limit=cfg.clean.memory_limit, temp_dir=cfg.clean.temp_dir,
                                    threads=cfg.clean.threads, rules=RULES + ["near_duplicate"])

    # The whole stage, as a user runs it, in its own process.
    config = base / f"clean_run-{rows}.yaml"
    section = {k: v for k, v in dataclasses.asdict(cfg.clean).items() if k != "sql_dir"}
    config.write_text(json.dumps({"run": {"name": run_dir.name, "artifacts_dir": str(base)}, "clean": section}))
    t = time.perf_counter()
    subprocess.run([sys.executable, "-m", "pipeline.cli", "clean", str(config)], check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - t
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    m = json.loads((run_dir / "clean/manifest.json").read_text())
    funnel = {f["rule"]: f for f in m["funnel"]}
    near = funnel["near_duplicate"]
    rules_s = m["seconds"]["rules"] - near["seconds"]
    click.echo(f"  distill clean, {rows:,} rows: {wall:.1f}s wall ({rows / wall:,.0f} rows/s; load "
               f"{m['seconds']['load']:.1f}s, verify {m['seconds']['verify']:.1f}s, rules {rules_s:.1f}s, near-dup "
               f"{near['seconds']:.1f}s, write {m['seconds']['write']:.1f}s); peak RSS {peak:.0f} MB")

    # The same rules on a prefix, in DuckDB and in pandas; both must drop the same rows.
    small = base / f"clean_run-{rows}-sample-{sample}.parquet"
    if not small.exists():
        duckdb.execute(f"COPY (SELECT * FROM read_parquet({sql_quote(gens)}) LIMIT {sample}) TO {sql_quote(small)} "
                       "(FORMAT parquet)")
    cfg.clean.rules = RULES
    part = _duckdb_clean(cfg, small, prompts, RULES, scratch)
    with clean.connect(cfg.clean, scratch) as con:
        clean.load_samples(con, [small], prompts)
        clean.verify(con)
        verdicts = con.execute("SELECT sample_id, correct, invalid_call FROM verdicts").df()
    t = time.perf_counter()
    pandas_dropped = pandas_clean(cfg, small, prompts, verdicts)
    pandas_s = time.perf_counter() - t
    duck_s = part["load"] + part["rules"]
    agree = pandas_dropped == part["dropped"]
    click.echo(f"  {sample:,}-row sample: duckdb {duck_s:.2f}s, pandas {pandas_s:.2f}s; same drops: {agree}")
    if not agree:
        diff = {k for k in set(pandas_dropped) | set(part["dropped"]) if pandas_dropped.get(k) != part["dropped"].get(k)}
        click.echo(f"  differences ({len(diff)}), e.g. " + ", ".join(
            f"{k}: pandas {pandas_dropped.get(k)} / duckdb {part['dropped'].get(k)}" for k in sorted(diff)[:5]))
    limit_mb = cfg.clean.memory_limit_mb
    return {
        "rows": rows, "sample_rows": sample, "rules": RULES, "memory_limit_mb": limit_mb,
        "rows_per_s": round(rows / wall), "wall_s": round(wall, 1), "stage_seconds": m["seconds"],
        "rules_rows_per_s": round(rows / rules_s), "peak_rss_mb": round(peak),
        "near_dup_rows_per_s": round(near["rows_in"] / near["seconds"]),
        "verify_rows_per_s": round(rows / m["seconds"]["verify"]),
        "speedup_vs_pandas": round(pandas_s / duck_s, 2),
        "pandas_rows_per_s": round(sample / pandas_s), "same_drops_as_pandas": agree,
        "dropped_by_rule": {r: funnel[r]["dropped"] for r in RULES + ["near_duplicate"]},
        "targets": {"rows_per_s": ">= 30000 (whole distill clean)", "speedup_vs_pandas": ">= 10",
                    "near_dup_rows_per_s": ">= 5000", "peak_rss_mb": f"<= memory_limit_mb ({limit_mb})"},
    }
