"""`distill bench train`: SFT-only steps against KD steps (k=20) with the same student, batch and
sequences, into artifacts/bench/train.json.

    distill bench train configs/arithmetic.yaml --seq-len 4096 --steps 4

Each mode trains in its own process (so its peak memory is its own: RSS on CPU, the allocator's
peak on a GPU), alternating SFT, KD, KD across tokenizers, twice; the faster of the two runs per
mode is kept. Step time is the median optimizer step after the first; `dataloader_share` is the
time spent fetching and collating batches over the step time. The SFT steps are TRL's own loss
(kd_weight 0); the KD steps are DistillTrainer's chunked loss; the kd_cross_vocab steps are the
same student on data shaped as crosstok aligns it (groups of 1-3 tokens, the top-k on each
group's first token, ALM on the rest), so `cross_over_same_time` is the cost of the
cross-tokenizer loss itself (the alignment is done once, at train-data build time).
"""
from __future__ import annotations

import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import click
import numpy as np
import pyarrow as pa

from pipeline import manifest
from pipeline import models as models_stage
from pipeline.config import Config


def bench_train(cfg: Config, seq_len: int, steps: int, k: int = 20) -> dict:
    student = Path((manifest.read(cfg, "models") or models_stage.run(cfg))["models"]["student"]["path"])
    runs: dict[str, list[dict]] = {"sft": [], "ce": [], "kd": [], "kd_cross_vocab": []}
    with tempfile.TemporaryDirectory() as d:
        for mode in list(runs) * 2:
            out = Path(d) / f"{mode}-{len(runs[mode])}.json"
            cmd = [sys.executable, "-m", "pipeline.bench_train", mode, str(student), str(seq_len), str(steps), str(k),
                   str(out)]
            subprocess.run(cmd, check=True)
            runs[mode].append(json.loads(out.read_text()))
            r = runs[mode][-1]
            click.echo(f"  {mode}: step {r['step_s']:.2f}s, data {r['data_share']:.4f}, peak RSS {r['peak_rss_mb']:.0f} MB")
    sft = min(runs["sft"], key=lambda r: r["step_s"])
    kd = min(runs["kd"], key=lambda r: r["step_s"])
    cross = min(runs["kd_cross_vocab"], key=lambda r: r["step_s"])
    ce = min(runs["ce"], key=lambda r: r["step_s"])
    return {
        "student": str(student), "seq_len": seq_len, "batch": 1, "k": k, "steps_timed": steps - 1,
        "sft_step_s": round(sft["step_s"], 3), "kd_step_s": round(kd["step_s"], 3),
        "sft_peak_rss_mb": round(sft["peak_rss_mb"]), "kd_peak_rss_mb": round(kd["peak_rss_mb"]),
        "kd_over_sft_time": round(kd["step_s"] / sft["step_s"], 3),
        "kd_over_sft_peak_memory": round(kd["peak_rss_mb"] / sft["peak_rss_mb"], 3),
        "dataloader_share": round(max(r["data_share"] for r in (sft, ce, kd, cross)), 4),
        "ce_step_s": round(ce["step_s"], 3), "kd_over_ce_time": round(kd["step_s"] / ce["step_s"], 3),
        "kd_cross_vocab_step_s": round(cross["step_s"], 3),
        "cross_over_same_time": round(cross["step_s"] / kd["step_s"], 3),
        "runs": runs,
        "targets": {"kd_over_sft_time": "<= 1.10", "kd_over_sft_peak_memory": "<= 1.10", "dataloader_share": "<= 0.05",
                    "cross_over_same_time": "<= 1.15", "kd_over_ce_time": "<= 1.05"},
    }


