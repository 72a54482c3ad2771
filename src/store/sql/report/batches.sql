SELECT id AS processing_batch_id, size::bigint AS jobs, 1 AS first_seq,
       size AS last_seq, created_at AS created,
       sent::bigint AS sent, failed::bigint AS failed
FROM batches ORDER BY id DESC LIMIT 10
