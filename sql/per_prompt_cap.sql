-- per_prompt_cap: keeps at most $max_per_prompt passing samples per prompt, the shortest
-- ($per_prompt_policy 'shortest') or a seeded random choice ('random'); drops the rest.
WITH ranked AS (
    SELECT sample_id,
           row_number() OVER (
               PARTITION BY prompt_id
               ORDER BY CASE WHEN getvariable('per_prompt_policy') = 'random'
                             THEN hash(sample_id || getvariable('seed')::VARCHAR)
                             ELSE completion_tokens END,
                        sample_idx) AS rank
    FROM candidates
)
SELECT sample_id FROM ranked WHERE rank > getvariable('max_per_prompt')
