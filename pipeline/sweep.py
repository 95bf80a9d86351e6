"""`distill sweep CONFIG`: an Optuna search over train settings on the run's cached train data
(artifacts/<run>/sweep/).

    distill sweep configs/quickstart.yaml --set sweep.trials=4

Every trial trains the student with train.run: the settings of `sweep.space` as the sampler
suggests them, the rest of the `train` section as configured, into sweep/trial-NNN/ (its model
and train manifest), from the memory-mapped data under artifacts/<run>/train_data/. Nothing
upstream of train reruns and the run's own train/ is left alone. A trial is judged by
`sweep.objective` on the eval split's traces (eval.teacher_fidelity: no vLLM, no teacher).

The study is kept in sweep/journal.log (Optuna's JournalStorage, named after the run), so a rerun
continues it until `sweep.trials` trials are COMPLETE; a trial left RUNNING by a killed process is
marked FAIL and its settings run again first. After every trial the `sweep` table
(sweep/sweep.parquet) and sweep/summary.json (objective, baseline, best trial) are rewritten whole.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import socket
import time
from pathlib import Path

import click
import optuna
from optuna.samplers import GridSampler, TPESampler
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.study import MaxTrialsCallback
from optuna.trial import TrialState
from transformers import TrainerCallback

from pipeline import eval as eval_stage
from pipeline import manifest, train
from pipeline.config import Config
from pipeline.errors import PipelineError
from pipeline.files import pid_alive, remove, write_json, write_table
from pipeline.schema import SWEEP


def run(cfg: Config) -> dict:
    s = cfg.sweep
    out = cfg.run_dir / "sweep"
    models = manifest.require(cfg, "models")
    student = Path(models["models"]["student"]["path"])
    settings = _settings(cfg, models["key"], manifest.require(cfg, "clean")["key"])
    out.mkdir(parents=True, exist_ok=True)
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # one line per trial is ours; a failure is the CLI's one line
    journal = out / "journal.log"
    study = optuna.create_study(storage=JournalStorage(JournalFileBackend(str(journal))), study_name=cfg.run.name,
                                direction=s.direction, load_if_exists=True,
                                # a trial stops early only once two have completed: a median needs company
                                pruner=optuna.pruners.MedianPruner(n_startup_trials=2))
    # seeded by the trials so far, so that a rerun does not replay the first run's draws; TPE
    # explores at random for half the budget (Optuna's default of 10 would make a small sweep random)
    seed = cfg.run.seed + len(study.trials)
    study.sampler = GridSampler({name: spec["choices"] for name, spec in s.space.items()}, seed=seed) \
        if s.sampler == "grid" else TPESampler(seed=seed, n_startup_trials=max(1, s.trials // 2))
    _check_same_settings(study, settings, journal)
    host = socket.gethostname()
    _fail_killed_trials(study, host, s.space)
    if "baseline" not in study.user_attrs:  # the untrained student: a yardstick, and a check before any training
        study.set_user_attr("baseline", _measure(cfg, student))
    click.echo(f"sweep: study {cfg.run.name} in {journal}; {s.objective} ({s.direction}) of the untrained student "
               f"{study.user_attrs['baseline']:.5g}")

    def objective(trial: optuna.Trial) -> float:
        # who runs the trial: a rerun fails it only when this process is gone
        trial.set_user_attr("host", host)
        trial.set_user_attr("pid", os.getpid())
        params = {name: _suggest(trial, name, spec) for name, spec in s.space.items()}
        trial_dir = out / f"trial-{trial.number:03d}"
        remove(trial_dir)  # a number is new to the study: anything there is left from a study since deleted
        trial_dir.mkdir(parents=True)
        # no checkpoints: a killed trial is run again whole, never resumed
        trial_cfg = dataclasses.replace(cfg, train=dataclasses.replace(
            cfg.train, **params, output_dir=str(trial_dir), extra={**cfg.train.extra, "save_strategy": "no"}))
        click.echo(f"sweep: trial {trial.number}: {json.dumps(params)}")
        started = time.time()
        epochs = EpochMeasure(cfg, student, trial) if s.prune else None
        train.run(trial_cfg, callbacks=[epochs] if epochs else None)
        pruned = epochs is not None and epochs.pruned
        metric = None if pruned else _measure(cfg, trial_dir / "model")
        trial.set_user_attr("seconds", round(time.time() - started, 2))
        if pruned:
            raise optuna.TrialPruned()
        return metric

    def progress(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        _write_tables(cfg, study)
        complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        best = f"; best so far trial {study.best_trial.number}: {study.best_value:.5g}" if complete else ""
        value = _value(trial)
        click.echo(f"sweep: trial {len(complete)}/{s.trials} (#{trial.number} {trial.state.name}) "
                   f"{json.dumps(trial.params)}: {s.objective} {'-' if value is None else f'{value:.5g}'}{best}")

    _write_tables(cfg, study)
    if len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))) < s.trials:
        study.optimize(objective, callbacks=[progress, MaxTrialsCallback(s.trials, states=(TrialState.COMPLETE,))])
    summary = _write_tables(cfg, study)
    best = summary["best"]
    click.echo(f"sweep: {summary['complete']} complete trials; best trial {best['trial']} "
               f"{json.dumps(best['params'])}: {s.objective} {best['metric']:.5g}; its model: {best['model']}")
    return summary


class EpochMeasure(TrainerCallback):
    """Reports the objective after every epoch to the trial, and stops training once the pruner
    finds the trial worse than the median of earlier trials at that epoch. The objective rather
    than the training loss: the loss's scale moves with kd_weight and kd_temperature, so the
    losses of two trials do not compare."""

    def __init__(self, cfg: Config, tokenizer_dir: Path, trial: optuna.Trial):
        self.cfg, self.tokenizer_dir, self.trial = cfg, tokenizer_dir, trial
        self.epochs, self.pruned = 0, False

    def on_epoch_end(self, args, state, control, model=None, **kwargs):
        self.epochs += 1  # counted, not read off state.epoch: a last epoch cut by max_steps ends at a fraction
        model.eval()
        self.trial.report(_measure(self.cfg, self.tokenizer_dir, model), self.epochs)
        model.train()
        self.pruned = self.trial.should_prune()
        control.should_training_stop = control.should_training_stop or self.pruned


def _measure(cfg: Config, model_dir: Path, model=None) -> float:
    """sweep.objective of a model, always with the run's own train.top_k and train.tail (which
    fidelity_kl reads), whatever a trial tried: one yardstick for every trial."""
    fidelity = eval_stage.teacher_fidelity(cfg, model_dir, model)
    objective = cfg.sweep.objective
    if fidelity is None:
        raise PipelineError(f"{cfg.run_dir / 'generate'}: no eval-split traces to measure sweep.objective on "
                            "(generate.splits must include eval)")
    if objective not in fidelity:
        raise PipelineError(f"{cfg.file}: sweep.objective={objective} needs the teacher's vocabulary and this student "
                            "has another tokenizer; use kl_per_byte or top1_agreement")
    value = fidelity[objective]
    # a diverged model (NaN weights) scores the worst there is, so the sampler learns to avoid its settings
    return value if not math.isnan(value) else math.inf if cfg.sweep.direction == "minimize" else -math.inf


def _suggest(trial: optuna.Trial, name: str, spec: dict):
    if "choices" in spec:
        return trial.suggest_categorical(name, spec["choices"])
    suggest = trial.suggest_int if isinstance(spec["low"], int) else trial.suggest_float
    return suggest(name, spec["low"], spec["high"], log=spec["log"])


def _settings(cfg: Config, models_key: str, clean_key: str) -> dict:
    """What makes two trials comparable: the objective, the space, the train settings outside it
    and the data, flat, as the journal stores them."""
    s = cfg.sweep
    flat = {"sweep.objective": s.objective, "sweep.direction": s.direction, "sweep.space": s.space,
            **{f"train.{k}": v for k, v in cfg.section("train").items() if k not in s.space and k != "output_dir"},
            "models outputs": models_key, "clean outputs": clean_key}
    return json.loads(json.dumps(flat))


def _check_same_settings(study: optuna.Study, settings: dict, journal: Path) -> None:
    """A study continues only under the settings it began with, or its trials would not compare."""
    before = study.user_attrs.get("settings")
    if before is None:
        study.set_user_attr("settings", settings)
        return
    changed = [k for k in {**settings, **before} if before.get(k) != settings.get(k)]  # the sweep's own first
    if changed:
        k = changed[0]
        raise PipelineError(f"{journal}: study {study.study_name} ran with {k} {json.dumps(before.get(k))}, now "
                            f"{json.dumps(settings.get(k))}; set it back, or move {journal.parent} away to start anew")


def _fail_killed_trials(study: optuna.Study, host: str, space: dict) -> None:
    """A trial RUNNING for a process of this machine that is gone was killed: marked FAIL, its
    settings queued to run first. Through the storage, not study.tell, which would run the grid
    sampler's end-of-trial step outside optimize (where it raises)."""
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        pid = t.user_attrs.get("pid")
        if t.user_attrs.get("host") != host or pid is None or pid_alive(pid):
            continue
        study._storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
        if set(t.params) == set(space):  # killed before its settings were drawn: nothing to run again
            study.enqueue_trial(t.params)
        click.echo(f"sweep: trial {t.number} was left running by a killed process (pid {pid}): marked FAIL, "
                   "its settings run again", err=True)


