"""SIGKILL at a random moment of clean, train and eval, then a rerun: the outputs are complete and
agree with their manifest, nothing half-written or duplicated is left. (generate's own kill test is
in test_generate.py.) `python tests/kill_loop.py STAGE N` repeats one of these N times.
"""
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq

from tests.conftest import ROOT, copy_traced, distill_cli

ENV = {**os.environ, "VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_CPU_KVCACHE_SPACE": "1"}


def kill_after(args: list, delay: float) -> bool:
    """Start `distill ARGS`, SIGKILL it after `delay` seconds; True if it was still running."""
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.cli", *map(str, args)], cwd=ROOT, env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        proc.wait(timeout=delay)
        return False
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the stage and anything it spawned (eval's engine process)
        proc.wait()
        return True


def leftovers(root: Path) -> list[str]:
    """Temporary files and directories a finished rerun must not leave."""
    return sorted(str(p) for p in root.rglob("*") if p.name.endswith(".tmp") or ".old" in p.name)


def check_clean(cfg: Path, run_dir: Path) -> None:
    m = json.loads((run_dir / "clean/manifest.json").read_text())
    kept = pq.read_table(run_dir / "clean/clean.parquet")
    rejects = pq.read_table(run_dir / "clean/rejects.parquet")
    assert kept.num_rows == m["counts"]["kept"] and rejects.num_rows == m["counts"]["samples"] - m["counts"]["kept"]
    ids = kept.column("sample_id").to_pylist() + rejects.column("sample_id").to_pylist()
    assert len(ids) == len(set(ids)) == m["counts"]["samples"]
    assert leftovers(run_dir) == []


def check_train(cfg: Path, out: Path) -> None:
    from transformers import AutoModelForCausalLM

    m = json.loads((out / "manifest.json").read_text())
    assert m["counts"]["steps"] == 6
    steps = [h["step"] for h in m["log_history"] if "loss" in h]
    assert steps == sorted(set(steps)) and steps[-1] == 6  # resumed, not trained twice
    AutoModelForCausalLM.from_pretrained(out / "model")
    assert leftovers(out) == []


def check_eval(cfg: Path, run_dir: Path) -> None:
    summary = json.loads((run_dir / "eval/summary.json").read_text())
    results = pq.read_table(run_dir / "eval/results.parquet").to_pylist()
    assert set(summary) == {"teacher", "baseline"}
    keys = [(r["model"], r["prompt_id"], r["sample_idx"]) for r in results]
    assert len(keys) == len(set(keys)) == 2 * json.loads((run_dir / "prepare/manifest.json").read_text())[
        "counts"]["split_eval"]
    assert leftovers(run_dir / "eval") == []


def kill_and_resume(stage: str, traced, tmp_path: Path, rng: random.Random) -> bool:
    """One round: copy the traced run, run the stage once whole to time it (these tiny stages take
    seconds), undo it, start it again and kill it at a random share of that time, rerun it."""
    cfg, run_dir = copy_traced(traced, tmp_path)
    out = run_dir.parent / "train-k"
    args = {"clean": ["clean", cfg], "eval": ["eval", cfg],
            "train": ["train", cfg, "--set", f"train.output_dir={out}", "--set", "train.max_steps=6",
                      "--set", "train.save_steps=2"]}[stage]
    started = time.perf_counter()
    distill_cli(*args)
    took = time.perf_counter() - started
    if stage == "train":
        shutil.rmtree(out)
    else:
        (run_dir / stage / "manifest.json").unlink()
    # a second eval starts faster (its engine's caches are warm), so its kill lands early
    low, high = (0.1, 0.6) if stage == "eval" else (0.3, 0.95)
    killed = kill_after(args, rng.uniform(low, high) * took)
    distill_cli(*args, *(["--resume"] if stage == "train" else []))
    if stage == "train":
        check_train(cfg, out)
    else:
        (check_clean if stage == "clean" else check_eval)(cfg, run_dir)
    return killed


def test_clean_killed_then_rerun(traced, tmp_path):
    kill_and_resume("clean", traced, tmp_path, random.Random(1))


def test_train_killed_then_resumed(traced, tmp_path):
    kill_and_resume("train", traced, tmp_path, random.Random(2))


def test_eval_killed_then_rerun(traced, tmp_path):
    kill_and_resume("eval", traced, tmp_path, random.Random(3))


def test_incomplete_checkpoint_is_skipped_on_resume(traced, tmp_path):
    cfg, run_dir = copy_traced(traced, tmp_path)
    out = run_dir.parent / "train-c"
    args = ["train", cfg, "--set", f"train.output_dir={out}", "--set", "train.max_steps=4", "--set", "train.save_steps=2"]
    distill_cli(*args, "--set", "train.max_steps=2")
    half = out / "checkpoints/checkpoint-4"  # what a kill while saving leaves: weights, no trainer_state.json
    half.mkdir()
    (half / "model.safetensors").write_bytes(b"cut short")
    r = distill_cli(*args, "--resume")
    assert "checkpoint-4 is incomplete (killed while saving); removed" in r.stderr
    m = json.loads((out / "manifest.json").read_text())
    assert [h["step"] for h in m["log_history"] if "loss" in h] == [1, 2, 3, 4]

