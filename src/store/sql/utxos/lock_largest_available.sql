SELECT id, txid, vout, satoshis, unconfirmed_depth FROM utxos
WHERE state = 'available' AND NOT dirty AND unconfirmed_depth < $1
ORDER BY satoshis DESC, id
LIMIT 1
FOR UPDATE SKIP LOCKED
