"""prepare: every input format and mapping, cleaning counts, and every bad input as a one-line
error that leaves no output (or, with --on-error skip, a rejects row)."""
import json
import os
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from pipeline import arithmetic, config, prepare, rows
from pipeline.cli import main
from pipeline.schema import PREPARE_REJECTS, PROMPTS
from tests.conftest import ROOT, write_config


def _config(tmp_path, inputs: str, extra: str = ""):
    return write_config(tmp_path / "run.yaml", f"""
        run: {{name: t, artifacts_dir: {tmp_path / 'artifacts'}}}
        prepare:
          inputs:
        {inputs}
        {extra}
        """)


def _prompts(tmp_path):
    return pq.read_table(tmp_path / "artifacts/t/prepare/prompts.parquet").to_pylist()


def _invoke(cfg_path, *args):
    return CliRunner().invoke(main, ["prepare", str(cfg_path), *args])


def test_jsonl_messages_system_tools_and_cleaning(tmp_path):
    rows = [
        {"q": "  What is 2+2?\u200b ", "a": 4, "id": 1, "sys": "Be brief."},
        {"q": "What is 2+2?", "a": 4, "id": 2, "sys": "Be brief."},  # exact duplicate after cleaning
        {"q": " \x07 ", "a": 1, "id": 3, "sys": ""},  # empty after cleaning
        {"q": "Ｔｕｒｎ on the fan", "a": "ok", "id": 4, "sys": "", "tools": [{"name": "fan_on", "parameters": {}}]},
    ]
    (tmp_path / "p.jsonl").write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n\n")
    cfg = _config(tmp_path, f"    - {{path: {tmp_path / 'p.jsonl'}, prompt: q, reference: a, id: id, system: sys, "
                            "tools: tools}", "  unicode_form: NFKC")
    result = _invoke(cfg)
    assert result.exit_code == 0, result.output
    assert "read 4, rejected 0, dropped_empty 1, dropped_duplicate 1, kept 2" in result.output
    out = _prompts(tmp_path)
    assert out[0]["messages"] == [{"role": "system", "content": "Be brief."},
                                  {"role": "user", "content": "What is 2+2?"}]
    assert out[0]["reference"] == "4" and out[0]["source_id"] == "1" and out[0]["source"] == "p.jsonl"
    assert out[1]["messages"] == [{"role": "user", "content": "Turn on the fan"}]  # NFKC folds full-width
    assert json.loads(out[1]["tools"]) == [{"name": "fan_on", "parameters": {}}]
    PROMPTS.validate(pq.read_schema(tmp_path / "artifacts/t/prepare/prompts.parquet"), "prompts")


def test_prompt_id_is_stable_and_content_addressed():
    a = rows.prompt_id([{"role": "user", "content": "hi"}], None)
    assert a == rows.prompt_id([{"role": "user", "content": "hi"}], None)
    assert a != rows.prompt_id([{"role": "user", "content": "hi"}], "[]")
    assert a != rows.prompt_id([{"role": "system", "content": "x"}, {"role": "user", "content": "hi"}], None)


def test_csv_parquet_and_hf_directory(tmp_path):
    (tmp_path / "p.csv").write_text("text,answer,level,split\nOne plus one?,2,1,train\nTwo plus two?,4,2,eval\n")
    pq.write_table(pa.table({"messages": [[{"role": "user", "content": "Hello?"}]], "source": ["web"]}),
                   tmp_path / "p.parquet")
    import datasets
    datasets.Dataset.from_dict({"prompt": ["From HF?"], "ref": ["yes"]}).save_to_disk(str(tmp_path / "hfds"))
    cfg = _config(tmp_path, f"""    - {{path: {tmp_path / 'p.csv'}, prompt: text, reference: answer, difficulty: level, split_column: split}}
            - {{path: {tmp_path / 'p.parquet'}, messages: messages, source: source, task: exact}}
            - {{path: {tmp_path / 'hfds'}, reference: ref, split: eval}}""")
    result = _invoke(cfg)
    assert result.exit_code == 0, result.output
    out = {r["messages"][-1]["content"]: r for r in _prompts(tmp_path)}
    assert out["One plus one?"]["difficulty"] == 1 and out["Two plus two?"]["split"] == "eval"
    assert out["Hello?"]["source"] == "web" and out["Hello?"]["task"] == "exact"
    assert out["From HF?"]["reference"] == "yes" and out["From HF?"]["split"] == "eval"


