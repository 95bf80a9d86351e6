"""Stage `train`: distill the student from the stored traces and the teacher's stored top-k
(artifacts/<run>/train/). The teacher is never loaded.

    distill train configs/quickstart.yaml [--resume] [--set train.kd_weight=0.2 --set train.output_dir=...]
    distill train configs/quickstart.yaml --accelerate configs/accelerate/ddp.yaml     # many GPUs / nodes

DistillTrainer subclasses TRL's SFTTrainer and overrides only the loss: (1 - kd_weight) * CE on
the teacher's tokens + kd_weight * T^2 * divergence(teacher top-k || student), on completion
tokens only, summed and divided by the completion tokens of the whole optimizer step (all
micro-batches, all ranks). The LM head is applied in chunks (pipeline.losses), so KD never holds
a [tokens x vocabulary] tensor. A student with another tokenizer learns through the byte
alignment of pipeline.crosstok: the teacher's top-k mapped into its vocabulary where one teacher
token starts a group, and the ALM chunk loss on groups that are not one-to-one.

Data: the clean selection (train split) joined to the teacher_topk sidecar by sample_id, one
generation/top-k part pair at a time, written once into a memory-mapped Arrow dataset under
artifacts/<run>/train_data/ that every sweep over the same data reuses.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import os
import shutil
import time
import types
from dataclasses import dataclass
from pathlib import Path

import click
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from transformers import AutoModelForCausalLM
from trl import SFTConfig, SFTTrainer
from trl.trainer.utils import maybe_gather_lm_head_ctx

from pipeline import crosstok, manifest, topk
from pipeline.config import Config, KDConfig, section_hash
from pipeline.errors import PipelineError
from pipeline.files import (TMP_SUFFIX, atomic_path, open_parquet, read_table, replace_dir, write_json,
                            writes_under)
from pipeline.losses import distill_loss
from pipeline.reasoning import join_completion
from pipeline.render import render
from pipeline.schema import CLEAN, PROMPTS


@dataclass
class DistillConfig(KDConfig, SFTConfig):
    """SFTConfig plus the distillation fields of the train config (KDConfig), nothing else."""


class DistillTrainer(SFTTrainer):
    """SFTTrainer whose loss adds KD on the stored top-k; with kd_weight 0 it is SFTTrainer's own."""

    chunked_when_sft = False  # True: kd_weight 0 still runs the chunked head (bench train's CE baseline)

    def __init__(self, model, args: DistillConfig, **kwargs):
        _add_distill_head(model)
        super().__init__(model=model, args=args, **kwargs)

    def create_accelerator_and_postprocess(self) -> None:
        """accelerate turns FSDP on only for GPU processes; FSDP2 itself runs on CPU over gloo, so a
        launch that asked for FSDP (`--accelerate configs/accelerate/cpu_fsdp2.yaml`) gets it there too
        instead of silently falling back to DDP."""
        super().create_accelerator_and_postprocess()
        from accelerate.state import PartialState
        from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

        if os.environ.get("ACCELERATE_USE_FSDP", "").lower() == "true" and \
                self.accelerator.distributed_type == DistributedType.MULTI_CPU:
            # every later AcceleratorState copies PartialState's type back in: set both
            PartialState._shared_state["distributed_type"] = DistributedType.FSDP
            self.accelerator.state.distributed_type = DistributedType.FSDP
            self.accelerator.state.fsdp_plugin = FullyShardedDataParallelPlugin()  # reads the launcher's FSDP_* settings
            self.is_fsdp_enabled = True

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        targets = {key: inputs.pop(key) for key in DISTILL_KEYS if key in inputs}
        if self.args.kd_weight == 0 and not self.chunked_when_sft:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        k = self.args.top_k
        loss_sum, ce, kd, alm, t_mass, s_mass = model(
            input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], labels=inputs["labels"],
            distill=dict(topk_ids=targets["topk_ids"][..., :k], topk_logprobs=targets["topk_logprobs"][..., :k],
                         groups=targets.get("groups"), chunk_logprobs=targets.get("chunk_logprobs"), opts=self.args,
                         # FSDP reshards the layers between the prefix's forward and the rows', and the
                         # backward of the first then finds them gone
                         shared_prefix=self.args.shared_prefix and not self.is_fsdp_enabled))
        tokens = (inputs["labels"][:, 1:] != -100).sum()
        denominator = num_items_in_batch if num_items_in_batch is not None else tokens
        loss = loss_sum / torch.as_tensor(denominator).clamp(min=1)
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            loss = loss * self.accelerator.num_processes  # DDP averages gradients across ranks
        n = self.accelerator.gather_for_metrics(tokens).sum().clamp(min=1)
        stats = (("ce", ce), ("kd", kd), ("teacher_topk_mass", t_mass), ("student_topk_mass", s_mass))
        for key, value in stats + ((("alm", alm),) if "groups" in targets else ()):
            self._metrics["train"][key].append((self.accelerator.gather_for_metrics(value).sum() / n).item())
        return loss


