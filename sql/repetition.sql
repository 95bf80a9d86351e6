-- repetition: drops degenerate loops. Two probes of $repeat_probe_chars characters, one from the
-- middle of the completion and one from its end, are counted through the whole text; when the
-- copies of either cover more than $max_repeated_share of its bytes, the text is mostly one n-gram or
-- line said over and over. (Two substring counts per row: a loop covers much of the text, so a
-- probe lands in it; counting every n-gram costs twenty times more.)
WITH texts AS (
    SELECT sample_id, reasoning || answer AS t, strlen(t) AS bytes, completion_chars AS n
    FROM candidates
    WHERE completion_chars >= 4 * getvariable('repeat_probe_chars')
),
probes AS (
    SELECT sample_id, t, bytes,
           -- substring() walks the UTF-8 text up to its start; in ASCII text (bytes = characters)
           -- a byte slice is the same probe
           CASE WHEN bytes = n
                THEN decode(encode(t)[n // 2:n // 2 + getvariable('repeat_probe_chars') - 1])
                ELSE substring(t, n // 2, getvariable('repeat_probe_chars')) END AS middle,
           -- end-anchored, so RE2 reads from the end
           regexp_extract(t, '(?s).{' || getvariable('repeat_probe_chars') || '}$') AS tail
    FROM texts
),
coverage AS (
    SELECT sample_id,
           greatest(bytes - strlen(replace(t, middle, '')), bytes - strlen(replace(t, tail, ''))) / bytes
               AS repeated_share
    FROM probes
)
SELECT sample_id
FROM coverage
WHERE repeated_share > getvariable('max_repeated_share')
