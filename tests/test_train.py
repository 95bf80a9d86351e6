"""distill train on a tiny teacher's real traces: DDP over gloo (2 CPU processes through the
accelerate launcher) matches one process with the same global batch, resume continues at the
saved step, and bad input (other vocabulary, missing sidecar, mismatched top-k) fails in one line
before training, as does a full disk while training (on a real 2 MiB tmpfs)."""
import json
import re
import shutil

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from pipeline import train
from tests.conftest import ROOT, copy_traced, distill_cli


def _copy(traced, tmp_path):
    return copy_traced(traced, tmp_path)


def _losses(out_dir):
    m = json.loads((out_dir / "manifest.json").read_text())
    return m, [h["loss"] for h in m["log_history"] if "loss" in h]


def _one_and_two_processes(traced, tmp_path, launcher: str):
    """The same global batch (4 = 1 x 4 = 2 x 2) trained by one process and by two through
    `accelerate launch`: (their output directories, and their manifests and losses)."""
    cfg, _ = _copy(traced, tmp_path)
    one, two = tmp_path / "artifacts/one", tmp_path / "artifacts/two"
    distill_cli("train", cfg, "--set", f"train.output_dir={one}")
    distill_cli("train", cfg, "--accelerate", ROOT / f"configs/accelerate/{launcher}",
                "--set", f"train.output_dir={two}", "--set", "train.per_device_train_batch_size=2")
    return one, two, _losses(one), _losses(two)


def test_ddp_two_cpu_processes_match_one_process(traced, tmp_path):
    one, two, (m1, single), (m2, ddp) = _one_and_two_processes(traced, tmp_path, "cpu_ddp2.yaml")
    assert m1["data"]["samples"] == 4 and len(single) == len(ddp) == 3
    assert single[2] < single[0]  # it learns
    # same global batch (4 = 1 x 4 = 2 x 2), tokens normalized across ranks: the same losses
    assert ddp == pytest.approx(single, rel=2e-3)
    assert (two / "model/config.json").is_file()


def test_one_machine_launch_without_a_port_gets_a_free_one(tmp_path):
    from pipeline.cli import _local_port

    flag, port = _local_port(str(ROOT / "configs/accelerate/cpu_ddp2.yaml"))
    assert flag == "--main_process_port" and 0 < int(port) < 65536 and int(port) != 29500
    named = tmp_path / "named.yaml"
    named.write_text("num_machines: 1\nmain_process_port: 29511\n")
    many = tmp_path / "many.yaml"
    many.write_text("num_machines: 2\n")
    assert _local_port(str(named)) == [] and _local_port(str(many)) == []


def test_fsdp_two_cpu_processes_match_one_process(traced, tmp_path):
    """FSDP2 shards the weights, the LM head's included: the chunked KD loss must read it whole
    inside the forward and hand its gradient back to the shards."""
    one, two, (_, single), (_, fsdp) = _one_and_two_processes(traced, tmp_path, "cpu_fsdp2.yaml")
    assert len(single) == len(fsdp) == 3
    assert fsdp == pytest.approx(single, rel=2e-3)
    from transformers import AutoModelForCausalLM

    a = AutoModelForCausalLM.from_pretrained(one / "model").state_dict()
    b = AutoModelForCausalLM.from_pretrained(two / "model").state_dict()
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-4) for k in a)


def test_resume_continues_at_the_saved_step(traced, tmp_path):
    cfg, _ = _copy(traced, tmp_path)
    out = tmp_path / "artifacts/r"
    distill_cli("train", cfg, "--set", f"train.output_dir={out}", "--set", "train.max_steps=2",
                "--set", "train.save_steps=2")
    assert (out / "checkpoints/checkpoint-2").is_dir()
    distill_cli("train", cfg, "--set", f"train.output_dir={out}", "--set", "train.max_steps=4",
                "--set", "train.save_steps=2", "--resume")
    m, _ = _losses(out)
    assert m["counts"]["steps"] == 4
    assert [h["step"] for h in m["log_history"] if "loss" in h] == [1, 2, 3, 4]
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))


