"""Stage `train`: distill the student from the stored traces and the teacher's stored top-k
(artifacts/<run>/train/). The teacher is never loaded.

    distill train configs/quickstart.yaml [--resume] [--set train.kd_weight=0.2 --set train.output_dir=...]
    distill train configs/quickstart.yaml --accelerate configs/accelerate/ddp.yaml     # many GPUs / nodes

DistillTrainer subclasses TRL's SFTTrainer and overrides only the loss: (1 - kd_weight) * CE on
the teacher's tokens + kd_weight * T^2 * divergence(teacher top-k || student), on completion
tokens only, summed and divided by the completion tokens of the whole optimizer step (all
micro-batches, all ranks). The LM head is applied in chunks (pipeline.losses), so KD never holds
a [tokens x vocabulary] tensor.

Data: the clean selection (train split) joined to the teacher_topk sidecar by sample_id, one
generation/top-k part pair at a time, written once into a memory-mapped Arrow dataset under
artifacts/<run>/train_data/ that every sweep over the same data reuses.
"""
from __future__ import annotations

import functools
import json
import os
import shutil
import time
import types
from dataclasses import dataclass, field
from pathlib import Path

import click
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
from trl import SFTConfig, SFTTrainer

from pipeline import manifest, topk
from pipeline.config import Config, section_hash
from pipeline.errors import PipelineError
from pipeline.files import TMP_SUFFIX, atomic_path, open_parquet, read_table, write_json
from pipeline.losses import distill_loss
from pipeline.schema import CLEAN


@dataclass
class DistillConfig(SFTConfig):
    """SFTConfig plus the distillation fields, nothing else."""

    kd_weight: float = field(default=0.5, metadata={"help": "Share of the KD term against CE (0 = plain SFT)."})
    kd_temperature: float = field(default=1.0, metadata={"help": "Re-tempering of the stored logprobs; KD x T^2."})
    divergence: str = field(default="forward_kl", metadata={"help": "forward_kl, reverse_kl or jsd."})
    jsd_beta: float = field(default=0.5, metadata={"help": "Teacher weight of the jsd mixture."})
    tail: str = field(default="bucket", metadata={"help": "bucket (top-k + rest) or renormalize (top-k only)."})
    top_k: int = field(default=20, metadata={"help": "Stored candidates used per position."})
    kd_chunk_size: int = field(default=1024, metadata={"help": "Positions per LM-head chunk in the KD loss."})


class DistillTrainer(SFTTrainer):
    """SFTTrainer whose loss adds KD on the stored top-k; with kd_weight 0 it is SFTTrainer's own."""

    def __init__(self, model, args: DistillConfig, **kwargs):
        _add_distill_head(model)
        super().__init__(model=model, args=args, **kwargs)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        topk_ids, topk_logprobs = inputs.pop("topk_ids"), inputs.pop("topk_logprobs")
        if self.args.kd_weight == 0:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        a = self.args
        loss_sum, ce, kd, t_mass, s_mass = model(
            input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], labels=inputs["labels"],
            distill=dict(topk_ids=topk_ids[..., :a.top_k], topk_logprobs=topk_logprobs[..., :a.top_k],
                         kd_weight=a.kd_weight, temperature=a.kd_temperature, kind=a.divergence, beta=a.jsd_beta,
                         tail=a.tail, chunk=a.kd_chunk_size))
        tokens = (inputs["labels"][:, 1:] != -100).sum()
        denominator = num_items_in_batch if num_items_in_batch is not None else tokens
        loss = loss_sum / torch.as_tensor(denominator).clamp(min=1)
        if a.average_tokens_across_devices and num_items_in_batch is not None:
            loss = loss * self.accelerator.num_processes  # DDP averages gradients across ranks
        n = self.accelerator.gather_for_metrics(tokens).sum().clamp(min=1)
        for key, value in (("ce", ce), ("kd", kd), ("teacher_topk_mass", t_mass), ("student_topk_mass", s_mass)):
            self._metrics["train"][key].append((self.accelerator.gather_for_metrics(value).sum() / n).item())
        return loss


