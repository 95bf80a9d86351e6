"""clean: each rule drops its planted defect and nothing else, the funnel accounts for every row,
user rules plug in, bad input fails with the file named; distill sql over the run's tables."""
import json
import math
import random
import shutil
import time
import unicodedata

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline import clean, manifest, rules
from pipeline import config as config_mod
from pipeline.schema import GENERATIONS, PROMPTS
from tests.conftest import ROOT, distill_cli, write_config

GOOD = ("Each box holds {k} pens and there are {n} boxes, so I multiply the two counts together. "
        "Checking once more by adding {k} to itself {n} times gives the same total, so the answer is "
        "\\boxed{{{a}}}.")
LOOP = "I need to add the numbers again. " * 40
LINES = "\n".join(["Let me check."] * 12 + ["So the answer is \\boxed{6}."])
VOCAB = ("count add take carry check write note sum total apples boxes pens left right first then next more less "
         "group split share double half each every digit place value column row step result answer problem").split()
LONG = " ".join(random.Random(0).choices(VOCAB, k=240))  # varied text: few repeated 4-grams


def _prompt(pid, text, split="train", reference="6"):
    return dict(prompt_id=pid, messages=[{"role": "user", "content": text}], tools=None, reference=reference,
                task="math", source="test", source_id=None, difficulty=1, split=split, completion=None)


def _sample(pid, idx, reasoning, answer="\\boxed{6}", split="train", finish="stop", closed=True, ends=1, tokens=40):
    return dict(sample_id=f"{pid}-{idx}", prompt_id=pid, sample_idx=idx, split=split, prompt_text="p",
                prompt_token_ids=[1, 2], reasoning=reasoning, answer=answer, reasoning_closed=closed,
                think_end_count=ends, think_end_index=3 if closed else None, prompt_tokens=2,
                completion_tokens=tokens, reasoning_tokens=tokens - 5, answer_tokens=5, finish_reason=finish,
                model="t", seed=idx, latency_s=0.1)


EVAL_TEXT = "A train leaves the station at noon carrying forty two passengers toward the coast"
PROMPTS_ROWS = [
    _prompt("ok", "Each box holds 2 pens and there are 3 boxes. How many pens?"),
    _prompt("ok2", "Ava has 3 cards and gets 3 more. How many?"),
    _prompt("cap", "Ben has 1 coin and finds 5 more. How many coins?"),
    _prompt("zh", "How many apples are left if Lena eats 4 of 10?"),
    _prompt("leak", f"Quick question. {EVAL_TEXT}. How many passengers are aboard?"),
    _prompt("near1", "Describe your method for solving word problems, version one."),
    _prompt("near2", "Describe your method for solving word problems, version two."),
    _prompt("ev", f"{EVAL_TEXT}; how many people are on it?", split="eval", reference="42"),
    dict(_prompt("fan", "Set the fan to level three, please.", reference='{"name": "set_fan", "arguments": {"level": 3}}'),
         task="tool", tools='[{"name": "set_fan", "parameters": {"type": "object", "properties": {"level": '
                            '{"type": "integer", "maximum": 7}}, "required": ["level"]}}]'),
]

# sample_id -> the rule that must drop it (None: kept)
EXPECTED = {
    "ok-0": None,
    "ok-1": "truncated",
    "ok-2": "unclosed_reasoning",
    "ok-3": "unclosed_reasoning",
    "ok-4": "empty_answer",
    "ok-5": "garbled",
    "ok-6": "garbled",
    "ok-7": "garbled",
    "ok-8": "repetition",
    "ok-9": "repetition",
    "zh-0": "language_mix",
    "ok-10": "length",
    "fan-0": None,
    "fan-1": "invalid_call",  # level 9 breaks the schema's maximum
    "ok-11": "incorrect",
    "ok2-0": None,  # \boxed{6.0} equals the reference 6 by math-verify
    "ok2-1": None,  # \frac{12}{2} too
    "leak-0": "contaminated",
    "ok2-2": "exact_duplicate",  # ok2-0's text in other case
    "near1-0": None,
    "near2-0": "near_duplicate",
    "cap-0": None,
    "cap-1": None,
    "cap-2": "per_prompt_cap",  # the longest of three passing samples, max_per_prompt 2
    "ev-0": None,  # an eval prompt is never "contaminated" by itself
}


