SELECT x.id, x.txid, x.vout, x.satoshis, x.unconfirmed_depth, x.reserved_by, x.state,
       x.dirty,
       (SELECT count(*) FROM job_transactions t
        WHERE t.job_id = x.reserved_by AND t.anchor_utxo_id = x.id)::int AS signed
FROM utxos x
WHERE x.id = ANY($1)
