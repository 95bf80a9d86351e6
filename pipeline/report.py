"""Stage `report`: artifacts/<run>/report.html, one self-contained page (plots inline as PNG, no
scripts, no CDN) about the whole run: config and provenance, cleaning funnel, trace lengths,
sample traces, training curves, the teacher / baseline / student comparison, generation
throughput and storage. A stage that has not run is shown as a marked, missing section.

    distill report quickstart                    # a run name under artifacts/, or a run directory
    distill report configs/quickstart.yaml       # or the run's config file
"""
from __future__ import annotations

import base64
import html
import io
import json
import time
from pathlib import Path

import click
import pyarrow.parquet as pq

from pipeline import manifest
from pipeline.config import Config, RunConfig
from pipeline.files import atomic_path

STYLE = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}
th{background:#f3f3f3}td.l,th.l{text-align:left}.missing{background:#fff3cd;padding:.6em;border:1px solid #e0c36c}
pre{white-space:pre-wrap;background:#f7f7f7;padding:.5em;max-height:14em;overflow:auto;font-size:12px}
details{margin:.3em 0}img{max-width:100%}.headline{font-size:1.15em;background:#eef6ee;padding:.6em;border:1px solid #9c9}"""


def for_run(run_dir: Path) -> Config:
    """What a report of an existing run directory needs: its name and place, and the config file
    its stages recorded (for the commands the page suggests)."""
    recorded = [json.loads(p.read_text()).get("config_file") for p in sorted(run_dir.glob("*/manifest.json"))]
    cfg = Config(run=RunConfig(name=run_dir.name, artifacts_dir=str(run_dir.parent)))
    cfg.file = next((f for f in recorded if f), "CONFIG")
    return cfg


COLORS = {"teacher": "#4c78a8", "teacher_context": "#9ecae9", "baseline": "#f58518", "student": "#54a24b",
          "sft": "#e45756",
          "kd_same_vocab": "#54a24b", "kd_cross_vocab": "#72b7b2", "full_logit_reference": "#4c78a8"}


def run(cfg: Config) -> dict:
    started = time.time()
    m = {s: manifest.read(cfg, s) for s in ("models", "prepare", "generate", "clean", "train", "eval")}
    sections = [_headline(m), _provenance(cfg, m), _generation(cfg, m), _cleaning(cfg, m), _traces(cfg, m),
                _training(cfg, m), _comparison(cfg, m), _sweep(cfg), _function_calling(m), _quality(cfg)]
    body = "\n".join(sections)
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>distill report: {html.escape(cfg.run.name)}"
            f"</title><style>{STYLE}</style></head><body><h1>Distillation run <code>{html.escape(cfg.run.name)}</code>"
            f"</h1>{body}</body></html>")
    out = cfg.run_dir / "report.html"
    with atomic_path(out) as tmp:
        tmp.write_text(page, encoding="utf-8")
    click.echo(f"report: {out}")
    missing = [s for s, v in m.items() if v is None]
    return manifest.write(cfg, "report", started, {"missing_stages": len(missing)}, report=str(out), missing=missing)


def _missing(stage: str, cfg: Config) -> str:
    return (f"<p class='missing'>The <b>{stage}</b> stage has not run for this run yet: "
            f"<code>distill {stage} {html.escape(cfg.file)}</code></p>")


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return f"<img alt='plot' src='data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}'>"


def _figure(w=7, h=3):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=(w, h))


def _table(rows: list[dict], columns: list[str]) -> str:
    head = "".join(f"<th class='l'>{html.escape(c)}</th>" if i == 0 else f"<th>{html.escape(c)}</th>"
                   for i, c in enumerate(columns))
    body = "".join("<tr>" + "".join(f"<td class='{'l' if i == 0 else ''}'>{html.escape(str(r.get(c, '')))}</td>"
                                    for i, c in enumerate(columns)) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _provenance(cfg: Config, m: dict) -> str:
    rows = [{"stage": s, "finished": v["finished_at"], "seconds": v["wall_seconds"], "key": v["key"],
             "git": (v.get("git_commit") or "")[:10], "counts": json.dumps(v["counts"])}
            for s, v in m.items() if v]
    models = m["models"]["models"] if m["models"] else {}
    model_rows = [{"model": k, "path": v["path"], "layers": v["num_layers"], "parameters": f"{v['parameters']:,}",
                   "vocab_sha": v["vocab_sha"]} for k, v in models.items()]
    config = json.dumps({stage: v["config"] for stage, v in m.items() if v}, indent=1)  # as each stage ran
    return ("<h2>Run and provenance</h2>" + _table(rows, ["stage", "finished", "seconds", "key", "git", "counts"])
            + _table(model_rows, ["model", "path", "layers", "parameters", "vocab_sha"])
            + f"<details><summary>resolved config per stage ({html.escape(cfg.file)})</summary><pre>{html.escape(config)}</pre>"
              "</details>")


def _generation(cfg: Config, m: dict) -> str:
    if not m["generate"]:
        return "<h2>Generation</h2>" + _missing("generate", cfg)
    g = m["generate"]
    c, s = g["counts"], g["settings"]
    size = sum(p.stat().st_size for p in (cfg.run_dir / "generate").rglob("*.parquet"))
    if g.get("imported"):
        scored = {"teacher top-k stored": s["top_k"], "tokenizer": g["tokenizer"]} if g.get("scored_with") else {}
        items = {**c, **g["conventions"], **{f"stripped: {k}": v for k, v in g["stripped"].items()},
                 "imported from": ", ".join(s["inputs"]), **scored, "Parquet on disk (MB)": round(size / 1e6, 2)}
        title = "top-k attached by the local teacher (--score)" if scored else "no teacher top-k"
        return (f"<h2>Generation (imported traces: {title})</h2>"
                + _table([{"item": k, "value": v} for k, v in items.items()], ["item", "value"]))
    rows = [{"item": k, "value": v} for k, v in {**c, "teacher top-k stored": s["top_k"],
                                                 "generation tokens/s (whole stage)":
                                                     round(c.get("completion_tokens", 0) / max(g["wall_seconds"], 1e-9), 1),
                                                 "sampling": f"T={s['temperature']}, top-p={s['top_p']}" + (
                                                     f"; {s['retries']} retries at T={s['retry_temperature']} for a "
                                                     "train prompt whose tries all fail" if s.get("retries") else ""),
                                                 "Parquet on disk (MB)": round(size / 1e6, 2)}.items()]
    return "<h2>Generation (teacher)</h2>" + _table(rows, ["item", "value"])


def _cleaning(cfg: Config, m: dict) -> str:
    if not m["clean"]:
        return "<h2>Cleaning</h2>" + _missing("clean", cfg)
    funnel = m["clean"]["funnel"]
    fig, ax = _figure(7, 0.35 * len(funnel) + 1)
    ax.barh([f["rule"] for f in funnel][::-1], [f["rows_out"] for f in funnel][::-1], color="#4c78a8", label="kept")
    ax.barh([f["rule"] for f in funnel][::-1], [f["dropped"] for f in funnel][::-1],
            left=[f["rows_out"] for f in funnel][::-1], color="#e45756", label="dropped")
    ax.set_xlabel("samples")
    ax.legend(loc="lower right")
    return ("<h2>Cleaning funnel</h2>" + _table(funnel, ["rule", "rows_in", "dropped", "rows_out", "seconds"])
            + _png(fig))


def _traces(cfg: Config, m: dict) -> str:
    gens = sorted((cfg.run_dir / "generate/generations").glob("part-*.parquet"))
    if not gens:
        return "<h2>Traces</h2>" + _missing("generate", cfg)
    # lengths of every sample, but the text of only the first shard's first samples
    lengths = pq.read_table([str(p) for p in gens], columns=["reasoning_tokens", "answer_tokens"])
    table = pq.read_table(gens[0], columns=["sample_id", "prompt_text", "reasoning", "answer", "completion_tokens"])
    fig, ax = _figure()
    ax.hist([lengths["reasoning_tokens"].to_pylist(), lengths["answer_tokens"].to_pylist()], bins=30,
            label=["reasoning tokens", "answer tokens"])
    ax.set_xlabel("tokens per sample")
    ax.legend()
    rejects = {}
    if (cfg.run_dir / "clean/rejects.parquet").is_file():
        d = pq.read_table(cfg.run_dir / "clean/rejects.parquet", columns=["sample_id", "rule"]).to_pydict()
        rejects = dict(zip(d["sample_id"], d["rule"]))
    samples = []
    for r in table.slice(0, 12).to_pylist():
        verdict = f"dropped by {rejects[r['sample_id']]}" if r["sample_id"] in rejects else "kept"
        samples.append(f"<details><summary>{html.escape(r['sample_id'])}: {verdict}, {r['completion_tokens']} tokens"
                       f"</summary><pre>{html.escape(r['prompt_text'])}</pre><b>reasoning</b><pre>"
                       f"{html.escape(r['reasoning'])}</pre><b>answer</b><pre>{html.escape(r['answer'])}</pre></details>")
    return "<h2>Trace lengths</h2>" + _png(fig) + "<h2>Sample traces</h2>" + "".join(samples)


def _training(cfg: Config, m: dict) -> str:
    t = m["train"]
    if not t:
        return "<h2>Training</h2>" + _missing("train", cfg)
    logs = [h for h in t["log_history"] if "loss" in h]
    fig, ax = _figure()
    steps = [h["step"] for h in logs]
    for key in ("loss", "ce", "kd"):
        ax.plot(steps, [h.get(key) for h in logs], label=key)
    ax.set_xlabel("step")
    ax.legend(loc="upper right")
    ax2 = ax.twinx()
    ax2.plot(steps, [h.get("learning_rate") for h in logs], color="gray", linestyle=":", label="learning rate")
    ax2.set_ylabel("learning rate")
    rows = [{"item": k, "value": v} for k, v in {**t["counts"], **t["config"]["train"]}.items() if k != "extra"]
    return "<h2>Training</h2>" + _png(fig) + _table(rows, ["item", "value"])


def _comparison(cfg: Config, m: dict) -> str:
    e = m["eval"]
    if not e:
        return "<h2>Teacher, baseline, student</h2>" + _missing("eval", cfg)
    summary = e["summary"]
    keys = ["accuracy", "majority_accuracy", "kl_per_byte", "fidelity_kl", "top1_agreement", "mean_output_tokens",
            "truncation_rate", "output_tok_s", "latency_p50_s", "latency_p95_s"]
    rows = [{"model": name, **{k: s.get(k, "n/a") for k in keys}} for name, s in summary.items()]
    fig, axes = _figure(10, 3)
    axes.remove()
    panels = [("accuracy", "accuracy"), ("kl_per_byte", "KL to teacher per byte (lower is better)"),
              ("top1_agreement", "top-1 agreement"), ("output_tok_s", "output tokens/s")]
    for i, (key, title) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), i + 1)
        names = [n for n in summary if key in summary[n]]
        ax.bar(names, [summary[n][key] for n in names], color=[COLORS.get(n, "#b279a2") for n in names])
        ax.set_title(title, fontsize=9)
        ax.tick_params(axis="x", labelsize=8)
    fig.tight_layout()
    return "<h2>Teacher, baseline, student (held-out prompts)</h2>" + _table(rows, ["model"] + keys) + _png(fig)