def _add_distill_head(model) -> None:
    """model(..., labels=, distill={...}) runs the backbone and the chunked KD loss instead of the
    LM head. Patched on the model itself, so DDP, FSDP and PEFT wrappers call it like any forward."""
    original = model.forward

    @functools.wraps(type(model).forward)
    def forward(self, *args, distill=None, **kwargs):
        if distill is None:
            return original(*args, **kwargs)
        labels = kwargs.pop("labels")[:, 1:]
        kwargs["use_cache"] = False
        hidden = self.base_model(*args, **kwargs).last_hidden_state[:, :-1]
        mask = labels != -100
        head = self.get_output_embeddings()
        if head.bias is not None:
            raise PipelineError("the chunked KD loss supports LM heads without bias only")
        return distill_loss(hidden[mask], head.weight, labels[mask], distill["topk_ids"][:, 1:][mask],
                            distill["topk_logprobs"][:, 1:][mask], distill["kd_weight"], distill["temperature"],
                            distill["kind"], distill["beta"], distill["tail"], distill["chunk"])

    model.forward = types.MethodType(forward, model)


def collate(pad_id: int, k: int):
    """Pad a batch: labels -100 on prompt and padding, top-k targets placed at completion positions."""

    def fn(rows: list[dict]) -> dict:
        length = max(len(r["input_ids"]) for r in rows)
        batch = len(rows)
        input_ids = torch.full((batch, length), pad_id, dtype=torch.long)
        attention = torch.zeros((batch, length), dtype=torch.long)
        labels = torch.full((batch, length), -100, dtype=torch.long)
        ids = torch.zeros((batch, length, k), dtype=torch.long)
        lps = torch.zeros((batch, length, k), dtype=torch.float32)
        for b, r in enumerate(rows):
            n, p = len(r["input_ids"]), r["prompt_len"]
            input_ids[b, :n] = torch.as_tensor(r["input_ids"])
            attention[b, :n] = 1
            labels[b, p:n] = input_ids[b, p:n]
            if r["topk_ids"] is not None and len(r["topk_ids"]):
                ids[b, p:n] = torch.as_tensor(np.asarray(r["topk_ids"])[:, :k])
                lps[b, p:n] = torch.as_tensor(np.asarray(r["topk_logprobs"])[:, :k])
        return {"input_ids": input_ids, "attention_mask": attention, "labels": labels, "topk_ids": ids,
                "topk_logprobs": lps}

    return fn


# ---------------------------------------------------------------------------------------------


