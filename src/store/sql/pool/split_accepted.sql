SELECT id, txid, vout, satoshis, unconfirmed_depth FROM utxos
WHERE txid = $1 AND state = 'available' AND NOT dirty
