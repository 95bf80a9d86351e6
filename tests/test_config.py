from pathlib import Path

import pytest

from pipeline import config
from pipeline.config import ConfigError
from tests.conftest import write_config

ROOT = Path(__file__).parent.parent


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_loads(path):
    cfg = config.load(path)
    assert cfg.file == str(path)


def test_defaults_and_override(tmp_path):
    p = write_config(tmp_path / "c.yaml", "run: {name: x}\n")
    cfg = config.load(p, ["run.seed=7", "models.student_layers=[0, 2]", "prepare.arithmetic.n_eval=3"])
    assert cfg.run.seed == 7 and cfg.models.student_layers == [0, 2] and cfg.prepare.arithmetic.n_eval == 3


@pytest.mark.parametrize("body, override, message", [
    ("run: {nmae: x}\n", [], "run.nmae: unknown key"),
    ("bogus: {}\n", [], "bogus: unknown key"),
    ("run: {seed: seven}\n", [], "run.seed: expected int"),
    ("run: {seed: true}\n", [], "run.seed: expected int"),
    ("models: {student_layers: 3}\n", [], "models.student_layers: expected a list"),
    ("models: {dtype: int8}\n", [], "models.dtype: one of"),
    ("prepare: {arithmetic: {levels: [9]}}\n", [], "prepare.arithmetic.levels: each in 1..5"),
    ("prepare: {inputs: [{path: a.jsonl, split: test}]}\n", [], "prepare.inputs[0].split: train or eval"),
    ("run: {name: x}\n", ["run.sede=1"], "run.sede: unknown key"),
    ("run: [1, 2]\n", [], "run: expected a mapping"),
    ("run: {name: x\n", [], "invalid YAML"),
])
def test_bad_config_names_file_and_key(tmp_path, body, override, message):
    p = write_config(tmp_path / "bad.yaml", body)
    with pytest.raises(ConfigError) as e:
        config.load(p, override)
    assert str(p) in str(e.value) and message in str(e.value)
    assert "\n" not in str(e.value)


def test_missing_file_and_bad_override(tmp_path):
    with pytest.raises(ConfigError, match="no such config file"):
        config.load(tmp_path / "nope.yaml")
    p = write_config(tmp_path / "c.yaml", "{}\n")
    with pytest.raises(ConfigError, match="expected key=value"):
        config.load(p, ["run.seed"])
