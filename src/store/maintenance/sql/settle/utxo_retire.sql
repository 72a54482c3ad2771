WITH failed AS (
    UPDATE publish_jobs
    SET status = 'failed', updated_at = now(),
        last_error = 'adopted from the batch worker in flight; its coin is spent (most likely '
                     || 'by the batch worker''s own transaction of it): never signed again; '
                     || COALESCE(last_error, '')
    WHERE anchor_utxo_id = $1 AND status = 'queued' AND next_attempt_at = 'infinity'
)
UPDATE utxos SET state = 'retired', dirty = FALSE, reserved_by = NULL, updated_at = now()
WHERE id = $1
