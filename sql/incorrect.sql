-- incorrect: rejection sampling. Drops samples whose extracted answer does not match the
-- prompt's reference (verdicts: math-verify equivalence for math, exact match otherwise),
-- unless $keep_incorrect. Samples without a reference are kept: there is nothing to check.
WITH checked AS (
    SELECT c.sample_id, v.correct
    FROM candidates c
    JOIN verdicts v USING (sample_id)
)
SELECT sample_id
FROM checked
WHERE NOT correct AND NOT getvariable('keep_incorrect')
