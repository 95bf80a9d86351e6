"""Letters by writing system, for sql/language_mix.sql: the DuckDB function
script_share(text, script) -> DOUBLE, the share of a text's letters outside `script` (NULL when it
has no letters), counted by script_letters in one compiled pass over each text's UTF-8 bytes (two
RE2 passes over every 2 KB completion took a quarter of `distill clean`).

`letters` are the text's letters and combining marks (\\p{L}\\p{M}) once LaTeX ($$...$$, $...$ on
one line, \\(...\\), \\[...\\], \\commands) and code in backticks are cut, exactly as the RE2
alternation '\\$\\$[^$]*\\$\\$|\\$[^$\\n]*\\$|\\\\\\((?s:.*?)\\\\\\)|\\\\\\[(?s:.*?)\\\\\\]|`[^`]*`|\\\\[a-zA-Z]+'
cuts them, scanning left to right; `outside` are those neither in `script` nor Inherited (the
marks every script shares). `script` is one of SCRIPTS; cjk is Han, Hiragana and Katakana with the
Common ー (U+30FC, U+FF70), since Japanese mixes kanji and kana. Script membership comes from RE2's
own tables (Arrow's match_substring_regex), the engine of the SQL that judges the prompts.
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from duckdb import sqltypes

from pipeline import utf8

SCRIPTS = {
    "latin": r"\p{Latin}", "cyrillic": r"\p{Cyrillic}", "greek": r"\p{Greek}", "armenian": r"\p{Armenian}",
    "georgian": r"\p{Georgian}", "arabic": r"\p{Arabic}", "hebrew": r"\p{Hebrew}",
    "devanagari": r"\p{Devanagari}", "bengali": r"\p{Bengali}", "gurmukhi": r"\p{Gurmukhi}",
    "gujarati": r"\p{Gujarati}", "tamil": r"\p{Tamil}", "telugu": r"\p{Telugu}", "kannada": r"\p{Kannada}",
    "malayalam": r"\p{Malayalam}", "thai": r"\p{Thai}", "hangul": r"\p{Hangul}",
    "cjk": r"[\p{Han}\p{Hiragana}\p{Katakana}\x{30FC}\x{FF70}]",
}
# classes of the code point table after the scripts' 1..len(SCRIPTS); 0 is not a letter, CUT may
# open LaTeX or code ($, \ and `)
INHERITED, OTHER, CUT = len(SCRIPTS) + 1, len(SCRIPTS) + 2, 255


def register(con) -> None:
    """Make script_share(text, script) callable in `con`'s SQL."""
    con.create_function("script_share", _script_share, [sqltypes.VARCHAR, sqltypes.VARCHAR], sqltypes.DOUBLE,
                        type="arrow", null_handling="special", side_effects=False)


def script_letters(texts: pa.Array, scripts: pa.Array) -> np.ndarray:
    """[n] texts and [n] script names -> [n, 2] int32 (letters, letters outside the script); a null
    text has no letters."""
    own = pc.index_in(scripts, value_set=pa.array(list(SCRIPTS)))
    if own.null_count:
        bad = pc.filter(scripts, pc.is_null(own))[0].as_py()
        raise ValueError(f"script_letters: unknown script {bad!r} (one of {', '.join(SCRIPTS)})")
    data, offsets, valid = utf8.buffers(texts)
    # imported on first use, as minhash's kernel is (numba's LLVM breaks a later vLLM engine start)
    from pipeline.kernels import count_letters

    out = np.zeros((len(offsets) - 1, 2), dtype=np.int32)
    count_letters(data, offsets, valid, _script_table(), own.to_numpy(zero_copy_only=False).astype(np.uint8) + 1, out)
    return out


def _script_share(texts: pa.ChunkedArray, scripts: pa.ChunkedArray) -> pa.Array:
    counts = script_letters(texts.combine_chunks(), scripts.combine_chunks())
    letters = counts[:, 0]
    return pa.array(counts[:, 1] / np.maximum(letters, 1), mask=letters == 0)


@utf8.table
def _script_table() -> np.ndarray:
    """Per code point: 0 if not a letter or mark, else its SCRIPTS class (1-based), INHERITED or
    OTHER; CUT for the characters that may open a cut."""
    cps, chars = utf8.codepoints()
    letter = pc.match_substring_regex(chars, r"[\p{L}\p{M}]").to_numpy(zero_copy_only=False)
    cps, chars = cps[letter], chars.filter(pa.array(letter))  # each script's test on the letters alone
    table = np.zeros(0x110000, dtype=np.uint8)
    table[cps] = OTHER
    for cls, pattern in enumerate([*SCRIPTS.values(), r"\p{Inherited}"], 1):
        table[cps[pc.match_substring_regex(chars, pattern).to_numpy(zero_copy_only=False)]] = cls
    table[[ord("$"), ord("\\"), ord("`")]] = CUT
    return table
