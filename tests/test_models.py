"""models: the embedded GGUF teacher converts to a directory transformers loads; pruning keeps the
chosen layers, renumbers them, shares the tokenizer byte for byte; both are cached."""
import json

import torch
from transformers import AutoModelForCausalLM

from pipeline import config, manifest, models
from tests.conftest import make_tiny_llama, write_config


def test_prune_keeps_layers_and_tokenizer(tiny_tokenizer_dir, tmp_path):
    teacher = make_tiny_llama(tiny_tokenizer_dir, tmp_path / "teacher", layers=4)
    out = models.prune(teacher, [3, 0], tmp_path / "models", "float32")
    full = AutoModelForCausalLM.from_pretrained(teacher)
    small = AutoModelForCausalLM.from_pretrained(out)
    assert small.config.num_hidden_layers == 2
    for new, old in ((0, 0), (1, 3)):  # sorted, renumbered
        assert torch.equal(small.model.layers[new].mlp.up_proj.weight, full.model.layers[old].mlp.up_proj.weight)
        assert small.model.layers[new].self_attn.layer_idx == new
    assert torch.equal(small.lm_head.weight, full.lm_head.weight)
    ids = torch.tensor([[1, 5, 9]])
    small.generate(ids, max_new_tokens=3, do_sample=False)  # the KV cache works with renumbered layers
    assert manifest.tokenizer_identity(out) == manifest.tokenizer_identity(teacher)
    stamp = (out / "model.safetensors").stat().st_mtime_ns
    assert models.prune(teacher, [0, 3], tmp_path / "models", "float32") == out
    assert (out / "model.safetensors").stat().st_mtime_ns == stamp  # cached, not rewritten


def test_greedy_removal_drops_the_layer_that_costs_least_each_time():
    # an interaction the greedy must see: layers 1 and 2 are cheap alone but costly together
    cost = {0: 5.0, 1: 1.0, 2: 1.5, 3: 2.0, 4: 9.0}

    def loss(kept):
        gone = set(range(5)) - set(kept)
        return sum(cost[i] for i in gone) + (10.0 if {1, 2} <= gone else 0.0)

    steps = models.greedy_removal(5, 2, loss)
    # 2 is the next cheapest alone, but not once 1 is gone (12.5); then 0 costs less than 2 or 4
    assert [layer for layer, _, _ in steps] == [1, 3, 0]
    assert [loss for _, loss, _ in steps] == [1.0, 3.0, 8.0] and steps[-1][2] == [2, 4]


def test_layer_choice_runs_on_a_tiny_teacher(tiny_teacher_dir):
    steps = models.choose_layers(tiny_teacher_dir, 1, ["turn on the lights", "把空调调到二十二度"])
    kept = steps[-1][2]
    assert len(kept) == 1 and len(steps) == AutoModelForCausalLM.from_pretrained(tiny_teacher_dir).config.num_hidden_layers - 1


def test_layer_choice_needs_prompts_and_a_count_the_teacher_has(tiny_teacher_dir, tmp_path):
    import pytest

    from pipeline.errors import PipelineError
    from pipeline.files import write_table
    from pipeline.schema import PROMPTS
    cfg = config.load(write_config(tmp_path / "c.yaml", f"""
        run: {{name: t, artifacts_dir: {tmp_path}}}
        models: {{teacher: {tiny_teacher_dir}}}
        """))
    with pytest.raises(PipelineError, match="between 1 and 3"):
        models.print_layer_choice(cfg, 4)
    with pytest.raises(PipelineError, match="run `distill prepare` first"):
        models.print_layer_choice(cfg, 2)
    path = manifest.prompts_path(cfg)
    path.parent.mkdir(parents=True)
    write_table(PROMPTS, PROMPTS.from_pylist([]), path)
    with pytest.raises(PipelineError, match="no train prompts"):
        models.print_layer_choice(cfg, 2)


def test_prune_rejects_missing_layer(tiny_teacher_dir, tmp_path):
    import pytest

    from pipeline.errors import PipelineError
    with pytest.raises(PipelineError, match="layer 9 does not exist"):
        models.prune(tiny_teacher_dir, [0, 9], tmp_path, "float32")


def test_embedded_teacher_converts_and_stage_records_identity(tmp_path):
    cfg = config.load(write_config(tmp_path / "c.yaml", f"""
        run: {{name: t, artifacts_dir: {tmp_path}}}
        models: {{student_layers: [0, 29]}}
        """))
    m = models.run(cfg)
    teacher, student = m["models"]["teacher"], m["models"]["student"]
    assert teacher["num_layers"] == 30 and teacher["vocab_size"] == 49152 and student["num_layers"] == 2
    assert teacher["vocab_sha"] == student["vocab_sha"]
    recorded = json.loads((tmp_path / "models/smollm2-135m-instruct/checksum.json").read_text())
    assert recorded["files"]["model.safetensors"] == teacher["weights_sha"]
    model = AutoModelForCausalLM.from_pretrained(teacher["path"])
    assert model.dtype == torch.bfloat16 and model.config.num_hidden_layers == 30
    assert manifest.is_fresh(cfg, "models")
