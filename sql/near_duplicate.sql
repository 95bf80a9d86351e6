-- near_duplicate: drops a sample whose prompt and completion are near duplicates of an earlier
-- sample's (by sample_id): one-permutation MinHash signatures over word shingles (table minhash,
-- built over the candidates just before this rule), LSH banding into $lsh_bands bands of $lsh_rows rows to
-- find candidate pairs, then the signature's Jaccard estimate >= $near_dup_threshold. The pairs are
-- found on `rid`, minhash's integer row number: a band table of sample_id strings spills at 1M rows.
WITH bands AS (
    SELECT rid, b, hash(sig[b * getvariable('lsh_rows') + 1:(b + 1) * getvariable('lsh_rows')]) AS h
    FROM minhash, range(getvariable('lsh_bands')) AS t(b)
),
pairs AS (
    SELECT DISTINCT x.rid AS x_rid, y.rid AS y_rid
    FROM bands x
    JOIN bands y ON x.b = y.b AND x.h = y.h AND x.rid < y.rid
),
estimated AS (
    SELECT greatest(mx.sample_id, my.sample_id) AS later_id,
           -- bins empty in both (4294967295: short texts) say nothing and are left out
           list_sum(list_transform(list_zip(mx.sig, my.sig), lambda s: (s[1] = s[2] AND s[1] < 4294967295)::INTEGER))
           / greatest(list_sum(list_transform(list_zip(mx.sig, my.sig),
                                              lambda s: (s[1] < 4294967295 OR s[2] < 4294967295)::INTEGER)), 1)
               AS jaccard
    FROM pairs p
    JOIN minhash mx ON mx.rid = p.x_rid
    JOIN minhash my ON my.rid = p.y_rid
)
SELECT DISTINCT later_id AS sample_id
FROM estimated
WHERE jaccard >= getvariable('near_dup_threshold')
