"""Near-duplicate signatures shared by clean (sql/near_duplicate.sql) and augment: one-permutation
MinHash over word shingles, computed in one compiled pass over each text's UTF-8 bytes.

Words are lowercased and split on whitespace, and every character of a script written without
spaces (SPACELESS) is a word of its own, so a Chinese text is not one long word that any changed
character makes new. A word is hashed with crc32 (stable across runs and machines); a shingle is
a weighted sum of k consecutive word hashes (the seeded odd multipliers of shingle_mix) mixed by
splitmix64's finalizer; its low 32 bits pick one of `bins` bins and its high 32 bits are the value
that bin keeps at its minimum (Li, Owen and Zhang 2012): one hash per shingle instead of one per
shingle and permutation. A text shorter than k words is one shingle; a bin no shingle reached
holds 2**32 - 1. Equal bins between two texts estimate their Jaccard similarity.
"""
from __future__ import annotations

import functools

import numba
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

# Scripts written without spaces between words (Chinese, Japanese, Thai, Lao, Khmer, Burmese), as
# in sql/contaminated.sql. ー (U+30FC, U+FF70 half-width) lengthens a katakana vowel but is a
# Common letter, not Katakana. RE2 syntax: the character tables below are built with Arrow's
# kernels, so lowercasing and whitespace are exactly utf8_lower's and utf8_split_whitespace's.
SPACELESS = r"[\p{Han}\p{Hiragana}\p{Katakana}\x{30FC}\x{FF70}\p{Thai}\p{Lao}\p{Khmer}\p{Myanmar}]"
EMPTY_BIN = np.iinfo(np.uint32).max
_SPACE, _ALONE = 1, 2  # character classes in the table


def shingle_mix(shingle: int, seed: int) -> np.ndarray:
    """The seeded odd multipliers that weigh a shingle's word hashes."""
    rng = np.random.default_rng(seed)
    return rng.integers(1, 2**63, size=shingle, dtype=np.uint64) | np.uint64(1)


def estimated_jaccard(a: np.ndarray, b: np.ndarray) -> float:
    """Two signatures' Jaccard estimate, as sql/near_duplicate.sql takes it: equal bins over the
    bins not empty in both (a bin empty in both says nothing about short texts)."""
    informative = (a < EMPTY_BIN) | (b < EMPTY_BIN)
    return float(((a == b) & informative).sum() / max(informative.sum(), 1))


