"""The compiled passes over UTF-8 text: pipeline.minhash.signatures and
pipeline.scripts.script_letters (see those modules for what they compute). numba, which vLLM
already depends on, compiles them once and caches them in __pycache__; they release the GIL, so
threads run them on every core. Imported only when first used: once numba has loaded LLVM,
starting a vLLM engine in the same process fails (its kernel registry scans every module's
globals and trips over llvmlite's library wrapper)."""
import numba
import numpy as np

from pipeline.minhash import ALONE
from pipeline.scripts import INHERITED

_jit = numba.njit(nogil=True, cache=True)
DOLLAR, BACKSLASH, BACKTICK, NEWLINE = 36, 92, 96, 10


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
            cp, pos = _decode(data, pos)
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
    (code point -> class) and each text's own script class `own` [n] -> out [n, 2] = (letters,
    letters outside `own` and INHERITED)."""
    for i in range(offsets.shape[0] - 1):
        pos, end = offsets[i], offsets[i + 1] if valid[i] else offsets[i]
        letters, inside = 0, 0
        while pos < end:
            b = data[pos]
            if b == DOLLAR or b == BACKSLASH or b == BACKTICK:
                pos = _skip_cut(data, pos, end)
                continue
            cp, pos = _decode(data, pos)
            cls = table[cp]
            if cls != 0:
                letters += 1
                if cls == own[i] or cls == INHERITED:
                    inside += 1
        out[i, 0] = letters
        out[i, 1] = letters - inside