DISTILL_KEYS = ("topk_ids", "topk_logprobs", "groups", "chunk_logprobs")


def _add_distill_head(model) -> None:
    """model(input_ids=, attention_mask=, labels=, distill={...}) runs the backbone and the chunked
    KD loss instead of the LM head; distill["shared_prefix"] runs the rows' common prefix once.
    Patched on the model itself, so DDP, FSDP and PEFT wrappers call it like any forward (their
    hooks unshard the root's parameters, the head's included, around it)."""
    original = model.forward

    @functools.wraps(type(model).forward)
    def forward(self, *args, distill=None, **kwargs):
        if distill is None:
            return original(*args, **kwargs)
        input_ids, attention, labels = kwargs.pop("input_ids"), kwargs.pop("attention_mask"), kwargs.pop("labels")
        opts = distill["opts"]
        start = shared_prefix_len(input_ids, attention, labels) \
            if distill.get("shared_prefix") and not self.is_gradient_checkpointing else 0
        hidden = _backbone(self.base_model, input_ids, attention, start)[:, :-1]
        labels = labels[:, start + 1:]  # hidden state t predicts token t + 1
        mask = labels != -100
        head = self.get_output_embeddings()
        if head.bias is not None:
            raise PipelineError("the chunked KD loss supports LM heads without bias only")
        weight = head.weight
        if isinstance(weight, torch.distributed.tensor.DTensor):  # a head sharded on its own: gather it once
            weight = weight.full_tensor()
        groups, chunks = distill["groups"], distill["chunk_logprobs"]
        with maybe_gather_lm_head_ctx(head.weight):  # DeepSpeed ZeRO-3 partitions it to nothing outside its module
            return distill_loss(hidden[mask], weight, labels[mask], distill["topk_ids"][:, start + 1:][mask],
                                distill["topk_logprobs"][:, start + 1:][mask], opts,
                                None if groups is None else groups[:, start + 1:][mask],
                                None if chunks is None else chunks[:, start + 1:][mask])

    model.forward = types.MethodType(forward, model)


def shared_prefix_len(input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor) -> int:
    """How many leading tokens [B, T] every row shares and none predicts: at most up to the position
    before the batch's first label, whose hidden state is the first the loss reads. 0 for one row."""
    if input_ids.shape[0] < 2:
        return 0
    differs = ((input_ids != input_ids[:1]) | (attention_mask == 0)).any(0)
    labelled = (labels != -100).any(0)
    first_diff = int(differs.int().argmax()) if differs.any() else input_ids.shape[1]
    first_label = int(labelled.int().argmax()) if labelled.any() else input_ids.shape[1]
    return max(0, min(first_diff, first_label - 1))


