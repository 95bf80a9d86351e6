"""Scorers by task type, eval metrics, and eval's one-line errors for bad input."""
import json

import pyarrow.parquet as pq
import pytest

from pipeline import eval as eval_stage
from pipeline.schema import PROMPTS
from pipeline.scoring import extract, is_correct
from tests.conftest import distill_cli, write_config


@pytest.mark.parametrize("text,task,reference,expected", [
    ("so 3 + 4 = 7, the answer is \\boxed{7}.", "math", "7", True),
    ("\\boxed{\\frac{1}{2}}", "math", "0.5", True),
    ("First 12, then 30. Final: 42", "math", "42", True),
    ("The total is 1,250 apples", "math", "1250", True),
    ("\\boxed{41}", "math", "42", False),
    ("no number here", "math", "42", False),
    ("Let me think.\nParis", "exact", "paris", True),
    ("The answer is (B).", "choice", "B", True),
    ("\\boxed{C}", "choice", "B", False),
    ('<tool_call>{"name": "set_temperature", "arguments": {"zone": "driver", "celsius": 21}}</tool_call>', "tool",
     '{"name": "set_temperature", "arguments": {"celsius": 21, "zone": "driver"}}', True),
    ('{"name": "set_temperature", "arguments": "{\\"zone\\": \\"driver\\", \\"celsius\\": 22}"}', "tool",
     '{"name": "set_temperature", "arguments": {"celsius": 21, "zone": "driver"}}', False),
])
def test_scorers(text, task, reference, expected):
    assert is_correct(extract(text, task), reference, task) is expected


def test_metrics_pass_at_1_majority_and_lengths():
    rows = [{"prompt_id": "a", "extracted": "1", "correct": True, "output_tokens": 10, "finish_reason": "stop"},
            {"prompt_id": "a", "extracted": "2", "correct": False, "output_tokens": 20, "finish_reason": "length"},
            {"prompt_id": "a", "extracted": "1", "correct": True, "output_tokens": 30, "finish_reason": "stop"},
            {"prompt_id": "b", "extracted": "5", "correct": False, "output_tokens": 40, "finish_reason": "stop"}]
    m = eval_stage.metrics(rows, {"wall_s": 2.0, "latencies": [1.0, 3.0]}, n=3)
    assert m["accuracy"] == 0.5 and m["majority_accuracy"] == 0.5
    assert m["mean_output_tokens"] == 25.0 and m["truncation_rate"] == 0.25 and m["output_tok_s"] == 50.0
    assert m["latency_p50_s"] == 2.0


def _run(tmp_path, tiny_teacher_dir, extra=""):
    cfg = write_config(tmp_path / "c.yaml", f"""
        run: {{name: e, artifacts_dir: {tmp_path / 'artifacts'}}}
        models: {{teacher: {tiny_teacher_dir}, student_layers: [0], dtype: float32}}
        prepare: {{arithmetic: {{n_train: 1, n_eval: 2}}}}
        {extra}
        """)
    distill_cli("models", cfg)
    distill_cli("prepare", cfg)
    return cfg


def test_eval_model_missing_or_without_tokenizer(tmp_path, tiny_teacher_dir):
    cfg = _run(tmp_path, tiny_teacher_dir, extra=f"eval: {{models: [{tmp_path / 'nope'}]}}")
    r = distill_cli("eval", cfg, check=False)
    assert r.returncode == 1 and r.stderr.strip() == (
        f"error: {tmp_path / 'nope'}: not a model directory (no config.json) for eval model 'nope'")
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "config.json").write_text(json.dumps({"model_type": "llama"}))
    r = distill_cli("eval", cfg, "--set", f"eval.models=[{bare}]", check=False)
    assert r.returncode == 1 and r.stderr.strip() == f"error: {bare}: has no tokenizer (eval model 'bare')"


def test_eval_split_without_references(tmp_path, tiny_teacher_dir):
    cfg = _run(tmp_path, tiny_teacher_dir)
    path = tmp_path / "artifacts/e/prepare/prompts.parquet"
    rows = pq.read_table(path).to_pylist()
    for r in rows:
        r["reference"] = None
    pq.write_table(PROMPTS.from_pylist(rows), path)
    r = distill_cli("eval", cfg, check=False)
    assert r.returncode == 1 and "eval prompts have no reference to score against" in r.stderr
    assert "Traceback" not in r.stderr
