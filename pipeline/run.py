"""`distill run CONFIG`: every stage in order, each skipped when its outputs already exist for the
same resolved config and inputs (see manifest.cache_key). augment runs only when augment.n > 0.

    distill run configs/quickstart.yaml --set train.kd_weight=0.5   # reruns train and what follows
"""
from __future__ import annotations

import importlib
import time

import click

from pipeline import manifest
from pipeline.config import Config
from pipeline.errors import PipelineError

ORDER = ("models", "prepare", "augment", "generate", "clean", "train", "eval", "report")


def run(cfg: Config, force: bool = False, until: str | None = None) -> None:
    started = time.time()
    if cfg.traces.inputs:  # prepare would overwrite the imported prompts, and eval needs a teacher's traces
        raise PipelineError(f"{cfg.file}: a run of imported traces (traces.inputs) goes stage by stage: "
                            "distill import, (generate --score for KD), clean, train, report")
    stages = ORDER[:ORDER.index(until) + 1] if until else ORDER
    for stage in stages:
        if stage == "augment" and cfg.augment.n == 0:
            continue  # off: generate reads prepare's prompts
        if not force and manifest.is_fresh(cfg, stage):
            click.echo(f"[{stage}] up to date, skipped ({manifest.path(cfg, stage)})")
            continue
        click.echo(f"[{stage}] running ...")
        t = time.time()
        importlib.import_module(f"pipeline.{stage}").run(cfg)
        click.echo(f"[{stage}] done in {time.time() - t:.1f}s")
    click.echo(f"run {cfg.run.name}: finished in {time.time() - started:.1f}s; outputs in {cfg.run_dir}/")
    for stage in ORDER[:-1]:
        if stage != "augment" or cfg.augment.n > 0:
            click.echo(f"  {stage:9s} {manifest.stage_dir(cfg, stage)}/")
    click.echo(f"report: {cfg.run_dir / 'report.html'}")
