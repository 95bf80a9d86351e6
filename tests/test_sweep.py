"""distill sweep on a tiny teacher's real traces: trials train from the cached train data into
their own directories without touching upstream stages, the study resumes after a SIGKILL to
exactly `sweep.trials` complete trials, a changed objective is refused, and bad search spaces are
one-line errors naming the key."""
import json
import math
import os
import signal
import subprocess
import sys
import time

import optuna
import pyarrow.parquet as pq
import pytest

from pipeline import config
from pipeline.config import ConfigError
from tests.conftest import ROOT, copy_traced, distill_cli, write_config

SWEEP = """
sweep:
  space:
    learning_rate: {low: 1.0e-4, high: 1.0e-2, log: true}
    kd_weight: {choices: [0.5, 1.0]}
"""
UPSTREAM = ("models", "prepare", "generate", "clean")


def _sweep_run(traced, tmp_path):
    cfg, run_dir = copy_traced(traced, tmp_path)
    cfg.write_text(cfg.read_text() + SWEEP)
    return cfg, run_dir


def _upstream(run_dir):
    return {s: ((run_dir / s / "manifest.json").stat().st_mtime_ns, (run_dir / s / "manifest.json").read_bytes())
            for s in UPSTREAM}


def _table(run_dir):
    return pq.read_table(run_dir / "sweep/sweep.parquet").to_pylist()


def _study(run_dir):
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(
        str(run_dir / "sweep/journal.log")))
    return optuna.load_study(study_name="t", storage=storage)


def test_two_trials_train_from_the_cached_data(traced, tmp_path):
    cfg, run_dir = _sweep_run(traced, tmp_path)
    before = _upstream(run_dir)
    r = distill_cli("sweep", cfg, "--set", "sweep.trials=2", "--set", "train.max_steps=2", "--set", "sweep.prune=true")
    assert _upstream(run_dir) == before and not (run_dir / "train").exists()  # nothing upstream reran
    assert len(list((run_dir / "train_data").iterdir())) == 1  # built by the first trial, reused by the second
    table = _table(run_dir)
    assert [(t["trial"], t["state"]) for t in table] == [(0, "COMPLETE"), (1, "COMPLETE")]
    study = _study(run_dir)
    for t, frozen in zip(table, study.trials):
        params = json.loads(t["params"])
        assert 1e-4 <= params["learning_rate"] <= 1e-2 and params["kd_weight"] in (0.5, 1.0)
        trial_dir = run_dir / f"sweep/trial-{t['trial']:03d}"
        assert (trial_dir / "model/config.json").is_file()
        m = json.loads((trial_dir / "manifest.json").read_text())
        assert m["counts"]["steps"] == 2 and m["config"]["train"]["learning_rate"] == params["learning_rate"]
        assert math.isfinite(t["metric"]) and t["seconds"] > 0
        # prune: measured after each of the 2 one-step epochs; the saved model measures as the last epoch did
        assert sorted(frozen.intermediate_values) == [1, 2]
        assert frozen.intermediate_values[2] == pytest.approx(t["metric"], rel=1e-5)
    assert "sweep: trial 2/2 (#1 COMPLETE)" in r.stdout
    best = min(table, key=lambda t: t["metric"])
    summary = json.loads((run_dir / "sweep/summary.json").read_text())
    assert summary["best"]["trial"] == best["trial"] and math.isfinite(summary["baseline"])
    r = distill_cli("sql", run_dir, "SELECT count(*) AS n, min(metric) AS best FROM sweep WHERE state = 'COMPLETE'",
                    "--format", "json")
    assert json.loads(r.stdout) == {"n": 2, "best": best["metric"]}
    from pipeline import report

    report.run(report.for_run(run_dir))
    page = (run_dir / "report.html").read_text()
    section = page.split("<h2>Sweep", 1)[1].split("<h2>", 1)[0]
    assert f"<b>Best: trial {best['trial']}</b>" in section and section.count("<img") == 1


