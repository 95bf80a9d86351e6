"""Tiny models and tokenizers built here, nothing downloaded.

`tiny_tokenizer_dir`: a byte-level BPE trained on arithmetic problems, with ChatML special tokens
and a single `</think>` token, saved as a Hugging Face tokenizer; `student_tokenizer_dir` differs
from it the way Qwen2.5's tokenizer differs from R1's. `tiny_teacher_dir`: a 2-layer
Llama on that tokenizer (head dim 64, which vLLM's CPU attention requires), random weights,
float32 so that numbers compare exactly.
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from pipeline.cli import set_environment_defaults

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # tests' engines are tiny
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
set_environment_defaults()  # what the CLI sets, for the stages tests call in-process

ROOT = Path(__file__).parent.parent
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def make_tokenizer(out: Path, pre_tokenizer, special: list[str], vocab_size: int, eos: str, normalizer=None,
                   added: tuple[str, ...] = ()) -> Path:
    """A byte-level BPE trained on arithmetic problems and some Chinese, saved as an HF tokenizer
    with a ChatML template; `added` are non-special added tokens (R1's `</think>` is one)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from pipeline import arithmetic

    corpus = [r["question"] + " " + r["answer"] for r in arithmetic.problems(200, [1, 2, 3], seed=7)]
    corpus += ["我有三个苹果，她给了我两个。一共有几个？", "车窗打开一半，温度调到二十二度。"] * 20
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizer
    tok.decoder = decoders.ByteLevel()
    if normalizer is not None:
        tok.normalizer = normalizer
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=special,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus, trainer)
    tok.add_tokens(list(added))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=special[1], eos_token=eos,
                                   pad_token=special[0], unk_token=special[0])
    fast.chat_template = CHAT_TEMPLATE.replace("<|im_start|>", special[1]).replace("<|im_end|>", eos)
    fast.save_pretrained(out)
    return out


def make_tiny_tokenizer(out: Path) -> Path:
    """The tiny teacher's tokenizer: a byte-level BPE (GPT-2's pre-tokenizer, so digits group),
    ChatML special tokens and `</think>`."""
    from tokenizers import pre_tokenizers

    return make_tokenizer(out, pre_tokenizers.ByteLevel(add_prefix_space=False), SPECIAL, 512, "<|im_end|>")


@pytest.fixture(scope="session")
def tiny_tokenizer_dir(tmp_path_factory) -> Path:
    return make_tiny_tokenizer(tmp_path_factory.mktemp("tiny_tokenizer"))


@pytest.fixture(scope="session")
def student_tokenizer_dir(tmp_path_factory) -> Path:
    """Unlike the tiny teacher's, like Qwen2.5 against R1: every digit its own piece (the teacher's
    BPE groups digits), another vocabulary size and id order, `</think>` a plain added token."""
    from tokenizers import pre_tokenizers

    pre = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                   pre_tokenizers.ByteLevel(add_prefix_space=False)])
    return make_tokenizer(tmp_path_factory.mktemp("student_tokenizer"), pre,
                          ["<pad>", "<|start|>", "<|end|>"], 400, "<|end|>", added=("<think>", "</think>"))


def make_tiny_llama(tokenizer_dir: Path, out: Path, layers: int = 2, seed: int = 0) -> Path:
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=layers,
                         num_attention_heads=1, num_key_value_heads=1, head_dim=64, max_position_embeddings=1024,
                         tie_word_embeddings=True, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id)
    model = LlamaForCausalLM(config).to(torch.float32)
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_teacher_dir(tiny_tokenizer_dir, tmp_path_factory) -> Path:
    return make_tiny_llama(tiny_tokenizer_dir, tmp_path_factory.mktemp("tiny_teacher"), layers=4)


def write_config(path: Path, body: str) -> Path:
    path.write_text(textwrap.dedent(body))
    return path


def distill_cli(*args, check=True, **kw) -> subprocess.CompletedProcess:
    """`distill ARGS` in a fresh process from the repository root, as a user runs it."""
    env = {**os.environ, "VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_CPU_KVCACHE_SPACE": "1"}
    r = subprocess.run([sys.executable, "-m", "pipeline.cli", *map(str, args)], cwd=ROOT, env=env,
                       capture_output=True, text=True, **kw)
    if check and r.returncode:  # the failure shows the command's stderr, which CalledProcessError hides
        raise subprocess.CalledProcessError(r.returncode, r.args, r.stdout, r.stderr[-6000:]) from AssertionError(
            f"distill {' '.join(map(str, args))} exited {r.returncode}; stderr ends:\n{r.stderr[-6000:]}")
    return r


def traced_config(path: Path, artifacts: Path, teacher: Path) -> Path:
    """A tiny run on the tiny teacher: 2 train prompts x 2 samples, 3 training steps."""
    return write_config(path, f"""
        run: {{name: t, artifacts_dir: {artifacts}}}
        models: {{teacher: {teacher}, student_layers: [0, 3], dtype: float32}}
        prepare: {{arithmetic: {{n_train: 2, n_eval: 1}}}}
        generate: {{n: 2, max_new_tokens: 12, top_k: 4, engine: {{max_model_len: 256, dtype: float32,
                    enforce_eager: true}}}}
        clean: {{rules: [length], keep_incorrect: true}}
        train: {{top_k: 4, max_steps: 3, per_device_train_batch_size: 4, logging_steps: 1, save_steps: 1000,
                learning_rate: 0.001, warmup_steps: 0, lr_scheduler_type: constant}}
        eval: {{max_new_tokens: 8, latency_prompts: 1}}
        """)


@pytest.fixture(scope="session")
def traced(tiny_teacher_dir, tmp_path_factory):
    """A run with real generate and clean outputs (4 train samples), shared by the tests that
    train or evaluate: copy it with copy_traced before changing anything."""
    d = tmp_path_factory.mktemp("traced")
    cfg = traced_config(d / "c.yaml", d / "artifacts", tiny_teacher_dir)
    distill_cli("run", cfg, "--until", "clean")
    return d, tiny_teacher_dir


def copy_traced(traced, tmp_path: Path) -> tuple[Path, Path]:
    """(config, run directory) of a private copy of the traced run under tmp_path/artifacts."""
    import shutil

    src, teacher = traced
    shutil.copytree(src / "artifacts" / "t", tmp_path / "artifacts" / "t")
    return traced_config(tmp_path / "c.yaml", tmp_path / "artifacts", teacher), tmp_path / "artifacts" / "t"