def _samples():
    good = GOOD.format(k=2, n=3, a=6)
    rows = [
        _sample("ok", 0, good),
        _sample("ok", 1, good, finish="length"),
        _sample("ok", 2, good, closed=False, ends=0),
        _sample("ok", 3, good, ends=2),
        _sample("ok", 4, good, answer="  \n"),
        _sample("ok", 5, good + " \ufffd\ufffd"),
        _sample("ok", 6, good + " \x01"),
        _sample("ok", 7, good + "\u200b" * 20),
        _sample("ok", 8, LOOP),
        _sample("ok", 9, LINES),
        _sample("zh", 0, "我们需要计算剩下的苹果数量。十减四等于六，所以答案是六。" * 3),
        _sample("ok", 10, good, tokens=100_000),
        _sample("ok", 11, good, answer="\\boxed{7}"),
        _sample("fan", 0, "The user wants the fan at three.", answer='{"name": "set_fan", "arguments": {"level": 3}}'),
        _sample("fan", 1, "The user wants the fan turned up.", answer='{"name": "set_fan", "arguments": {"level": 9}}'),
        _sample("ok2", 0, "Three plus three is six.", answer="\\boxed{6.0}"),
        _sample("ok2", 1, "Three plus three is six, as a fraction.", answer="\\boxed{\\frac{12}{2}}"),
        _sample("ok2", 2, "THREE plus three is SIX.", answer="\\boxed{6.0}"),
        _sample("leak", 0, good),
        _sample("near1", 0, LONG + " Answer follows.", answer="\\boxed{6}"),
        _sample("near2", 0, LONG + " Answer follows!", answer="\\boxed{6}"),
        _sample("cap", 0, "One plus five is six.", tokens=30),
        _sample("cap", 1, "Start at one and count five more: six.", tokens=35),
        _sample("cap", 2, "Adding five coins to the first coin gives six coins in total.", tokens=50),
        _sample("ev", 0, "Forty two people.", answer="\\boxed{42}", split="eval"),
    ]
    assert {r["sample_id"] for r in rows} == set(EXPECTED)
    return rows


def _run(tmp_path, extra="", samples=None, sql_dir=ROOT / "sql", prompts=None):
    tmp_path.mkdir(parents=True, exist_ok=True)
    cfg_path = write_config(tmp_path / "c.yaml", f"""
        run: {{name: r, artifacts_dir: {tmp_path / 'artifacts'}}}
        prepare: {{arithmetic: {{n_train: 1, n_eval: 1}}}}
        clean:
          max_tokens: 50000
          max_per_prompt: 2
          sql_dir: {sql_dir}
          {extra}
        """)
    cfg = config_mod.load(cfg_path)
    run_dir = cfg.run_dir
    (run_dir / "prepare").mkdir(parents=True)
    pq.write_table(PROMPTS.from_pylist(PROMPTS_ROWS if prompts is None else prompts), run_dir / "prepare/prompts.parquet")
    gen_dir = run_dir / "generate/generations"
    gen_dir.mkdir(parents=True)
    rows = _samples() if samples is None else samples
    for i in range(0, len(rows), 10):  # several shards, as generate writes them
        pq.write_table(GENERATIONS.from_pylist(rows[i:i + 10]), gen_dir / f"part-0of1-{i:05d}.parquet")
    manifest.write(cfg, "generate", time.time(), {})
    return cfg_path, cfg


