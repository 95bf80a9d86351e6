"""Compact encoding of the teacher's top-k logprobs (the teacher_topk table), under 2 bytes per
candidate instead of 8 for int32 ids + float32 logprobs. Measured by `distill bench generate`.

- Logprobs are quantized with a step of 0.02 (error at most 0.01): q = round(-logprob / 0.02).
  Top-k lists come best first, so q never decreases along k: each row stores its first q and
  then the gaps, small numbers kept as uint8 with 255 meaning "see `topk_logprobs_big`".
- Ids are replaced by their rank in the shard's id order (distinct ids, most frequent first,
  kept delta-coded in the Parquet file's key-value metadata), split into a high and a low byte column: Parquet's
  dictionary encoding then bit-packs each before zstd, which beats compressing raw bytes.
- The sampled token is stored as its index in the top k (the top-1 most of the time); only
  tokens outside the top k keep their id and their own logprob.
- The Arrow schema is not embedded in the footer (it would repeat the id order in base64); the
  Parquet types read back as the schema module's anyway.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.errors import PipelineError
from pipeline.files import open_table
from pipeline.schema import GENERATIONS, TEACHER_TOPK

STEP = 0.02
MAX_Q = np.iinfo(np.uint16).max  # logprobs below -1310 are clamped there: far past any useful mass
ESCAPE = 255
ORDER_KEY = b"topk_id_order"  # Parquet key-value metadata: the id order (pack_order)


def quantize(logprobs: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(-np.asarray(logprobs, dtype=np.float64) / STEP), 0, MAX_Q).astype(np.uint16)


def dequantize(q: np.ndarray) -> np.ndarray:
    return (np.asarray(q, dtype=np.float32) * -STEP).astype(np.float32)


def id_order(id_arrays: list[np.ndarray]) -> np.ndarray:
    """Distinct ids of a shard, most frequent first: by frequency class (floor(log2(count)))
    and ascending within a class, so the order is cheap to store as deltas (see pack_order)
    while the ranks stay as skewed as an exact frequency sort's."""
    ids, counts = np.unique(np.concatenate([a.ravel() for a in id_arrays]), return_counts=True)
    return ids[np.lexsort((ids, -np.floor(np.log2(counts))))].astype(np.int32)


def pack_order(order: np.ndarray) -> bytes:
    """4-byte little-endian count, then the order's int32 deltas, byte-planed and zstd-compressed."""
    deltas = np.diff(order.astype(np.int64), prepend=0).astype("<i4").view("<u4")
    planes = np.stack([(deltas >> (8 * b)) & 0xFF for b in range(4)]).astype(np.uint8)
    return len(order).to_bytes(4, "little") + pa.Codec("zstd", 19).compress(planes.tobytes(), asbytes=True)


def unpack_order(blob: bytes) -> np.ndarray:
    n = int.from_bytes(blob[:4], "little")
    planes = np.frombuffer(pa.Codec("zstd").decompress(blob[4:], decompressed_size=4 * n, asbytes=True),
                           dtype=np.uint8).reshape(4, n).astype(np.uint32)
    deltas = sum(planes[b] << np.uint32(8 * b) for b in range(4)).view(np.int32)
    return np.cumsum(deltas, dtype=np.int64).astype(np.int32)


def encode(token_ids: np.ndarray, token_logprobs: np.ndarray, topk_ids: np.ndarray, topk_logprobs: np.ndarray,
           rank_of: np.ndarray) -> dict:
    """One sample ([P] sampled ids and logprobs, [P, k] top-k) -> the teacher_topk columns.
    `rank_of[id]` is the id's rank in the shard's id order."""
    k = topk_ids.shape[1]
    tokens = np.asarray(token_ids)
    ranks = rank_of[topk_ids.ravel()]
    q = np.maximum.accumulate(quantize(topk_logprobs).astype(np.int64), axis=1)  # float ties may round out of order
    gaps = np.diff(q, axis=1, prepend=0).ravel()
    hit = topk_ids == tokens[:, None]
    index = np.where(hit.any(axis=1), hit.argmax(axis=1), k)
    off = index == k
    return {
        "k": k,
        "sampled_index": index.astype(np.uint16),
        "sampled_off_ids": tokens[off].astype(np.int32),
        "sampled_off_logprobs_q": quantize(np.asarray(token_logprobs)[off]),
        "topk_ranks_hi": (ranks >> 8).astype(np.uint16),
        "topk_ranks_lo": (ranks & 0xFF).astype(np.uint8),
        "topk_logprobs_q": np.minimum(gaps, ESCAPE).astype(np.uint8),
        "topk_logprobs_big": np.minimum(gaps[gaps >= ESCAPE], MAX_Q).astype(np.uint16),
    }


