"""script_letters and script_share (sql/language_mix.sql's letter count): the compiled pass against the RE2
expressions it replaced, run by DuckDB as the rule ran them."""
import random

import duckdb
import pyarrow as pa
import pytest

from pipeline import scripts

# The rule's SQL before the compiled pass: cut LaTeX and code and delete the runs of non-letters
# (one RE2 pass), then delete the letters of other scripts (a second).
CUT = (r"\$\$[^$]*\$\$|\$[^$\n]*\$|\\\((?s:.*?)\\\)|\\\[(?s:.*?)\\\]|`[^`]*`|\\[a-zA-Z]+"
       r"|[^\p{L}\p{M} $\\`]+|[$\\`]")
REFERENCE = """
    WITH l AS (SELECT i, s, replace(regexp_replace(t, $cut$, '', 'g'), ' ', '') AS l FROM texts)
    SELECT i, length(l), length(l) - length(regexp_replace(l, '[^' || p || '\\p{Inherited}]+', '', 'g'))
    FROM l JOIN classes USING (s) ORDER BY i"""

ALPHABET = list("ab xyZ $$\\\\``()[]{}\n\t.,1") + [
    "\\(", "\\)", "\\[", "\\]", "\\frac", "$x$", "é", "e\u0301", "\u0300", "ß", "Я", "ж", "Ω", "α", "ա", "ა",
    "ع", "\u064e", "ש", "क", "\u093f", "ব", "ਕ", "ક", "த", "త", "ಕ", "മ", "ก", "\u0e31", "한", "我", "の", "カ",
    "ー", "ｰ", "😀", "\U00020000", "\u200d", "\u00ad", "¹", "Ⅻ", "ǅ", "ʰ"]


def test_script_letters_match_the_re2_rule_it_replaced():
    rng = random.Random(0)
    texts = ["".join(rng.choice(ALPHABET) for _ in range(rng.randint(0, 80))) for _ in range(3000)]
    texts += ["", "$", "$$", "$$$", "$$$$", "$a\nb$", "\\", "\\(a", "a\\)", "`a", "\\frac{a}{b}c", "\\[x\\]y",
              "$$a$b$$c", "`$`a$", "\\\\(x\\)", None]
    names = list(scripts.SCRIPTS)
    script = [rng.choice(names) for _ in texts]
    got = scripts.script_letters(pa.array(texts, pa.string()), pa.array(script)).tolist()

    con = duckdb.connect()
    con.register("texts", pa.table({"i": range(len(texts)), "t": texts, "s": script}))
    con.register("classes", pa.table({"s": names, "p": [p.strip("[]") for p in scripts.SCRIPTS.values()]}))
    want = con.execute(REFERENCE.replace("$cut$", "'" + CUT.replace("'", "''") + "'")).fetchall()
    assert len(want) == len(texts)
    for (i, letters, outside), g in zip(want, got):
        assert g == [letters or 0, outside or 0], (texts[i], script[i])


def test_script_share_in_sql_and_an_unknown_script():
    con = duckdb.connect()
    scripts.register(con)
    share = con.execute("SELECT script_share('Hello 世界 $x+y$ `code` \\alpha', 'latin')").fetchone()[0]
    assert share == 2 / 7
    assert con.execute("SELECT script_share(NULL, 'cjk'), script_share('1 + 2', 'cjk')").fetchone() == (None, None)
    with pytest.raises(duckdb.Error, match="unknown script 'klingon'"):
        con.execute("SELECT script_share('x', 'klingon')").fetchall()