def test_arithmetic_source(tmp_path):
    cfg_path = write_config(tmp_path / "a.yaml", f"""
        run: {{name: t, artifacts_dir: {tmp_path / 'artifacts'}}}
        prepare: {{arithmetic: {{n_train: 12, n_eval: 6, levels: [1, 3]}}}}
        """)
    prepare.run(config.load(cfg_path))
    out = _prompts(tmp_path)
    assert [r["split"] for r in out].count("eval") == 6 and {r["difficulty"] for r in out} == {1, 3}
    assert all(r["task"] == "math" and r["reference"].isdigit() for r in out)


BAD_INPUTS = [
    ("malformed.jsonl", b'{"prompt": "ok"}\n{"prompt": "broken"\n', "malformed.jsonl:2: malformed JSON"),
    ("utf8.jsonl", b'{"prompt": "ok"}\n{"prompt": "\xff\xfe"}\n', "utf8.jsonl:2: invalid UTF-8"),
    ("type.jsonl", b'{"prompt": "ok"}\n{"prompt": 12}\n', "type.jsonl:2: column 'prompt' must be a string"),
    ("dup.jsonl", b'{"prompt": "a", "id": 1}\n{"prompt": "b", "id": 1}\n', "dup.jsonl:2: duplicate id '1'"),
    ("missing.jsonl", b'{"question": "a"}\n', "missing.jsonl: missing column 'prompt'"),
    ("empty.jsonl", b"\n\n", "empty.jsonl: no rows"),
    ("utf8.csv", b"prompt\nok\n\xff\n", "utf8.csv:3: invalid UTF-8"),
    ("broken.parquet", b"PAR1 not really", "broken.parquet: not a readable Parquet file"),
]