def _rejects(cfg):
    table = pq.read_table(cfg.run_dir / "clean/rejects.parquet").to_pylist()
    return {r["sample_id"]: r["rule"] for r in table}


def test_each_rule_drops_its_planted_defect(tmp_path):
    cfg_path, cfg = _run(tmp_path)
    m = clean.run(cfg)
    rejects = _rejects(cfg)
    assert rejects == {s: rule for s, rule in EXPECTED.items() if rule}
    kept = pq.read_table(cfg.run_dir / "clean/clean.parquet").column("sample_id").to_pylist()
    assert sorted(kept) == sorted(s for s, rule in EXPECTED.items() if rule is None)
    # the funnel accounts for every row, rule by rule, in the configured order
    funnel = m["funnel"]
    assert [f["rule"] for f in funnel] == cfg.clean.rules
    assert funnel[0]["rows_in"] == len(EXPECTED) and funnel[-1]["rows_out"] == len(kept)
    for prev, nxt in zip(funnel, funnel[1:]):
        assert prev["rows_out"] == nxt["rows_in"]
    for f in funnel:
        assert f["dropped"] == sum(1 for rule in EXPECTED.values() if rule == f["rule"]) > 0
    verdicts = {r["sample_id"]: r for r in pq.read_table(cfg.run_dir / "clean/verdicts.parquet").to_pylist()}
    assert verdicts["ok2-1"]["extracted"] == "\\frac{12}{2}" and verdicts["ok2-1"]["correct"]
    assert verdicts["ok-11"]["correct"] is False


def test_selection_is_written_in_sample_id_order_one_range_at_a_time(tmp_path, monkeypatch):
    """A memory budget of 200 bytes: every kept sample is a range of its own, each sorted and
    appended in turn; the file holds them all once, in sample_id order."""
    _, cfg = _run(tmp_path, extra="rules: [truncated]")
    export = clean.export_by_sample_id
    monkeypatch.setattr(clean, "export_by_sample_id", lambda *a: export(*a[:-1], memory_bytes=200))
    clean.run(cfg)
    f = pq.ParquetFile(cfg.run_dir / "clean/clean.parquet")
    ids = f.read().column("sample_id").to_pylist()
    assert ids == sorted(s for s, rule in EXPECTED.items() if rule != "truncated")
    assert f.metadata.num_row_groups == len(ids)


def test_rules_switch_off_and_keep_incorrect(tmp_path):
    _, cfg = _run(tmp_path, extra="rules: [truncated, incorrect]\n          keep_incorrect: true")
    m = clean.run(cfg)
    assert [f["rule"] for f in m["funnel"]] == ["truncated", "incorrect"]
    assert _rejects(cfg) == {"ok-1": "truncated"}


def test_random_cap_policy_is_seeded(tmp_path):
    picks = []
    for attempt in range(2):
        _, cfg = _run(tmp_path / str(attempt), extra="rules: [per_prompt_cap]\n          per_prompt_policy: random\n"
                                                       "          max_per_prompt: 1")
        clean.run(cfg)
        picks.append(_rejects(cfg))
    assert picks[0] == picks[1] and len(picks[0]) == len(EXPECTED) - len({s.rsplit("-", 1)[0] for s in EXPECTED})


def test_user_rule_is_a_file_and_a_config_line(tmp_path):
    sql_dir = tmp_path / "sql"
    shutil.copytree(ROOT / "sql", sql_dir)
    (sql_dir / "mentions_boxes.sql").write_text(
        "-- mentions_boxes: drops samples talking about boxes\n"
        "WITH hits AS (SELECT sample_id FROM candidates WHERE reasoning ILIKE '%box%')\n"
        "SELECT sample_id FROM hits\n")
    _, cfg = _run(tmp_path, extra="rules: [truncated, mentions_boxes]", sql_dir=sql_dir)
    m = clean.run(cfg)
    assert m["funnel"][1]["rule"] == "mentions_boxes" and m["funnel"][1]["dropped"] > 0


