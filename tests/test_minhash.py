"""MinHash signatures: the compiled pass against a naive Python reference, and what the estimate says."""
import random
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import regex

from pipeline import minhash

SPACELESS = regex.compile(r"[\p{Han}\p{Hiragana}\p{Katakana}\u30FC\uFF70\p{Thai}\p{Lao}\p{Khmer}\p{Myanmar}]")


def fnv1a(word: str) -> int:
    h = 0xCBF29CE484222325
    for c in word:
        h = (h ^ ord(c)) * 0x100000001B3 % 2**64
    return h


def naive_signatures(texts: list, mix: np.ndarray, bins: int) -> np.ndarray:
    """The definition, one text and one shingle at a time, in Python integers."""
    out = np.full((len(texts), bins), 2**32 - 1, dtype=np.uint32)
    for i, text in enumerate(texts):
        text = pc.utf8_lower(pa.array([text or ""]))[0].as_py()
        words = SPACELESS.sub(lambda m: f" {m.group()} ", text).split()
        hashes = [fnv1a(w) for w in words]
        k = len(mix)
        for window in [hashes[s:s + k] for s in range(len(hashes) - k + 1)] or [hashes]:
            h = sum(w * int(m) for w, m in zip(window, mix)) % 2**64
            h ^= h >> 31
            h = h * 0xBF58476D1CE4E5B9 % 2**64
            h ^= h >> 27
            h = h * 0x94D049BB133111EB % 2**64
            h ^= h >> 31
            b = (h % 2**32) * bins // 2**32
            out[i, b] = min(out[i, b], h >> 32)
    return out


def test_signatures_equal_the_naive_definition_on_mixed_scripts():
    rng = random.Random(0)
    alphabet = list("abcdefghij ABCDÉÀ") + ["\u3000", "\u00a0", "\x1c", "\t", "\n", "\x85", "\u2028", "İ", "Ⱥ",
                                             "ß", "Σ", "ς", "我", "们", "ー", "ｰ", "ド", "ก", "ข", "코", "😀", "\U00020000",
                                             "\x00"]
    texts = ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 60))) for _ in range(600)]
    texts += ["", " ", "a", "a b", "a b c d", "a b c d e", "我", "  x  ", None]
    mix = minhash.shingle_mix(5, 3)
    for bins in (128, 7):
        assert (minhash.signatures(pa.array(texts, pa.string()), mix, bins) == naive_signatures(texts, mix, bins)).all()
    sliced = pa.array(texts, pa.large_string()).slice(7, 50)  # an offset into a large_string array
    assert (minhash.signatures(sliced, mix, 64) == naive_signatures(texts[7:57], mix, 64)).all()


def test_signatures_estimate_jaccard():
    words = [f"w{i}" for i in range(400)]
    base = " ".join(words)
    changed = " ".join(w if i % 40 else "CHANGED" for i, w in enumerate(words))  # 10 of 400 words
    shingles = lambda t: {tuple(t.lower().split()[i:i + 5]) for i in range(len(t.split()) - 4)}  # noqa: E731
    true = len(shingles(base) & shingles(changed)) / len(shingles(base) | shingles(changed))
    mix = minhash.shingle_mix(5, 0)
    sig = minhash.signatures(pa.array([base, changed, "", "only three words", base.upper()]), mix, 256)
    assert sig.shape == (5, 256) and sig.dtype == np.uint32
    assert abs(minhash.estimated_jaccard(sig[0], sig[1]) - true) < 0.08
    assert (sig[0] == sig[4]).all()  # lowercased before hashing
    assert (sig[3] < 2**32 - 1).sum() == 1  # a text shorter than a shingle is one shingle


def test_stages_import_without_loading_numba():
    """A vLLM engine started after numba has loaded LLVM fails (its kernel registry trips over
    llvmlite's library wrapper), so the compiled pass is imported only when first used."""
    check = "import sys, pipeline.clean, pipeline.augment, pipeline.scripts; assert 'numba' not in sys.modules"
    subprocess.run([sys.executable, "-c", check], check=True)
