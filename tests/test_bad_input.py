"""Bad input, tried as a careless or hostile user would: every case is exit code 1, one line on
stderr that names the file, line, column or key, and no output left behind (the run directory
holds exactly what it held before). Cases run in-process through click's runner; distill sql's
escapes are in test_sql.py and train's sidecar and tokenizer cases in test_train.py.
"""
import json
import shutil
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from pipeline import manifest
from pipeline.cli import main
from pipeline.schema import GENERATIONS
from tests.conftest import ROOT, write_config
from tests.test_clean import _run


def _files(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")) if root.exists() else []


def _expect_one_line(args, *needles, root=None):
    before = _files(root) if root else None
    r = CliRunner().invoke(main, [str(a) for a in args])
    assert r.exit_code == 1, (r.exit_code, r.output, r.exception)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in r.output, r.stderr
    for needle in needles:
        assert str(needle) in lines[0], (needle, lines[0])
    if root is not None:
        assert _files(root) == before, "output was left behind"
    return lines[0]


# ---------------------------------------------------------------------------------------------
# Config: every key checked, the failing key named.

CONFIG_CASES = [
    ("train.learning_rate=-1", "train.learning_rate"),
    ("train.learning_rate=.nan", "train.learning_rate"),
    ("train.num_train_epochs=0", "train.num_train_epochs"),
    ("train.max_steps=0", "train.max_steps"),
    ("train.kd_weight=2", "train.kd_weight"),
    ("train.kd_temperature=.inf", "train.kd_temperature"),
    ("train.gradient_accumulation_steps=0", "train.gradient_accumulation_steps"),
    ("train.cross_tokenizer_loss=uld", "train.cross_tokenizer_loss"),
    ("train.output_dir=/tmp", "train.output_dir"),
    ("generate.top_p=7", "generate.top_p"),
    ("generate.temperature=.inf", "generate.temperature"),
    ("generate.max_in_flight=0", "generate.max_in_flight"),
    ("generate.n=0", "generate.n"),
    ("generate.preset=gpt5", "generate.preset"),
    ("generate.engine.pipeline_parallel_size=0", "generate.engine.pipeline_parallel_size"),
    ("clean.max_tokens=0", "clean.max_tokens"),
    ("clean.near_dup_shingle=0", "clean.near_dup_shingle"),
    ("clean.memory_limit=lots", "clean.memory_limit"),
    ("eval.top_p=0", "eval.top_p"),
    ("eval.latency_prompts=-1", "eval.latency_prompts"),
    ("run.name=..", "run.name"),
    ("run.name=a/b", "run.name"),
    ("models.student_vocab_size=10", "models.student_vocab_size"),
    ("models.student_layers=3", "models.student_layers"),
    ("train.nope=1", "train.nope: unknown key"),
    ("train.learning_rate=[", "--set train.learning_rate"),
    ("noequals", "--set 'noequals'"),
]


@pytest.mark.parametrize("override,needle", CONFIG_CASES, ids=[c[0] for c in CONFIG_CASES])
def test_config_value_out_of_range_names_the_key(tmp_path, override, needle):
    cfg = write_config(tmp_path / "c.yaml", f"run: {{name: x, artifacts_dir: {tmp_path / 'artifacts'}}}\n")
    _expect_one_line(["prepare", cfg, "--set", override], needle, root=tmp_path)


def test_config_file_not_utf8_or_not_yaml_or_missing(tmp_path):
    (tmp_path / "latin1.yaml").write_bytes("run: {name: caf\xe9}\n".encode("latin-1"))
    _expect_one_line(["prepare", tmp_path / "latin1.yaml"], "latin1.yaml: not UTF-8", root=tmp_path)
    (tmp_path / "bad.yaml").write_text("run: {name: [\n")
    _expect_one_line(["prepare", tmp_path / "bad.yaml"], "bad.yaml", "invalid YAML", root=tmp_path)
    _expect_one_line(["prepare", tmp_path / "nope.yaml"], "nope.yaml: no such config file")


def test_accelerate_config_not_utf8_or_not_yaml(tmp_path):
    cfg = write_config(tmp_path / "c.yaml", f"run: {{name: x, artifacts_dir: {tmp_path / 'artifacts'}}}")
    (tmp_path / "latin1.yaml").write_bytes("num_processes: 2 # caf\xe9\n".encode("latin-1"))
    _expect_one_line(["train", cfg, "--accelerate", tmp_path / "latin1.yaml"], "latin1.yaml: not UTF-8", root=tmp_path)
    (tmp_path / "bad.yaml").write_text("num_processes: [2\n")
    _expect_one_line(["train", cfg, "--accelerate", tmp_path / "bad.yaml"], "bad.yaml", "invalid YAML", root=tmp_path)


# ---------------------------------------------------------------------------------------------
# prepare: the file and line named, nothing written.


def _prepare_case(tmp_path, name, content: bytes, mapping="", fmt=""):
    data = tmp_path / name
    data.write_bytes(content)
    cfg = write_config(tmp_path / "c.yaml", f"""
        run: {{name: x, artifacts_dir: {tmp_path / 'artifacts'}}}
        prepare:
          inputs: [{{path: {data}{mapping}{fmt}}}]
        """)
    return cfg, data


def _jsonl(*rows):
    return ("\n".join(r if isinstance(r, str) else json.dumps(r, ensure_ascii=False) for r in rows) + "\n").encode()


PREPARE_CASES = [
    ("empty.jsonl", b"", "", "no rows"),
    ("malformed.jsonl", _jsonl({"prompt": "a"}, "{oops"), "", ":2: malformed JSON"),
    ("utf8.jsonl", _jsonl({"prompt": "a"}) + b'{"prompt": "\xff"}\n', "", ":2: invalid UTF-8"),
    ("type.jsonl", _jsonl({"prompt": 7}), "", ":1: column 'prompt' must be a string"),
    ("array.jsonl", _jsonl([1, 2]), "", ":1: expected a JSON object"),
    ("dupid.jsonl", _jsonl({"prompt": "a", "i": 1}, {"prompt": "b", "i": 1}), ", id: i",
     ":2: duplicate id '1' with other content"),
    ("role.jsonl", _jsonl({"m": [{"role": "bot", "content": "hi"}]}), ", messages: m", ":1: column 'm': unknown role 'bot'"),
    ("turns.jsonl", _jsonl({"m": [[{"role": "user", "content": "hi"}], {"role": "user", "content": "x"}]}),
     ", messages: m", ":1: column 'm' must be a non-empty list of {role, content} strings, or of turns"),
    ("tools.jsonl", _jsonl({"prompt": "a", "t": {"name": "f"}}), ", tools: t", ":1: column 't' must be a list"),
    ("toolname.jsonl", _jsonl({"prompt": "a", "t": [{"parameters": {"type": "object"}}]}), ", tools: t",
     ":1: column 't': tool 0: needs a string 'name'"),
    ("toolparams.jsonl", _jsonl({"prompt": "a", "t": [{"name": "f", "parameters": {"type": "string"}}]}), ", tools: t",
     "tool 0: 'parameters' must be a JSON Schema object"),
    ("surrogate.jsonl", b'{"prompt": "bad \\ud800 text"}\n', "", ":1: column 'prompt' holds a lone surrogate"),
    ("split.jsonl", _jsonl({"prompt": "a", "s": "test"}), ", split_column: s", ":1: column 's' must be train or eval"),
    ("difficulty.jsonl", _jsonl({"prompt": "a", "d": "hard"}), ", difficulty: d", ":1: column 'd' must be an integer"),
    ("misspelt.jsonl", _jsonl({"prompt": "a", "answer": "1"}), ", reference: anwser", "missing column 'anwser'"),
    ("quotes.csv", b'prompt,reference\n"open quote,1\nnext,2\n', "", ":2: malformed CSV"),
    ("fields.csv", b"prompt,reference\na,1,extra\n", "", ":2: 3 fields, the header has 2"),
    ("missing.csv", b"question\nhi\n", "", "missing column 'prompt'"),
    ("latin1.csv", "prompt\ncaf\xe9\n".encode("latin-1"), "", ":2: invalid UTF-8"),
    ("corrupt.parquet", b"PAR1 not really", "", "not a readable Parquet file"),
    ("data.txt", b"hello\n", "", "cannot tell the format from the suffix"),
]


@pytest.mark.parametrize("name,content,mapping,needle", PREPARE_CASES, ids=[c[0] for c in PREPARE_CASES])
def test_prepare_bad_input_is_one_line_and_writes_nothing(tmp_path, name, content, mapping, needle):
    cfg, data = _prepare_case(tmp_path, name, content, mapping)
    _expect_one_line(["prepare", cfg], needle, root=tmp_path / "artifacts")


def test_prepare_missing_input_file(tmp_path):
    cfg = write_config(tmp_path / "c.yaml", f"""
        run: {{name: x, artifacts_dir: {tmp_path / 'artifacts'}}}
        prepare: {{inputs: [{{path: {tmp_path / 'nope.jsonl'}}}]}}
        """)
    _expect_one_line(["prepare", cfg], "nope.jsonl: no such file")


@pytest.mark.parametrize("answers,needle", [
    ([{"id": "simple_0", "ground_truth": []}], "BFCL_v3_simple.json:2: id 'simple_1' has no row in answers.json"),
    ([{"id": "simple_0", "ground_truth": []}, {"ground_truth": []}], "answers.json:2: needs a string or integer 'id'"),
    ([{"id": "simple_0", "ground_truth": []}] * 2, "answers.json:2: duplicate id 'simple_0' (first at line 1)"),
])
def test_prepare_reference_file_without_an_answer_for_an_id(tmp_path, answers, needle):
    (tmp_path / "answers.json").write_bytes(_jsonl(*answers))
    questions = [{"id": f"simple_{i}", "question": [[{"role": "user", "content": f"q{i}"}]]} for i in range(2)]
    cfg, _ = _prepare_case(tmp_path, "BFCL_v3_simple.json", _jsonl(*questions),
                           ", messages: question, id: id, task: tool, reference_file: answers.json, "
                           "reference: ground_truth")
    _expect_one_line(["prepare", cfg], needle, root=tmp_path / "artifacts")


def test_prepare_accepts_a_bom_and_drops_a_repeated_row(tmp_path):
    content = b"\xef\xbb\xbf" + _jsonl({"prompt": "a", "i": 1}, {"prompt": "a", "i": 1}, {"prompt": "b", "i": 2})
    cfg, _ = _prepare_case(tmp_path, "bom.jsonl", content, ", id: i")
    r = CliRunner().invoke(main, ["prepare", str(cfg)])
    assert r.exit_code == 0, r.output
    assert "read 3, rejected 0, dropped_empty 0, dropped_duplicate 1, kept 2" in r.output


def test_prepare_skip_mode_rejects_an_unknown_role_with_its_reason(tmp_path):
    content = _jsonl({"m": [{"role": "user", "content": "hi"}]}, {"m": [{"role": "bot", "content": "x"}]},
                     '{"m": [{"role": "user", "content": "\\udc80"}]}')
    cfg, _ = _prepare_case(tmp_path, "roles.jsonl", content, ", messages: m")
    r = CliRunner().invoke(main, ["prepare", str(cfg), "--on-error", "skip"])
    assert r.exit_code == 0, r.output
    reasons = pq.read_table(tmp_path / "artifacts/x/prepare/rejects.parquet").column("reason").to_pylist()
    assert reasons[0].startswith("column 'm': unknown role 'bot'") and "lone surrogate" in reasons[1]


# ---------------------------------------------------------------------------------------------
# clean: shards and rules.


def test_duplicate_sample_across_shards_names_both_files(tmp_path):
    cfg_path, cfg = _run(tmp_path)
    gen = cfg.run_dir / "generate/generations"
    first = sorted(gen.glob("part-*.parquet"))[0]
    shutil.copy(first, gen / "part-0of1-99999.parquet")
    _expect_one_line(["clean", cfg_path], "is in", first.name, "part-0of1-99999.parquet", root=cfg.run_dir)


def _with_rule(tmp_path, name: str, sql: str):
    """A clean run whose only rule is `name`, a file beside copies of the shipped rules."""
    rules = tmp_path / "rules"
    shutil.copytree(ROOT / "sql", rules)
    (rules / f"{name}.sql").write_text(sql)
    return _run(tmp_path, extra=f"rules: [{name}]", sql_dir=rules)


def test_rule_returning_ids_that_are_not_candidates(tmp_path):
    cfg_path, cfg = _with_rule(tmp_path, "bogus", "-- drops ids that do not exist\n"
                                                  "SELECT 'nope;' || sample_id AS sample_id FROM candidates")
    _expect_one_line(["clean", cfg_path], "bogus.sql: returned", "not current candidates", root=cfg.run_dir)


def test_rule_whose_sample_id_is_not_text(tmp_path):
    cfg_path, cfg = _with_rule(tmp_path, "numbers", "SELECT 1 AS sample_id FROM candidates")
    _expect_one_line(["clean", cfg_path], "numbers.sql: its sample_id column is INTEGER", root=cfg.run_dir)


def test_rule_string_may_hold_a_semicolon(tmp_path):
    # semi is also an SQL keyword: the rule's view name is quoted
    cfg_path, cfg = _with_rule(tmp_path, "semi", "-- drops answers holding a ';'\nSELECT sample_id FROM candidates "
                                                 "WHERE answer LIKE '%;%'")
    r = CliRunner().invoke(main, ["clean", str(cfg_path)])
    assert r.exit_code == 0, r.output


def test_rule_with_two_statements_missing_clean_sql_and_non_utf8_rule(tmp_path):
    rules = tmp_path / "rules"
    shutil.copytree(ROOT / "sql", rules)
    (rules / "two.sql").write_text("SELECT sample_id FROM candidates; SELECT 1")
    cfg_path, cfg = _run(tmp_path / "a", extra="rules: [two]", sql_dir=rules)
    _expect_one_line(["clean", cfg_path], "two.sql: must be a single SELECT (found 2 statements)")
    (rules / "latin.sql").write_bytes("SELECT sample_id FROM candidates -- caf\xe9".encode("latin-1"))
    cfg_path, cfg = _run(tmp_path / "b", extra="rules: [latin]", sql_dir=rules)
    _expect_one_line(["clean", cfg_path], "latin.sql: not UTF-8")
    (rules / "clean.sql").unlink()
    cfg_path, cfg = _run(tmp_path / "c", extra="rules: [length]", sql_dir=rules)
    _expect_one_line(["clean", cfg_path], "clean.sql_dir: no clean.sql")


def test_clean_before_generate_and_missing_decontam_file(tmp_path):
    cfg = write_config(tmp_path / "c.yaml", f"run: {{name: x, artifacts_dir: {tmp_path / 'artifacts'}}}\n")
    _expect_one_line(["clean", cfg], "generate/manifest.json: missing; run `distill generate")
    cfg_path, run_cfg = _run(tmp_path / "d", extra=f"decontam_files: [{tmp_path / 'nope.jsonl'}]")
    _expect_one_line(["clean", cfg_path], "clean.decontam_files:", "nope.jsonl: no such file")


def test_shard_with_a_null_text_column(tmp_path):
    cfg_path, cfg = _run(tmp_path)
    part = sorted((cfg.run_dir / "generate/generations").glob("part-*.parquet"))[0]
    rows = pq.read_table(part).to_pylist()
    rows[0]["reasoning"] = None
    schema = GENERATIONS.arrow_schema
    schema = schema.set(schema.get_field_index("reasoning"), pa.field("reasoning", pa.string(), nullable=True))
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), part)
    _expect_one_line(["clean", cfg_path], part.name, "column 'reasoning' holds", root=cfg.run_dir)


