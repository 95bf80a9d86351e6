-- contaminated: decontamination. Drops the train samples of every prompt that shares a word
-- $decontam_ngram-gram (lowercased, punctuation removed) with an evaluation prompt: the run's
-- eval split plus clean.decontam_files (table eval_texts). N-grams found in more than
-- $decontam_max_prompt_share of the train prompts are shared instructions ("put your final
-- answer in \boxed{}"), not leaked problems, and do not count.
WITH eval_words AS (
    SELECT string_split_regex(trim(regexp_replace(lower(text), '[^\p{L}\p{N}]+', ' ', 'g')), ' ') AS w
    FROM eval_texts
),
eval_ngrams AS (
    SELECT DISTINCT unnest(list_transform(range(1, len(w) - getvariable('decontam_ngram') + 2),
                                          lambda i: array_to_string(w[i:i + getvariable('decontam_ngram') - 1], ' '))) AS g
    FROM eval_words
),
train_words AS (
    SELECT DISTINCT prompt_id,
           string_split_regex(trim(regexp_replace(lower(prompt_text), '[^\p{L}\p{N}]+', ' ', 'g')), ' ') AS w
    FROM candidates
    WHERE split = 'train'
),
train_ngrams AS (
    SELECT prompt_id,
           unnest(list_transform(range(1, len(w) - getvariable('decontam_ngram') + 2),
                                 lambda i: array_to_string(w[i:i + getvariable('decontam_ngram') - 1], ' '))) AS g
    FROM train_words
),
boilerplate AS (
    SELECT g
    FROM train_ngrams
    GROUP BY g
    HAVING count(DISTINCT prompt_id) > greatest(1, getvariable('decontam_max_prompt_share')
                                                   * (SELECT count(*) FROM train_words))
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
