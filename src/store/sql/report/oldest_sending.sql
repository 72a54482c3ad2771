SELECT id, txid, sending_started_at,
       EXTRACT(EPOCH FROM now() - sending_started_at)::float8 AS age
FROM publish_jobs WHERE status = 'sending'
ORDER BY sending_started_at NULLS FIRST LIMIT 1
