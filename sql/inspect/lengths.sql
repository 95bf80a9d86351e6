-- lengths: completion length distribution per split and finish reason (tokens), before cleaning.
WITH lengths AS (
    SELECT split, finish_reason, completion_tokens, reasoning_tokens, answer_tokens
    FROM generations
)
SELECT split, finish_reason, count(*) AS samples,
       round(avg(completion_tokens), 1) AS mean_tokens,
       quantile_cont(completion_tokens, 0.5) AS p50,
       quantile_cont(completion_tokens, 0.95) AS p95,
       max(completion_tokens) AS max_tokens,
       round(avg(reasoning_tokens), 1) AS mean_reasoning,
       round(avg(answer_tokens), 1) AS mean_answer
FROM lengths
GROUP BY ALL
ORDER BY split, finish_reason
