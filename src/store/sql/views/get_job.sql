SELECT id, status, payload, idempotency_key, priority, txid, attempts, last_error,
       processing_batch_id, batch_seq, created_at,
       NULLIF(next_attempt_at, 'infinity') AS next_attempt_at,
       sending_started_at, sent_at, confirmed_at, block_height,
       (SELECT x.txid || ':' || x.vout FROM utxos x WHERE x.id = j.anchor_utxo_id)
           AS anchor,
       ARRAY(SELECT t.txid FROM job_transactions t WHERE t.job_id = j.id
             ORDER BY t.created_at, t.txid) AS earlier_txids
FROM publish_jobs j WHERE id = $1
