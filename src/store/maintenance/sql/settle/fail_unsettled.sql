WITH job AS (
    UPDATE publish_jobs SET status = 'failed', last_error = $3, owner = NULL,
                            sending_started_at = NULL, updated_at = now()
    WHERE id = $1 AND attempts = $2 AND owner = $4 AND status = 'sending'
    RETURNING id, utxo_id, processing_batch_id
), batch AS (
    UPDATE batches b SET failed = b.failed + 1,
        completed_at = CASE WHEN b.sent + b.failed + 1 + b.retried >= b.size
                            THEN coalesce(b.completed_at, now()) ELSE b.completed_at END
    FROM job WHERE b.id = job.processing_batch_id
)
-- Unspent: the coin stays the failed job's anchor (`reserved`), never another
-- job's: a copy of the job's transaction may still be mined, and a job that
-- spent the coin next would be recorded sent with a transaction that never
-- can be. Requeued by an operator, the job signs on it again.
UPDATE utxos x
SET state = CASE WHEN $5 THEN 'reserved' ELSE 'retired' END, dirty = FALSE,
    reserved_by = CASE WHEN $5 THEN x.reserved_by END,
    reserved_at = CASE WHEN $5 THEN now() END,
    spent_by_txid = CASE WHEN $5 THEN NULL ELSE x.spent_by_txid END,
    updated_at = now()
FROM job WHERE x.id = job.utxo_id AND x.state IN ('reserved', 'spending')
RETURNING x.id, x.txid, x.vout, x.satoshis, x.unconfirmed_depth, x.state