def _backbone(base_model, input_ids: torch.Tensor, attention_mask: torch.Tensor, start: int) -> torch.Tensor:
    """Last hidden states [B, T - start] of positions start.. of `input_ids` [B, T]. With start > 0
    the first `start` tokens, the same in every row, run once, and every row attends to their cache:
    backward sums each row's gradient through the one copy, as it would through B copies."""
    if start == 0:
        return base_model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
    # Two forwards, so a hook on the embeddings sees the prefix [1, start] and the rows' own tokens
    # [B, T - start] apart: NEFTune scales each one's noise by its own length (train.neftune_noise_alpha).
    cache = base_model(input_ids=input_ids[:1, :start], use_cache=True).past_key_values
    cache.batch_repeat_interleave(input_ids.shape[0])
    positions = torch.arange(start, input_ids.shape[1], device=input_ids.device)
    return base_model(input_ids=input_ids[:, start:], attention_mask=attention_mask, past_key_values=cache,
                      use_cache=True, cache_position=positions,
                      position_ids=positions.expand(input_ids.shape[0], -1)).last_hidden_state


def _checkpoint_dtype(model_dir: Path) -> torch.dtype | None:
    """The floating dtype a checkpoint's config declares, if any."""
    config = json.loads((Path(model_dir) / "config.json").read_text())
    name = config.get("torch_dtype") or config.get("dtype")
    dtype = getattr(torch, name, None) if isinstance(name, str) else None
    return dtype if isinstance(dtype, torch.dtype) and dtype.is_floating_point else None


def collate(pad_id: int, k: int):
    """Pad a batch: labels -100 on prompt and padding, top-k targets placed at completion positions
    (ids -1 where there is no candidate). Rows aligned across tokenizers also get `groups` (a
    batch-wide group id per completion position, -1 elsewhere) and `chunk_logprobs` (the teacher's
    log-probability of the position's group; NaN where the group has no chunk loss)."""

    def fn(rows: list[dict]) -> dict:
        length = max(len(r["input_ids"]) for r in rows)
        batch = len(rows)
        input_ids = torch.full((batch, length), pad_id, dtype=torch.long)
        attention = torch.zeros((batch, length), dtype=torch.long)
        labels = torch.full((batch, length), -100, dtype=torch.long)
        ids = torch.full((batch, length, k), -1, dtype=torch.long)
        lps = torch.zeros((batch, length, k), dtype=torch.float32)
        cross = any(len(r.get("group_sizes") or ()) for r in rows)
        groups = torch.full((batch, length), -1, dtype=torch.long)
        chunk_lps = torch.full((batch, length), float("nan"), dtype=torch.float32)
        next_group = 0
        for b, r in enumerate(rows):
            n, p = len(r["input_ids"]), r["prompt_len"]
            input_ids[b, :n] = torch.as_tensor(r["input_ids"])
            attention[b, :n] = 1
            labels[b, p:n] = input_ids[b, p:n]
            if r["topk_ids"] is not None and len(r["topk_ids"]):
                ids[b, p:n] = torch.as_tensor(np.asarray(r["topk_ids"])[:, :k])
                lps[b, p:n] = torch.as_tensor(np.asarray(r["topk_logprobs"])[:, :k])
            if cross:
                sizes = np.asarray(r["group_sizes"], dtype=np.int64)
                groups[b, p:n] = torch.as_tensor(np.repeat(np.arange(len(sizes)) + next_group, sizes))
                chunk_lps[b, p:n] = torch.as_tensor(np.repeat(np.asarray(r["chunk_logprobs"], dtype=np.float32), sizes))
                next_group += len(sizes)
        out = {"input_ids": input_ids, "attention_mask": attention, "labels": labels, "topk_ids": ids,
               "topk_logprobs": lps}
        if cross:
            out.update(groups=groups, chunk_logprobs=chunk_lps)
        return out

    return fn


# ---------------------------------------------------------------------------------------------


