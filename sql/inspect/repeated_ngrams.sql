-- repeated_ngrams: the word 4-grams most repeated inside single completions (loops, boilerplate).
WITH words AS (
    SELECT sample_id, string_split_regex(trim(lower(reasoning || ' ' || answer)), '\s+') AS w
    FROM generations
),
grams AS (
    SELECT sample_id,
           unnest(list_transform(range(1, len(w) - 2), lambda i: array_to_string(w[i:i + 3], ' '))) AS ngram
    FROM words
),
per_sample AS (
    SELECT sample_id, ngram, count(*) AS times
    FROM grams
    GROUP BY ALL
    HAVING count(*) > 1
)
SELECT ngram, count(*) AS samples, sum(times) AS occurrences, max(times) AS max_in_one_sample
FROM per_sample
GROUP BY ngram
ORDER BY occurrences DESC
LIMIT 20
