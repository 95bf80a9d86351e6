-- samples_per_prompt: how many samples each prompt has before and after cleaning, as a histogram.
WITH per_prompt AS (
    SELECT g.prompt_id, count(*) AS generated, count(c.sample_id) AS kept
    FROM generations g
    LEFT JOIN clean c USING (sample_id)
    GROUP BY g.prompt_id
)
SELECT generated, kept, count(*) AS prompts
FROM per_prompt
GROUP BY ALL
ORDER BY generated, kept
