-- exact_duplicate: drops a sample whose completion, lowercased and trimmed, equals an earlier
-- sample's for the same prompt (the first by sample_idx is kept). Spacing variants are left to
-- near_duplicate: collapsing whitespace would cost a regex pass over every text.
WITH normalized AS (
    SELECT sample_id, prompt_id, sample_idx, hash(lower(trim(reasoning || answer))) AS text_hash
    FROM candidates
),
ranked AS (
    SELECT sample_id,
           row_number() OVER (PARTITION BY prompt_id, text_hash ORDER BY sample_idx) AS copy
    FROM normalized
)
SELECT sample_id FROM ranked WHERE copy > 1