def _worker(mode: str, student: str, seq_len: int, steps: int, k: int, out: str) -> None:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback

    from pipeline.train import SCHEMA, DistillConfig, DistillTrainer, _to_arrow, collate

    class ChunkedCETrainer(DistillTrainer):
        """This trainer's own chunked head with kd_weight 0: the baseline that isolates KD's cost."""
        chunked_when_sft = True

    torch.manual_seed(0)
    gpu = torch.cuda.is_available()
    tokenizer = AutoTokenizer.from_pretrained(student)
    model = AutoModelForCausalLM.from_pretrained(student, dtype=torch.bfloat16 if gpu else torch.float32)
    vocab = model.config.vocab_size
    rng = np.random.default_rng(0)
    prompt = 128
    P = seq_len - prompt
    rows = [{"sample_id": str(i), "input_ids": rng.integers(0, vocab, seq_len).tolist(), "prompt_len": prompt,
             "topk_ids": rng.integers(0, vocab, (P, k)),
             "topk_logprobs": np.sort(np.log(rng.dirichlet(np.ones(k + 4), P)[:, :k]), axis=1)[:, ::-1],
             "group_sizes": [], "chunk_logprobs": []} for i in range(steps)]
    if mode == "kd_cross_vocab":  # aligned data as crosstok writes it: groups of 1-3 student tokens
        for r in rows:
            sizes = rng.integers(1, 4, P)
            sizes = sizes[:np.searchsorted(np.cumsum(sizes), P)]
            sizes = np.append(sizes, P - sizes.sum())
            starts = np.cumsum(sizes) - sizes
            inner = np.setdiff1d(np.arange(P), starts)
            r["topk_ids"][inner] = -1
            r["topk_logprobs"][inner] = -np.inf
            r["group_sizes"] = sizes.tolist()
            r["chunk_logprobs"] = np.where(sizes == 1, np.nan, -rng.random(len(sizes)) * 3).tolist()
    # The real path: train's memory-mapped Arrow file (its schema, written by its own writer), read
    # through the Trainer's own DataLoader and collated; every batch the loop waits for is timed.
    data_dir = Path(tempfile.mkdtemp())
    with pa.OSFile(str(data_dir / "data.arrow"), "wb") as sink, pa.ipc.new_stream(sink, SCHEMA) as writer:
        writer.write_table(_to_arrow(rows))
    dataset = Dataset.from_file(str(data_dir / "data.arrow"))
    data_time = [0.0]

    class TimedLoader:
        """The prepared DataLoader, with the time spent in next() (fetch + decode + collate) counted."""

        def __init__(self, inner):
            self.inner = inner

        def __getattr__(self, name):
            return getattr(self.inner, name)

        def __len__(self):
            return len(self.inner)

        def __iter__(self):
            it = iter(self.inner)
            while True:
                t = time.perf_counter()
                try:
                    batch = next(it)
                except StopIteration:
                    return
                data_time[0] += time.perf_counter() - t
                yield batch

    def timed(trainer_class):
        class Timed(trainer_class):
            def get_train_dataloader(self):
                return TimedLoader(super().get_train_dataloader())
        return Timed

    class Timer(TrainerCallback):
        def __init__(self):
            self.starts, self.times = {}, []

        def on_step_begin(self, args, state, control, **kw):
            self.starts[state.global_step] = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            self.times.append(time.perf_counter() - self.starts[state.global_step - 1])

    timer = Timer()
    with tempfile.TemporaryDirectory() as d:
        args = DistillConfig(output_dir=d, kd_weight=0.0 if mode in ("sft", "ce") else 0.5, top_k=k, max_steps=steps,
                             per_device_train_batch_size=1, max_length=seq_len, report_to=[], save_strategy="no",
                             logging_steps=1000, remove_unused_columns=False, dataloader_num_workers=0,
                             dataset_kwargs={"skip_prepare_dataset": True}, learning_rate=1e-5,
                             bf16=gpu, use_cpu=not gpu)
        trainer = timed(ChunkedCETrainer if mode == "ce" else DistillTrainer)(
            model, args, train_dataset=dataset, processing_class=tokenizer,
            data_collator=collate(tokenizer.pad_token_id or 0, k), callbacks=[timer])
        started = time.perf_counter()
        trainer.train()
        total = time.perf_counter() - started
    # Batches are fetched between steps, outside on_step_begin/end: data share = their time / wall time.
    step = statistics.median(timer.times[1:]) if len(timer.times) > 1 else timer.times[0]
    # peak memory: the GPU's allocator peak there, the process's peak RSS on CPU
    peak = torch.cuda.max_memory_allocated() / 2**20 if gpu else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    Path(out).write_text(json.dumps({"step_s": step, "data_share": data_time[0] / total, "step_times": timer.times,
                                     "peak_rss_mb": peak, "device": "cuda" if gpu else "cpu"}))


if __name__ == "__main__":
    _worker(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), sys.argv[6])
