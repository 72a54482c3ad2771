UPDATE utxos x SET dirty = TRUE, updated_at = now()
FROM publish_jobs j JOIN unnest($1::bigint[], $2::int[]) AS u(id, attempts) ON j.id = u.id
WHERE j.attempts = u.attempts AND j.owner = $3 AND j.status = 'sending'
  AND x.id = j.utxo_id
RETURNING j.id