def run(cfg: Config, resume: bool = False) -> dict:
    started = time.time()
    t = cfg.train
    models = manifest.require(cfg, "models")["models"]
    gen = manifest.require(cfg, "generate")
    manifest.require(cfg, "clean")
    out = manifest.stage_dir(cfg, "train")
    student_dir, teacher_dir = Path(models["student"]["path"]), Path(models["teacher"]["path"])
    stored_k = gen["settings"]["top_k"]
    if t.kd_weight > 0 and t.top_k > stored_k:
        raise PipelineError(f"{cfg.file}: train.top_k={t.top_k} but generate stored only {stored_k} candidates")
    mismatch = vocabulary_mismatch(teacher_dir, student_dir)
    if t.kd_weight > 0:
        check_vocabularies(teacher_dir, student_dir, mismatch)

    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(student_dir)
    dataset, data_info = training_data(cfg, tokenizer, retokenize=mismatch is not None)
    click.echo(f"train: {data_info['samples']} samples, {data_info['completion_tokens']} completion tokens "
               f"({data_info['truncated']} truncated to {t.max_length}); kd_weight {t.kd_weight}, "
               f"{t.divergence}, T={t.kd_temperature}, tail={t.tail}, k={t.top_k}")
    if data_info["samples"] == 0:
        raise PipelineError(f"{cfg.run_dir / 'clean/clean.parquet'}: no train-split samples to learn from")

    os.environ.setdefault("TENSORBOARD_LOGGING_DIR", str(out / "tensorboard"))
    model = AutoModelForCausalLM.from_pretrained(student_dir, dtype=torch.bfloat16 if t.bf16 else torch.float32)
    args = DistillConfig(
        output_dir=str(out / "checkpoints"), kd_weight=t.kd_weight, kd_temperature=t.kd_temperature,
        divergence=t.divergence, jsd_beta=t.jsd_beta, tail=t.tail, top_k=t.top_k, kd_chunk_size=t.kd_chunk_size,
        learning_rate=t.learning_rate, num_train_epochs=t.num_train_epochs, max_steps=t.max_steps,
        per_device_train_batch_size=t.per_device_train_batch_size,
        gradient_accumulation_steps=t.gradient_accumulation_steps, max_length=t.max_length,
        warmup_steps=t.warmup_steps, lr_scheduler_type=t.lr_scheduler_type, bf16=t.bf16,
        gradient_checkpointing=t.gradient_checkpointing, logging_steps=t.logging_steps, save_steps=t.save_steps,
        save_total_limit=t.save_total_limit, seed=cfg.run.seed, report_to=["tensorboard"],
        remove_unused_columns=False,
        dataset_kwargs={"skip_prepare_dataset": True}, dataloader_num_workers=0,
        use_cpu=not torch.cuda.is_available(),  # also makes a multi-process launch on CPU use DDP over gloo
        **t.extra)
    peft_config = None
    if t.lora_r:
        from peft import LoraConfig

        peft_config = LoraConfig(r=t.lora_r, lora_alpha=t.lora_alpha, target_modules="all-linear",
                                 task_type="CAUSAL_LM")
    trainer = DistillTrainer(model, args, train_dataset=dataset, processing_class=tokenizer,
                             data_collator=collate(tokenizer.pad_token_id or 0, t.top_k), peft_config=peft_config)
    latest = _latest_checkpoint(out / "checkpoints") if resume else None
    if resume and latest is None:
        click.echo("train: --resume given but no checkpoint yet; starting from the student", err=True)
    result = trainer.train(resume_from_checkpoint=str(latest) if latest else None)

    if not trainer.is_world_process_zero():
        return {}
    final = trainer.model.merge_and_unload() if t.lora_r else trainer.model
    final.forward = type(final).forward.__get__(final)  # drop the distill head before saving
    with_tmp = out / f"model{TMP_SUFFIX}"
    shutil.rmtree(with_tmp, ignore_errors=True)
    final.save_pretrained(with_tmp)
    tokenizer.save_pretrained(with_tmp)
    shutil.rmtree(out / "model", ignore_errors=True)
    with_tmp.rename(out / "model")
    history = [h for h in trainer.state.log_history if "loss" in h]
    return manifest.write(cfg, "train", started, {**data_info, "steps": trainer.state.global_step},
                          model=str(out / "model"), student_start=models["student"], data=data_info,
                          train_loss=result.training_loss, log_history=trainer.state.log_history,
                          final_logs=history[-1] if history else {})


def _latest_checkpoint(directory: Path) -> Path | None:
    found = sorted(directory.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    return found[-1] if found else None


# ---------------------------------------------------------------------------------------------
# Tokenizer guard


def _vocab(model_dir: Path) -> dict:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir).get_vocab()


def vocabulary_mismatch(teacher_dir: Path, student_dir: Path) -> tuple[str, int, int | None] | None:
    """The first teacher token whose id differs in the student, as (token, teacher id, student id),
    or None when every teacher token has its id in the student (extra student tokens are fine)."""
    teacher, student = _vocab(teacher_dir), _vocab(student_dir)
    return next(((tok, i, student.get(tok)) for tok, i in teacher.items() if student.get(tok) != i), None)


def check_vocabularies(teacher_dir: Path, student_dir: Path, mismatch) -> None:
    if mismatch is not None:
        tok, teacher_id, student_id = mismatch
        raise PipelineError(
            f"{student_dir}: the student's vocabulary differs from the teacher's ({teacher_dir}): token {tok!r} is "
            f"id {teacher_id} in the teacher, {student_id} in the student; logit distillation needs the "
            "same ids. Set train.kd_weight: 0 to fine-tune on the traces' text instead (SFT).")


