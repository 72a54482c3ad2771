INSERT INTO pool_transactions (kind, txid, raw_tx, input_utxo_id, outputs, amount, fee)
VALUES ('split', $1, $2, $3, $4, $5, $6) RETURNING id
