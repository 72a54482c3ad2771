INSERT INTO publish_jobs (id, payload, idempotency_key, priority)
SELECT * FROM unnest($1::bigint[], $2::bytea[], $3::text[], $4::smallint[])
ON CONFLICT (idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
RETURNING id