def test_error_in_user_rule_names_file_and_line(tmp_path):
    sql_dir = tmp_path / "sql"
    shutil.copytree(ROOT / "sql", sql_dir)
    (sql_dir / "broken.sql").write_text("-- broken\nWITH x AS (SELECT sample_id FROM candidates)\nSELECT sample_id FORM x\n")
    cfg_path, _ = _run(tmp_path, extra="rules: [broken]", sql_dir=sql_dir)
    r = distill_cli("clean", cfg_path, check=False)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert r.stderr.startswith(f"error: {sql_dir / 'broken.sql'}: ") and "(line 3)" in r.stderr
    assert not (tmp_path / "artifacts/r/clean/clean.parquet").exists()


def test_wrong_schema_shard_is_named(tmp_path):
    cfg_path, cfg = _run(tmp_path)
    bad = cfg.run_dir / "generate/generations/part-0of1-99999.parquet"
    pq.write_table(GENERATIONS.from_pylist(_samples()[:1]).drop(["answer"]), bad)
    r = distill_cli("clean", cfg_path, check=False)
    assert r.returncode == 1 and r.stderr.strip() == f"error: {bad}: not a generations table: column 'answer' is missing"
    rows = GENERATIONS.from_pylist(_samples()[:2])
    reasoning = rows.schema.get_field_index("reasoning")
    pq.write_table(rows.set_column(reasoning, pa.field("reasoning", pa.string()), pa.array([None, "text"], pa.string())),
                   bad)  # a writer that does not enforce the schema's non-null columns
    r = distill_cli("clean", cfg_path, check=False)
    assert r.returncode == 1 and r.stderr.strip() == (f"error: {bad}: column 'reasoning' holds 1 nulls; "
                                                      "the generations schema allows none")
    bad.write_bytes(b"PAR1 garbage")
    r = distill_cli("clean", cfg_path, check=False)
    assert r.returncode == 1 and r.stderr.startswith(f"error: {bad}: not a readable Parquet file")


def test_empty_input_gives_empty_output_and_a_warning(tmp_path):
    cfg_path, cfg = _run(tmp_path, samples=[])
    r = distill_cli("clean", cfg_path)
    assert "warning:" in r.stderr
    assert pq.read_table(cfg.run_dir / "clean/clean.parquet").num_rows == 0


def test_sql_views_formats_and_canned_queries(tmp_path):
    cfg_path, cfg = _run(tmp_path)
    clean.run(cfg)
    run_dir = cfg.run_dir
    r = distill_cli("sql", run_dir, "SELECT rule, count(*) AS n FROM rejects GROUP BY rule ORDER BY rule",
                    "--format", "json")
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert {row["rule"]: row["n"] for row in rows}["garbled"] == 3
    r = distill_cli("sql", run_dir, "SELECT count(*) AS n FROM clean JOIN generations USING (sample_id)",
                    "--format", "csv")
    assert r.stdout.splitlines() == ['"n"', "8"] or r.stdout.splitlines() == ["n", "8"]
    out = tmp_path / "p.parquet"
    distill_cli("sql", run_dir, "SELECT * FROM prompts", "--format", "parquet", "--output", out)
    assert pq.read_table(out).num_rows == len(PROMPTS_ROWS)
    for query in sorted((ROOT / "sql/inspect").glob("*.sql")):
        r = distill_cli("sql", run_dir, "--file", query, check=False)
        assert r.returncode == 0, (query.name, r.stderr)
    r = distill_cli("sql", run_dir, input="SELECT count(*) AS n\nFROM verdicts;\n.quit\n")
    assert "views:" in r.stdout and "│" in r.stdout
    r = distill_cli("sql", run_dir, "SELECT * FROM no_such_table", check=False)
    assert r.returncode == 1 and r.stderr.startswith("error: query: Catalog Error")
    r = distill_cli("sql", tmp_path / "nope", "SELECT 1", check=False)
    assert r.returncode == 1 and "no such run" in r.stderr


