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
    ("generate: {retries: -1}\n", [], "generate.retries: >= 0"),
    ("generate: {retry_temperature: 0}\n", [], "generate.retry_temperature: a finite number > 0"),
    ("train: {neftune_noise_alpha: 0}\n", [], "train.neftune_noise_alpha: null (off) or a finite number > 0"),
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


def test_data_paths_resolve_against_the_config_folder(tmp_path, monkeypatch):
    """Relative data paths are the config's, whatever the working directory; absolute paths, hub
    ids and run.artifacts_dir stay as written, and the default sql_dir is the project's sql/."""
    (tmp_path / "conf/data").mkdir(parents=True)
    (tmp_path / "elsewhere").mkdir()
    p = write_config(tmp_path / "conf/run.yaml", f"""
        prepare:
          inputs:
            - {{path: data/p.jsonl}}
            - {{path: ../shared/q.parquet}}
            - {{path: {tmp_path / 'abs.csv'}}}
            - {{path: openai/gsm8k, hf_split: test}}
            - {{path: AI-MO/NuminaMath-1.5, format: hf}}
        traces: {{inputs: [{{path: r1.json, completion: c}}]}}
        clean: {{decontam_files: [bench.jsonl, {{path: data/aime.parquet, prompt: problem}}]}}
        """)
    monkeypatch.chdir(tmp_path / "elsewhere")
    cfg = config.load("../conf/run.yaml")
    conf = tmp_path / "conf"
    assert [s.path for s in cfg.prepare.inputs] == [str(conf / "data/p.jsonl"), str(tmp_path / "shared/q.parquet"),
                                                   str(tmp_path / "abs.csv"), "openai/gsm8k", "AI-MO/NuminaMath-1.5"]
    assert cfg.traces.inputs[0].path == str(conf / "r1.json")
    assert [(f.path, f.prompt) for f in cfg.clean.decontam_files] == [(str(conf / "bench.jsonl"), "prompt"),
                                                                     (str(conf / "data/aime.parquet"), "problem")]
    assert cfg.clean.sql_dir == str(ROOT / "sql") and cfg.run.artifacts_dir == "artifacts"
    assert config.load(p, ["clean.sql_dir=rules"]).clean.sql_dir == str(conf / "rules")
    # an owner/name that exists beside the config is a local directory, not a hub id
    (conf / "openai/gsm8k").mkdir(parents=True)
    assert config.load(p).prepare.inputs[3].path == str(conf / "openai/gsm8k")


def test_set_reaches_list_entries(tmp_path):
    p = write_config(tmp_path / "c.yaml", """
        prepare: {inputs: [{path: a.jsonl, prompt: q}, {path: b.jsonl}]}
        models: {student_layers: [0, 1]}
        """)
    cfg = config.load(p, ["prepare.inputs.0.reference=answer", "prepare.inputs.1.path=other.jsonl",
                          "models.student_layers.1=5"])
    assert cfg.prepare.inputs[0].reference == "answer" and cfg.prepare.inputs[0].prompt == "q"
    assert cfg.prepare.inputs[1].path == str(tmp_path / "other.jsonl") and cfg.models.student_layers == [0, 5]
    for override, message in [("prepare.inputs.2.reference=x", "prepare.inputs has entries 0..1, no entry '2'"),
                              ("prepare.inputs.first.reference=x", "no entry 'first'"),
                              ("traces.inputs.0.path=x.jsonl", "traces.inputs has no entries, no entry '0'"),
                              ("prepare.inputs.0.path.x=1", "prepare.inputs.0.path is not a section")]:
        with pytest.raises(ConfigError) as e:
            config.load(p, [override])
        assert str(e.value).startswith(f"{p}: --set {override.split('=')[0]}: ") and message in str(e.value)
        assert "\n" not in str(e.value)
