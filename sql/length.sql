-- length: drops samples whose completion is shorter than $min_tokens or longer than
-- $max_tokens tokens (final EOS included).
WITH lengths AS (
    SELECT sample_id, completion_tokens
    FROM candidates
)
SELECT sample_id
FROM lengths
WHERE completion_tokens < getvariable('min_tokens') OR completion_tokens > getvariable('max_tokens')