def test_killed_sweep_resumes_to_exactly_the_trials_asked(traced, tmp_path):
    cfg, run_dir = _sweep_run(traced, tmp_path)
    args = ["sweep", cfg, "--set", "train.max_steps=2"]
    distill_cli(*args, "--set", "sweep.trials=1")
    # a second run of trials=2, killed inside its first trial
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.cli", *map(str, args), "--set", "sweep.trials=2"],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 300
    while not (run_dir / "sweep/trial-001").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert [t.state.name for t in _study(run_dir).trials] == ["COMPLETE", "RUNNING"]
    r = distill_cli(*args, "--set", "sweep.trials=2")
    assert f"trial 1 was left running by a killed process (pid {proc.pid}): marked FAIL" in r.stderr
    table = _table(run_dir)
    assert [(t["trial"], t["state"]) for t in table] == [(0, "COMPLETE"), (1, "FAIL"), (2, "COMPLETE")]
    assert table[2]["params"] == table[1]["params"]  # the killed trial's settings ran again
    assert (run_dir / "sweep/trial-002/model/config.json").is_file()
    # the study continues only under its own settings
    r = distill_cli(*args, "--set", "sweep.trials=3", "--set", "sweep.objective=top1_agreement", check=False)
    assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1
    journal = run_dir / "sweep/journal.log"
    assert r.stderr.startswith(f'error: {journal}: study t ran with sweep.objective "kl_per_byte", now "top1_agreement"')
    assert len(_table(run_dir)) == 3


def test_direction_follows_the_objective(tmp_path):
    p = write_config(tmp_path / "c.yaml", "run: {name: x}\n")
    assert config.load(p).sweep.direction == "minimize"
    assert config.load(p, ["sweep.objective=top1_agreement"]).sweep.direction == "maximize"
    s = config.load(p, ["sweep.space={lora_r: {low: 0, high: 8}, num_train_epochs: {low: 1, high: 3}, "
                        "kd_temperature: {low: 1, high: 2.5}, tail: {choices: [bucket]}}"]).sweep.space
    assert s == {"lora_r": {"low": 0, "high": 8, "log": False}, "num_train_epochs": {"low": 1, "high": 3, "log": False},
                 "kd_temperature": {"low": 1.0, "high": 2.5, "log": False}, "tail": {"choices": ["bucket"]}}


@pytest.mark.parametrize("space, override, message", [
    ("{bogus: {low: 1, high: 2}}", [], "sweep.space.bogus: not a train field"),
    ("{output_dir: {choices: [x]}}", [], "sweep.space.output_dir: not a train field"),
    ("{kd_weight: {choices: [0.5, 2.0]}}", [], "sweep.space.kd_weight: 2.0 is out of range (in [0, 1])"),
    ("{}", ["sweep.space.kd_weight.choices=[2]"], "sweep.space.kd_weight: 2.0 is out of range (in [0, 1])"),
    ("{divergence: {choices: [forward_kl, kl]}}", [], "sweep.space.divergence: 'kl' is out of range"),
    ("{learning_rate: {low: 1.0e-3, high: 1.0e-5}}", [], "sweep.space.learning_rate: low (0.001) must be below high"),
    ("{learning_rate: {low: 0, high: 1.0e-3, log: true}}", [], "sweep.space.learning_rate: log needs low > 0"),
    ("{learning_rate: {low: 1.0e-5, high: 1.0e-3, log: yes please}}", [], "sweep.space.learning_rate.log: true or"),
    ("{learning_rate: {low: 1.0e-5}}", [], "sweep.space.learning_rate: a spec is {low, high, log} or {choices"),
    ("{learning_rate: {low: 1.0e-5, high: 1.0e-3, step: 2}}", [], "sweep.space.learning_rate: a spec is"),
    ("{divergence: {low: 1, high: 2}}", [], "sweep.space.divergence: train.divergence is not a number"),
    ("{lora_r: {low: 1.5, high: 8}}", [], "sweep.space.lora_r.low: expected int, got float 1.5"),
    ("{kd_weight: 0.5}", [], "sweep.space.kd_weight: expected a mapping"),
    ("{kd_weight: {choices: []}}", [], "sweep.space.kd_weight: choices: a non-empty list"),
    ("{kd_weight: {choices: [0.5], low: 0}}", [], "sweep.space.kd_weight: choices comes alone"),
    ("{learning_rate: {low: 1.0e-5, high: 1.0e-3}}", ["sweep.sampler=grid"],
     "sweep.space.learning_rate: the grid sampler takes choices only"),
    ("{kd_weight: {choices: [0.5, 1.0]}}", ["sweep.sampler=grid", "sweep.trials=3"],
     "sweep.trials: the grid has 2 points"),
    ("{kd_weight: {choices: [0.5]}}", ["sweep.objective=accuracy"], "sweep.objective: kl_per_byte, fidelity_kl"),
    ("{kd_weight: {choices: [0.5]}}", ["sweep.direction=down"], "sweep.direction: minimize or maximize"),
])
def test_bad_sweep_config_is_one_line_naming_the_key(tmp_path, space, override, message):
    p = write_config(tmp_path / "c.yaml", f"run: {{name: x}}\nsweep: {{space: {space}}}\n")
    with pytest.raises(ConfigError) as e:
        config.load(p, override)
    assert str(e.value).startswith(f"{p}: ") and message in str(e.value) and "\n" not in str(e.value)
