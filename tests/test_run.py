"""distill run: stages skip when their outputs exist for the same resolved config and inputs, and
a changed setting reruns its stage and what depends on it, nothing upstream."""
from tests.conftest import write_config
from tests.test_generate import _distill


def test_run_skips_fresh_stages_and_reruns_changed_ones(tiny_teacher_dir, tmp_path):
    cfg = write_config(tmp_path / "c.yaml", f"""
        run: {{name: t, artifacts_dir: {tmp_path / 'artifacts'}}}
        models: {{teacher: {tiny_teacher_dir}, student_layers: [0, 3], dtype: float32}}
        prepare: {{arithmetic: {{n_train: 8, n_eval: 4}}}}
        generate: {{max_new_tokens: 8, top_k: 3, engine: {{max_model_len: 256, dtype: float32, enforce_eager: true}}}}
        """)
    first = _distill("run", cfg).stdout
    assert "[models] running" in first and "[prepare] running" in first and "[generate] running" in first
    second = _distill("run", cfg).stdout
    assert all(f"[{s}] up to date" in second for s in ("models", "prepare", "generate"))
    third = _distill("run", cfg, "--set", "prepare.arithmetic.n_eval=5").stdout
    assert "[models] up to date" in third and "[prepare] running" in third and "[generate] running" in third
    assert "split_eval 5" in third and "12 samples on disk, 1 pending" in third
    fourth = _distill("run", cfg, "--set", "prepare.arithmetic.n_eval=5", "--set", "generate.shard_size=7").stdout
    assert "[prepare] up to date" in fourth and "[generate] running" in fourth and "0 pending" in fourth