def _value(t: optuna.trial.FrozenTrial) -> float | None:
    """A trial's metric: its value, or a pruned trial's last per-epoch measure."""
    if t.value is not None:
        return t.value
    pruned = t.state == TrialState.PRUNED and t.intermediate_values
    return t.intermediate_values[max(t.intermediate_values)] if pruned else None


def _write_tables(cfg: Config, study: optuna.Study) -> dict:
    """sweep/sweep.parquet and sweep/summary.json from the journal, each written whole."""
    s = cfg.sweep
    out = cfg.run_dir / "sweep"
    started = [t for t in study.get_trials(deepcopy=False) if t.state != TrialState.WAITING]
    write_table(SWEEP, SWEEP.from_pylist([
        {"trial": t.number, "params": json.dumps(t.params, sort_keys=True), "metric": _value(t),
         "state": t.state.name, "seconds": t.user_attrs.get("seconds")} for t in started]), out / "sweep.parquet")
    complete = [t for t in started if t.state == TrialState.COMPLETE]
    best = study.best_trial if complete else None
    summary = {"study": study.study_name, "journal": str(out / "journal.log"), "objective": s.objective,
               "direction": s.direction, "space": s.space, "baseline": study.user_attrs.get("baseline"),
               "trials": s.trials, "complete": len(complete),
               "best": best and {"trial": best.number, "params": best.params, "metric": best.value,
                                 "model": str(out / f"trial-{best.number:03d}/model")}}
    write_json(out / "summary.json", summary)
    return summary
