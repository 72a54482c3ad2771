UPDATE utxos SET state = 'available', spent_by_txid = NULL, dirty = $3, updated_at = now()
WHERE id = $1 AND state = 'spending' AND spent_by_txid = $2
