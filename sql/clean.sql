-- clean: the training selection. Keeps every candidate no rule dropped, with the text and the
-- metadata the trainer and the report read; the answer's verdict where it was checked. The stage
-- writes the rows in sample_id order, whatever order this query gives them.
WITH kept AS (
    SELECT c.*, v.extracted, v.correct
    FROM candidates c
    LEFT JOIN verdicts v USING (sample_id)
)
SELECT sample_id, prompt_id, sample_idx, split, task, source, difficulty, reasoning, answer,
       completion_tokens, finish_reason, extracted, correct
FROM kept
