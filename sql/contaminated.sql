-- contaminated: decontamination. Drops the train samples of every prompt that shares a word
-- $decontam_ngram-gram (lowercased, punctuation removed) with an evaluation prompt: the run's
-- eval split plus clean.decontam_files (table eval_texts). N-grams found in more than
-- $decontam_max_prompt_share of the train prompts are shared instructions ("put your final
-- answer in \boxed{}"), not leaked problems, and do not count. Train n-grams are matched against
-- the eval set before anything is counted, so only the few shared ones are ever grouped.
WITH texts AS (
    SELECT 'eval' AS side, NULL AS prompt_id, text FROM eval_texts
    UNION ALL
    SELECT DISTINCT 'train', prompt_id, prompt_text FROM candidates WHERE split = 'train'
),
words AS (  -- one hash per word, then one per run of n words
    SELECT side, prompt_id,
           list_transform(string_split(trim(regexp_replace(lower(text), '[^\p{L}\p{N}]+', ' ', 'g')), ' '),
                          lambda w: hash(w)) AS h
    FROM texts
),
ngrams AS (
    SELECT side, prompt_id,
           unnest(list_transform(range(1, len(h) - getvariable('decontam_ngram') + 2),
                                 lambda i: hash(h[i:i + getvariable('decontam_ngram') - 1]))) AS g
    FROM words
),
eval_ngrams AS (
    SELECT DISTINCT g FROM ngrams WHERE side = 'eval'
),
shared AS (  -- train n-grams that also occur in an eval prompt, once per prompt
    SELECT DISTINCT prompt_id, g
    FROM ngrams
    SEMI JOIN eval_ngrams USING (g)
    WHERE side = 'train'
),
train_prompts AS (
    SELECT count(*) AS n FROM texts WHERE side = 'train'
),
leaked AS (
    SELECT DISTINCT prompt_id
    FROM shared
    WHERE g IN (SELECT g FROM shared GROUP BY g
                HAVING count(*) <= greatest(1, getvariable('decontam_max_prompt_share') * (SELECT n FROM train_prompts)))
)
SELECT c.sample_id
FROM candidates c
JOIN leaked USING (prompt_id)
WHERE c.split = 'train'
