-- drop_reasons: how many samples each cleaning rule dropped, and their share of all samples.
WITH counts AS (
    SELECT rule, count(*) AS dropped
    FROM rejects
    GROUP BY rule
),
total AS (
    SELECT count(*) AS samples FROM generations
)
SELECT rule, dropped, round(100.0 * dropped / samples, 2) AS percent_of_samples
FROM counts, total
ORDER BY dropped DESC