def run(cfg: Config, resume: bool = False, student: Path | None = None, callbacks: list | None = None) -> dict:
    """`student`: another starting checkpoint than the models manifest's (the quality benchmark);
    `callbacks`: TrainerCallbacks added to the trainer's (a sweep's per-epoch measure and pruning)."""
    started = time.time()
    t = cfg.train
    models = manifest.require(cfg, "models")["models"]
    gen = manifest.require(cfg, "generate")
    manifest.require(cfg, "clean")
    out = manifest.stage_dir(cfg, "train")
    student_dir, teacher_dir = Path(student or models["student"]["path"]), Path(models["teacher"]["path"])
    if gen.get("counts", {}).get("text_only") and t.kd_weight > 0:  # a chat API that returned no logprobs
        raise PipelineError(f"{cfg.file}: train.kd_weight={t.kd_weight}: the teacher's API returned no logprobs, so this "
                            "run has no top-k; train with kd_weight 0 (SFT on its text)")
    # imported traces have a top-k once `distill generate --score` attached a local teacher's
    unscored = gen.get("imported") and not gen.get("scored_with")
    if unscored and t.kd_weight > 0:
        raise PipelineError(f"{cfg.file}: train.kd_weight={t.kd_weight}: imported traces have no teacher top-k; "
                            f"train with kd_weight 0 (SFT on their text), or attach a local teacher's with "
                            f"`distill generate {cfg.file} --score`")
    if t.kd_weight > 0 and t.top_k > gen["settings"]["top_k"]:
        raise PipelineError(f"{cfg.file}: train.top_k={t.top_k} but generate stored only {gen['settings']['top_k']} "
                            "candidates")
    tokenizer = crosstok.load_tokenizer(student_dir)
    # Same vocabulary: the teacher's exact ids and top-k. Another vocabulary: KD through the
    # byte alignment (crosstok), or with kd_weight 0 plain SFT on the re-tokenized text, which is
    # all that unscored imported traces (text, no ids or top-k of the student's teacher) allow.
    same = crosstok.vocabulary_mismatch(teacher_dir, student_dir) is None
    text_only = unscored or gen.get("counts", {}).get("text_only")
    mode = "text" if text_only else "same" if same else "cross" if t.kd_weight > 0 else "text"
    dataset, data_info = training_data(cfg, tokenizer, mode)
    click.echo(f"train: {data_info['samples']} samples, {data_info['completion_tokens']} completion tokens "
               f"({data_info['truncated']} truncated to {t.max_length}); kd_weight {t.kd_weight}, "
               f"{t.divergence}, T={t.kd_temperature}, tail={t.tail}, k={t.top_k}"
               + (f", across tokenizers: {t.cross_tokenizer_loss}" if mode == "cross" else ""))
    if mode == "cross":
        click.echo("train: alignment: " + ", ".join(f"{k} {v}" for k, v in data_info["alignment"].items()
                                                     if k != "unaligned_ids"))
    if data_info["samples"] == 0:
        raise PipelineError(f"{cfg.run_dir / 'clean/clean.parquet'}: no train-split samples to learn from")

    # set, not defaulted: a process that trains several models (a sweep, bench quality) logs each in its own
    os.environ["TENSORBOARD_LOGGING_DIR"] = str(out / "tensorboard")
    model = AutoModelForCausalLM.from_pretrained(student_dir, dtype=torch.bfloat16 if t.bf16 else torch.float32)
    args = trainer_args(cfg, out / "checkpoints", report_to=["tensorboard"])
    peft_config = None
    if t.lora_r:
        from peft import LoraConfig

        peft_config = LoraConfig(r=t.lora_r, lora_alpha=t.lora_alpha, target_modules="all-linear",
                                 task_type="CAUSAL_LM")
    trainer = DistillTrainer(model, args, train_dataset=dataset, processing_class=tokenizer,
                             data_collator=collate(tokenizer.pad_token_id or 0, t.top_k), peft_config=peft_config,
                             callbacks=callbacks)
    latest = _latest_checkpoint(out / "checkpoints") if resume else None
    if resume and latest is None:
        click.echo("train: --resume given but no checkpoint yet; starting from the student", err=True)
    with writes_under(out, f"free space, then `distill train {cfg.file} --resume` continues from the last whole "
                           "checkpoint"):
        result = trainer.train(resume_from_checkpoint=str(latest) if latest else None)
        # Under FSDP the full weights exist only when every rank takes part in gathering them.
        state = trainer.accelerator.get_state_dict(trainer.model) if trainer.is_fsdp_enabled else None
        written = _save(cfg, trainer, state, tokenizer, student_dir, out, started, data_info, mode, result) \
            if trainer.is_world_process_zero() else {}
    # Every rank leaves together and tears its process group down: a rank that exits while rank 0
    # still saves, with gloo's threads alive, aborts ("terminate called without an active
    # exception") and the launcher then kills rank 0 mid-write.
    trainer.accelerator.wait_for_everyone()
    trainer.accelerator.end_training()
    return written


