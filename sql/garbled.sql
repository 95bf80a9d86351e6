-- garbled: drops samples containing the Unicode replacement character (bytes that were not
-- valid UTF-8), C0/C1 control characters other than tab and newline, or more than
-- $max_unprintable_share of format, private-use or surrogate characters.
WITH texts AS (
    SELECT sample_id, reasoning || answer AS t
    FROM candidates
),
flags AS (
    SELECT
        sample_id,
        regexp_matches(t, '[\x00-\x08\x0B\x0C\x0E-\x1F\x7F]') AS c0_control,
        -- strlen (bytes) = length (characters) only for pure ASCII, which has nothing else to check
        CASE WHEN strlen(t) = length(t) THEN false
             ELSE regexp_matches(t, '[\x{FFFD}\x{80}-\x{9F}]') END AS bad_codepoint,
        CASE WHEN strlen(t) = length(t) THEN 0.0
             ELSE length(regexp_replace(t, '[^\p{Cf}\p{Co}\p{Cs}]', '', 'g')) / length(t) END AS unprintable_share
    FROM texts
)
SELECT sample_id
FROM flags
WHERE c0_control OR bad_codepoint OR unprintable_share > getvariable('max_unprintable_share')
