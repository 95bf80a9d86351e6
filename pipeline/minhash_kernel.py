"""The compiled pass of pipeline.minhash.signatures (see that module for what it computes).
numba, which vLLM already depends on, compiles it once and caches it in __pycache__; it releases
the GIL, so a thread pool hashes a batch on every core. Imported only when first used (see
pipeline.minhash.signatures)."""
import numba
import numpy as np

from pipeline.minhash import ALONE

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
def signatures_into(data, offsets, valid, lower, kind, crc, mix, out):
    """Texts as UTF-8 `data` [bytes] and `offsets` [n + 1] (`valid` [n]: false reads as empty) ->
    each bin of `out` [n, bins], filled with 2**32 - 1, lowered to its minimum."""
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
            if cls == ALONE:
                words = _push(window, words, np.uint64(_crc_char(crc, np.int64(0xFFFFFFFF), cp) ^ 0xFFFFFFFF),
                             mix, out, i)
        if in_word:
            words = _push(window, words, np.uint64(reg ^ 0xFFFFFFFF), mix, out, i)
        if words < k:  # shorter than a shingle: one shingle, its words then zeros
            h = np.uint64(0)
            for j in range(words):
                h += window[k - words + j] * mix[j]
            _keep_min(h, out, i)