@pytest.mark.parametrize("limit", ["64MB"])
def test_memory_limit_and_temp_dir_reach_duckdb(tmp_path, limit):
    _, cfg = _run(tmp_path, extra=f"memory_limit: {limit}\n          temp_dir: {tmp_path / 'spill'}")
    with clean.connect(cfg.clean, cfg.run_dir / "clean") as con:
        # DUCKDB_SHARE of it, the rest the Python side's; DuckDB shows MB as MiB or as 10^6 bytes
        mb = round(clean.DUCKDB_SHARE * 64)
        shown = {f"{math.floor(10 * v) / 10:.1f} MiB" for v in (mb, mb * 1e6 / 2**20)}
        assert con.execute("SELECT current_setting('memory_limit')").fetchone()[0] in shown
        assert str(tmp_path / "spill") in con.execute("SELECT current_setting('temp_directory')").fetchone()[0]


def test_spill_directory_of_a_killed_run_is_removed(tmp_path):
    """A SIGKILLed clean cannot remove its spill directory; the next clean on this host does,
    but leaves those of live processes alone."""
    import os
    import socket
    import subprocess

    from pipeline.config import CleanConfig
    gone = subprocess.Popen(["true"])
    gone.wait()
    host = socket.gethostname()
    orphan, live = tmp_path / f"{host}-{gone.pid}-abc", tmp_path / f"{host}-{os.getpid()}-def"
    for d in (orphan, live):
        (d / "spill").mkdir(parents=True)
        (d / "spill" / "block").write_bytes(b"x")
    with clean.connect(CleanConfig(temp_dir=str(tmp_path)), tmp_path):
        assert not orphan.exists() and live.is_dir()


def test_decontamination_against_configured_eval_files(tmp_path):
    extra = tmp_path / "benchmark.jsonl"
    extra.write_text(json.dumps({"prompt": "Ben has 1 coin and finds 5 more. How many coins?"}) + "\n")
    _, cfg = _run(tmp_path, extra=f"rules: [contaminated]\n          decontam_files: [{extra}]\n"
                                  "          decontam_ngram: 6")
    clean.run(cfg)
    assert _rejects(cfg) == {"cap-0": "contaminated", "cap-1": "contaminated", "cap-2": "contaminated",
                             "leak-0": "contaminated"}
    missing = tmp_path / "nope.jsonl"
    _, cfg = _run(tmp_path / "m", extra=f"rules: [contaminated]\n          decontam_files: [{missing}]")
    with pytest.raises(Exception, match="nope.jsonl: no such file"):
        clean.run(cfg)


def test_decontamination_against_eval_sets_mapped_like_inputs(tmp_path):
    """decontam_files entries map their prompt as inputs do: a `question` column in JSONL, a chat in
    Parquet (its user turns only), a dotted path into a JSON document's records; paths are the config's."""
    copied = PROMPTS_ROWS[2]["messages"][0]["content"]  # cap's train prompt
    (tmp_path / "bench.jsonl").write_text(json.dumps({"question": copied}) + "\n")
    pq.write_table(pa.table({"chat": [[{"role": "system", "content": PROMPTS_ROWS[5]["messages"][0]["content"]},
                                       {"role": "user", "content": "Solve this one please."}],
                                      [{"role": "user", "content": "Ava has 3 cards and gets 3 more. How many?"}]]}),
                   tmp_path / "bench.parquet")
    (tmp_path / "bench.json").write_text(json.dumps({"data": {"items": [
        {"problem": {"text": "How many apples are left if Lena eats 4 of 10?"}}]}}))
    files = ("[{path: bench.jsonl, prompt: question}, {path: bench.parquet, messages: chat},\n"
             "                           {path: bench.json, records: data.items, prompt: problem.text}]")
    _, cfg = _run(tmp_path, extra=f"rules: [contaminated]\n          decontam_files: {files}\n"
                                  "          decontam_ngram: 6")
    clean.run(cfg)
    assert _rejects(cfg) == {**{f"cap-{i}": "contaminated" for i in range(3)},
                             **{f"ok2-{i}": "contaminated" for i in range(3)},
                             "zh-0": "contaminated", "leak-0": "contaminated"}
    _, cfg = _run(tmp_path / "m", extra="rules: [contaminated]\n          decontam_files: [{path: ../bench.jsonl}]")
    with pytest.raises(Exception, match="clean.decontam_files: .*bench.jsonl: no row has 'prompt'"):
        clean.run(cfg)