def _sweep(cfg: Config) -> str:
    """`distill sweep`'s trials, best first, and the metric against each numeric setting it tried."""
    path = cfg.run_dir / "sweep" / "sweep.parquet"
    if not path.is_file():
        return ""
    summary = json.loads((cfg.run_dir / "sweep" / "summary.json").read_text())
    objective, sign = summary["objective"], 1 if summary["direction"] == "minimize" else -1
    trials = pq.read_table(path).to_pylist()
    for t in trials:
        t["params"] = json.loads(t["params"])
    trials.sort(key=lambda t: (t["state"] != "COMPLETE", t["metric"] is None, sign * (t["metric"] or 0), t["trial"]))
    names = list(summary["space"])
    rows = [{"trial": t["trial"], "state": t["state"], objective: "-" if t["metric"] is None else f"{t['metric']:.5g}",
             "seconds": t["seconds"] or "-",
             **{n: f"{v:.4g}" if isinstance(v := t["params"].get(n, "-"), float) else v for n in names}}
            for t in trials]
    best = summary["best"]
    text = (f"<p>{summary['complete']} of {summary['trials']} trials complete; {html.escape(objective)} "
            f"({summary['direction']}) on the eval split's traces, {summary['baseline']:.5g} for the untrained student."
            + (f" <b>Best: trial {best['trial']}</b>, {html.escape(json.dumps(best['params']))}: {best['metric']:.5g}; "
               f"its model: <code>{html.escape(best['model'])}</code>" if best else "") + "</p>")
    complete = [t for t in trials if t["state"] == "COMPLETE" and abs(t["metric"]) != float("inf")]
    numeric = [n for n in names if complete and all(isinstance(t["params"].get(n), (int, float))
                                                    and not isinstance(t["params"].get(n), bool) for t in complete)]
    plot = ""
    if numeric:
        fig, ax = _figure(3.2 * len(numeric) + 0.5, 3)
        ax.remove()
        for i, name in enumerate(numeric):
            ax = fig.add_subplot(1, len(numeric), i + 1)
            ax.scatter([t["params"][name] for t in complete], [t["metric"] for t in complete], color="#4c78a8")
            if best:
                ax.scatter([best["params"][name]], [best["metric"]], color="#e45756", marker="*", s=160, label="best")
                ax.legend(fontsize=8)
            spec = summary["space"][name]
            if "low" in spec:  # the whole range searched, so the plot shows where in it the trials went
                ax.set_xlim(spec["low"], spec["high"])
            if spec.get("log"):
                from matplotlib.ticker import NullFormatter

                ax.set_xscale("log")
                ax.xaxis.set_minor_formatter(NullFormatter())  # minor labels collide within a decade
            ax.set_xlabel(name)
            ax.set_ylabel(objective if i == 0 else "")
        fig.tight_layout()
        plot = _png(fig)
    return ("<h2>Sweep (<code>distill sweep</code>)</h2>" + text
            + _table(rows, ["trial", "state", objective, "seconds", *names]) + plot)


