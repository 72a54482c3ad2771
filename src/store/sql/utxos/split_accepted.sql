UPDATE utxos SET state = 'spent', dirty = FALSE, updated_at = now()
WHERE id = $1 AND state = 'spending' AND spent_by_txid = $2
