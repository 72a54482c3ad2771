SELECT id, txid, raw_tx, input_utxo_id FROM pool_transactions
WHERE status = 'sending' ORDER BY id