@pytest.mark.parametrize("n", [1, 2, 3, 5, 8])
def test_decontamination_matches_a_naive_reference(n):
    """The rule cuts only suspects (prompts sharing a sampled k-gram) into n-grams; it must drop
    exactly what comparing every n-gram of every prompt drops, shared instructions included."""
    rng = random.Random(n)
    # Chinese, Japanese and Thai words are cut into characters, Hindi words (vowel signs) are not
    vocab = ["ant", "bee", "cat", "dog", "eel", "fox", "三角形", "面积", "ひらがな", "コーヒー", "สวัสดี", "नमस्ते"]

    def text(k):
        return "".join(rng.choice(vocab) + rng.choice([" ", " ", " ", ", ", ".\n", "? "]) for _ in range(k))

    evals = [text(rng.randint(3, 25)) for _ in range(15)]
    train = {}
    for i in range(150):
        t = text(rng.randint(0, 25))
        if i % 5 == 0:  # a copied stretch of an eval prompt, at any offset
            words = rng.choice(evals).split()
            start = rng.randint(0, len(words) - 1)
            t = text(rng.randint(0, 6)) + " ".join(words[start:start + rng.randint(1, 12)]) + " " + t
        train[f"t{i}"] = t

    def spaceless(c):  # by Unicode character name, not the rule's script classes
        return unicodedata.name(c, "").startswith(("CJK UNIFIED", "HIRAGANA", "KATAKANA", "THAI"))

    def ngrams(t):
        spaced = "".join((f" {c} " if spaceless(c) else c) if c.isalnum() or unicodedata.category(c)[0] == "M"
                         else " " for c in t.lower())
        w = [x for x in spaced.split(" ") if x]
        return {tuple(w[i:i + n]) for i in range(len(w) - n + 1)}

    eval_grams = set().union(*map(ngrams, evals))
    grams = {pid: ngrams(t) & eval_grams for pid, t in train.items()}
    share = 0.05
    counts = {}
    for gs in grams.values():
        for g in gs:
            counts[g] = counts.get(g, 0) + 1
    expected = {pid for pid, gs in grams.items() if any(counts[g] <= max(1, share * len(train)) for g in gs)}

    con = duckdb.connect()
    con.execute("CREATE TABLE eval_texts AS SELECT unnest(?::VARCHAR[]) AS text", [evals])
    con.execute("CREATE TABLE candidates AS SELECT p AS prompt_id, p || '-0' AS sample_id, 'train' AS split, "
                "t AS prompt_text FROM (SELECT unnest(?::VARCHAR[]) AS p, unnest(?::VARCHAR[]) AS t)",
                [list(train), list(train.values())])
    con.execute("SET VARIABLE decontam_ngram = ?", [n])
    con.execute("SET VARIABLE decontam_max_prompt_share = ?", [share])
    path, sql = rules.rule_sql(ROOT / "sql", "contaminated")
    rules.define_view(con, "contaminated", path, sql)
    dropped = {sid.removesuffix("-0") for (sid,) in con.execute("SELECT sample_id FROM contaminated").fetchall()}
    assert dropped == expected
    assert 0 < len(expected) < len(train) or n <= 2  # the case is not trivial
