-- contaminated: decontamination. Drops the train samples of every prompt that shares a word
-- $decontam_ngram-gram (lowercased, punctuation removed) with an evaluation prompt: the run's
-- eval split plus clean.decontam_files (table eval_texts). N-grams found in more than
-- $decontam_max_prompt_share of the train prompts are shared instructions ("put your final
-- answer in \boxed{}"), not leaked problems, and do not count.
WITH texts AS (
    SELECT 'eval' AS side, NULL AS prompt_id, text FROM eval_texts
    UNION ALL
    SELECT DISTINCT 'train', prompt_id, prompt_text FROM candidates WHERE split = 'train'
),
words AS (
    SELECT side, prompt_id, row_number() OVER () AS doc,
           string_split_regex(trim(regexp_replace(lower(text), '[^\p{L}\p{N}]+', ' ', 'g')), ' ') AS w
    FROM texts
),
positions AS (
    SELECT side, prompt_id, doc, unnest(w) AS word, generate_subscripts(w, 1) AS pos
    FROM words
),
ngrams AS (  -- one hash per n-gram: the word and the n-1 words after it in the same text
    SELECT side, prompt_id,
           hash(list(word) OVER (PARTITION BY doc ORDER BY pos
                                 ROWS BETWEEN CURRENT ROW AND getvariable('decontam_ngram') - 1 FOLLOWING)) AS g,
           count(*) OVER (PARTITION BY doc ORDER BY pos
                          ROWS BETWEEN CURRENT ROW AND getvariable('decontam_ngram') - 1 FOLLOWING) AS n
    FROM positions
),
eval_ngrams AS (
    SELECT DISTINCT g FROM ngrams WHERE side = 'eval' AND n = getvariable('decontam_ngram')
),
train_ngrams AS (
    SELECT DISTINCT prompt_id, g FROM ngrams WHERE side = 'train' AND n = getvariable('decontam_ngram')
),
boilerplate AS (
    SELECT g
    FROM train_ngrams
    GROUP BY g
    HAVING count(*) > greatest(1, getvariable('decontam_max_prompt_share')
                                  * (SELECT count(DISTINCT prompt_id) FROM train_ngrams))
),
leaked AS (
    SELECT DISTINCT prompt_id
    FROM train_ngrams
    JOIN eval_ngrams USING (g)
    ANTI JOIN boilerplate USING (g)
)
SELECT c.sample_id
FROM candidates c
JOIN leaked USING (prompt_id)
WHERE c.split = 'train'
