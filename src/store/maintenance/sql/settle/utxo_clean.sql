-- Fenced: only while nothing live holds the coin (a job sending on it, or
-- a split, whose outcome another process's settler may still be asking).
WITH cleaned AS (
    UPDATE utxos x SET dirty = FALSE, updated_at = now()
    WHERE x.id = $1 AND x.dirty
      AND NOT EXISTS (SELECT 1 FROM publish_jobs j
                      WHERE j.utxo_id = x.id AND j.status IN ('processing_batch', 'sending'))
      AND NOT EXISTS (SELECT 1 FROM pool_transactions pt
                      WHERE pt.input_utxo_id = x.id AND pt.status = 'sending')
    RETURNING id, txid, vout, satoshis, unconfirmed_depth, state
), released AS (
    -- Under the same fence: a job held on the coin is let go only if it was cleaned.
    UPDATE publish_jobs SET next_attempt_at = now(), updated_at = now()
    WHERE anchor_utxo_id IN (SELECT id FROM cleaned)
      AND status = 'queued' AND next_attempt_at = 'infinity'
)
SELECT id, txid, vout, satoshis, unconfirmed_depth, state FROM cleaned
