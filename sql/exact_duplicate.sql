-- exact_duplicate: drops a sample whose completion, lowercased, equals an earlier sample's for the
-- same prompt (the first by sample_idx is kept). Spacing variants, at the ends too, are left to
-- near_duplicate. Lowercasing maps each character to one character, so only samples of the same
-- prompt and the same length can be copies: the others are never lowercased or hashed.
WITH lengths AS (
    SELECT sample_id, prompt_id, completion_chars AS n
    FROM candidates
),
same_length AS (
    SELECT sample_id
    FROM lengths
    QUALIFY count(*) OVER (PARTITION BY prompt_id, n) > 1
),
ranked AS (
    SELECT c.sample_id,
           row_number() OVER (PARTITION BY c.prompt_id, hash(lower(c.reasoning || c.answer)) ORDER BY c.sample_idx) AS copy
    FROM candidates c
    SEMI JOIN same_length USING (sample_id)
)
SELECT sample_id FROM ranked WHERE copy > 1
