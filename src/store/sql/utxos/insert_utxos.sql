INSERT INTO utxos (txid, vout, satoshis, script_pubkey, unconfirmed_depth, coinbase)
SELECT * FROM unnest($1::text[], $2::int[], $3::bigint[], $4::bytea[], $5::int[], $6::bool[])
ON CONFLICT (txid, vout) DO NOTHING
RETURNING txid, vout
