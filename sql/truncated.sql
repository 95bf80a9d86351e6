-- truncated: drops samples that stopped at max_new_tokens (finish_reason 'length'). Their
-- reasoning or answer is cut off mid-thought; a student trained on them learns not to finish.
WITH cut AS (
    SELECT sample_id
    FROM candidates
    WHERE finish_reason = 'length'
)
SELECT sample_id FROM cut
