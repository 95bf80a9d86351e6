-- garbled: drops samples containing the Unicode replacement character (bytes that were not
-- valid UTF-8), C0/C1 control characters other than tab and newline, or more than
-- $max_unprintable_share of format, private-use or surrogate characters.
WITH suspects AS (  -- one scan for all of them: most texts have none and need no further look;
                   -- reasoning and answer apart, not joined into a copy of every text
    SELECT sample_id, reasoning || answer AS t, completion_chars
    FROM candidates
    WHERE regexp_matches(reasoning, '[\x00-\x08\x0B\x0C\x0E-\x1F\x7F\x{80}-\x{9F}\x{FFFD}\p{Cf}\p{Co}\p{Cs}]')
       OR regexp_matches(answer, '[\x00-\x08\x0B\x0C\x0E-\x1F\x7F\x{80}-\x{9F}\x{FFFD}\p{Cf}\p{Co}\p{Cs}]')
),
flags AS (
    SELECT
        sample_id,
        -- one character class, one pass: RE2 reads each byte once whatever the class holds
        regexp_matches(t, '[\x00-\x08\x0B\x0C\x0E-\x1F\x7F\x{80}-\x{9F}\x{FFFD}]') AS bad_character,
        -- bytes = characters only in pure ASCII, which has none of these; else what deleting
        -- their runs takes away (completion_chars is length(t)): few and short matches, where
        -- keeping them by deleting everything else would match the long runs of text
        CASE WHEN strlen(t) = completion_chars THEN 0.0
             ELSE (completion_chars - length(regexp_replace(t, '[\p{Cf}\p{Co}\p{Cs}]+', '', 'g'))) / completion_chars
        END AS unprintable_share
    FROM suspects
)
SELECT sample_id
FROM flags
WHERE bad_character OR unprintable_share > getvariable('max_unprintable_share')
