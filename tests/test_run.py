"""distill run: stages skip when their outputs exist for the same resolved config and inputs, and
a changed setting reruns its stage and what depends on it, nothing upstream."""
from click.testing import CliRunner

from pipeline.cli import main
from tests.conftest import write_config


def test_run_skips_fresh_stages_and_reruns_changed_ones(tiny_teacher_dir, tmp_path):
    cfg = write_config(tmp_path / "c.yaml", f"""
        run: {{name: t, artifacts_dir: {tmp_path / 'artifacts'}}}
        models: {{teacher: {tiny_teacher_dir}, student_layers: [0, 3], dtype: float32}}
        prepare: {{arithmetic: {{n_train: 8, n_eval: 4}}}}
        """)
    runner = CliRunner()
    first = runner.invoke(main, ["run", str(cfg)])
    assert first.exit_code == 0, first.output
    assert "[models] running" in first.output and "[prepare] running" in first.output
    second = runner.invoke(main, ["run", str(cfg)])
    assert "[models] up to date" in second.output and "[prepare] up to date" in second.output
    third = runner.invoke(main, ["run", str(cfg), "--set", "prepare.arithmetic.n_eval=5"])
    assert "[models] up to date" in third.output and "[prepare] running" in third.output
    assert "split_eval 5" in third.output
