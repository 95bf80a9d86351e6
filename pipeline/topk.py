"""Compact encoding of the teacher's top-k logprobs (the teacher_topk table).

Logprobs are quantized to a step of 0.02 (so the error is at most 0.01) as q = round(-logprob/step).
Top-k lists come best first, so q never decreases along k: storing the first q and then the gaps
gives small numbers that zstd packs tightly. Ids stay int32 (DeepSeek-R1's 129k vocabulary does
not fit 16 bits); Parquet's dictionary encoding plus zstd packs them. Measured by
`distill bench generate` (bytes_per_candidate).
"""
from __future__ import annotations

import numpy as np

STEP = 0.02
MAX_Q = np.iinfo(np.uint16).max  # logprobs below -1310 are clamped there: far past any useful mass


def quantize(logprobs: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(-np.asarray(logprobs, dtype=np.float64) / STEP), 0, MAX_Q).astype(np.uint16)


def dequantize(q: np.ndarray) -> np.ndarray:
    return (np.asarray(q, dtype=np.float32) * -STEP).astype(np.float32)


def encode(logprobs: np.ndarray) -> np.ndarray:
    """[P, k] best-first logprobs -> flat uint16: first q of each row, then non-negative gaps."""
    q = quantize(logprobs).astype(np.int64)
    q = np.maximum.accumulate(q, axis=1)  # float ties can round out of order; keep the gaps >= 0
    gaps = np.diff(q, axis=1, prepend=0)
    return np.minimum(gaps, MAX_Q).astype(np.uint16).ravel()


def decode(flat: np.ndarray, k: int) -> np.ndarray:
    """Inverse of encode: flat uint16 -> [P, k] float32 logprobs."""
    q = np.cumsum(np.asarray(flat, dtype=np.int64).reshape(-1, k), axis=1)
    return (q * -STEP).astype(np.float32)
