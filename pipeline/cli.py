"""The `distill` command. Each subcommand loads one config and calls one stage's run(cfg).

    distill run configs/quickstart.yaml --set train.learning_rate=1e-5
"""
from __future__ import annotations

import functools
import sys

import click

from pipeline import config as config_mod
from pipeline.errors import PipelineError
from pipeline.run import ORDER


def _one_line_errors(fn):
    """Bad input and failures are a one-line message and exit code 1, never a traceback: the
    pipeline's own errors as they are, a file system error with its path, a DuckDB error's first
    line, anything else with its type and a pointer to --debug (which shows the traceback)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        if click.get_current_context().find_root().params.get("debug"):
            return fn(*args, **kwargs)
        try:
            return fn(*args, **kwargs)
        except PipelineError as e:
            message = str(e)
        except OSError as e:  # read-only directory, full disk, a path that vanished
            where = f"{e.filename}: " if e.filename else ""
            message = f"{where}{e.strerror or e}"
        except Exception as e:  # noqa: BLE001 - the one place every other failure is turned into one line
            first = (str(e).strip().splitlines() or [""])[0][:300]
            if type(e).__module__.startswith("duckdb"):
                message = f"DuckDB: {first}"
            else:
                message = f"unexpected {type(e).__name__}: {first} (rerun with --debug for the traceback)"
        click.secho(f"error: {message}", fg="red", err=True)
        sys.exit(1)

    return wrapper


def _config_args(fn):
    """CONFIG_FILE plus repeatable --set KEY=VALUE overrides."""
    fn = click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="override a config value")(fn)
    return click.argument("config_file", type=click.Path())(fn)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="show the full traceback of a failure instead of one line")
def main(debug):
    """Offline distillation: prepare -> [augment] -> generate -> clean -> train -> eval -> report."""
    set_environment_defaults()


# What `make` used to set, now the CLI's own defaults; a variable already set wins.
ENVIRONMENT = {
    "VLLM_CPU_KVCACHE_SPACE": "2",  # GiB of KV cache on CPU; unset, vLLM reserves most of the machine and fails when less is free
    "HF_HUB_OFFLINE": "1",  # the pipeline runs from local files; HF_HUB_OFFLINE=0 lets models.* hub ids download
    "VLLM_NO_USAGE_STATS": "1",
    "TOKENIZERS_PARALLELISM": "false",  # tokenizers' threads deadlock across vLLM's forked workers
}


def set_environment_defaults() -> None:
    import os

    for key, value in ENVIRONMENT.items():
        os.environ.setdefault(key, value)
    # On a small machine the multiprocess engine keeps one core of two for its scheduler.
    if (os.cpu_count() or 1) <= 4:
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")


@main.command("models")
@_config_args
@_one_line_errors
@click.option("--choose-layers", type=int, default=None, metavar="N",
              help="print which N teacher layers a pruned student should keep (greedy, minutes) and build nothing")
def models_cmd(config_file, overrides, choose_layers):
    """Convert the embedded teacher and build the pruned student (cached)."""
    from pipeline import models

    cfg = config_mod.load(config_file, overrides)
    if choose_layers is None:
        models.run(cfg)
    else:
        models.print_layer_choice(cfg, choose_layers)


@main.command("prepare")
@_config_args
@click.option("--on-error", type=click.Choice(["fail", "skip"]), default=None,
              help="fail on a bad row (default) or skip it into prepare/rejects.parquet")
@_one_line_errors
def prepare_cmd(config_file, overrides, on_error):
    """Ingest, clean and deduplicate prompts into the prompts table."""
    from pipeline import prepare

    if on_error:
        overrides = (*overrides, f"prepare.on_error={on_error}")
    prepare.run(config_mod.load(config_file, overrides))


@main.command("augment")
@_config_args
@_one_line_errors
def augment_cmd(config_file, overrides):
    """The teacher rewrites prompts into checked variants (paraphrase, synonyms, translation, ...); prints the funnel."""
    from pipeline import augment

    augment.run(config_mod.load(config_file, overrides))


@main.command("import")
@_config_args
@_one_line_errors
def import_cmd(config_file, overrides):
    """Write the prompts and generations of a run from existing reasoning traces (no teacher loaded)."""
    from pipeline import traces

    traces.run(config_mod.load(config_file, overrides))


@main.command("run")
@_config_args
@click.option("--force", is_flag=True, help="rerun every stage even if its outputs are up to date")
@click.option("--until", type=click.Choice(ORDER), help="stop after this stage")
@_one_line_errors
def run_cmd(config_file, overrides, force, until):
    """Run every stage in order, skipping those whose outputs are up to date."""
    from pipeline import run

    run.run(config_mod.load(config_file, overrides), force=force, until=until)


def _parse_shard(ctx, param, value):
    if value is None:
        return (0, 1)
    i, sep, n = value.partition("/")
    if not (sep and i.isdigit() and n.isdigit() and 0 <= int(i) < int(n)):
        raise click.BadParameter("expected i/N with 0 <= i < N, e.g. 3/8")
    return int(i), int(n)


@main.command("generate")
@_config_args
@click.option("--shard", callback=_parse_shard, metavar="i/N", help="generate only shard i of N (independent jobs)")
@click.option("--data-parallel", type=click.IntRange(min=1), default=None, metavar="N",
              help="launch N engine processes on this node, one shard each")
@click.option("--dry-run", is_flag=True, help="validate, print engine args, shard plan and estimates; load nothing")
@click.option("--score", is_flag=True, help="attach teacher top-k to existing completions (prompts' completion column, "
                   "or the traces of an imported run)")
@_one_line_errors
def generate_cmd(config_file, overrides, shard, data_parallel, dry_run, score):
    """Teacher traces + top-k logprobs for every generated token, resumable."""
    from pipeline import generate

    cfg = config_mod.load(config_file, overrides)
    if dry_run:
        generate.dry_run(cfg, shard, data_parallel)
    elif data_parallel and data_parallel > 1:
        generate.run_data_parallel(cfg, data_parallel, config_file, overrides, score)
    else:
        generate.run(cfg, shard, score)


@main.command("clean")
@_config_args
@_one_line_errors
def clean_cmd(config_file, overrides):
    """Filter, verify and deduplicate the traces with the SQL rules in sql/; prints the funnel."""
    from pipeline import clean

    clean.run(config_mod.load(config_file, overrides))


@main.command("sql")
@click.argument("run_name", metavar="RUN")
@click.argument("query", required=False)
@click.option("--file", "file", type=click.Path(), help="run the query in this .sql file")
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "json", "parquet"]), default="table")
@click.option("--output", type=click.Path(), help="write the result to this file instead of printing it")
@click.option("--artifacts-dir", default="artifacts", show_default=True, help="where runs live")
@_one_line_errors
def sql_cmd(run_name, query, file, fmt, output, artifacts_dir):
    """DuckDB over a run's tables (prompts, augment, generations, teacher_topk, verdicts, clean, rejects, eval, sweep).

    RUN is a run name under artifacts/ or a run directory. Without QUERY or --file: interactive.
    """
    from pipeline import inspect_sql

    inspect_sql.run(inspect_sql.resolve_run(run_name, artifacts_dir), query, file, fmt, output)


@main.command("train")
@_config_args
@click.option("--resume", is_flag=True, help="continue from the latest checkpoint in the output directory")
@click.option("--accelerate", "accelerate_config", type=click.Path(exists=True, dir_okay=False),
              help="launch through `accelerate launch --config_file FILE` (DDP, DeepSpeed ZeRO-3, FSDP)")
@click.option("--dry-run", is_flag=True, help="check the teacher/student tokenizer pair and how they align; train nothing")
@_one_line_errors
def train_cmd(config_file, overrides, resume, accelerate_config, dry_run):
    """Distill the student from the stored traces and top-k (the teacher is never loaded)."""
    if dry_run:
        from pipeline import train

        return train.dry_run(config_mod.load(config_file, overrides))
    if accelerate_config:
        import subprocess

        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", accelerate_config,
               *_local_port(accelerate_config), "-m", "pipeline.cli", "train", config_file,
               *(f"--set={o}" for o in overrides)]
        sys.exit(subprocess.call(cmd + (["--resume"] if resume else [])))
    from pipeline import train

    train.run(config_mod.load(config_file, overrides), resume=resume)


def _local_port(accelerate_config: str) -> list[str]:
    """A free port for a one-machine launch whose config names none: accelerate's default (29500)
    is taken by any other training on the machine, or still held by the one that just ended."""
    import socket

    launch = config_mod.read_yaml(accelerate_config)
    if not isinstance(launch, dict) or launch.get("main_process_port") or launch.get("num_machines", 1) != 1:
        return []
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return ["--main_process_port", str(s.getsockname()[1])]


@main.command("sweep")
@_config_args
@_one_line_errors
def sweep_cmd(config_file, overrides):
    """Search train settings with Optuna on the cached train data (artifacts/<run>/sweep/), resumable."""
    from pipeline import sweep

    sweep.run(config_mod.load(config_file, overrides))


@main.command("eval")
@_config_args
@_one_line_errors
def eval_cmd(config_file, overrides):
    """Teacher vs baseline vs student on the eval split: accuracy, speed, fidelity."""
    from pipeline import eval as eval_stage

    eval_stage.run(config_mod.load(config_file, overrides))


@main.command("report")
@click.argument("target", metavar="RUN")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="override a config value (with a CONFIG)")
@click.option("--artifacts-dir", default="artifacts", show_default=True, help="where runs live")
@_one_line_errors
def report_cmd(target, overrides, artifacts_dir):
    """Write artifacts/<run>/report.html: one self-contained page about the whole run.

    RUN is a run name under artifacts/, a run directory, or the run's config file.
    """
    from pathlib import Path

    from pipeline import inspect_sql, report

    if Path(target).is_file() and Path(target).suffix in (".yaml", ".yml"):
        report.run(config_mod.load(target, overrides))
    else:
        report.run(report.for_run(inspect_sql.resolve_run(target, artifacts_dir)))


@main.command("plan")
@_config_args
@click.option("--node", default="8xH200", show_default=True, help="node type: 8xH200, 8xH100, 1xH100, cpu")
@click.option("--prompts", type=click.IntRange(min=1), default=None, help="prompt count, when the inputs cannot be counted")
@click.option("--teacher-tok-s", type=click.FloatRange(min=0, min_open=True), default=None,
              help="the teacher's measured output tokens/s on that node")
@click.option("--output", type=click.Path(), default=None, help="also write the plan as JSON to this file")
@_one_line_errors
def plan_cmd(config_file, overrides, node, prompts, teacher_tok_s, output):
    """Estimate generation hours, storage and training hours before anything runs."""
    from pipeline import plan
    from pipeline.files import write_json

    result = plan.run(config_mod.load(config_file, overrides), node, prompts=prompts, teacher_tok_s=teacher_tok_s)
    if output:
        write_json(output, result)


@main.command("bench")
@click.argument("name", type=click.Choice(["generate", "clean", "train", "quality"]))
@click.argument("config_file", type=click.Path(), default="configs/quickstart.yaml")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="override a config value")
@click.option("--prompts", "n_prompts", type=click.IntRange(min=1), default=64, help="generate: prompts per pass")
@click.option("--max-new-tokens", type=click.IntRange(min=1), default=128, help="generate: tokens per sample")
@click.option("--rows", type=click.IntRange(min=1000), default=1_000_000, help="clean: synthetic generation rows")
@click.option("--sample", type=click.IntRange(min=100), default=100_000, help="clean: rows of the pandas comparison")
@click.option("--seq-len", type=click.IntRange(min=256), default=4096, help="train: tokens per sequence")
@click.option("--steps", type=click.IntRange(min=2), default=4, help="train: optimizer steps per run (first untimed)")
@click.option("--seeds", type=click.IntRange(min=1), default=2, help="quality: training seeds per student")
@_one_line_errors
def bench_cmd(name, config_file, overrides, n_prompts, max_new_tokens, rows, sample, seq_len, steps, seeds):
    """Measured speed and size, side by side in one run, into artifacts/bench/NAME.json."""
    from pipeline import bench

    options = {"generate": dict(n_prompts=n_prompts, max_new_tokens=max_new_tokens),
               "clean": dict(rows=rows, sample=min(sample, rows)),
               "train": dict(seq_len=seq_len, steps=steps), "quality": dict(seeds=seeds)}[name]
    bench.run(config_mod.load(config_file, overrides), name, **options)


if __name__ == "__main__":  # `python -m pipeline.cli`: data-parallel workers and vLLM's spawned processes
    main()
