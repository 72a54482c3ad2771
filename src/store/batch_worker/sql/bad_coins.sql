SELECT id::bigint FROM utxos WHERE NOT (lower(txid) ~ '^[0-9a-f]{64}$')
OR vout < 0 OR satoshis <= 0 ORDER BY id LIMIT 10
