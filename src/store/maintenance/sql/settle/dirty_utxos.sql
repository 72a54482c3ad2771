SELECT x.id, x.txid, x.vout, x.spent_by_txid, j.id AS job_id, pt.id AS split_id
FROM utxos x
LEFT JOIN publish_jobs j
       ON j.utxo_id = x.id AND j.status = 'sending' AND j.txid = x.spent_by_txid
LEFT JOIN pool_transactions pt
       ON pt.input_utxo_id = x.id AND pt.status = 'sending' AND pt.txid = x.spent_by_txid
WHERE x.dirty AND x.state IN ('available', 'reserved', 'spending', 'retired')
ORDER BY x.id
LIMIT $1
