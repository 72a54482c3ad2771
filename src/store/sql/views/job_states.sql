SELECT id, status, txid, attempts, last_error, created_at, sent_at, updated_at
FROM publish_jobs WHERE id = ANY($1) ORDER BY id
