-- contaminated: decontamination. Drops the train samples of every prompt that shares a word
-- $decontam_ngram-gram (lowercased, punctuation removed) with an evaluation prompt: the run's
-- eval split plus clean.decontam_files (table eval_texts). In scripts written without spaces
-- (Chinese, Japanese, Thai, Lao, Khmer, Burmese) each character is a word: split on separators
-- alone, a Chinese sentence is one "word", and only a copy of whole sentences would match.
-- N-grams found in more than $decontam_max_prompt_share of the train prompts are shared
-- instructions ("put your final answer in \boxed{}"), not leaked problems, and do not count.
-- Only suspects are cut into n-grams: an n-gram holds a k-gram (k = ceil(n / 2)) that starts at
-- one of every n - k + 1 word positions, so a train prompt that shares an n-gram with the eval
-- set shares one of its k-grams at those positions too. Every prompt holding a shared n-gram is a
-- suspect, so the shared-instruction counts are exact.
WITH params AS (
    SELECT getvariable('decontam_ngram') AS n, (n + 1) // 2 AS k, n - k + 1 AS stride
),
texts AS (
    SELECT 'eval' AS side, NULL AS prompt_id, text FROM eval_texts
    UNION ALL
    SELECT 'train', prompt_id, any_value(prompt_text) FROM candidates WHERE split = 'train' GROUP BY prompt_id
),
words AS MATERIALIZED (  -- one hash per word; read three times below
    SELECT side, prompt_id,
           -- separators other than a space become one (marks are vowel signs, part of words),
           -- then each character of a spaceless script gets a space either side (ー, U+30FC and
           -- U+FF70, lengthens katakana but is a Common letter); the empty strings between
           -- spaces go. (A regex replacing every separator run costs one match per word: twice the
           -- time. One regex doing both needs a capture group, which RE2 fills at every match of
           -- either kind: three times the time of two.)
           list_transform(
               list_filter(string_split(regexp_replace(
                   regexp_replace(lower(text), '[^\p{L}\p{M}\p{N} ]+', ' ', 'g'),
                   '[\p{Han}\p{Hiragana}\p{Katakana}\x{30FC}\x{FF70}\p{Thai}\p{Lao}\p{Khmer}\p{Myanmar}]', ' \0 ', 'g'),
                   ' '), lambda w: w <> ''),
               lambda w: hash(w)) AS h
    FROM texts
),
eval_kgrams AS (
    SELECT DISTINCT unnest(list_transform(range(1, len(h) - k + 2), lambda i: hash(h[i:i + k - 1]))) AS g
    FROM words, params
    WHERE side = 'eval'
),
suspects AS (  -- train prompts with an eval k-gram at one of their sampled positions
    SELECT DISTINCT prompt_id
    FROM (SELECT prompt_id, unnest(list_transform(range(1, len(h) - k + 2, stride), lambda i: hash(h[i:i + k - 1]))) AS g
          FROM words, params
          WHERE side = 'train')
    SEMI JOIN eval_kgrams USING (g)
),
ngrams AS (  -- one hash per run of n words, of the eval prompts and the suspects
    SELECT side, prompt_id, unnest(list_transform(range(1, len(h) - n + 2), lambda i: hash(h[i:i + n - 1]))) AS g
    FROM words, params
    WHERE side = 'eval' OR prompt_id IN (SELECT prompt_id FROM suspects)
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
