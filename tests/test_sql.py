"""distill sql is read-only for real: every way out that a query could try (COPY over the run's
own files or elsewhere, ATTACH, EXPORT, reading files outside the run, extensions, a second
statement, a crafted --output name, changing the lock) is a one-line refusal and leaves every
file as it was; paths with quotes, spaces and unicode work."""
import hashlib
import json
import shutil

import pyarrow.parquet as pq
import pytest

from pipeline import clean
from tests.conftest import distill_cli
from tests.test_clean import _run


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sql")
    _, cfg = _run(tmp)
    clean.run(cfg)
    return cfg.run_dir


def _hashes(root):
    return {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


ESCAPES = [
    ("COPY (SELECT 1 AS x) TO '{run}/prepare/prompts.parquet' (FORMAT parquet)", "COPY refused"),
    ("COPY (SELECT 1 AS x) TO '{outside}/x.csv'", "COPY refused"),
    ("ATTACH '{outside}/x.db' AS x", "ATTACH refused"),
    ("EXPORT DATABASE '{outside}/export'", "EXPORT refused"),
    ("INSTALL httpfs", "LOAD refused"),
    ("LOAD httpfs", "LOAD refused"),
    ("SET enable_external_access = true", "SET refused"),
    ("CREATE TABLE t AS SELECT 1", "CREATE refused"),
    ("SELECT 1; COPY (SELECT 1) TO '{outside}/y.csv'", "expected one statement, found 2"),
    ("SELECT * FROM read_text('{outside}/secret.txt')", "Permission Error"),
    ("SELECT * FROM read_csv('/etc/passwd')", "Permission Error"),
    ("SELECT * FROM glob('/etc/*')", "Permission Error"),
    ("SELECT * FROM read_parquet('{outside}/other.parquet')", "Permission Error"),
]


@pytest.mark.parametrize("query,message", ESCAPES, ids=[q.split()[0] + str(i) for i, (q, _) in enumerate(ESCAPES)])
def test_every_escape_is_refused_in_one_line_and_changes_nothing(run_dir, tmp_path, query, message):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("secret")
    shutil.copy(run_dir / "prepare/prompts.parquet", outside / "other.parquet")
    before, before_outside = _hashes(run_dir), _hashes(outside)
    r = distill_cli("sql", run_dir, query.format(run=run_dir, outside=outside), check=False)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and message in r.stderr, r.stderr
    assert _hashes(run_dir) == before and _hashes(outside) == before_outside


def test_output_path_never_enters_sql(run_dir, tmp_path):
    crafted = tmp_path / "o'; COPY (SELECT 1) TO 'pwned.csv'; --.json"
    r = distill_cli("sql", run_dir, "SELECT prompt_id FROM prompts", "--format", "json", "--output", crafted)
    assert r.returncode == 0 and crafted.is_file() and not (tmp_path / "pwned.csv").exists()
    assert len(json.loads(crafted.read_text())) == pq.read_table(run_dir / "prepare/prompts.parquet").num_rows


def test_quotes_spaces_and_unicode_in_the_run_path(run_dir, tmp_path):
    odd = tmp_path / "it's a run ü\n名"
    shutil.copytree(run_dir, odd)
    r = distill_cli("sql", odd, "SELECT count(*) AS n FROM clean", "--format", "csv")
    assert r.stdout.splitlines()[-1] == "8"


def test_repl_refuses_writes_and_goes_on(run_dir):
    r = distill_cli("sql", run_dir, input="CREATE TABLE t AS SELECT 1;\nSELECT count(*) AS n FROM prompts;\n.quit\n")
    assert "CREATE refused" in r.stderr and "│" in r.stdout


def test_corrupt_shard_is_left_out_with_a_warning(run_dir, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    first = sorted((copy / "generate/generations").glob("part-*.parquet"))[0]
    first.write_bytes(b"not parquet")
    r = distill_cli("sql", copy, "SELECT count(*) AS n FROM prompts", "--format", "csv")
    assert r.returncode == 0 and r.stdout.splitlines()[-1] != "0"
    assert f"warning: {first}: not a readable Parquet file" in r.stderr and "left out of view generations" in r.stderr


def test_a_json_function_on_chinese_prose_is_one_line(run_dir):
    # DuckDB cuts the input it quotes in its error mid-character; the binding cannot decode the message
    reply = "这个我用车上的功能做不到，还有什么可以帮您？"
    r = distill_cli("sql", run_dir, f"SELECT json_extract_string('{reply}', '$.name')", check=False)
    assert r.returncode == 1 and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert "json_valid" in r.stderr, r.stderr
    r = distill_cli("sql", run_dir, f"SELECT TRY(json_extract_string('{reply}', '$.name')) AS x", "--format", "csv")
    assert r.returncode == 0
