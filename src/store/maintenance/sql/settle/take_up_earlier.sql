WITH cur AS (
    SELECT id, txid, raw_tx, anchor_utxo_id FROM publish_jobs
    WHERE id = $1 AND attempts = $2 AND owner = $4 AND status = 'sending'
    FOR UPDATE
), earlier AS (
    DELETE FROM job_transactions t USING cur
    WHERE t.job_id = cur.id AND t.txid = $3
    RETURNING t.txid, t.raw_tx
), kept AS (
    INSERT INTO job_transactions (txid, job_id, anchor_utxo_id, raw_tx, refused, outcome)
    SELECT cur.txid, cur.id, cur.anchor_utxo_id, cur.raw_tx, FALSE,
           'replaced: an earlier transaction of the job is the one the node holds'
    FROM cur, earlier
    ON CONFLICT (txid) DO NOTHING
), anchor AS (
    UPDATE utxos x SET spent_by_txid = earlier.txid, updated_at = now()
    FROM cur, earlier
    WHERE x.id = cur.anchor_utxo_id AND x.reserved_by = cur.id
)
UPDATE publish_jobs j SET txid = earlier.txid, raw_tx = earlier.raw_tx,
                          updated_at = now()
FROM cur, earlier WHERE j.id = cur.id
RETURNING j.id
