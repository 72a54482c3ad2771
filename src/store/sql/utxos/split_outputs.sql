INSERT INTO utxos (txid, vout, satoshis, script_pubkey, state, unconfirmed_depth)
SELECT $1, v.vout, v.sats, $3, 'pending', $4
FROM unnest($2::int[], $5::bigint[]) AS v(vout, sats)
