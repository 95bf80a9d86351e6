-- language_mix: drops samples whose completion switches script: more than $max_script_mix of
-- its letters are outside the prompt's dominant script (DeepSeek-R1 drifting into Chinese on an
-- English prompt, or the reverse). Digits, punctuation and symbols do not count.
WITH prompts AS (
    SELECT DISTINCT prompt_id, prompt_text
    FROM candidates
),
prompt_letters AS (  -- letters per script; a pure-ASCII prompt (strlen = length) is Latin if it has letters
    SELECT
        prompt_id,
        strlen(prompt_text) = length(prompt_text) AS ascii,
        CASE WHEN ascii THEN length(prompt_text) - length(regexp_replace(prompt_text, '[A-Za-z]', '', 'g'))
             ELSE length(regexp_replace(prompt_text, '[^\p{Latin}]', '', 'g')) END AS latin,
        CASE WHEN ascii THEN 0
             ELSE length(regexp_replace(prompt_text, '[^\p{Han}\p{Hiragana}\p{Katakana}\p{Hangul}]', '', 'g')) END AS cjk,
        CASE WHEN ascii THEN 0 ELSE length(regexp_replace(prompt_text, '[^\p{Cyrillic}]', '', 'g')) END AS cyrillic,
        CASE WHEN ascii THEN 0 ELSE length(regexp_replace(prompt_text, '[^\p{Arabic}]', '', 'g')) END AS arabic
    FROM prompts
),
prompt_script AS MATERIALIZED (  -- once per prompt, not per sample
    SELECT
        prompt_id,
        CASE greatest(latin, cjk, cyrillic, arabic)
            WHEN 0 THEN 'none' WHEN latin THEN 'latin' WHEN cjk THEN 'cjk'
            WHEN cyrillic THEN 'cyrillic' ELSE 'arabic' END AS script
    FROM prompt_letters
),
completion_letters AS (
    SELECT
        c.sample_id,
        p.script,
        c.reasoning || c.answer AS t,
        -- strlen (bytes) = length (characters) only for pure ASCII: every letter is Latin, so an
        -- ASCII completion mixes scripts only under a non-Latin prompt, and no regex is needed
        strlen(t) = length(t) AS ascii,
        CASE WHEN ascii THEN NULL ELSE length(regexp_replace(t, '[^\p{L}]', '', 'g')) END AS letters,
        CASE WHEN ascii THEN NULL
             WHEN p.script = 'latin' THEN length(regexp_replace(t, '[^\p{Latin}]', '', 'g'))
             WHEN p.script = 'cjk' THEN length(regexp_replace(t, '[^\p{Han}\p{Hiragana}\p{Katakana}\p{Hangul}]', '', 'g'))
             WHEN p.script = 'cyrillic' THEN length(regexp_replace(t, '[^\p{Cyrillic}]', '', 'g'))
             WHEN p.script = 'arabic' THEN length(regexp_replace(t, '[^\p{Arabic}]', '', 'g'))
             ELSE letters END AS in_script
    FROM candidates c
    JOIN prompt_script p USING (prompt_id)
    WHERE p.script <> 'none'
)
SELECT sample_id
FROM completion_letters
WHERE CASE WHEN ascii THEN script <> 'latin' AND regexp_matches(t, '[A-Za-z]')
           ELSE letters > 0 AND 1 - in_script / letters > getvariable('max_script_mix') END
