"""Compact encoding of the teacher's top-k logprobs (the teacher_topk table), about 2 bytes per
candidate instead of 8 for int32 ids + float32 logprobs. Measured by `distill bench generate`.

- Logprobs are quantized with a step of 0.02 (error at most 0.01): q = round(-logprob / 0.02).
  Top-k lists come best first, so q never decreases along k: each row stores its first q and
  then the gaps, small numbers kept as uint8 with 255 meaning "see `topk_logprobs_big`".
- Ids are replaced by their rank in the shard's id order (distinct ids, most frequent first,
  kept in the Parquet file's metadata), written as a byte-planed blob (all high bytes, then all
  low bytes), so the many small ranks become long runs of zero bytes that zstd packs tightly.
- The sampled token's logprob is stored only where that token is not among the top k; elsewhere
  it is the top-k entry's.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.errors import PipelineError
from pipeline.files import open_table
from pipeline.schema import GENERATIONS

STEP = 0.02
MAX_Q = np.iinfo(np.uint16).max  # logprobs below -1310 are clamped there: far past any useful mass
ESCAPE = 255
ORDER_KEY = b"topk_id_order"  # Parquet schema metadata: zstd-compressed int32 ids, most frequent first


def quantize(logprobs: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(-np.asarray(logprobs, dtype=np.float64) / STEP), 0, MAX_Q).astype(np.uint16)


def dequantize(q: np.ndarray) -> np.ndarray:
    return (np.asarray(q, dtype=np.float32) * -STEP).astype(np.float32)


def id_order(id_arrays: list[np.ndarray]) -> np.ndarray:
    """Distinct ids of a shard, most frequent first."""
    ids, counts = np.unique(np.concatenate([a.ravel() for a in id_arrays]), return_counts=True)
    return ids[np.argsort(-counts, kind="stable")].astype(np.int32)


def pack_order(order: np.ndarray) -> bytes:
    """4-byte little-endian count, then the zstd-compressed int32 ids."""
    raw = order.astype("<i4").tobytes()
    return len(order).to_bytes(4, "little") + pa.Codec("zstd").compress(raw, asbytes=True)


def unpack_order(blob: bytes) -> np.ndarray:
    n = int.from_bytes(blob[:4], "little")
    return np.frombuffer(pa.Codec("zstd").decompress(blob[4:], decompressed_size=4 * n, asbytes=True), dtype="<i4")


def encode(token_ids: np.ndarray, token_logprobs: np.ndarray, topk_ids: np.ndarray, topk_logprobs: np.ndarray,
           rank_of: np.ndarray, planes: int) -> dict:
    """One sample ([P] sampled ids and logprobs, [P, k] top-k) -> the teacher_topk columns.
    `rank_of[id]` is the id's rank in the shard's id order; `planes` bytes hold each rank."""
    k = topk_ids.shape[1]
    ranks = rank_of[topk_ids.ravel()]
    blob = np.stack([(ranks >> (8 * b)) & 0xFF for b in reversed(range(planes))]).astype(np.uint8).tobytes()
    q = np.maximum.accumulate(quantize(topk_logprobs).astype(np.int64), axis=1)  # float ties may round out of order
    gaps = np.diff(q, axis=1, prepend=0).ravel()
    in_topk = (topk_ids == np.asarray(token_ids)[:, None]).any(axis=1)
    return {
        "k": k,
        "token_ids": np.asarray(token_ids, dtype=np.int32),
        "token_logprobs_q": quantize(np.asarray(token_logprobs)[~in_topk]),
        "topk_ids": blob,
        "topk_logprobs_q": np.minimum(gaps, ESCAPE).astype(np.uint8),
        "topk_logprobs_big": np.minimum(gaps[gaps >= ESCAPE], MAX_Q).astype(np.uint16),
    }


def decode(row: dict, order: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """teacher_topk row + its file's id order -> (token ids [P], sampled logprobs [P] float32,
    top-k ids [P, k] int64, top-k logprobs [P, k] float32)."""
    k = int(row["k"])
    tokens = np.asarray(row["token_ids"], dtype=np.int64)
    P = len(tokens)
    raw = np.frombuffer(row["topk_ids"], dtype=np.uint8)
    planes = len(raw) // max(P * k, 1)
    ranks = np.zeros(P * k, dtype=np.int64)
    for plane in raw.reshape(planes, P * k):
        ranks = (ranks << 8) | plane
    ids = np.asarray(order, dtype=np.int64)[ranks].reshape(P, k)
    gaps = np.asarray(row["topk_logprobs_q"], dtype=np.int64)
    gaps[gaps == ESCAPE] = np.asarray(row["topk_logprobs_big"], dtype=np.int64)
    logprobs = (np.cumsum(gaps.reshape(P, k), axis=1) * -STEP).astype(np.float32)
    hit = ids == tokens[:, None]
    in_topk = hit.any(axis=1)
    sampled = np.empty(P, dtype=np.float32)
    sampled[in_topk] = logprobs[in_topk, hit[in_topk].argmax(axis=1)]
    sampled[~in_topk] = dequantize(row["token_logprobs_q"])
    return tokens, sampled, ids, logprobs


def write_part(rows: list[dict], path: Path, schema: pa.Schema) -> None:
    """Encode one shard's samples (raw arrays: sample_id, token_ids, token_logprobs, topk_ids,
    topk_logprobs) with the shard's id order, and write them to `path` (the caller renames)."""
    order = id_order([r["topk_ids"] for r in rows])
    rank_of = np.zeros(int(order.max()) + 1, dtype=np.int64)
    rank_of[order] = np.arange(len(order))
    planes = 2 if len(order) <= 1 << 16 else 3
    encoded = [{"sample_id": r["sample_id"], **encode(r["token_ids"], r["token_logprobs"], r["topk_ids"],
                                                      r["topk_logprobs"], rank_of, planes)} for r in rows]
    table = pa.Table.from_pylist(encoded, schema=schema).replace_schema_metadata({ORDER_KEY: pack_order(order)})
    pq.write_table(table, path, compression="zstd", compression_level=9)


def read_traces(gen_dir: Path, wanted, k: int):
    """Teacher traces with their top-k: (sample_id, prompt ids, completion ids [P], top-k ids [P, k],
    top-k logprobs [P, k]) for every sample `wanted(sample_id, split)` accepts, one generation /
    teacher_topk part pair in memory at a time. A missing sidecar, or top-k arrays that do not fit
    the tokens or hold fewer than k candidates, is a one-line error naming the file."""
    for part in sorted((gen_dir / "generations").glob("part-*.parquet")):
        gens = open_table(GENERATIONS, part).read(columns=["sample_id", "split", "prompt_token_ids"])
        prompts = {s: p for s, split, p in zip(*(gens[c].to_pylist() for c in gens.column_names))
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
                tokens, _, ids, lps = decode(row, order)
            except (ValueError, IndexError):
                raise PipelineError(f"{sidecar}: sample {sid}: top-k arrays do not match its "
                                    f"{len(row['token_ids'])} tokens") from None
            if ids.shape[0] != len(tokens) or ids.shape[1] < k:
                raise PipelineError(f"{sidecar}: sample {sid}: top-k is {ids.shape[0]} x {ids.shape[1]} for "
                                    f"{len(tokens)} tokens (need one row of >= {k} per token)")
            yield sid, prompts[sid], tokens, ids[:, :k], lps[:, :k]


def read_part(path: str | Path) -> tuple[pa.Table, np.ndarray]:
    """A teacher_topk part and the id order its rows decode with."""
    table = pq.read_table(path)
    return table, unpack_order(table.schema.metadata[ORDER_KEY])