def _headline(m: dict) -> str:
    """One sentence on how close the student came to the teacher, from eval's summary."""
    summary = (m["eval"] or {}).get("summary", {})
    student, teacher = summary.get("student"), summary.get("teacher_context") or summary.get("teacher")
    key = "exact_call_accuracy" if student and "exact_call_accuracy" in student else "accuracy"
    if not student or not teacher or not teacher.get(key):
        return ""
    share = student[key] / teacher[key]
    speed = teacher["latency_p50_s"] / max(student["latency_p50_s"], 1e-9)
    size = teacher.get("size_mb", 0) / max(student.get("size_mb", 0), 1e-9)
    which = "with its worked examples" if "teacher_context" in summary else ""
    measure = "exact-call accuracy" if key == "exact_call_accuracy" else "accuracy"
    sources = student.get("per_source", {})
    halves = "" if len(sources) < 2 else "; " + ", ".join(  # the vehicle task's eval halves, side by side
        f"{name.split('/')[-1]} {v:.2f} vs {teacher.get('per_source', {}).get(name, float('nan')):.2f}"
        for name, v in sources.items())
    return (f"<p class='headline'><b>The student recovers {share:.0%} of the teacher's {measure}</b> "
            f"({student[key]:.2f} vs {teacher[key]:.2f} for the teacher {which} on held-out requests{halves}; "
            f"baseline {summary.get('baseline', {}).get(key, float('nan')):.2f}) at {speed:.1f} times its speed "
            f"(median latency) and {size:.1f} times smaller.</p>")