def lsh_params(threshold: float, num_perm: int) -> tuple[int, int]:
    """(bands, rows) with bands*rows = num_perm whose S-curve midpoint (1/b)^(1/r) is the highest
    below threshold - 0.05: pairs at the threshold are found with high probability, and the
    signature's Jaccard estimate removes the false candidates."""
    options = [(num_perm // r, r) for r in range(1, num_perm + 1) if num_perm % r == 0]
    below = [(b, r) for b, r in options if (1 / b) ** (1 / r) <= threshold - 0.05]
    return max(below, key=lambda br: (1 / br[0]) ** (1 / br[1])) if below else options[-1]


def signatures(texts: pa.Array, mix: np.ndarray, bins: int) -> np.ndarray:
    """[n] texts (a null is an empty text) -> [n, bins] uint32 signatures (see the module)."""
    texts = pc.cast(texts, pa.large_string())
    n = len(texts)
    _, offsets, data = texts.buffers()
    offsets = np.frombuffer(offsets, dtype=np.int64)[texts.offset:texts.offset + n + 1]
    data = np.frombuffer(data, dtype=np.uint8) if data is not None else np.zeros(0, np.uint8)
    valid = np.ones(n, dtype=np.bool_) if texts.null_count == 0 else \
        pc.is_valid(texts).to_numpy(zero_copy_only=False)
    lower, kind = _character_tables()
    out = np.full((n, bins), EMPTY_BIN, dtype=np.uint32)
    _kernel(data, offsets, valid, lower, kind, _crc_table(), np.ascontiguousarray(mix, np.uint64), out)
    return out


@functools.cache
def _character_tables() -> tuple[np.ndarray, np.ndarray]:
    """Per code point: its lowercase (Arrow's utf8_lower, one code point to one) and its class
    (_SPACE for utf8_split_whitespace's separators, _ALONE for SPACELESS after lowercasing)."""
    cps = np.concatenate([np.arange(0xD800), np.arange(0xE000, 0x110000)]).astype("<u4")
    chars = pa.array(list(cps.tobytes().decode("utf-32-le")), pa.string())
    lowered = pc.utf8_lower(chars)
    if pc.any(pc.not_equal(pc.utf8_length(lowered), 1)).as_py():
        raise RuntimeError("utf8_lower maps a code point to several; the table needs one to one")
    lower = np.arange(0x110000, dtype=np.int32)
    lower[cps] = np.frombuffer(_utf8(lowered).decode().encode("utf-32-le"), dtype="<u4")
    kind = np.zeros(0x110000, dtype=np.uint8)
    kind[cps[pc.utf8_is_space(chars).to_numpy(zero_copy_only=False)]] = _SPACE
    kind[cps[pc.match_substring_regex(chars, SPACELESS).to_numpy(zero_copy_only=False)]] = _ALONE
    return lower, kind


def _utf8(strings: pa.Array) -> bytes:
    """The UTF-8 bytes of a string array's values, end to end."""
    offsets = np.frombuffer(strings.buffers()[1], dtype=np.int32)[strings.offset:strings.offset + len(strings) + 1]
    return strings.buffers()[2].to_pybytes()[offsets[0]:offsets[-1]]


@functools.cache
def _crc_table() -> np.ndarray:
    """zlib's crc32, a byte at a time: table[b] is the register after shifting b through it."""
    table = np.arange(256, dtype=np.uint32)
    for _ in range(8):
        table = np.where(table & 1, (table >> 1) ^ np.uint32(0xEDB88320), table >> 1).astype(np.uint32)
    return table.astype(np.int64)


# The compiled pass: numba (which vLLM already depends on) compiles it once and caches it in
# __pycache__; it releases the GIL, so a thread pool hashes a batch on every core.
_jit = numba.njit(nogil=True, cache=True)


@_jit
def _crc_char(crc, reg, cp):
    """reg (crc32's register) after cp's UTF-8 bytes."""
    if cp < 0x80:
        reg = crc[(reg ^ cp) & 0xFF] ^ (reg >> 8)
        return reg
    if cp < 0x800:
        lead, size = 0xC0 | (cp >> 6), 2
    elif cp < 0x10000:
        lead, size = 0xE0 | (cp >> 12), 3
    else:
        lead, size = 0xF0 | (cp >> 18), 4
    reg = crc[(reg ^ lead) & 0xFF] ^ (reg >> 8)
    for shift in range(6 * (size - 2), -1, -6):
        reg = crc[(reg ^ (0x80 | ((cp >> shift) & 0x3F))) & 0xFF] ^ (reg >> 8)
    return reg


@_jit
def _keep_min(h, out, i):
    """Mix a shingle's sum (splitmix64's finalizer: every output bit depends on every input
    bit); its low 32 bits pick the bin (multiply-shift, no division), its high 32 bits are the
    value."""
    h ^= h >> np.uint64(31)
    h *= np.uint64(0xBF58476D1CE4E5B9)
    h ^= h >> np.uint64(27)
    h *= np.uint64(0x94D049BB133111EB)
    h ^= h >> np.uint64(31)
    b = np.int64(((h & np.uint64(0xFFFFFFFF)) * np.uint64(out.shape[1])) >> np.uint64(32))
    v = np.uint32(h >> np.uint64(32))
    out[i, b] = min(out[i, b], v)


@_jit
def _push(window, words, word_hash, mix, out, i):
    """Shift a word into the window (the last k words, oldest first); once k words are in, each
    word completes the shingle it ends."""
    k = mix.shape[0]
    for j in range(k - 1):
        window[j] = window[j + 1]
    window[k - 1] = word_hash
    words += 1
    if words >= k:
        h = np.uint64(0)
        for j in range(k):
            h += window[j] * mix[j]
        _keep_min(h, out, i)
    return words


@_jit
def _kernel(data, offsets, valid, lower, kind, crc, mix, out):
    k = mix.shape[0]
    window = np.zeros(k, dtype=np.uint64)
    for i in range(offsets.shape[0] - 1):
        pos, end = offsets[i], offsets[i + 1] if valid[i] else offsets[i]
        words, reg, in_word = 0, np.int64(0xFFFFFFFF), False
        while pos < end:
            b0 = np.int64(data[pos])
            if b0 < 0x80:
                cp, pos = b0, pos + 1
            elif b0 < 0xE0:
                cp, pos = ((b0 & 0x1F) << 6) | (np.int64(data[pos + 1]) & 0x3F), pos + 2
            elif b0 < 0xF0:
                cp = ((b0 & 0x0F) << 12) | ((np.int64(data[pos + 1]) & 0x3F) << 6) | (np.int64(data[pos + 2]) & 0x3F)
                pos += 3
            else:
                cp = (((b0 & 0x07) << 18) | ((np.int64(data[pos + 1]) & 0x3F) << 12)
                      | ((np.int64(data[pos + 2]) & 0x3F) << 6) | (np.int64(data[pos + 3]) & 0x3F))
                pos += 4
            cp = np.int64(lower[cp])
            cls = kind[cp]
            if cls == 0:
                reg = _crc_char(crc, reg, cp)
                in_word = True
                continue
            if in_word:  # a separator or a character that is a word alone ends the word
                words = _push(window, words, np.uint64(reg ^ 0xFFFFFFFF), mix, out, i)
                reg, in_word = np.int64(0xFFFFFFFF), False
            if cls == _ALONE:
                words = _push(window, words, np.uint64(_crc_char(crc, np.int64(0xFFFFFFFF), cp) ^ 0xFFFFFFFF),
                             mix, out, i)
        if in_word:
            words = _push(window, words, np.uint64(reg ^ 0xFFFFFFFF), mix, out, i)
        if words < k:  # shorter than a shingle: one shingle, its words then zeros
            h = np.uint64(0)
            for j in range(words):
                h += window[k - words + j] * mix[j]
            _keep_min(h, out, i)
