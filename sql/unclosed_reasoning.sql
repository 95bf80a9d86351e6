-- unclosed_reasoning: for a teacher that reasons (generate.think_end set), drops samples whose
-- reasoning never closed or that closed it more than once. Keeps everything for a teacher that
-- does not reason, where the whole completion is the answer.
WITH structure AS (
    SELECT sample_id, reasoning_closed, think_end_count
    FROM candidates
    WHERE getvariable('teacher_reasons')
)
SELECT sample_id
FROM structure
WHERE NOT reasoning_closed OR think_end_count > 1
