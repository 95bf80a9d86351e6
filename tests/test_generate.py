"""generate with the real vLLM engine on CPU and a tiny teacher: the expected sample set, resume
after SIGKILL, refusal to mix settings, too-long prompts skipped, data parallelism, dry run."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from pipeline import engine, generate, topk
from pipeline.cli import main
from pipeline.schema import GENERATIONS, TEACHER_TOPK
from tests.conftest import distill_cli, write_config

ROOT = Path(__file__).parent.parent
LONG_PROMPT = "count " * 600  # longer than max_model_len: must be skipped, not crash


def _config(tmp_path, teacher, name="g", extra=""):
    (tmp_path / "long.jsonl").write_text(json.dumps({"prompt": LONG_PROMPT}) + "\n")
    return write_config(tmp_path / f"{name}.yaml", f"""
        run: {{name: {name}, artifacts_dir: {tmp_path / 'artifacts'}}}
        models: {{teacher: {teacher}, student_layers: [0], dtype: float32}}
        prepare:
          arithmetic: {{n_train: 24, n_eval: 6}}
          inputs: [{{path: {tmp_path / 'long.jsonl'}}}]
        generate:
          n: 2
          max_new_tokens: 24
          top_k: 5
          shard_size: 6
          max_in_flight: 4
          engine: {{max_model_len: 256, dtype: float32, enforce_eager: true}}
        {extra}
        """)


def _samples(run_dir):
    parts = sorted((run_dir / "generate/generations").glob("part-*.parquet"))
    return [s for p in parts for s in pq.read_table(p, columns=["sample_id"]).column(0).to_pylist()]


def _expected(run_dir, n=2):
    prompts = pq.read_table(run_dir / "prepare/prompts.parquet").to_pylist()
    skipped = {p["prompt_id"] for p in prompts if p["messages"][-1]["content"].startswith("count")}
    return {f"{p['prompt_id']}-{i}" for p in prompts if p["prompt_id"] not in skipped for i in range(n)}


@pytest.fixture(scope="module")
def killed_and_resumed(tiny_teacher_dir, tmp_path_factory):
    """A generation SIGKILLed once its first shard is on disk, then rerun to completion."""
    tmp = tmp_path_factory.mktemp("gen")
    cfg = _config(tmp, tiny_teacher_dir)
    distill_cli("models", cfg)
    distill_cli("prepare", cfg)
    run_dir = tmp / "artifacts/g"
    env = {**os.environ, "VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_CPU_KVCACHE_SPACE": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "generate", str(cfg)], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not list((run_dir / "generate/generations").glob("part-*.parquet")) and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = _samples(run_dir)
    resumed = distill_cli("generate", cfg)
    return cfg, run_dir, before, resumed


def test_resume_after_sigkill_gives_exactly_the_expected_samples(killed_and_resumed):
    cfg, run_dir, before, resumed = killed_and_resumed
    assert 0 < len(before) < len(_expected(run_dir)), "the kill should land mid-run"
    after = _samples(run_dir)
    assert len(after) == len(set(after)) and set(after) == _expected(run_dir)
    pending = len(_expected(run_dir)) - len(before) + 2  # + the too-long prompt's two samples, skipped again
    assert f"{len(before)} samples on disk, {pending} pending" in resumed.stdout
    manifest = json.loads((run_dir / "generate/manifest.json").read_text())
    assert manifest["counts"]["samples"] == len(after) and manifest["counts"]["prompts_skipped"] == 1
    assert manifest["settings"]["logprobs_mode"] == "raw_logprobs" and manifest["settings"]["temperature"] == 0.6
    assert not list(run_dir.rglob("*.tmp"))


def test_tables_are_consistent(killed_and_resumed):
    _, run_dir, _, _ = killed_and_resumed
    gen = pq.read_table(run_dir / "generate/generations").to_pylist()
    tk = {}
    for part in (run_dir / "generate/teacher_topk").glob("*.parquet"):
        table, order = topk.read_part(part)
        tk.update({r["sample_id"]: topk.decode(r, order) for r in table.to_pylist()})
    GENERATIONS.validate(pq.read_schema(next((run_dir / "generate/generations").glob("*.parquet"))), "g")
    TEACHER_TOPK.validate(pq.read_schema(next((run_dir / "generate/teacher_topk").glob("*.parquet"))), "t")
    assert set(tk) == {r["sample_id"] for r in gen}
    seeds = [r["seed"] for r in gen]
    assert len(set(seeds)) == len(seeds), "per-sample seeds never collide"
    for r in gen:
        token_ids, sampled, ids, lp = tk[r["sample_id"]]
        assert len(token_ids) == r["completion_tokens"] == ids.shape[0] == lp.shape[0] and ids.shape[1] == 5
        assert (np.diff(lp, axis=1) <= 0).all() and (lp <= 0).all() and (sampled <= 0).all()
        assert token_ids[-1] == 2 or r["finish_reason"] == "length"  # <|im_end|> ends a stopped sample
        assert r["finish_reason"] in ("stop", "length")
        assert r["prompt_token_ids"][:1] == [1]  # the template's <|im_start|>, once: no double BOS
    skipped = pq.read_table(run_dir / "generate/skipped-000of001.parquet").to_pylist()
    assert len(skipped) == 1 and "max_model_len is 256" in skipped[0]["reason"]


def test_rerun_with_other_settings_refuses(killed_and_resumed):
    cfg, *_ = killed_and_resumed
    result = CliRunner().invoke(main, ["generate", str(cfg), "--set", "generate.temperature=0.9"])
    assert result.exit_code == 1
    assert "generated with temperature=0.6, not 0.9" in result.output and len(result.output.splitlines()) == 1


def test_data_parallel_matches_single_process(killed_and_resumed, tiny_teacher_dir):
    cfg, run_dir, _, _ = killed_and_resumed
    dp = _config(cfg.parent, tiny_teacher_dir, name="dp")
    distill_cli("models", dp)
    distill_cli("prepare", dp)
    distill_cli("generate", dp, "--data-parallel", "2")
    dp_dir = cfg.parent / "artifacts/dp"
    names = {p.name[:14] for p in (dp_dir / "generate/generations").glob("part-*.parquet")}
    assert names == {"part-000of002-", "part-001of002-"}
    assert sorted(_samples(dp_dir)) == sorted(_samples(run_dir))
    assert (dp_dir / "generate/manifest.json").is_file()


def test_dry_run_prints_plan_without_a_model():
    result = CliRunner().invoke(main, ["generate", str(ROOT / "configs/deepseek-r1.yaml"), "--dry-run",
                                       "--set", "run.artifacts_dir=/nonexistent"])
    assert result.exit_code == 0, result.output
    assert '"tensor_parallel_size": 8' in result.output and '"enable_expert_parallel": true' in result.output
    assert "max_new_tokens=32768" in result.output and "system_prompt=False" in result.output


def test_split_reasoning_on_token_ids():
    toks = np.array([5, 6, 99, 7, 8, 2])
    r, a, idx, count = engine.split_reasoning(toks, [99])
    assert r.tolist() == [5, 6] and a.tolist() == [7, 8, 2] and idx == 2 and count == 1
    r, a, idx, count = engine.split_reasoning(np.array([5, 3, 4, 6, 3, 4]), [3, 4])  # multi-token marker, twice
    assert r.tolist() == [5] and idx == 1 and count == 2
    r, a, idx, count = engine.split_reasoning(toks, [42])
    assert r.tolist() == toks.tolist() and a.size == 0 and idx is None
    r, a, idx, count = engine.split_reasoning(toks, [])
    assert r.size == 0 and a.tolist() == toks.tolist()


@pytest.mark.parametrize("vocab", [50_000, 150_000])
def test_topk_codec_roundtrip_and_error_bound(tmp_path, vocab):
    """Exact ids (2 or 3 byte planes), logprobs within 0.01 (big gaps escaped), sampled logprobs
    recovered from the top k or from their own column."""
    from pipeline.schema import TEACHER_TOPK
    rng = np.random.default_rng(0)
    rows = []
    for s in range(3):
        P, k = 200, 20
        lp = -np.sort(rng.exponential(2.0, size=(P, k)), axis=1).astype(np.float32)
        lp[:, 5] -= 30  # gaps above 255 steps take the escape path
        lp = -np.sort(-lp, axis=1)
        ids = np.stack([rng.choice(vocab, k, replace=False) for _ in range(P)])
        tokens = np.where(rng.random(P) < 0.7, ids[:, 0], rng.integers(0, vocab, P))
        sampled = np.where(tokens == ids[:, 0], lp[:, 0], -rng.exponential(5.0, P)).astype(np.float32)
        rows.append({"sample_id": f"s{s}", "token_ids": tokens, "token_logprobs": sampled, "topk_ids": ids,
                     "topk_logprobs": lp})
    topk.write_part(rows, tmp_path / "p.parquet", TEACHER_TOPK.arrow_schema)
    table, order = topk.read_part(tmp_path / "p.parquet")
    TEACHER_TOPK.validate(table.schema, "p")
    for row, want in zip(table.to_pylist(), rows):
        tokens, sampled, ids, lp = topk.decode(row, order)
        assert (ids == want["topk_ids"]).all() and (tokens == want["token_ids"]).all()
        in_topk = (want["topk_ids"] == want["token_ids"][:, None]).any(1)
        assert np.abs(lp - want["topk_logprobs"]).max() <= 0.01 + 1e-5
        assert np.abs(sampled - want["token_logprobs"])[~in_topk].max() <= 0.01 + 1e-5


def test_topk_part_in_another_layout_is_a_one_line_error(tmp_path):
    """A part of the earlier layout (int32 token_ids, one binary rank blob), or one without its id
    order, names the file instead of failing inside decode."""
    import pyarrow as pa

    from pipeline.errors import PipelineError
    old = tmp_path / "old.parquet"
    pq.write_table(pa.table({"sample_id": ["s0"], "k": pa.array([1], pa.int16()), "token_ids": [[5]],
                             "topk_ids": [b"\x00\x00"]}), old)
    with pytest.raises(PipelineError, match=f"^{old}: not a teacher_topk table: column 'sampled_index' is missing"):
        topk.read_part(old)
    unordered = tmp_path / "unordered.parquet"
    pq.write_table(TEACHER_TOPK.from_pylist([]), unordered)
    with pytest.raises(PipelineError, match=f"^{unordered}: no topk_id_order in its Parquet metadata"):
        topk.read_part(unordered)


def test_score_mode_matches_teacher_forcing_in_transformers(tiny_teacher_dir, tmp_path):
    """--score on given completions: the stored top-k equals a float32 transformers forward pass."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    rows = [{"prompt": "Ava has 3 apples. How many?", "completion": "Ava has 3 apples. The answer is 3."},
            {"prompt": "Ben has 5 books.", "completion": "He gives away 2 books, so 3 remain."}]
    (tmp_path / "done.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    cfg = write_config(tmp_path / "s.yaml", f"""
        run: {{name: s, artifacts_dir: {tmp_path / 'artifacts'}}}
        models: {{teacher: {tiny_teacher_dir}, student_layers: [0], dtype: float32}}
        prepare: {{inputs: [{{path: {tmp_path / 'done.jsonl'}, completion: completion}}]}}
        generate: {{n: 1, top_k: 5, think_end: "", engine: {{max_model_len: 256, dtype: float32, enforce_eager: true}}}}
        """)
    distill_cli("models", cfg)
    distill_cli("prepare", cfg)
    distill_cli("generate", cfg, "--score")
    run_dir = tmp_path / "artifacts/s"
    gen = {r["sample_id"]: r for r in pq.read_table(run_dir / "generate/generations").to_pylist()}
    tk = []
    for part in (run_dir / "generate/teacher_topk").glob("*.parquet"):
        table, order = topk.read_part(part)
        tk += [(r["sample_id"], *topk.decode(r, order)) for r in table.to_pylist()]
    assert len(tk) == 2 and all(r["finish_reason"] == "scored" for r in gen.values())
    tok = AutoTokenizer.from_pretrained(tiny_teacher_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_teacher_dir, dtype=torch.float32).eval()
    for sample_id, token_ids, sampled, top_ids, got in tk:
        g = gen[sample_id]
        ids = g["prompt_token_ids"] + token_ids.tolist()
        assert token_ids[-1] == tok.eos_token_id
        assert g["answer"] in [r["completion"] for r in rows]
        with torch.no_grad():
            logp = torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), -1)
        ref = logp[len(g["prompt_token_ids"]) - 1:-1]  # row j predicts completion token j
        ref_top = torch.topk(ref, 5, dim=-1)
        assert np.abs(got - ref_top.values.numpy()).max() <= 0.01 + 2e-3
        want = ref.gather(1, torch.tensor(token_ids)[:, None])[:, 0].numpy()
        assert np.abs(sampled - want).max() <= 0.01 + 2e-3


def test_generate_before_models_is_one_line_error(tmp_path):
    cfg = write_config(tmp_path / "m.yaml", f"run: {{name: m, artifacts_dir: {tmp_path}}}\n")
    result = CliRunner().invoke(main, ["generate", str(cfg)])
    assert result.exit_code == 1 and len(result.output.splitlines()) == 1
    assert "models/manifest.json: missing; run `distill models" in result.output


def test_missing_teacher_directory_is_one_line_error(tmp_path):
    cfg = write_config(tmp_path / "t.yaml", f"""
        run: {{name: t, artifacts_dir: {tmp_path}}}
        models: {{teacher: {tmp_path / 'no-such-model'}}}
        """)
    result = CliRunner().invoke(main, ["models", str(cfg)])
    assert result.exit_code == 1 and "no-such-model: no such model directory" in result.output


def test_retries_sample_more_for_the_prompts_whose_first_tries_are_wrong(tiny_teacher_dir, tmp_path):
    """Every arithmetic answer of the random tiny teacher is wrong: each train prompt gets its two
    sampled retries after the greedy try, eval prompts none; a kill that cuts a prompt's retries
    across parts is redone without duplicates, and a finished run reruns to nothing."""
    cfg = write_config(tmp_path / "r.yaml", f"""
        run: {{name: r, artifacts_dir: {tmp_path / 'artifacts'}}}
        models: {{teacher: {tiny_teacher_dir}, student_layers: [0], dtype: float32}}
        prepare: {{arithmetic: {{n_train: 6, n_eval: 2}}}}
        generate: {{n: 1, temperature: 0.0, retries: 2, retry_temperature: 1.0, max_new_tokens: 12, top_k: 5,
                    shard_size: 3, engine: {{max_model_len: 256, dtype: float32, enforce_eager: true}}}}
        """)
    distill_cli("models", cfg)
    distill_cli("prepare", cfg)
    first = distill_cli("generate", cfg)
    assert "6 train prompts failed their reference in all 1 tries; 2 sampled tries more each" in first.stdout
    run_dir = tmp_path / "artifacts/r"
    prompts = pq.read_table(run_dir / "prepare/prompts.parquet").to_pylist()
    want = {f"{p['prompt_id']}-{i}" for p in prompts for i in (range(3) if p["split"] == "train" else range(1))}
    gen = pq.read_table(run_dir / "generate/generations").to_pylist()
    assert sorted(r["sample_id"] for r in gen) == sorted(want)
    assert len({r["seed"] for r in gen}) == len(gen), "retries get seeds of their own"
    answers = {r["sample_id"]: r["answer"] for r in gen}
    assert any(answers[f"{p['prompt_id']}-1"] != answers[f"{p['prompt_id']}-2"] for p in prompts
               if p["split"] == "train"), "retries are sampled, not greedy"
    counts = json.loads((run_dir / "generate/manifest.json").read_text())["counts"]
    assert counts["prompts_retried"] == 6 and counts["retries_right"] == 0 and counts["samples"] == 20

    # parts of 3 samples cut prompts' two retries apart: the last part takes one retry of a prompt
    # whose other stays on disk, which the rerun must not write twice
    last = max((run_dir / "generate/generations").glob("part-*.parquet"))
    lost = set(pq.read_table(last, columns=["sample_id"]).column(0).to_pylist())
    last.unlink()
    (run_dir / "generate/teacher_topk" / last.name).unlink()
    kept = set(_samples(run_dir))
    assert any((f"{p}-1" in kept) != (f"{p}-2" in kept) for p in (p["prompt_id"] for p in prompts))
    distill_cli("generate", cfg)
    again = [r["sample_id"] for r in pq.read_table(run_dir / "generate/generations").to_pylist()]
    assert sorted(again) == sorted(want) and lost <= set(again)
    rerun = distill_cli("generate", cfg)
    assert "0 pending" in rerun.stdout and "sampled tries more" not in rerun.stdout
    distill_cli("report", cfg)
    html = (run_dir / "report.html").read_text()
    assert "2 retries at T=1.0" in html and "<td class='l'>prompts_retried</td><td class=''>6</td>" in html


def test_retry_state_owes_retries_only_to_wrong_train_prompts(tmp_path):
    """Which prompts a retry pass samples for, from the answers on disk (pure logic)."""
    import pyarrow as pa

    from pipeline.config import GenerateConfig

    (tmp_path / "generations").mkdir()
    rows = [("right", 0, "\\boxed{4}"), ("wrong", 0, "\\boxed{5}"),
            ("retried", 0, "\\boxed{5}"), ("retried", 1, "\\boxed{3}"), ("retried", 2, "\\boxed{4}"),
            ("half", 0, "\\boxed{5}"), ("half", 1, "\\boxed{5}"), ("eval", 0, "\\boxed{5}"), ("free", 0, "hello")]
    pq.write_table(pa.table({"prompt_id": [r[0] for r in rows], "sample_idx": [r[1] for r in rows],
                             "answer": [r[2] for r in rows]}), tmp_path / "generations/part-000of001-00000.parquet")
    prompts = [{"prompt_id": pid, "split": "eval" if pid == "eval" else "train", "task": "math",
                "reference": None if pid == "free" else "4"} for pid in ("right", "wrong", "retried", "half", "eval",
                                                                         "free", "unstarted")]
    owed, counts = generate.retry_state(tmp_path, prompts, GenerateConfig(retries=2))
    assert [p["prompt_id"] for p in owed] == ["wrong", "half"]
    assert counts == {"prompts_retried": 1, "retries_right": 1}
