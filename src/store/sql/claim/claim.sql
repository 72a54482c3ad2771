WITH no_flush_wait AS (
    SELECT set_config('synchronous_commit', 'off', true)
), picked AS MATERIALIZED (
    SELECT id, priority
    FROM publish_jobs
    WHERE status = 'queued' AND next_attempt_at <= now()
    ORDER BY priority DESC, id
    LIMIT $1
    FOR UPDATE SKIP LOCKED
), batch AS (
    INSERT INTO batches (owner, size)
    SELECT $2, count(*) FROM picked HAVING count(*) > 0
    RETURNING id, created_at
), numbered AS (
    SELECT id, (row_number() OVER (ORDER BY priority DESC, id))::int AS seq FROM picked
)
UPDATE publish_jobs j
SET status = 'processing_batch',
    processing_batch_id = batch.id,
    batch_seq = numbered.seq,
    owner = $2,
    attempts = j.attempts + 1,
    claimed_at = now(),
    sending_started_at = NULL,
    updated_at = now()
FROM numbered, batch, no_flush_wait
WHERE j.id = numbered.id
RETURNING j.id, j.batch_seq, j.payload, j.attempts, j.txid, j.raw_tx, j.utxo_id,
          j.anchor_utxo_id, batch.id AS batch_id, batch.created_at AS batch_created_at
