-- exact_duplicate: drops a sample whose completion, lowercased with whitespace collapsed, equals
-- an earlier sample's for the same prompt (the first by sample_idx is kept).
WITH normalized AS (
    SELECT sample_id, prompt_id, sample_idx,
           md5(regexp_replace(lower(trim(reasoning || answer)), '\s+', ' ', 'g')) AS text_hash
    FROM candidates
),
ranked AS (
    SELECT sample_id,
           row_number() OVER (PARTITION BY prompt_id, text_hash ORDER BY sample_idx) AS copy
    FROM normalized
)
SELECT sample_id FROM ranked WHERE copy > 1
