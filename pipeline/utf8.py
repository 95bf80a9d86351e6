"""What the compiled text passes (pipeline.kernels) share: an Arrow string array as the raw
buffers they walk, and every code point as a string, from which the character tables are built
with Arrow's own kernels (RE2 classes, utf8_lower, utf8_is_space)."""
from __future__ import annotations

import functools
import threading

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc


def buffers(texts: pa.Array) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """[n] strings -> (UTF-8 bytes, offsets [n + 1] into them, valid [n]); a null reads as empty."""
    texts = pc.cast(texts, pa.large_string())
    n = len(texts)
    _, offsets, data = texts.buffers()
    offsets = np.frombuffer(offsets, dtype=np.int64)[texts.offset:texts.offset + n + 1]
    data = np.frombuffer(data, dtype=np.uint8) if data is not None else np.zeros(0, np.uint8)
    valid = np.ones(n, dtype=np.bool_) if texts.null_count == 0 else pc.is_valid(texts).to_numpy(zero_copy_only=False)
    return data, offsets, valid


def table(build):
    """functools.cache for a character table built once per process, locked: DuckDB calls the
    compiled passes' Python functions from several threads at once, and each would build it."""
    cached, lock = functools.cache(build), threading.Lock()

    @functools.wraps(build)
    def get():
        with lock:
            return cached()

    return get


@table
def codepoints() -> tuple[np.ndarray, pa.Array]:
    """Every code point but the surrogates, as numbers and as one-character strings."""
    cps = np.concatenate([np.arange(0xD800), np.arange(0xE000, 0x110000)]).astype("<u4")
    data = cps.tobytes().decode("utf-32-le").encode()  # built from buffers: a list of 1.1M strings takes 0.5 s
    sizes = np.select([cps < 0x80, cps < 0x800, cps < 0x10000], [1, 2, 3], 4)
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int32)
    return cps, pa.StringArray.from_buffers(len(cps), pa.py_buffer(offsets), pa.py_buffer(data))
