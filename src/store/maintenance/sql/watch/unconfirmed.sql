SELECT t.txid, t.raw_tx, t.settled, x.txid AS input_txid, x.vout AS input_vout,
       t.k = 0 AS split
FROM (
    (SELECT txid, raw_tx, sent_at < now() - make_interval(secs => $2) AS settled,
            0 AS k, created_at AS at, input_utxo_id AS input
     FROM pool_transactions WHERE status = 'sent' AND confirmed_at IS NULL
     ORDER BY id LIMIT $1)
    UNION ALL
    (SELECT txid, raw_tx, sent_at < now() - make_interval(secs => $2),
            1, sent_at, utxo_id
     FROM publish_jobs WHERE status = 'sent' AND confirmed_at IS NULL AND raw_tx IS NOT NULL
     ORDER BY sent_at LIMIT $1)
) t LEFT JOIN utxos x ON x.id = t.input
ORDER BY t.k, t.at
