-- invalid_call: drops tool-call answers whose first call breaks the prompt's tool schemas (an
-- unknown function, a missing required argument, a wrong type, a value outside an enum), as
-- pipeline.toolcalls.validate_call found when clean verified the answers (verdicts.invalid_call).
WITH invalid AS (
    SELECT sample_id FROM verdicts WHERE invalid_call IS NOT NULL
)
SELECT c.sample_id
FROM candidates c
JOIN invalid USING (sample_id)
