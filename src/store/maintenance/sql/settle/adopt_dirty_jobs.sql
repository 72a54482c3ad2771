UPDATE publish_jobs j
SET owner = $2, attempts = j.attempts + 1, sending_started_at = now(),
    updated_at = now()
FROM utxos x
-- Still as read: sending, its UTXO still dirty under the same transaction
-- (a job settled or re-signed meanwhile is not taken).
WHERE j.id = ANY($1) AND j.status = 'sending'
  AND x.id = j.utxo_id AND x.dirty AND x.spent_by_txid = j.txid
RETURNING j.id, j.attempts, j.txid, j.raw_tx, j.utxo_id