def test_other_vocabulary_trains_with_kd_across_tokenizers(traced, tmp_path):
    cfg, run_dir = _copy(traced, tmp_path)
    retok = ("--set", "models.student=pruned-retokenized", "--set", "models.student_vocab_size=600")
    distill_cli("models", cfg, *retok)
    out = tmp_path / "artifacts/cross"
    r = distill_cli("train", cfg, *retok, "--set", f"train.output_dir={out}", "--set", "train.max_steps=4")
    m, losses = _losses(out)
    assert m["mode"] == "cross" and "across tokenizers: topk+alm" in r.stdout
    alignment = m["data"]["alignment"]
    assert alignment["unaligned"] == 0 and 0 < alignment["one_to_one_groups"] < alignment["groups"]
    logged = [h for h in m["log_history"] if "loss" in h]
    assert all(h["alm"] > 0 and h["kd"] > 0 for h in logged)
    assert losses[-1] < losses[0]
    student = json.loads((run_dir / "models/manifest.json").read_text())["models"]["student"]
    assert json.loads((out / "model/config.json").read_text())["vocab_size"] == student["vocab_size"] == 600
    # kd_weight 0 with another vocabulary: TRL's SFT loss on the re-tokenized text
    sft = tmp_path / "artifacts/sft"
    distill_cli("train", cfg, *retok, "--set", "train.kd_weight=0", "--set", f"train.output_dir={sft}",
                "--set", "train.max_steps=1")
    assert json.loads((sft / "manifest.json").read_text())["mode"] == "text"


def test_output_dir_outside_artifacts_is_refused_unless_allowed(traced, tmp_path):
    cfg, _ = _copy(traced, tmp_path)
    victim = tmp_path / "elsewhere"
    (victim / "model").mkdir(parents=True)
    r = distill_cli("train", cfg, "--set", f"train.output_dir={victim}", check=False)
    assert r.returncode == 1 and r.stderr.startswith(f"error: {cfg}: train.output_dir: must lie under run.artifacts_dir")
    assert (victim / "model").is_dir()  # nothing was deleted


def test_student_tokenizer_that_cannot_be_loaded_is_one_line(traced, tmp_path):
    cfg, run_dir = _copy(traced, tmp_path)
    student = json.loads((run_dir / "models/manifest.json").read_text())["models"]["student"]["path"]
    broken = tmp_path / "broken-student"
    shutil.copytree(student, broken)
    (broken / "tokenizer.json").write_text("{not json")
    manifest_path = run_dir / "models/manifest.json"
    m = json.loads(manifest_path.read_text())
    m["models"]["student"]["path"] = str(broken)
    manifest_path.write_text(json.dumps(m))
    r = distill_cli("train", cfg, check=False)
    assert r.returncode == 1 and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert r.stderr.startswith(f"error: {broken}: cannot load its tokenizer")


def test_missing_or_mismatched_sidecar_is_one_line(traced, tmp_path):
    cfg, run_dir = _copy(traced, tmp_path)
    part = sorted((run_dir / "generate/teacher_topk").glob("part-*.parquet"))[0]
    table = pq.read_table(part)
    index = table.column("sampled_index").to_pylist()
    index[0] = index[0][:-1]
    bad = table.set_column(table.schema.get_field_index("sampled_index"), table.schema.field("sampled_index"),
                           pa.array(index, pa.list_(pa.uint16()))).replace_schema_metadata(table.schema.metadata)
    pq.write_table(bad, part)
    r = distill_cli("train", cfg, check=False)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert r.stderr.startswith(f"error: {part}: sample ") and "do not match" in r.stderr
    part.unlink()
    r = distill_cli("train", cfg, check=False)
    assert r.returncode == 1 and r.stderr.startswith(f"error: {part}: missing")


def test_lora_with_gradient_checkpointing_saves_a_merged_model(traced, tmp_path):
    from transformers import AutoModelForCausalLM

    cfg, _ = _copy(traced, tmp_path)
    out = tmp_path / "artifacts/lora"
    distill_cli("train", cfg, "--set", f"train.output_dir={out}", "--set", "train.lora_r=4", "--set", "train.max_steps=2",
                "--set", "train.gradient_checkpointing=true")
    m, losses = _losses(out)
    assert len(losses) == 2 and all(loss == loss for loss in losses)  # finite, not NaN
    assert not (out / "model/adapter_config.json").exists()  # adapters merged: a plain model directory
    AutoModelForCausalLM.from_pretrained(out / "model")


