"""The compiled passes over UTF-8 text: pipeline.minhash.signatures and
pipeline.scripts.script_letters (see those modules for what they compute). numba, which vLLM
already depends on, compiles them once and caches them in __pycache__; they release the GIL, so
threads run them on every core. Imported only when first used: once numba has loaded LLVM,
starting a vLLM engine in the same process fails (its kernel registry scans every module's
globals and trips over llvmlite's library wrapper)."""
import numba
import numpy as np

from pipeline.minhash import ALONE
from pipeline.scripts import CUT, INHERITED

_jit = numba.njit(nogil=True, cache=True)
DOLLAR, BACKSLASH, BACKTICK, NEWLINE = 36, 92, 96, 10  # bytes that open or close a cut


@_jit
def _decode(data, pos):
    """The code point whose UTF-8 bytes start at data[pos], and the position after them."""
    b0 = np.int64(data[pos])
    if b0 < 0x80:
        return b0, pos + 1
    if b0 < 0xE0:
        return ((b0 & 0x1F) << 6) | (np.int64(data[pos + 1]) & 0x3F), pos + 2
    if b0 < 0xF0:
        return (((b0 & 0x0F) << 12) | ((np.int64(data[pos + 1]) & 0x3F) << 6)
                | (np.int64(data[pos + 2]) & 0x3F)), pos + 3
    return (((b0 & 0x07) << 18) | ((np.int64(data[pos + 1]) & 0x3F) << 12)
            | ((np.int64(data[pos + 2]) & 0x3F) << 6) | (np.int64(data[pos + 3]) & 0x3F)), pos + 4


FNV_OFFSET, FNV_PRIME = np.uint64(0xCBF29CE484222325), np.uint64(0x100000001B3)


@_jit
def _fnv(h, cp):
    """64-bit FNV-1a, a code point at a time: a multiply's latency per character, where crc32's
    table walk took a load's per byte."""
    return (h ^ np.uint64(cp)) * FNV_PRIME


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
def signatures_into(data, offsets, valid, lower, kind, mix, out):
    """Texts as UTF-8 `data` [bytes] and `offsets` [n + 1] (`valid` [n]: false reads as empty) ->
    each bin of `out` [n, bins], filled with 2**32 - 1, lowered to its minimum."""
    k = mix.shape[0]
    window = np.zeros(k, dtype=np.uint64)
    for i in range(offsets.shape[0] - 1):
        pos, end = offsets[i], offsets[i + 1] if valid[i] else offsets[i]
        words, h, in_word = 0, FNV_OFFSET, False
        while pos < end:
            cp, pos = _decode(data, pos)
            cp = np.int64(lower[cp])
            cls = kind[cp]
            if cls == 0:
                h = _fnv(h, cp)
                in_word = True
                continue
            if in_word:  # a separator or a character that is a word alone ends the word
                words = _push(window, words, h, mix, out, i)
                h, in_word = FNV_OFFSET, False
            if cls == ALONE:
                words = _push(window, words, _fnv(FNV_OFFSET, cp), mix, out, i)
        if in_word:
            words = _push(window, words, h, mix, out, i)
        if words < k:  # shorter than a shingle: one shingle, its words then zeros
            h = np.uint64(0)
            for j in range(words):
                h += window[k - words + j] * mix[j]
            _keep_min(h, out, i)


# ---------------------------------------------------------------------------------------------
# script_letters


@_jit
def _find(data, pos, end, byte, stop):
    """The first index in [pos, end) holding `byte` or `stop`, else -1."""
    while pos < end:
        if data[pos] == byte or data[pos] == stop:
            return pos
        pos += 1
    return -1


@_jit
def _find_pair(data, pos, end, first, second):
    """The first index in [pos, end - 1) where `first` is followed by `second`, else -1."""
    while pos + 1 < end:
        if data[pos] == first and data[pos + 1] == second:
            return pos
        pos += 1
    return -1


@_jit
def _is_ascii_letter(b):
    return (65 <= b <= 90) or (97 <= b <= 122)


@_jit
def _skip_cut(data, pos, end):
    """Where the scan resumes after a cut (LaTeX or code) that starts at pos, or pos itself when
    none does. RE2's leftmost-first order: $$...$$, $...$ (one line), \\(...\\), \\[...\\], `...`,
    \\command; a $, \\ or ` that opens none of them goes alone."""
    b = data[pos]
    if b == DOLLAR:
        if pos + 1 < end and data[pos + 1] == DOLLAR:
            j = _find(data, pos + 2, end, DOLLAR, DOLLAR)
            if j >= 0 and j + 1 < end and data[j + 1] == DOLLAR:
                return j + 2
            return pos + 2  # '$$' is also $...$ with nothing between
        j = _find(data, pos + 1, end, DOLLAR, NEWLINE)
        return j + 1 if j >= 0 and data[j] == DOLLAR else pos + 1
    if b == BACKSLASH:
        if pos + 1 < end:
            c = data[pos + 1]
            if c == 40 or c == 91:  # \( or \[, closed by \) or \]
                j = _find_pair(data, pos + 2, end, BACKSLASH, 41 if c == 40 else 93)
                return j + 2 if j >= 0 else pos + 1
            if _is_ascii_letter(c):
                pos += 2
                while pos < end and _is_ascii_letter(data[pos]):
                    pos += 1
                return pos
        return pos + 1
    if b == BACKTICK:
        j = _find(data, pos + 1, end, BACKTICK, BACKTICK)
        return j + 1 if j >= 0 else pos + 1
    return pos


@_jit
def count_letters(data, offsets, valid, table, own, out):
    """Texts as UTF-8 `data` and `offsets` [n + 1] (`valid` [n]: false reads as empty), `table`
    (code point -> class; CUT for $, \\ and `) and each text's own script class `own` [n] ->
    out [n, 2] = (letters, letters outside `own` and INHERITED)."""
    for i in range(offsets.shape[0] - 1):
        pos, end = offsets[i], offsets[i + 1] if valid[i] else offsets[i]
        letters, inside, mine = 0, 0, own[i]
        while pos < end:
            b = data[pos]
            if b < 0x80:  # one lookup tells a letter, a non-letter and the start of a cut
                cls = table[b]
                if cls == CUT:
                    pos = _skip_cut(data, pos, end)
                    continue
                pos += 1
            else:
                cp, pos = _decode(data, pos)
                cls = table[cp]
            # counted without a branch: letters and spaces alternate too often to predict
            letters += cls != 0
            inside += (cls == mine) | (cls == INHERITED)
        out[i, 0] = letters
        out[i, 1] = letters - inside
