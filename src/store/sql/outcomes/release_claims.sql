UPDATE publish_jobs j
SET status = 'queued', owner = NULL, attempts = j.attempts - 1, updated_at = now()
FROM unnest($1::bigint[], $2::int[]) AS u(id, attempts)
WHERE j.id = u.id AND j.attempts = u.attempts AND j.owner = $3
  AND j.status = 'processing_batch' AND j.raw_tx IS NULL
RETURNING j.id