# ---------------------------------------------------------------------------------------------
# Data


SCHEMA = pa.schema([("sample_id", pa.string()), ("input_ids", pa.list_(pa.int32())), ("prompt_len", pa.int32()),
                    ("topk_ids", pa.list_(pa.list_(pa.int32()))), ("topk_logprobs", pa.list_(pa.list_(pa.float32())))])


def training_data(cfg: Config, tokenizer, retokenize: bool):
    """The memory-mapped training dataset (an Arrow stream file), built once per clean selection,
    max_length and mode, in batches: memory does not grow with the number of traces."""
    from datasets import Dataset

    clean_key = manifest.read(cfg, "clean")["key"]
    key = section_hash(clean_key, cfg.train.max_length, retokenize, cfg.train.top_k if not retokenize else 0)
    cache = cfg.run_dir / "train_data" / key
    if not (cache / "info.json").is_file():
        info = {"samples": 0, "completion_tokens": 0, "truncated": 0}
        rows = _retokenized_rows(cfg, tokenizer, info) if retokenize else _teacher_rows(cfg, info)
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
                     "topk_logprobs": [np.asarray(r["topk_logprobs"]).tolist() for r in rows]}, schema=SCHEMA)


def _selection(cfg: Config) -> dict:
    table = read_table(CLEAN, cfg.run_dir / "clean/clean.parquet")
    table = table.filter(pc.equal(table["split"], "train"))
    return dict(zip(table["sample_id"].to_pylist(), range(table.num_rows)))


def _teacher_rows(cfg: Config, info: dict):
    """Exact teacher ids: prompt ids + completion ids, with the decoded top-k per completion token."""
    wanted = _selection(cfg)
    found = set()
    max_len = cfg.train.max_length
    gen_dir = cfg.run_dir / "generate"
    for sid, prompt, tokens, ids, lps in topk.read_traces(gen_dir, lambda s, split: s in wanted, cfg.train.top_k):
        keep = max(0, min(len(tokens), max_len - len(prompt)))
        info["truncated"] += keep < len(tokens)
        info["samples"] += keep > 0
        info["completion_tokens"] += keep
        found.add(sid)
        if keep:
            yield {"sample_id": sid, "input_ids": list(prompt) + tokens[:keep].tolist(), "prompt_len": len(prompt),
                   "topk_ids": ids[:keep], "topk_logprobs": lps[:keep]}
    missing = set(wanted) - found
    if missing:
        raise PipelineError(f"{gen_dir / 'teacher_topk'}: no top-k for {len(missing)} selected samples "
                            f"(e.g. {sorted(missing)[0]})")


def _retokenized_rows(cfg: Config, tokenizer, info: dict):
    """SFT on the text: the student's own chat template over the prompt, then the completion text."""
    prompts = {r["prompt_id"]: r for r in pq.read_table(cfg.run_dir / "prepare/prompts.parquet").to_pylist()}
    think_end = manifest.read(cfg, "generate")["settings"]["think_end"]
    batches = open_parquet(cfg.run_dir / "clean/clean.parquet").iter_batches(
        batch_size=1024, columns=["sample_id", "prompt_id", "split", "reasoning", "answer"])
    for row in (r for batch in batches for r in batch.to_pylist()):  # a batch in memory at a time
        if row["split"] != "train":
            continue
        p = prompts[row["prompt_id"]]
        prompt = tokenizer.apply_chat_template(p["messages"], add_generation_prompt=True, tokenize=True,
                                               return_dict=False)
        text = (row["reasoning"] + think_end if think_end else "") + row["answer"]
        completion = tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        keep = max(0, min(len(completion), cfg.train.max_length - len(prompt)))
        info["truncated"] += keep < len(completion)
        info["samples"] += keep > 0
        info["completion_tokens"] += keep
        if keep:
            yield {"sample_id": row["sample_id"], "input_ids": prompt + completion[:keep], "prompt_len": len(prompt),
                   "topk_ids": [], "topk_logprobs": []}

