"""`distill bench quality`: what KD buys over SFT, on the same data, steps and seeds, into
artifacts/bench/quality.json.

    distill bench quality configs/arithmetic.yaml --seeds 2

The run's cached traces (models, prepare, generate and clean run first if they have not) train
four students per seed, each with the config's train settings:
- sft: the pruned student, kd_weight 0 (TRL's SFT loss on the teacher's tokens);
- kd_same_vocab: the pruned student, the config's kd_weight, KD on the stored top-k;
- sft_cross_vocab / kd_cross_vocab: the pruned student with its own tokenizer (models.retokenize),
  SFT on the re-tokenized text, and KD across tokenizers (train.cross_tokenizer_loss);
- full_logit_reference: the pruned student with the teacher loaded and KL on its full
  distribution at every position (a reference only: the pipeline never loads the teacher).
Each, and the untrained `baseline`, is evaluated like `distill eval` does: kl_per_byte and
top1_agreement on the eval split's traces (sampled at T=1, top-p 1), accuracy on the eval prompts.
"""
from __future__ import annotations

import dataclasses
import statistics
import time
from pathlib import Path

import click
import torch

from pipeline import eval as eval_stage
from pipeline import crosstok, manifest, models, run, train
from pipeline.config import Config
from pipeline.files import read_table
from pipeline.schema import PROMPTS

MODES = ("sft", "kd_same_vocab", "sft_cross_vocab", "kd_cross_vocab", "full_logit_reference")


def bench_quality(cfg: Config, seeds: int) -> dict:
    run.run(cfg, until="clean")
    m = manifest.require(cfg, "models")["models"]
    teacher, pruned = Path(m["teacher"]["path"]), Path(m["student"]["path"])
    cross = models.retokenize(pruned, teacher, cfg.models.student_vocab_size, cfg.models_dir, cfg.models.dtype)
    prompts = [p for p in read_table(PROMPTS, manifest.prompts_path(cfg)).to_pylist()
               if p["split"] == "eval"][:cfg.eval.max_prompts or None]
    kd_weight = cfg.train.kd_weight or 0.5
    out_root = Path(cfg.run.artifacts_dir) / "bench" / "quality"
    results: dict[str, list[dict]] = {"baseline": [evaluate(cfg, pruned, prompts, 0.0)],
                                      "baseline_cross_vocab": [evaluate(cfg, cross, prompts, 0.0)]}
    for seed in range(seeds):
        for mode in MODES:
            c = dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, seed=seed), train=dataclasses.replace(
                cfg.train, kd_weight=0.0 if mode.startswith("sft") else kd_weight,
                output_dir=str(out_root / f"{mode}-s{seed}")))
            click.echo(f"bench quality: seed {seed}, {mode} ...")
            t = time.time()
            if mode == "full_logit_reference":
                model_dir = train_full_logit(c, teacher, pruned)
            else:
                model_dir = Path(train.run(c, student=cross if mode.endswith("cross_vocab") else pruned)["model"])
            results.setdefault(mode, []).append(evaluate(c, model_dir, prompts, time.time() - t))
    table = {name: summarize(rows) for name, rows in results.items()}

    def kl(name):
        return table[name]["kl_per_byte"]["mean"]

    gain = (kl("sft") - kl("kd_same_vocab")) / (kl("sft") - kl("full_logit_reference")) \
        if kl("sft") != kl("full_logit_reference") else None
    return {
        "teacher": teacher.name, "student": pruned.name, "cross_vocab_student": cross.name, "seeds": seeds,
        "kd_weight": kd_weight, "train": dataclasses.asdict(cfg.train), "eval_prompts": len(prompts),
        "kd_over_sft_kl": round(kl("kd_same_vocab") / kl("sft"), 4),
        "cross_over_sft_kl": round(kl("kd_cross_vocab") / kl("sft"), 4),
        "cross_kd_over_cross_sft_kl": round(kl("kd_cross_vocab") / kl("sft_cross_vocab"), 4),
        "kd_vs_full_logit_gain": None if gain is None else round(gain, 4),
        "models": table, "runs": results,
        "targets": {"kd_over_sft_kl": "<= 0.90", "cross_over_sft_kl": "<= 0.95", "kd_vs_full_logit_gain": ">= 0.90",
                    "accuracy": "neither KD student below sft"},
    }


def evaluate(cfg: Config, model_dir: Path, prompts: list[dict], seconds: float) -> dict:
    fidelity = eval_stage.teacher_fidelity(cfg, model_dir) or {}
    ((generated, timing),) = eval_stage.generate_in_subprocess(cfg, model_dir, [prompts])
    scored = eval_stage.score("model", prompts, generated)
    row = {"model": str(model_dir), "kl_per_byte": fidelity.get("kl_per_byte"),
           "top1_agreement": fidelity.get("top1_agreement"),
           "accuracy": eval_stage.metrics(scored, timing, cfg.eval.n)["accuracy"], "train_seconds": round(seconds, 1)}
    click.echo(f"  {row}")
    return row


def summarize(rows: list[dict]) -> dict:
    """Mean and spread (min, max) over seeds of each measure."""
    out = {}
    for key in ("kl_per_byte", "top1_agreement", "accuracy", "train_seconds"):
        values = [r[key] for r in rows if r[key] is not None]
        if values:
            out[key] = {"mean": round(statistics.fmean(values), 5), "min": min(values), "max": max(values)}
    return out


def train_full_logit(cfg: Config, teacher_dir: Path, student_dir: Path) -> Path:
    """The pruned student trained with the teacher loaded: (1 - w) CE + w T^2 KL(teacher || student)
    over the full vocabulary at every completion position, same data, steps and optimizer."""
    from transformers import AutoModelForCausalLM

    t = cfg.train
    tokenizer = crosstok.load_tokenizer(student_dir)
    dataset, _ = train.training_data(cfg, tokenizer, "same")
    teacher = AutoModelForCausalLM.from_pretrained(teacher_dir, dtype=torch.float32).eval()
    out = Path(t.output_dir)

    class FullLogitTrainer(train.DistillTrainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            for key in train.DISTILL_KEYS:
                inputs.pop(key, None)
            labels = inputs["labels"][:, 1:]
            mask = labels != -100
            logits = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits[:, :-1][mask]
            with torch.no_grad():
                target = teacher(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits[:, :-1][mask]
            T, w = t.kd_temperature, t.kd_weight
            student = torch.log_softmax(logits.float() / T, -1)
            teacher_lp = torch.log_softmax(target.float() / T, -1)
            kl = (teacher_lp.exp() * (teacher_lp - student)).sum(-1) * T**2
            ce = -torch.log_softmax(logits.float(), -1).gather(-1, labels[mask][:, None]).squeeze(-1)
            denominator = num_items_in_batch if num_items_in_batch is not None else mask.sum()
            return ((1 - w) * ce + w * kl).sum() / torch.as_tensor(denominator).clamp(min=1)

    args = train.trainer_args(cfg, out / "checkpoints", report_to=[], save_strategy="no")
    model = AutoModelForCausalLM.from_pretrained(student_dir, dtype=torch.float32)
    trainer = FullLogitTrainer(model, args, train_dataset=dataset, processing_class=tokenizer,
                               data_collator=train.collate(tokenizer.pad_token_id or 0, t.top_k))
    trainer.train()
    final = trainer.model
    final.forward = type(final).forward.__get__(final)
    final.save_pretrained(out / "model")
    tokenizer.save_pretrained(out / "model")
    return out / "model"
