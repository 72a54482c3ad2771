WITH cur AS (
    SELECT id, txid, raw_tx, anchor_utxo_id FROM publish_jobs
    WHERE txid = $1 AND status = 'sent'
    FOR UPDATE
), earlier AS (
    DELETE FROM job_transactions t USING cur
    WHERE t.job_id = cur.id AND t.txid = $2
    RETURNING t.txid, t.raw_tx
), kept AS (
    INSERT INTO job_transactions (txid, job_id, anchor_utxo_id, raw_tx, refused, outcome)
    SELECT cur.txid, cur.id, cur.anchor_utxo_id, cur.raw_tx, FALSE,
           'accepted, then not held: the node keeps an earlier transaction of the job'
    FROM cur, earlier
    ON CONFLICT (txid) DO NOTHING
), old_change AS (
    UPDATE utxos x SET state = 'retired', updated_at = now()
    FROM cur, earlier
    WHERE x.txid = cur.txid AND x.state IN ('pending', 'available')
), new_change AS (
    INSERT INTO utxos (txid, vout, satoshis, script_pubkey, state, unconfirmed_depth)
    SELECT earlier.txid, $3, $4, a.script_pubkey, 'pending', a.unconfirmed_depth + 1
    FROM cur, earlier, utxos a
    WHERE a.id = cur.anchor_utxo_id AND $3 IS NOT NULL
    ON CONFLICT (txid, vout) DO NOTHING
), anchor AS (
    UPDATE utxos x SET spent_by_txid = earlier.txid, updated_at = now()
    FROM cur, earlier WHERE x.id = cur.anchor_utxo_id
)
UPDATE publish_jobs j SET txid = earlier.txid, raw_tx = earlier.raw_tx,
                          updated_at = now()
FROM cur, earlier WHERE j.id = cur.id
RETURNING j.id
