-- accuracy: the teacher's accuracy (verified samples only) by source and difficulty, and how
-- many of its samples survived cleaning.
WITH checked AS (
    SELECT g.sample_id, p.source, p.difficulty, v.correct, c.sample_id IS NOT NULL AS kept
    FROM verdicts v
    JOIN generations g USING (sample_id)
    JOIN prompts p USING (prompt_id)
    LEFT JOIN clean c USING (sample_id)
)
SELECT source, difficulty, count(*) AS samples,
       round(avg(correct::INTEGER), 3) AS accuracy,
       sum(kept::INTEGER) AS kept
FROM checked
GROUP BY ALL
ORDER BY source, difficulty
