WITH c AS (
    SELECT * FROM unnest($1::text[], $2::int[], $3::text[]) AS c(txid, height, hash)
), jobs AS (
    UPDATE publish_jobs p
    SET confirmed_at = now(), block_height = c.height, block_hash = c.hash
    FROM c WHERE p.txid = c.txid AND p.status = 'sent' AND p.confirmed_at IS NULL
), splits AS (
    UPDATE pool_transactions p SET confirmed_at = now()
    FROM c WHERE p.txid = c.txid AND p.confirmed_at IS NULL
)
-- A confirmed transaction's outputs are depth 0; those kept out of the
-- pool until now (the change of a job that signed more than once) join it.
UPDATE utxos u SET unconfirmed_depth = 0,
                   state = CASE WHEN u.state = 'pending' THEN 'available'
                                ELSE u.state END,
                   updated_at = now()
FROM c WHERE u.txid = c.txid AND (u.unconfirmed_depth > 0 OR u.state = 'pending')
