SELECT COALESCE(sum($1 - unconfirmed_depth), 0)::bigint FROM utxos
WHERE state = 'available' AND NOT dirty AND unconfirmed_depth < $1