def test_apostrophe_and_unicode_in_the_artifacts_path(tmp_path):
    odd = tmp_path / "it's ü 名"
    cfg_path, cfg = _run(odd)
    r = CliRunner().invoke(main, ["clean", str(cfg_path)])
    assert r.exit_code == 0, r.output
    assert pq.read_table(cfg.run_dir / "clean/clean.parquet").num_rows > 0


# ---------------------------------------------------------------------------------------------
# generate and eval, before any engine starts.


def test_generate_score_with_n_and_a_corrupt_shard(tmp_path):
    cfg_path, cfg = _run(tmp_path)
    _expect_one_line(["generate", cfg_path, "--score", "--set", "generate.n=2"], "generate.n must be 1 with --score")
    part = sorted((cfg.run_dir / "generate/generations").glob("part-*.parquet"))[0]
    part.write_bytes(b"garbage")
    _expect_one_line(["clean", cfg_path], part.name, "not a readable Parquet file", root=cfg.run_dir)


def test_eval_models_with_the_same_name(tmp_path):
    cfg_path, cfg = _run(tmp_path)
    model = {"path": str(tmp_path), "weights_sha": "w", "tokenizer_sha": "t", "vocab_sha": "v"}
    manifest.write(cfg, "models", time.time(), {}, models={"teacher": model, "student": model})
    a, b = tmp_path / "artifacts/a/sweep/model", tmp_path / "artifacts/b/sweep/model"
    _expect_one_line(["eval", cfg_path, "--set", f"eval.models=[{a}, {b}]"], "eval.models: two models are named 'sweep'")


def test_full_disk_is_one_line_and_leaves_nothing(tmp_path, monkeypatch):
    import errno

    import pyarrow.parquet as pq_module

    cfg, _ = _prepare_case(tmp_path, "ok.jsonl", _jsonl({"prompt": "a"}))

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(args[1]))

    monkeypatch.setattr(pq_module, "write_table", full)
    line = _expect_one_line(["prepare", cfg], "No space left on device", root=tmp_path)
    assert ".prompts.parquet" in line and not (tmp_path / "artifacts").exists()  # no empty directory either


def test_unexpected_failure_is_one_line_and_debug_shows_the_traceback(tmp_path, monkeypatch):
    from pipeline import rows

    cfg, _ = _prepare_case(tmp_path, "ok.jsonl", _jsonl({"prompt": "a"}))
    monkeypatch.setattr(rows, "prompt_id", lambda *a: 1 / 0)
    _expect_one_line(["prepare", cfg], "unexpected ZeroDivisionError", "rerun with --debug")
    r = CliRunner().invoke(main, ["--debug", "prepare", str(cfg)])
    assert isinstance(r.exception, ZeroDivisionError)  # raised through, with its traceback
