-- repetition: drops degenerate loops: samples in which more than $max_repeated_ngram_share of
-- the word $ngram-grams repeat an earlier one (among at least 16 n-grams), or more than
-- $max_repeated_lines non-empty lines repeat an earlier line.
WITH texts AS (
    SELECT sample_id, reasoning || answer AS t
    FROM candidates
),
split AS (
    SELECT
        sample_id,
        list_filter(string_split(t, chr(10)), lambda l: trim(l) <> '') AS lines,
        string_split_regex(trim(t), '\s+') AS words
    FROM texts
),
ngrams AS (
    SELECT
        sample_id,
        lines,
        list_transform(range(1, len(words) - getvariable('ngram') + 2),
                       lambda i: hash(array_to_string(words[i:i + getvariable('ngram') - 1], ' '))) AS grams
    FROM split
),
scores AS (
    SELECT
        sample_id,
        len(lines) - len(list_distinct(lines)) AS repeated_lines,
        CASE WHEN len(grams) < 16 THEN 0.0
             ELSE 1 - len(list_distinct(grams)) / len(grams) END AS repeated_ngram_share
    FROM ngrams
)
SELECT sample_id
FROM scores
WHERE repeated_ngram_share > getvariable('max_repeated_ngram_share')
   OR repeated_lines > getvariable('max_repeated_lines')