@pytest.mark.parametrize("name", ["ddp", "deepspeed_zero3", "fsdp", "cpu_ddp2", "cpu_fsdp2"])
def test_accelerate_configs_load(name):
    """Every shipped launcher config is one accelerate reads. DeepSpeed itself does not run here
    (not installed on these CPU machines): its config is checked this far, the launch on GPUs."""
    from accelerate.commands.config.config_args import ClusterConfig

    c = ClusterConfig.from_yaml_file(str(ROOT / f"configs/accelerate/{name}.yaml"))
    assert c.num_processes >= 2 and c.distributed_type.value in ("MULTI_GPU", "DEEPSPEED", "FSDP")
    if name == "deepspeed_zero3":
        assert c.deepspeed_config["zero_stage"] == 3


@pytest.mark.parametrize("config,dtype", [({"dtype": "bfloat16"}, torch.bfloat16),
                                          ({"torch_dtype": "float32"}, torch.float32), ({}, None),
                                          ({"dtype": "int8"}, None), ({"dtype": "no_such"}, None)])
def test_student_is_saved_in_its_checkpoints_dtype(tmp_path, config, dtype):
    (tmp_path / "config.json").write_text(json.dumps(config))
    assert train._checkpoint_dtype(tmp_path) == dtype


@pytest.fixture
def small_disk(tmp_path):
    """A real 2 MiB file system (tmpfs, so root only): room for the logs, not for a checkpoint."""
    import subprocess

    d = tmp_path / "artifacts/full"
    d.mkdir(parents=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(d)], capture_output=True, check=False)
    if mounted.returncode:
        pytest.skip("mounting a tmpfs needs root")
    yield d
    subprocess.run(["umount", "-l", str(d)], check=True)


def test_a_full_disk_while_saving_a_checkpoint_is_one_line(traced, tmp_path, small_disk):
    """torch reports a full disk as "unexpected pos N vs M", naming no file; train names the
    directory, the space left and how to go on."""
    cfg, _ = _copy(traced, tmp_path)
    r = distill_cli("train", cfg, "--set", f"train.output_dir={small_disk}", "--set", "train.save_steps=1",
                    check=False)
    assert r.returncode == 1
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: {small_disk}: writing failed with 0.") and "GiB free there" in last, last
    assert f"distill train {cfg} --resume" in last
    assert not (small_disk / "model").exists()


def test_writes_under_names_the_directory_of_a_failed_serializer_write(small_disk):
    """torch.save and safetensors each report a full disk their own way, neither as an OSError;
    every one becomes the same line. Other errors go through untouched."""
    from safetensors.torch import save_file

    from pipeline.errors import PipelineError
    from pipeline.files import writes_under

    big = {"w": torch.zeros(1_000_000)}  # 4 MB, twice the disk
    for write in (lambda: torch.save(big, small_disk / "a.pt"), lambda: save_file(big, small_disk / "a.safetensors"),
                  lambda: (small_disk / "a.txt").write_bytes(bytes(4_000_000))):
        with pytest.raises(PipelineError, match=rf"^{re.escape(str(small_disk / 'ckpt'))}: writing failed with "
                                                r"0\.00 GiB free there \(.+\); free some$"), \
                writes_under(small_disk / "ckpt", "free some"):
            write()
        for f in small_disk.iterdir():
            f.unlink()
    with pytest.raises(KeyError), writes_under(small_disk, "free some"):
        raise KeyError("not a write")


def test_neftune_alpha_goes_to_the_trainer_under_its_own_name(tmp_path):
    from pipeline import config

    quickstart = ROOT / "configs/quickstart.yaml"
    assert train.trainer_args(config.load(quickstart), tmp_path).neftune_noise_alpha == 5
    assert train.trainer_args(config.load(quickstart, ["train.neftune_noise_alpha=null"]),
                              tmp_path).neftune_noise_alpha is None