@pytest.mark.parametrize("name, content, message", BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_bad_input_is_one_line_error_and_no_output(tmp_path, name, content, message):
    (tmp_path / name).write_bytes(content)
    cfg = _config(tmp_path, f"    - {{path: {tmp_path / name}, id: {'id' if 'dup' in name else ''}}}".replace(
        ", id: }", "}"))
    result = _invoke(cfg)
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.output
    assert not (tmp_path / "artifacts/t/prepare").exists()


def test_on_error_skip_writes_rejects(tmp_path):
    (tmp_path / "p.jsonl").write_bytes(b'{"prompt": "good one"}\n{"prompt": \n{"prompt": 5}\n{"prompt": "good two"}\n')
    cfg = _config(tmp_path, f"    - {{path: {tmp_path / 'p.jsonl'}}}")
    result = _invoke(cfg, "--on-error", "skip")
    assert result.exit_code == 0, result.output
    assert "read 4, rejected 2" in result.output and "kept 2" in result.output
    rejects = pq.read_table(tmp_path / "artifacts/t/prepare/rejects.parquet")
    PREPARE_REJECTS.validate(rejects.schema, "rejects")
    assert rejects.column("line").to_pylist() == [2, 3]


def test_arithmetic_answers_are_right_and_splits_disjoint():
    s = arithmetic.splits(60, 30, [1, 2, 3, 4], seed=3)
    assert s == arithmetic.splits(60, 30, [1, 2, 3, 4], seed=3)
    assert not {r["question"] for r in s["train"]} & {r["question"] for r in s["eval"]}
    for r in s["train"] + s["eval"]:
        assert _solve(r["question"]) == int(r["answer"])
        assert r["question"].count(".") - 1 == r["difficulty"] + 1  # start + one sentence per operation


def _solve(question: str) -> int:
    """Independent reading of the story: start count, then each sentence's operation."""
    import re
    total = None
    for sentence in question.split(". "):
        if m := re.search(r" has (\d+) ", sentence):
            total = int(m[1]) if total is None else total
        elif m := re.search(r"gives \w+ (\d+) more", sentence):
            total += int(m[1])
        elif m := re.search(r"gives away (\d+)", sentence):
            total -= int(m[1])
        elif m := re.search(r"multiplied by (\d+)", sentence):
            total *= int(m[1])
    return total


def test_relative_inputs_are_read_beside_the_config_from_any_directory(tmp_path):
    """`distill prepare conf/run.yaml` from another directory reads the config's own data files;
    the run lands under run.artifacts_dir relative to where the command is given."""
    (tmp_path / "conf/data").mkdir(parents=True)
    (tmp_path / "work").mkdir()
    (tmp_path / "conf/data/p.jsonl").write_text(json.dumps({"q": "What is 3+4?"}) + "\n")
    (tmp_path / "conf/data/other.jsonl").write_text(json.dumps({"q": "What is 5+6?", "a": "11"}) + "\n")
    write_config(tmp_path / "conf/run.yaml", """
        run: {name: t}
        prepare: {inputs: [{path: data/p.jsonl, prompt: q}]}
        """)
    r = _prepare_in(tmp_path / "work", "../conf/run.yaml")
    assert r.returncode == 0, r.stderr
    out = pq.read_table(tmp_path / "work/artifacts/t/prepare/prompts.parquet").to_pylist()
    assert out[0]["messages"][0]["content"] == "What is 3+4?"
    m = json.loads((tmp_path / "work/artifacts/t/prepare/manifest.json").read_text())
    assert m["config"]["prepare"]["inputs"][0]["path"] == str(tmp_path / "conf/data/p.jsonl")
    # --set reaches the list's entry, and its path is the config's too
    r = _prepare_in(tmp_path / "work", "../conf/run.yaml", "--set", "prepare.inputs.0.path=data/other.jsonl",
                    "--set", "prepare.inputs.0.reference=a")
    assert r.returncode == 0, r.stderr
    out = pq.read_table(tmp_path / "work/artifacts/t/prepare/prompts.parquet").to_pylist()
    assert out[0]["messages"][0]["content"] == "What is 5+6?" and out[0]["reference"] == "11"


def _prepare_in(cwd, *args):
    """`distill prepare ARGS` in a fresh process in `cwd`, this checkout's pipeline imported."""
    return subprocess.run([sys.executable, "-m", "pipeline.cli", "prepare", *args], cwd=cwd, capture_output=True,
                          text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})


def test_a_prompt_in_both_splits_is_counted_and_kept_in_eval(tmp_path):
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in [
        {"q": "What is 1+1?", "a": "2"}, {"q": "Shared problem?", "a": "train answer"}]))
    (tmp_path / "eval.jsonl").write_text("".join(json.dumps(r) + "\n" for r in [
        {"q": "  Shared problem?", "a": "eval answer"}, {"q": "What is 2+2?", "a": "4"}]))
    cfg = _config(tmp_path, """    - {path: train.jsonl, prompt: q, reference: a}
            - {path: eval.jsonl, prompt: q, reference: a, split: eval}""")
    result = _invoke(cfg)
    assert result.exit_code == 0, result.output
    assert "dropped_duplicate 1, kept 3, split_train 1, split_eval 2, in_both_splits 1: eval wins" in result.output
    shared = [r for r in _prompts(tmp_path) if r["messages"][0]["content"] == "Shared problem?"]
    assert [(r["split"], r["reference"], r["source"]) for r in shared] == [("eval", "eval answer", "eval.jsonl")]
    m = json.loads((tmp_path / "artifacts/t/prepare/manifest.json").read_text())
    assert m["counts"]["in_both_splits"] == 1 and m["counts"]["split_eval"] == 2
