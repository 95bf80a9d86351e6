-- language_mix: drops samples whose completion switches script: more than $max_script_mix of
-- its letters are outside the prompt's dominant script (DeepSeek-R1 drifting into Chinese on an
-- English prompt, or the reverse). Digits, punctuation and symbols do not count.
WITH prompts AS (
    SELECT prompt_id, any_value(prompt_text) AS p, strlen(p) = length(p) AS ascii
    FROM candidates
    GROUP BY prompt_id
),
ascii_scripts AS (  -- strlen (bytes) = length (characters) only for pure ASCII: its letters are Latin
    SELECT prompt_id, CASE WHEN regexp_matches(p, '[A-Za-z]') THEN 'latin' ELSE 'none' END AS script
    FROM prompts
    WHERE ascii
),
prompt_letters AS (  -- letters per script of the other prompts
    SELECT
        prompt_id,
        length(regexp_replace(p, '[^\p{Latin}]+', '', 'g')) AS latin,
        length(regexp_replace(p, '[^\p{Han}\p{Hiragana}\p{Katakana}\p{Hangul}]+', '', 'g')) AS cjk,
        length(regexp_replace(p, '[^\p{Cyrillic}]+', '', 'g')) AS cyrillic,
        length(regexp_replace(p, '[^\p{Arabic}]+', '', 'g')) AS arabic
    FROM prompts
    WHERE NOT ascii
),
prompt_script AS MATERIALIZED (  -- once per prompt, not per sample
    SELECT * FROM ascii_scripts
    UNION ALL
    SELECT
        prompt_id,
        CASE greatest(latin, cjk, cyrillic, arabic)
            WHEN 0 THEN 'none' WHEN latin THEN 'latin' WHEN cjk THEN 'cjk'
            WHEN cyrillic THEN 'cyrillic' ELSE 'arabic' END
    FROM prompt_letters
),
ascii_mixed AS (  -- bytes = characters only in pure ASCII, whose letters are all Latin: such a
                  -- completion mixes scripts only under a non-Latin prompt, and needs no count
    SELECT c.sample_id
    FROM candidates c
    JOIN prompt_script p USING (prompt_id)
    WHERE strlen(c.reasoning) + strlen(c.answer) = c.completion_chars
      AND p.script NOT IN ('latin', 'none')
      AND regexp_matches(c.reasoning || c.answer, '[A-Za-z]')
),
other_completions AS MATERIALIZED (  -- not ASCII: few, and the filter stays before the counts
    SELECT c.sample_id, p.script, c.reasoning || c.answer AS t
    FROM candidates c
    JOIN prompt_script p USING (prompt_id)
    WHERE strlen(c.reasoning) + strlen(c.answer) <> c.completion_chars AND p.script <> 'none'
),
completion_letters AS (  -- letters in all and in the prompt's script
    SELECT
        sample_id,
        length(regexp_replace(t, '[^\p{L}]+', '', 'g')) AS letters,
        CASE script
            WHEN 'latin' THEN length(regexp_replace(t, '[^\p{Latin}]+', '', 'g'))
            WHEN 'cjk' THEN length(regexp_replace(t, '[^\p{Han}\p{Hiragana}\p{Katakana}\p{Hangul}]+', '', 'g'))
            WHEN 'cyrillic' THEN length(regexp_replace(t, '[^\p{Cyrillic}]+', '', 'g'))
            ELSE length(regexp_replace(t, '[^\p{Arabic}]+', '', 'g')) END AS in_script
    FROM other_completions
)
SELECT sample_id FROM ascii_mixed
UNION ALL
SELECT sample_id
FROM completion_letters
WHERE letters > 0 AND 1 - in_script / letters > getvariable('max_script_mix')
