"""Near-duplicate signatures shared by clean (sql/near_duplicate.sql) and augment: one-permutation
MinHash over word shingles, computed in one compiled pass over each text's UTF-8 bytes.

Words are lowercased and split on whitespace, and every character of a script written without
spaces (SPACELESS) is a word of its own, so a Chinese text is not one long word that any changed
character makes new. A word is hashed with 64-bit FNV-1a over its code points (stable across runs
and machines); a shingle is a weighted sum of k consecutive word hashes (the seeded odd multipliers
of shingle_mix) mixed by splitmix64's finalizer; its low 32 bits pick one of `bins` bins and its
high 32 bits are the value that bin keeps at its minimum (Li, Owen and Zhang 2012): one hash per shingle instead of one per
shingle and permutation. A text shorter than k words is one shingle; a bin no shingle reached
holds 2**32 - 1. Equal bins between two texts estimate their Jaccard similarity.
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline import utf8

# Scripts written without spaces between words (Chinese, Japanese, Thai, Lao, Khmer, Burmese), as
# in sql/contaminated.sql. ー (U+30FC, U+FF70 half-width) lengthens a katakana vowel but is a
# Common letter, not Katakana. RE2 syntax: the character tables below are built with Arrow's
# kernels, so lowercasing and whitespace are exactly utf8_lower's and utf8_split_whitespace's.
SPACELESS = r"[\p{Han}\p{Hiragana}\p{Katakana}\x{30FC}\x{FF70}\p{Thai}\p{Lao}\p{Khmer}\p{Myanmar}]"
EMPTY_BIN = np.iinfo(np.uint32).max
SPACE, ALONE = 1, 2  # character classes of the kind table: a separator, a character that is a word alone


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
    data, offsets, valid = utf8.buffers(texts)
    # imported here, not at the top: once numba has loaded LLVM, starting a vLLM engine in the same
    # process fails (its kernel registry scans every module's globals and trips over llvmlite's
    # library wrapper), and `clean`, `augment` and the tests import this module before engines start
    from pipeline.kernels import signatures_into

    lower, kind = _character_tables()
    out = np.full((len(offsets) - 1, bins), EMPTY_BIN, dtype=np.uint32)
    signatures_into(data, offsets, valid, lower, kind, np.ascontiguousarray(mix, np.uint64), out)
    return out


@utf8.table
def _character_tables() -> tuple[np.ndarray, np.ndarray]:
    """Per code point: its lowercase (Arrow's utf8_lower, one code point to one) and its class
    (SPACE for utf8_split_whitespace's separators, ALONE for SPACELESS)."""
    cps, chars = utf8.codepoints()
    lowered = pc.utf8_lower(chars)
    if pc.any(pc.not_equal(pc.utf8_length(lowered), 1)).as_py():
        raise RuntimeError("utf8_lower maps a code point to several; the table needs one to one")
    lower = np.arange(0x110000, dtype=np.int32)
    lower[cps] = np.frombuffer(_utf8(lowered).decode().encode("utf-32-le"), dtype="<u4")
    kind = np.zeros(0x110000, dtype=np.uint8)
    kind[cps[pc.utf8_is_space(chars).to_numpy(zero_copy_only=False)]] = SPACE
    kind[cps[pc.match_substring_regex(chars, SPACELESS).to_numpy(zero_copy_only=False)]] = ALONE
    return lower, kind


def _utf8(strings: pa.Array) -> bytes:
    """The UTF-8 bytes of a string array's values, end to end."""
    offsets = np.frombuffer(strings.buffers()[1], dtype=np.int32)[strings.offset:strings.offset + len(strings) + 1]
    return strings.buffers()[2].to_pybytes()[offsets[0]:offsets[-1]]
