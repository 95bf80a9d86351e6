-- language_mix: drops samples whose completion switches script: more than $max_script_mix of its
-- letters are outside the script of the question (DeepSeek-R1 drifting into Chinese on an English
-- prompt, or into English on a Bangla one). The expected script is the prompt's declared
-- `language` where languages below lists it; else the script holding most of the prompt's
-- non-Latin letters in words of two letters or more, when there are at least 4 of those and at
-- least a quarter as many as Latin letters (or no Latin letter at all): an English instruction
-- around a Bangla question expects Bengali, while Greek variables (α, β) or a Chinese word quoted
-- in an English question do not change the question's script; else Latin. Han, Hiragana and
-- Katakana are one family, cjk, since Japanese mixes kanji and kana. A prompt whose non-Latin
-- letters are mostly in a script not listed here is not judged. LaTeX (commands, $...$, $$...$$,
-- \(...\), \[...\]) and code in backticks are cut before counting, and digits, punctuation and
-- symbols are not letters, so the math in a Chinese answer is not English. Letters include
-- combining marks (the vowel signs of Indic scripts); marks of every script (Inherited) count as
-- in-script.
WITH languages (code, script) AS (  -- a declared code (zh-CN and zh_CN read as zh) beats inference
    VALUES ('en', 'latin'), ('fr', 'latin'), ('de', 'latin'), ('es', 'latin'), ('it', 'latin'), ('pt', 'latin'),
           ('nl', 'latin'), ('sv', 'latin'), ('da', 'latin'), ('no', 'latin'), ('nb', 'latin'), ('nn', 'latin'),
           ('fi', 'latin'), ('is', 'latin'), ('pl', 'latin'), ('cs', 'latin'), ('sk', 'latin'), ('sl', 'latin'),
           ('hr', 'latin'), ('bs', 'latin'), ('ro', 'latin'), ('hu', 'latin'), ('et', 'latin'), ('lv', 'latin'),
           ('lt', 'latin'), ('tr', 'latin'), ('az', 'latin'), ('uz', 'latin'), ('vi', 'latin'), ('id', 'latin'),
           ('ms', 'latin'), ('tl', 'latin'), ('fil', 'latin'), ('sw', 'latin'), ('ca', 'latin'), ('eu', 'latin'),
           ('gl', 'latin'), ('ga', 'latin'), ('cy', 'latin'), ('af', 'latin'), ('sq', 'latin'), ('mt', 'latin'),
           ('la', 'latin'), ('eo', 'latin'), ('ha', 'latin'), ('yo', 'latin'), ('zu', 'latin'), ('so', 'latin'),
           ('ru', 'cyrillic'), ('uk', 'cyrillic'), ('be', 'cyrillic'), ('bg', 'cyrillic'), ('mk', 'cyrillic'),
           ('kk', 'cyrillic'), ('ky', 'cyrillic'), ('tg', 'cyrillic'), ('mn', 'cyrillic'),
           ('el', 'greek'), ('hy', 'armenian'), ('ka', 'georgian'),
           ('ar', 'arabic'), ('fa', 'arabic'), ('ur', 'arabic'), ('ps', 'arabic'), ('ug', 'arabic'),
           ('he', 'hebrew'), ('iw', 'hebrew'), ('yi', 'hebrew'),
           ('hi', 'devanagari'), ('mr', 'devanagari'), ('ne', 'devanagari'), ('sa', 'devanagari'),
           ('bn', 'bengali'), ('as', 'bengali'), ('pa', 'gurmukhi'), ('gu', 'gujarati'), ('ta', 'tamil'),
           ('te', 'telugu'), ('kn', 'kannada'), ('ml', 'malayalam'), ('th', 'thai'), ('ko', 'hangul'),
           ('zh', 'cjk'), ('ja', 'cjk'), ('yue', 'cjk')
),
prompt_text AS (  -- once per prompt, not per sample
    SELECT prompt_id,
           lower(split_part(replace(any_value(language), '_', '-'), '-', 1)) AS code,
           -- the same cut as the completions': \frac in a prompt is not an English word
           regexp_replace(any_value(prompt_text),
                          '\$\$[^$]*\$\$|\$[^$\n]*\$|\\\((?s:.*?)\\\)|\\\[(?s:.*?)\\\]|`[^`]*`|\\[a-zA-Z]+', ' ', 'g') AS p
    FROM candidates
    GROUP BY prompt_id
),
foreign_words AS (  -- the non-Latin letters of non-ASCII prompts, in words of two or more
    SELECT prompt_id, p,
           -- Latin letters and non-letters become spaces; `+`: one replacement per run
           array_to_string(regexp_extract_all(regexp_replace(p, '(?:[^\p{L}\p{M}]|\p{Latin})+', ' ', 'g'),
                                              '[^ ]{2,}'), '') AS w
    FROM prompt_text
    WHERE (code IS NULL OR code NOT IN (SELECT code FROM languages))  -- a declared language needs no count
      AND strlen(p) <> length(p)  -- bytes = characters only in ASCII, which has none
),
foreign_counts AS (  -- per script; few prompts, and the words are short
    SELECT prompt_id, length(w) AS total, length(regexp_replace(p, '[^\p{Latin}]+', '', 'g')) AS latin,
           length(regexp_replace(w, '[^\p{Cyrillic}\p{Inherited}]+', '', 'g')) AS cyrillic,
           length(regexp_replace(w, '[^\p{Greek}\p{Inherited}]+', '', 'g')) AS greek,
           length(regexp_replace(w, '[^\p{Armenian}\p{Inherited}]+', '', 'g')) AS armenian,
           length(regexp_replace(w, '[^\p{Georgian}\p{Inherited}]+', '', 'g')) AS georgian,
           length(regexp_replace(w, '[^\p{Arabic}\p{Inherited}]+', '', 'g')) AS arabic,
           length(regexp_replace(w, '[^\p{Hebrew}\p{Inherited}]+', '', 'g')) AS hebrew,
           length(regexp_replace(w, '[^\p{Devanagari}\p{Inherited}]+', '', 'g')) AS devanagari,
           length(regexp_replace(w, '[^\p{Bengali}\p{Inherited}]+', '', 'g')) AS bengali,
           length(regexp_replace(w, '[^\p{Gurmukhi}\p{Inherited}]+', '', 'g')) AS gurmukhi,
           length(regexp_replace(w, '[^\p{Gujarati}\p{Inherited}]+', '', 'g')) AS gujarati,
           length(regexp_replace(w, '[^\p{Tamil}\p{Inherited}]+', '', 'g')) AS tamil,
           length(regexp_replace(w, '[^\p{Telugu}\p{Inherited}]+', '', 'g')) AS telugu,
           length(regexp_replace(w, '[^\p{Kannada}\p{Inherited}]+', '', 'g')) AS kannada,
           length(regexp_replace(w, '[^\p{Malayalam}\p{Inherited}]+', '', 'g')) AS malayalam,
           length(regexp_replace(w, '[^\p{Thai}\p{Inherited}]+', '', 'g')) AS thai,
           length(regexp_replace(w, '[^\p{Hangul}\p{Inherited}]+', '', 'g')) AS hangul,
           -- ー (U+30FC, U+FF70 half-width) lengthens katakana vowels but is a Common letter
           length(regexp_replace(w, '[^\p{Han}\p{Hiragana}\p{Katakana}\x{30FC}\x{FF70}\p{Inherited}]+', '', 'g')) AS cjk
    FROM foreign_words
    WHERE w <> ''
),
dominant AS (  -- the script holding more than half of them (so one only), else 'unknown'
    SELECT prompt_id, any_value(total) AS total, any_value(latin) AS latin,
           CASE WHEN 2 * max(letters) > any_value(total) THEN arg_max(script, letters) ELSE 'unknown' END AS script
    FROM foreign_counts
    UNPIVOT (letters FOR script IN (cyrillic, greek, armenian, georgian, arabic, hebrew, devanagari, bengali,
                                    gurmukhi, gujarati, tamil, telugu, kannada, malayalam, thai, hangul, cjk))
    GROUP BY prompt_id
),
prompt_script AS MATERIALIZED (  -- once per prompt, not per sample
    SELECT t.prompt_id,
           CASE WHEN l.script IS NOT NULL THEN l.script
                WHEN (d.total >= 4 AND 4 * d.total >= d.latin) OR (d.total > 0 AND d.latin = 0) THEN d.script
                WHEN regexp_matches(t.p, '\p{Latin}') THEN 'latin'
                ELSE 'none' END AS script
    FROM prompt_text t
    LEFT JOIN languages l USING (code)
    LEFT JOIN dominant d USING (prompt_id)
),
judged AS (  -- an ASCII completion (bytes = characters) has only Latin letters: under a Latin
             -- prompt it needs no count. An answer that calls a tool (verdicts found a call) is
             -- not prose: the schema's names are English whatever the user's language
    SELECT c.sample_id, p.script, c.reasoning || CASE WHEN v.sample_id IS NULL THEN c.answer ELSE '' END AS t
    FROM candidates c
    JOIN prompt_script p USING (prompt_id)
    -- only the calls: a join against every verdict would hash a million ids to find a few
    LEFT JOIN (SELECT sample_id FROM verdicts WHERE extracted LIKE '[{%') v USING (sample_id)
    WHERE p.script NOT IN ('none', 'unknown')
      AND NOT (p.script = 'latin' AND strlen(c.reasoning) + strlen(c.answer) = c.completion_chars)
),
mixed AS (  -- script_share (pipeline/scripts.py, one compiled pass): the share of the letters left
           -- once LaTeX and code are cut that lie outside the prompt's script; NULL without letters
    SELECT sample_id, script_share(t, script) AS outside
    FROM judged
)
SELECT sample_id
FROM mixed
WHERE outside > getvariable('max_script_mix')