def decode(row: dict, order: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """teacher_topk row + its file's id order -> (token ids [P], sampled logprobs [P] float32,
    top-k ids [P, k] int64, top-k logprobs [P, k] float32)."""
    k = int(row["k"])
    index = np.asarray(row["sampled_index"], dtype=np.int64)
    P = len(index)
    ranks = (np.asarray(row["topk_ranks_hi"], dtype=np.int64) << 8) | np.asarray(row["topk_ranks_lo"], dtype=np.int64)
    ids = np.asarray(order, dtype=np.int64)[ranks].reshape(P, k)
    gaps = np.asarray(row["topk_logprobs_q"], dtype=np.int64)
    gaps[gaps == ESCAPE] = np.asarray(row["topk_logprobs_big"], dtype=np.int64)
    logprobs = (np.cumsum(gaps.reshape(P, k), axis=1) * -STEP).astype(np.float32)
    off = index == k
    rows = np.flatnonzero(~off)
    tokens = np.empty(P, dtype=np.int64)
    sampled = np.empty(P, dtype=np.float32)
    tokens[rows], sampled[rows] = ids[rows, index[rows]], logprobs[rows, index[rows]]
    tokens[off] = np.asarray(row["sampled_off_ids"], dtype=np.int64)
    sampled[off] = dequantize(row["sampled_off_logprobs_q"])
    return tokens, sampled, ids, logprobs


def write_part(rows: list[dict], path: Path, schema: pa.Schema) -> None:
    """Encode one shard's samples (raw arrays: sample_id, token_ids, token_logprobs, topk_ids,
    topk_logprobs) with the shard's id order, and write them to `path` (the caller renames)."""
    order = id_order([r["topk_ids"] for r in rows])
    rank_of = np.zeros(int(order.max()) + 1, dtype=np.int64)
    rank_of[order] = np.arange(len(order))
    encoded = [{"sample_id": r["sample_id"], **encode(r["token_ids"], r["token_logprobs"], r["topk_ids"],
                                                      r["topk_logprobs"], rank_of)} for r in rows]
    with pq.ParquetWriter(path, schema, compression="zstd", compression_level=9, store_schema=False) as writer:
        writer.write_table(pa.Table.from_pylist(encoded, schema=schema))
        writer.add_key_value_metadata({ORDER_KEY: pack_order(order)})


def read_traces(gen_dir: Path, wanted, k: int):
    """Teacher traces with their top-k: (sample_id, prompt_id, prompt ids, completion ids [P],
    sampled-token logprobs [P], top-k ids [P, k], top-k logprobs [P, k]) for every sample
    `wanted(sample_id, split)` accepts, one generation /
    teacher_topk part pair in memory at a time. A missing sidecar, or top-k arrays that do not fit
    together or hold fewer than k candidates, is a one-line error naming the file."""
    for part in sorted((gen_dir / "generations").glob("part-*.parquet")):
        gens = open_table(GENERATIONS, part).read(columns=["sample_id", "split", "prompt_id", "prompt_token_ids"])
        prompts = {s: (pid, p) for s, split, pid, p in zip(*(gens[c].to_pylist() for c in gens.column_names))
                   if wanted(s, split)}
        if not prompts:
            continue
        sidecar = gen_dir / "teacher_topk" / part.name
        if not sidecar.is_file():
            raise PipelineError(f"{sidecar}: missing: the teacher_topk sidecar of {part} (selected samples need it)")
        table, order = read_part(sidecar)
        for row in table.to_pylist():
            sid = row["sample_id"]
            if sid not in prompts:
                continue
            try:
                tokens, sampled, ids, lps = decode(row, order)
            except (ValueError, IndexError):
                raise PipelineError(f"{sidecar}: sample {sid}: top-k arrays do not match its "
                                    f"{len(row['sampled_index'])} tokens") from None
            if ids.shape[1] < k:
                raise PipelineError(f"{sidecar}: sample {sid}: top-k holds {ids.shape[1]} candidates per token "
                                    f"(need >= {k})")
            yield sid, *prompts[sid], tokens, sampled, ids[:, :k], lps[:, :k]


def read_part(path: str | Path) -> tuple[pa.Table, np.ndarray]:
    """A teacher_topk part, checked against the schema (a part in another layout is a one-line
    error naming it), and the id order its rows decode with."""
    f = open_table(TEACHER_TOPK, path)
    order = (f.metadata.metadata or {}).get(ORDER_KEY)
    if order is None:
        raise PipelineError(f"{path}: no {ORDER_KEY.decode()} in its Parquet metadata (not written by distill generate)")
    return f.read(), unpack_order(order)
