UPDATE utxos SET state = 'spending', spent_by_txid = $2, updated_at = now()
WHERE id = $1 AND state = 'available'
