"""`distill bench clean`: the cleaning rules on synthetic generations of realistic shape, against a
straightforward pandas implementation of the same rules, into artifacts/bench/clean.json.

    distill bench clean configs/quickstart.yaml --rows 1000000

Rows carry ~2 KB of reasoning text and one planted defect in every 40 rows per rule. Timed on
their own: `rows_per_s` (load + every rule but near-duplicate detection, verdicts precomputed),
`verify_rows_per_s` (answer extraction and checking) and `near_dup_rows_per_s` (MinHash
signatures + LSH rule over the survivors). The pandas baseline runs on a `--sample`-row prefix,
where DuckDB runs again, and both must drop the same rows for the same rules.
"""
from __future__ import annotations

import dataclasses
import resource
import time
from pathlib import Path

import click
import duckdb
import pandas as pd
import regex

from pipeline import clean
from pipeline.config import RULES as CLEAN_RULES
from pipeline.config import CleanConfig, Config

WORDS = ("the a of to and we so then is are add take left right total number count each more less sum first next "
         "apples boxes pens coins cards marbles books step check answer result value times plus minus equals "
         "twelve seven three nine five four eight six two one ten hundred group share split half double every "
         "remaining altogether start end carry digit place column row because therefore since given find").split()
CJK_WORDS = "我们 把 这些 数 加 起来 然后 检查 结果 所以 答案 是 每 个 盒子 里 有 支 笔 一共 多少 剩下 因为".split()
DEFECTS = ("truncated", "unclosed_reasoning", "empty_answer", "garbled", "garbled_control", "repetition",
           "language_mix", "length", "incorrect", "exact_duplicate", "contaminated")
RULES = [r for r in CLEAN_RULES if r != "near_duplicate"]
PLANT_EVERY = 40  # one prompt in 40 carries each defect, on its first sample