def _function_calling(m: dict) -> str:
    """Per-class precision/recall/F1 (no_call a class) and the student's confusion matrix."""
    summary = (m["eval"] or {}).get("summary", {})
    models = [n for n, s in summary.items() if "per_class" in s]
    if not models:
        return ""
    rows = []
    for name in models:
        s = summary[name]
        for cls, v in s["per_class"].items():
            rows.append({"model": name, "class": cls, **v})
    overall = [{"model": n, **{k: summary[n].get(k) for k in ("exact_call_accuracy", "name_accuracy", "arg_f1",
                                                              "latency_p50_s", "latency_p95_s", "size_mb")},
                **{k: json.dumps(summary[n].get(k, {}), ensure_ascii=False) for k in ("per_language", "per_source")}}
               for n in models]
    focus = "student" if "student" in models else models[-1]
    confusion = summary[focus]["confusion"]
    classes = list(confusion)
    fig, ax = _figure(0.45 * len(classes) + 2, 0.45 * len(classes) + 1.5)
    grid = [[confusion[e][p] for p in classes] for e in classes]
    ax.imshow(grid, cmap="Blues")
    ax.set_xticks(range(len(classes)), classes, rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(len(classes)), classes, fontsize=7)
    for i, row in enumerate(grid):
        for j, v in enumerate(row):
            if v:
                ax.text(j, i, v, ha="center", va="center", fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("expected")
    ax.set_title(f"{focus}: confusion matrix", fontsize=9)
    return ("<h2>Function calling (held-out requests)</h2>"
            + _table(overall, ["model", "exact_call_accuracy", "name_accuracy", "arg_f1", "latency_p50_s",
                               "latency_p95_s", "size_mb", "per_language", "per_source"])
            + "<h3>Per class</h3>" + _table(rows, ["model", "class", "precision", "recall", "f1", "support"])
            + _png(fig))


def _quality(cfg: Config) -> str:
    """`distill bench quality`'s table and chart, when it has run (artifacts/bench/quality.json)."""
    path = Path(cfg.run.artifacts_dir) / "bench" / "quality.json"
    if not path.is_file():
        return ""
    q = json.loads(path.read_text())
    names = list(q["models"])
    rows = []
    for name in names:
        row = {"model": name}
        for key in ("kl_per_byte", "top1_agreement", "accuracy", "train_seconds"):
            v = q["models"][name].get(key)
            row[key] = f"{v['mean']:.4g} ({v['min']:.4g}-{v['max']:.4g})" if v else "n/a"
        rows.append(row)
    fig, ax = _figure(8, 3)
    means = [q["models"][n]["kl_per_byte"]["mean"] for n in names]
    spread = [[m - q["models"][n]["kl_per_byte"]["min"] for n, m in zip(names, means)],
              [q["models"][n]["kl_per_byte"]["max"] - m for n, m in zip(names, means)]]
    ax.bar(names, means, yerr=spread, capsize=4, color=[COLORS.get(n, "#b279a2") for n in names])
    ax.set_ylabel("KL to teacher per byte")
    ax.tick_params(axis="x", labelsize=8)
    ratios = ", ".join(f"{k} {q[k]}" for k in ("kd_over_sft_kl", "cross_over_sft_kl", "kd_vs_full_logit_gain"))
    return (f"<h2>What KD buys over SFT (<code>distill bench quality</code>, {q['seeds']} seeds)</h2>"
            f"<p>{html.escape(ratios)}; mean (min-max) over seeds.</p>"
            + _table(rows, ["model", "kl_per_byte", "top1_agreement", "accuracy", "train_seconds"]) + _png(fig))