def _save(cfg: Config, trainer, state, tokenizer, student_dir: Path, out: Path, started: float, data_info: dict,
          mode: str, result) -> dict:
    """Rank 0's part: the final model (adapters merged, the starting checkpoint's dtype) written
    whole or not at all, and the manifest."""
    t = cfg.train
    final = trainer.model.merge_and_unload() if t.lora_r else trainer.model
    final.forward = type(final).forward.__get__(final)  # drop the distill head before saving
    # Saved in the starting checkpoint's dtype (bf16 for the pruned student): what a device loads,
    # and half the disk of the fp32 copy trained on a CPU.
    dtype = _checkpoint_dtype(student_dir)
    if dtype is not None:
        final.to(dtype)
        state = None if state is None else {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    with_tmp = out / f".model{TMP_SUFFIX}"
    shutil.rmtree(with_tmp, ignore_errors=True)
    final.save_pretrained(with_tmp, state_dict=state)
    tokenizer.save_pretrained(with_tmp)
    replace_dir(with_tmp, out / "model")
    history = [h for h in trainer.state.log_history if "loss" in h]
    return manifest.write(cfg, "train", started, {**data_info, "steps": trainer.state.global_step},
                          model=str(out / "model"), student_start=str(student_dir), data=data_info, mode=mode,
                          train_loss=result.training_loss, log_history=trainer.state.log_history,
                          final_logs=history[-1] if history else {})


def dry_run(cfg: Config) -> None:
    """Check the teacher/student tokenizer pair without training: whether KD runs on the same
    vocabulary or across tokenizers, the vocabulary map's shares, and how the teacher's tokens
    align (one-to-one, within a group, not at all) on up to 200 train traces, or on the prepared
    prompts' text when there are no traces yet. Models that are not local are reported and skipped."""
    m = manifest.read(cfg, "models")
    if m is not None and not manifest.is_fresh(cfg, "models"):
        click.echo(f"tokenizers:     the models stage ran with another models section: run `distill models {cfg.file}` "
                   "(with the same --set) first; pair not checked")
        return
    paths = {role: Path(m["models"][role]["path"]) for role in ("teacher", "student")} if m else \
        {"teacher": Path(cfg.models.teacher), "student": Path(cfg.models.student)}
    for role, path in paths.items():
        click.echo(f"{role}:{' ' * (9 - len(role))}{path}")
        if not (path / "config.json").is_file():
            click.echo(f"tokenizers:     {role} is not a local model directory (run `distill models {cfg.file}` "
                       "first); pair not checked")
            return
    teacher_tok, student_tok = (crosstok.load_tokenizer(paths[r]) for r in ("teacher", "student"))
    if crosstok.vocabulary_mismatch(paths["teacher"], paths["student"]) is None:
        click.echo("tokenizers:     same vocabulary: KD on the teacher's exact ids and top-k")
        return
    _, t_bytes, t_eos, s_bytes, vmap = crosstok.pair(cfg.models_dir, paths["teacher"], student_tok)
    click.echo(f"tokenizers:     different vocabularies ({len(teacher_tok)} vs {len(student_tok)}): KD across "
               f"tokenizers, train.cross_tokenizer_loss={cfg.train.cross_tokenizer_loss}")
    click.echo("vocabulary map: " + ", ".join(f"{k} {v:.1%}" for k, v in vmap.shares().items()) + " of teacher ids")
    gen_dir = cfg.run_dir / "generate"
    if list((gen_dir / "generations").glob("part-*.parquet")):
        source = "train traces"
        samples = (tokens.tolist() for _, _, _, tokens, _, _, _ in
                   topk.read_traces(gen_dir, lambda s, split: split == "train", 1))
    elif manifest.prompts_path(cfg).is_file():
        source = "prompts (no traces yet)"
        samples = (teacher_tok.encode("\n".join(msg["content"] for msg in p["messages"]), add_special_tokens=False)
                   for p in _prompts(cfg).values())
    else:
        click.echo(f"alignment:      nothing to align yet (run `distill prepare {cfg.file}`)")
        return
    counts = {"one_to_one": 0, "in_a_group": 0, "not_at_all": 0}
    failed = n = 0
    for ids in samples:
        if n == 200:
            break
        n += 1
        try:
            _, groups = crosstok.student_ids_and_groups(ids, t_bytes, t_eos, student_tok, s_bytes)
        except crosstok.AlignmentError:
            failed += 1
            continue
        for t0, t1, s0, s1 in groups:
            key = "one_to_one" if t1 - t0 == 1 and s1 - s0 == 1 else "not_at_all" if s1 == s0 else "in_a_group"
            counts[key] += t1 - t0
    total = max(sum(counts.values()), 1)
    click.echo(f"alignment:      {n} {source}: teacher tokens " + ", ".join(f"{k.replace('_', ' ')} {v / total:.1%}"
                                                                          for k, v in counts.items())
               + (f"; {failed} could not be aligned" if failed else ""))


def trainer_args(cfg: Config, checkpoints: Path, **overrides) -> DistillConfig:
    """DistillConfig from the train config: the fields they share (the KD fields and the
    TrainingArguments TrainConfig names) go over by name; checkpoints go to `checkpoints`."""
    t = cfg.train
    shared = {f.name for f in dataclasses.fields(DistillConfig)} - {"output_dir"}
    return DistillConfig(
        **{f.name: getattr(t, f.name) for f in dataclasses.fields(t) if f.name in shared},
        output_dir=str(checkpoints), seed=cfg.run.seed, remove_unused_columns=False,
        dataset_kwargs={"skip_prepare_dataset": True}, dataloader_num_workers=0,
        use_cpu=not torch.cuda.is_available(),  # also makes a multi-process launch on CPU use DDP over gloo
        **{**t.extra, **overrides})


def _latest_checkpoint(directory: Path) -> Path | None:
    """The newest complete checkpoint. The Trainer writes trainer_state.json last, so a directory
    without a readable one was cut short by a kill: it is removed (the step is trained again)."""
    found = sorted((p for p in directory.glob("checkpoint-*") if p.name.split("-")[1].isdigit()),
                   key=lambda p: int(p.name.split("-")[1]))
    for p in reversed(found):
        try:
            json.loads((p / "trainer_state.json").read_text())
            return p
        except (OSError, ValueError):
            click.echo(f"train: {p} is incomplete (killed while saving); removed", err=True)
            shutil.rmtree(p, ignore_errors=True)
    return None


# ---------------------------------------------------------------------------------------------
# Data


SCHEMA = pa.schema([("sample_id", pa.string()), ("input_ids", pa.list_(pa.int32())), ("prompt_len", pa.int32()),
                    ("topk_ids", pa.list_(pa.list_(pa.int32()))), ("topk_logprobs", pa.list_(pa.list_(pa.float32()))),
                    ("group_sizes", pa.list_(pa.int32())), ("chunk_logprobs", pa.list_(pa.float32()))])


def training_data(cfg: Config, tokenizer, mode: str):
    """The memory-mapped training dataset (an Arrow stream file), built once per clean selection,
    max_length, mode and tokenizer pair, in batches: memory does not grow with the number of
    traces. `mode`: same (the teacher's ids and top-k), cross (aligned to another tokenizer) or
    text (re-tokenized text, no top-k)."""
    from datasets import Dataset

    clean_key = manifest.read(cfg, "clean")["key"]
    models = manifest.require(cfg, "models")["models"]
    g = cfg.generate
    key = section_hash(clean_key, cfg.train.max_length, mode, cfg.train.top_k if mode != "text" else 0,
                       models["teacher"]["tokenizer_sha"], crosstok.tokenizer_sha(tokenizer), g.system_prompt, g.think_start,
                       bool(g.teacher_context))
    cache = cfg.run_dir / "train_data" / key
    if not (cache / "info.json").is_file():
        info = {"samples": 0, "completion_tokens": 0, "truncated": 0}
        rows = {"same": _teacher_rows, "cross": _aligned_rows, "text": _retokenized_rows}[mode](cfg, tokenizer, info)
        cache.mkdir(parents=True, exist_ok=True)
        with atomic_path(cache / "data.arrow") as tmp, pa.OSFile(str(tmp), "wb") as sink, \
                pa.ipc.new_stream(sink, SCHEMA) as writer:
            batch = []
            for row in rows:
                batch.append(row)
                if len(batch) == 256:
                    writer.write_table(_to_arrow(batch))
                    batch = []
            writer.write_table(_to_arrow(batch))
        write_json(cache / "info.json", info)
    info = json.loads((cache / "info.json").read_text())
    return Dataset.from_file(str(cache / "data.arrow")), {**info, "cache": str(cache)}


def _to_arrow(rows: list[dict]) -> pa.Table:
    return pa.table({"sample_id": [r["sample_id"] for r in rows], "input_ids": [r["input_ids"] for r in rows],
                     "prompt_len": [r["prompt_len"] for r in rows],
                     "topk_ids": [np.asarray(r["topk_ids"]).tolist() for r in rows],
                     "topk_logprobs": [np.asarray(r["topk_logprobs"]).tolist() for r in rows],
                     "group_sizes": [np.asarray(r.get("group_sizes", []), dtype=np.int32).tolist() for r in rows],
                     "chunk_logprobs": [np.asarray(r.get("chunk_logprobs", []), dtype=np.float32).tolist()
                                        for r in rows]}, schema=SCHEMA)


def _selection(cfg: Config) -> dict:
    table = read_table(CLEAN, cfg.run_dir / "clean/clean.parquet")
    table = table.filter(pc.equal(table["split"], "train"))
    return dict(zip(table["sample_id"].to_pylist(), range(table.num_rows)))


def _train_traces(cfg: Config):
    """The selected train samples' traces (topk.read_traces), and a check that none is missing."""
    wanted = _selection(cfg)
    found = set()
    gen_dir = cfg.run_dir / "generate"
    for trace in topk.read_traces(gen_dir, lambda s, split: s in wanted, cfg.train.top_k):
        found.add(trace[0])
        yield trace
    missing = set(wanted) - found
    if missing:
        raise PipelineError(f"{gen_dir / 'teacher_topk'}: no top-k for {len(missing)} selected samples "
                            f"(e.g. {min(missing)})")


def _count(info: dict, completion: int, keep: int) -> None:
    info["truncated"] += keep < completion
    info["samples"] += keep > 0
    info["completion_tokens"] += keep


def _teacher_rows(cfg: Config, tokenizer, info: dict):
    """Exact teacher ids: prompt ids + completion ids, with the decoded top-k per completion token.
    With a teacher-only context the prompt is rendered again without it: the student learns to
    answer the plain prompt as the teacher did with its worked examples."""
    prompts = _prompts(cfg) if cfg.generate.teacher_context else None
    for sid, prompt_id, prompt, tokens, _, ids, lps in _train_traces(cfg):
        if prompts is not None:
            prompt = render(tokenizer, prompts[prompt_id], cfg.generate.system_prompt, cfg.generate.think_start)[1]
        keep = max(0, min(len(tokens), cfg.train.max_length - len(prompt)))
        _count(info, len(tokens), keep)
        if keep:
            yield {"sample_id": sid, "input_ids": list(prompt) + tokens[:keep].tolist(), "prompt_len": len(prompt),
                   "topk_ids": ids[:keep], "topk_logprobs": lps[:keep]}


def _prompts(cfg: Config) -> dict:
    return {r["prompt_id"]: r for r in read_table(PROMPTS, manifest.prompts_path(cfg)).to_pylist()}


def _aligned_rows(cfg: Config, tokenizer, info: dict):
    """Another tokenizer: the prompt rendered for the student, the teacher's completion ids aligned
    to the student's tokenization of the same bytes (crosstok.align). A sample that cannot be
    aligned is counted and listed in the data's info, never silently lost."""
    models = manifest.require(cfg, "models")["models"]
    _, t_bytes, t_eos, s_bytes, vmap = crosstok.pair(cfg.models_dir, Path(models["teacher"]["path"]), tokenizer)
    prompts = _prompts(cfg)
    stats = {"teacher_tokens": 0, "one_to_one_groups": 0, "groups": 0, "unaligned": 0, "unaligned_ids": []}
    for sid, prompt_id, _, tokens, sampled, ids, lps in _train_traces(cfg):
        try:
            a = crosstok.align(tokens, sampled, ids, lps, t_bytes, t_eos, tokenizer, s_bytes, vmap)
        except crosstok.AlignmentError as e:
            stats["unaligned"] += 1
            stats["unaligned_ids"].append(f"{sid}: {e}")
            continue
        _, prompt = render(tokenizer, prompts[prompt_id], cfg.generate.system_prompt, cfg.generate.think_start)
        keep = max(0, min(len(a.student_ids), cfg.train.max_length - len(prompt)))
        _count(info, len(a.student_ids), keep)
        stats["teacher_tokens"] += a.teacher_tokens
        stats["one_to_one_groups"] += a.one_to_one
        stats["groups"] += len(a.group_sizes)
        if not keep:
            continue
        sizes, chunks = a.group_sizes, a.chunk_logprobs
        if keep < len(a.student_ids):  # a group cut by max_length keeps its tokens but loses its chunk loss
            last = int(np.searchsorted(np.cumsum(sizes), keep))
            sizes, chunks = sizes[:last + 1].copy(), chunks[:last + 1].copy()
            sizes[-1] -= int(np.cumsum(sizes)[-1] - keep)
            chunks[-1] = np.nan
        yield {"sample_id": sid, "input_ids": prompt + a.student_ids[:keep], "prompt_len": len(prompt),
               "topk_ids": a.topk_ids[:keep], "topk_logprobs": a.topk_logprobs[:keep], "group_sizes": sizes,
               "chunk_logprobs": chunks}
    stats["unaligned_ids"] = stats["unaligned_ids"][:20]
    stats["vocabulary"] = vmap.shares()
    info["alignment"] = stats
    if stats["unaligned"]:
        click.secho(f"train: {stats['unaligned']} samples could not be aligned to the student's tokenizer and are not "
                    f"trained on; listed in the train manifest (e.g. {stats['unaligned_ids'][0]})", fg="yellow",
                    err=True)


def _retokenized_rows(cfg: Config, tokenizer, info: dict):
    """SFT on the text: the prompt rendered for the student, then the completion text re-tokenized."""
    prompts = _prompts(cfg)
    think_end = manifest.read(cfg, "generate")["settings"]["think_end"]
    batches = open_parquet(cfg.run_dir / "clean/clean.parquet").iter_batches(
        batch_size=1024, columns=["sample_id", "prompt_id", "split", "reasoning", "answer"])
    for row in (r for batch in batches for r in batch.to_pylist()):  # a batch in memory at a time
        if row["split"] != "train":
            continue
        _, prompt = render(tokenizer, prompts[row["prompt_id"]], cfg.generate.system_prompt, cfg.generate.think_start)
        text = join_completion(row["reasoning"], row["answer"], think_end)
        completion = tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        keep = max(0, min(len(completion), cfg.train.max_length - len(prompt)))
        _count(info, len(completion), keep)
        if keep:
            yield {"sample_id": row["sample_id"], "input_ids": prompt + completion[:keep], "prompt_len": len(prompt),
                   "topk_ids": [], "topk_logprobs": []}
