WITH gone AS (
    DELETE FROM pool_transactions WHERE id IN (
        SELECT id FROM pool_transactions
        WHERE (status = 'sent' AND confirmed_at < now() - make_interval(secs => $1))
           OR (status = 'failed' AND created_at < now() - make_interval(secs => $1))
        ORDER BY id LIMIT $2)
    RETURNING id, input_utxo_id
), dropped AS (
    -- (This statement's own DELETE is not visible to its subqueries: a
    -- split still naming the coin is one not deleted here.)
    DELETE FROM utxos x USING gone
    WHERE x.id = gone.input_utxo_id AND x.state IN ('spent', 'retired')
      AND NOT EXISTS (SELECT 1 FROM pool_transactions p
                      WHERE p.input_utxo_id = x.id
                        AND p.id NOT IN (SELECT id FROM gone))
    RETURNING 1
)
SELECT (SELECT count(*) FROM gone), (SELECT count(*) FROM dropped)
