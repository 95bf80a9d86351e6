-- empty_answer: drops samples whose answer (the text after the reasoning) is blank.
WITH answers AS (
    SELECT sample_id, trim(answer, ' '||chr(9)||chr(10)||chr(13)) AS answer
    FROM candidates
)
SELECT sample_id FROM answers WHERE answer = ''