def synthesize(out: Path, rows: int) -> tuple[Path, Path]:
    """generations.parquet (the columns clean reads) and prompts.parquet, cached by row count."""
    out.mkdir(parents=True, exist_ok=True)
    gens, prompts = out / f"generations-{rows}.parquet", out / f"prompts-{rows}.parquet"
    if gens.exists() and prompts.exists():
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
               -- every 100th prompt is an eval prompt; the train prompt after it copies its question
               {text.format(n=40, seed='CASE WHEN q % 100 = 1 THEN q - 1 ELSE q END', v=len(WORDS))} AS question
        FROM range({rows // 2}) t(q)""")
    con.execute(f"""COPY (SELECT prompt_id, [{{'role': 'user', 'content': question}}] AS messages, NULL::VARCHAR AS tools,
                                 reference, 'math' AS task, 'synthetic' AS source, NULL::VARCHAR AS source_id,
                                 (q % 5)::INTEGER AS difficulty, split, NULL::VARCHAR AS completion FROM p)
                    TO '{prompts}.tmp' (FORMAT parquet)""")
    con.execute(f"""COPY (
        WITH s AS (
            SELECT i, p.prompt_id, p.split, p.reference, (i % 2)::INTEGER AS sample_idx,
                   coalesce(['{"','".join(DEFECTS)}'][1 + (i // 2 % {PLANT_EVERY})::INTEGER], 'none') AS planted
            FROM range({rows}) t(i) JOIN p ON p.q = i // 2
        )
        SELECT prompt_id || '-' || sample_idx AS sample_id, prompt_id, sample_idx, split,
               CASE WHEN planted = 'repetition' AND sample_idx = 0 THEN repeat('Let me add these again. ', 90)
                    WHEN planted = 'language_mix' AND sample_idx = 0 THEN {cjk}
                    WHEN planted = 'exact_duplicate' THEN {text.format(n=330, seed='-1 - i // 2', v=len(WORDS))}
                    ELSE {text.format(n=330, seed='i', v=len(WORDS))} END
               || CASE WHEN planted = 'garbled' AND sample_idx = 0 THEN chr(65533)
                       WHEN planted = 'garbled_control' AND sample_idx = 0 THEN chr(1) ELSE '' END AS reasoning,
               CASE WHEN planted = 'empty_answer' AND sample_idx = 0 THEN ''
                    WHEN planted = 'incorrect' AND sample_idx = 0 THEN 'The answer is \\boxed{{' || (reference::INTEGER + 1) || '}}.'
                    ELSE 'The answer is \\boxed{{' || reference || '}}.' END AS answer,
               NOT (planted = 'unclosed_reasoning' AND sample_idx = 0) AS reasoning_closed,
               CASE WHEN planted = 'unclosed_reasoning' AND sample_idx = 0 THEN 0 ELSE 1 END AS think_end_count,
               CASE WHEN planted = 'length' AND sample_idx = 0 THEN 50000 ELSE 500 + (i % 300)::INTEGER END
                   AS completion_tokens,
               CASE WHEN planted = 'truncated' AND sample_idx = 0 THEN 'length' ELSE 'stop' END AS finish_reason
        FROM s) TO '{gens}.tmp' (FORMAT parquet, COMPRESSION zstd, ROW_GROUP_SIZE 100000)""")
    Path(f"{prompts}.tmp").rename(prompts)
    Path(f"{gens}.tmp").rename(gens)
    return gens, prompts


def _duckdb_clean(cfg: Config, gens: Path, prompts: Path, rules: list[str], scratch: Path) -> dict:
    timings = {}
    with clean.connect(cfg.clean, scratch) as con:
        clean.set_variables(con, cfg, teacher_reasons=True)
        t = time.perf_counter()
        n = clean.load_samples(con, [gens], prompts)
        clean.load_eval_texts(con, prompts, [])
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
# The baseline: the same rules written the obvious way in pandas.

CJK = r"\p{Han}\p{Hiragana}\p{Katakana}\p{Hangul}"
SCRIPTS = {"latin": r"\p{Latin}", "cjk": CJK, "cyrillic": r"\p{Cyrillic}", "arabic": r"\p{Arabic}"}


def _count(pattern: str, text: str) -> int:
    return len(regex.findall(pattern, text))


def _script(text: str) -> str:
    counts = {name: _count(f"[{cls}]", text) for name, cls in SCRIPTS.items()}
    best = max(counts, key=counts.get)
    return "none" if counts[best] == 0 else best


def _mixed(row, c) -> bool:
    t = row.reasoning + row.answer
    letters = _count(r"\p{L}", t)
    if row.script == "none" or letters == 0:
        return False
    return 1 - _count(f"[{SCRIPTS[row.script]}]", t) / letters > c.max_script_mix


def _repetitive(t: str, c) -> bool:
    n, k = len(t), c.repeat_probe_chars
    if n < 4 * k:
        return False
    middle, tail = t[n // 2 - 1:n // 2 - 1 + k], t[-k:]
    size = len(t.encode())
    return max(t.count(p) * len(p.encode()) for p in (middle, tail)) / size > c.max_repeated_share


def _ngrams(text: str, n: int) -> set[str]:
    w = regex.sub(r"[^\p{L}\p{N}]+", " ", text.lower()).strip(" ").split(" ")
    return {" ".join(w[i:i + n]) for i in range(len(w) - n + 1)}


def pandas_clean(cfg: Config, gens: Path, prompts: Path, verdicts: pd.DataFrame) -> dict:
    c = cfg.clean
    df = pd.read_parquet(gens)
    p = pd.read_parquet(prompts)
    p["prompt_text"] = p["messages"].map(lambda ms: "\n".join(m["content"] for m in ms if m["role"] == "user"))
    df = df.merge(p[["prompt_id", "prompt_text", "task", "reference"]], on="prompt_id", how="left")
    df = df.merge(verdicts, on="sample_id", how="left")
    text = df["reasoning"] + df["answer"]
    dropped = {}

    def drop(rule: str, mask) -> None:
        nonlocal df, text
        for sid in df.loc[mask, "sample_id"]:
            dropped[sid] = rule
        df, text = df[~mask], text[~mask]

    drop("truncated", df["finish_reason"] == "length")
    drop("unclosed_reasoning", ~df["reasoning_closed"].astype(bool) | (df["think_end_count"] > 1))
    drop("empty_answer", df["answer"].str.strip(" \t\n\r") == "")
    unprintable = text.map(lambda t: _count(r"[\p{Cf}\p{Co}\p{Cs}]", t) / max(len(t), 1))
    drop("garbled", text.str.contains("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]") | text.str.contains("[\ufffd\x80-\x9f]")
         | (unprintable > c.max_unprintable_share))
    drop("repetition", text.map(lambda t: _repetitive(t, c)))
    scripts = df.drop_duplicates("prompt_id").set_index("prompt_id")["prompt_text"].map(_script)
    df = df.assign(script=df["prompt_id"].map(scripts))
    drop("language_mix", df.apply(lambda r: _mixed(r, c), axis=1))
    drop("length", (df["completion_tokens"] < c.min_tokens) | (df["completion_tokens"] > c.max_tokens))
    drop("incorrect", (df["correct"] == False) & (not c.keep_incorrect))  # noqa: E712 (NaN = unchecked)
    eval_grams = set().union(*(_ngrams(t, c.decontam_ngram) for t in p.loc[p["split"] == "eval", "prompt_text"]))
    train = df[df["split"] == "train"].drop_duplicates("prompt_id")
    grams = {pid: _ngrams(t, c.decontam_ngram) for pid, t in zip(train["prompt_id"], train["prompt_text"])}
    freq = pd.Series([g for gs in grams.values() for g in gs]).value_counts()
    common = set(freq[freq > max(1, c.decontam_max_prompt_share * len(grams))].index)
    leaked = {pid for pid, gs in grams.items() if (gs & eval_grams) - common}
    drop("contaminated", (df["split"] == "train") & df["prompt_id"].isin(leaked))
    key = df["prompt_id"] + "\x00" + text.str.lower()
    drop("exact_duplicate", df.assign(key=key).sort_values("sample_idx").groupby("key").cumcount()
         .reindex(df.index) > 0)
    order = df.sort_values(["completion_tokens", "sample_idx"])
    drop("per_prompt_cap", order.groupby("prompt_id").cumcount().reindex(df.index) >= c.max_per_prompt)
    return dropped


# ---------------------------------------------------------------------------------------------


def bench_clean(cfg: Config, rows: int, sample: int) -> dict:
    base = Path(cfg.run.artifacts_dir) / "bench"
    scratch = base / "clean.tmp"
    t = time.perf_counter()
    gens, prompts = synthesize(base / "clean_data", rows)
    click.echo(f"  synthetic data: {rows:,} rows ({gens.stat().st_size / 1e6:.0f} MB Parquet) "
               f"in {time.perf_counter() - t:.0f}s")
    # the rules' default parameters, whatever the config file tunes for its own data
    cfg.clean = dataclasses.replace(CleanConfig(), memory_limit=cfg.clean.memory_limit, temp_dir=cfg.clean.temp_dir,
                                    threads=cfg.clean.threads, rules=RULES + ["near_duplicate"])

    full = _duckdb_clean(cfg, gens, prompts, RULES, scratch)
    rows_per_s = full["rows"] / (full["load"] + full["rules"])
    click.echo(f"  duckdb, {full['rows']:,} rows: load {full['load']:.1f}s + rules {full['rules']:.1f}s = "
               f"{rows_per_s:,.0f} rows/s; verify {full['rows'] / full['verify']:,.0f} rows/s; near-dup "
               f"{full['near_dup_rows'] / full['near_dup']:,.0f} rows/s; peak RSS {full['peak_rss_mb']:.0f} MB")

    # The same rules on a prefix, in DuckDB and in pandas; both must drop the same rows.
    small = base / "clean_data" / f"sample-{rows}-{sample}.parquet"
    if not small.exists():
        duckdb.execute(f"COPY (SELECT * FROM read_parquet('{gens}') LIMIT {sample}) TO '{small}' (FORMAT parquet)")
    cfg.clean.rules = RULES
    part = _duckdb_clean(cfg, small, prompts, RULES, scratch)
    with clean.connect(cfg.clean, scratch) as con:
        clean.load_samples(con, [small], prompts)
        clean.verify(con)
        verdicts = con.execute("SELECT sample_id, correct FROM verdicts").df()
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
        "rows": full["rows"], "sample_rows": sample, "rules": RULES, "memory_limit_mb": limit_mb,
        "rows_per_s": round(rows_per_s), "peak_rss_mb": round(full["peak_rss_mb"]),
        "near_dup_rows_per_s": round(full["near_dup_rows"] / full["near_dup"]),
        "verify_rows_per_s": round(full["rows"] / full["verify"]),
        "speedup_vs_pandas": round((sample / duck_s) / (sample / pandas_s), 2),
        "pandas_rows_per_s": round(sample / pandas_s), "same_drops_as_pandas": agree,
        "dropped_by_rule": {r: sum(1 for v in full["dropped"].values() if v == r) for r in RULES},
        "targets": {"speedup_vs_pandas": ">= 10", "rows_per_s": ">= 50000", "near_dup_rows_per_s": ">= 5000",
                    "peak_rss_mb": f"<= memory_limit_mb ({limit_mb})"},
    }
