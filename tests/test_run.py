"""distill run: stages skip when their outputs exist for the same resolved config and inputs, and
a changed setting reruns its stage and what depends on it, nothing upstream."""
from tests.browser import inspect_page
from tests.conftest import ROOT, distill_cli, write_config


def test_run_skips_fresh_stages_and_reruns_changed_ones(tiny_teacher_dir, tmp_path):
    cfg = write_config(tmp_path / "c.yaml", f"""
        run: {{name: t, artifacts_dir: {tmp_path / 'artifacts'}}}
        models: {{teacher: {tiny_teacher_dir}, student_layers: [0, 3], dtype: float32}}
        prepare: {{arithmetic: {{n_train: 8, n_eval: 4}}}}
        generate: {{max_new_tokens: 8, top_k: 3, engine: {{max_model_len: 256, dtype: float32, enforce_eager: true}}}}
        clean: {{rules: [length, exact_duplicate], keep_incorrect: true}}
        train: {{top_k: 3, max_steps: 2, per_device_train_batch_size: 4, save_steps: 1000}}
        eval: {{max_new_tokens: 8, latency_prompts: 1}}
        """)
    first = distill_cli("run", cfg).stdout
    stages = ("models", "prepare", "generate", "clean", "train", "eval", "report")
    assert all(f"[{s}] running" in first for s in stages)
    report = tmp_path / "artifacts/t/report.html"
    assert report.is_file() and (tmp_path / "artifacts/t/train/model").is_dir()
    # the page works offline in a real browser: no console errors, every plot decoded
    shot = ROOT / "artifacts/screenshots/report-test.png"
    shot.parent.mkdir(parents=True, exist_ok=True)
    page = inspect_page(report.as_uri(), shot)
    assert page["errors"] == [] and len(page["images"]) >= 4
    assert all(complete and width > 0 for complete, width, _ in page["images"])
    assert shot.stat().st_size > 10_000
    second = distill_cli("run", cfg).stdout
    assert all(f"[{s}] up to date" in second for s in stages)
    # a training setting reruns train and what follows, nothing upstream
    sweep = distill_cli("run", cfg, "--set", "train.kd_weight=0.2", "--until", "train").stdout
    assert all(f"[{s}] up to date" in sweep for s in ("models", "prepare", "generate", "clean"))
    assert "[train] running" in sweep and "[eval]" not in sweep
    third = distill_cli("run", cfg, "--set", "prepare.arithmetic.n_eval=5", "--until", "generate").stdout
    assert "[models] up to date" in third and "[prepare] running" in third and "[generate] running" in third
    assert "split_eval 5" in third and "12 samples on disk, 1 pending" in third
    fourth = distill_cli("run", cfg, "--set", "prepare.arithmetic.n_eval=5", "--set", "generate.shard_size=7",
                      "--until", "generate").stdout
    assert "[prepare] up to date" in fourth and "[generate] running" in fourth and "0 pending" in fourth


def test_report_of_a_run_with_missing_stages_marks_them(tmp_path):
    cfg = write_config(tmp_path / "c.yaml", f"""
        run: {{name: empty, artifacts_dir: {tmp_path / 'artifacts'}}}
        prepare: {{arithmetic: {{n_train: 2, n_eval: 1}}}}
        """)
    distill_cli("prepare", cfg)
    distill_cli("report", tmp_path / "artifacts/empty")  # a run directory; a config file works too
    page = (tmp_path / "artifacts/empty/report.html").read_text()
    assert str(cfg) in page  # the config file the stages recorded, for the commands it suggests
    for stage in ("generate", "clean", "train", "eval"):
        assert f"The <b>{stage}</b> stage has not run" in page
    assert inspect_page((tmp_path / "artifacts/empty/report.html").as_uri(), tmp_path / "r.png")["errors"] == []
