WITH u AS (
    SELECT * FROM unnest($1::bigint[], $2::int[], $3::timestamptz[], $4::int[], $5::bigint[])
        AS u(id, attempts, sent_at, change_vout, change_sats)
), done AS (
    -- Each step carries what the next needs in its RETURNING: a join of two
    -- CTEs is planned for one row each, a nested loop quadratic in the
    -- group's size.
    UPDATE publish_jobs j
    SET status = 'sent', sent_at = u.sent_at, last_error = NULL, updated_at = now()
    FROM u
    WHERE j.id = u.id AND j.attempts = u.attempts AND j.owner = $6
      AND j.status = 'sending'
    RETURNING j.id, j.processing_batch_id, j.txid, j.utxo_id,
              EXTRACT(EPOCH FROM j.sent_at - j.created_at)::float8 AS age,
              u.change_vout, u.change_sats
), spent AS (
    UPDATE utxos x SET state = 'spent', dirty = FALSE, updated_at = now()
    FROM done WHERE x.id = done.utxo_id
    RETURNING done.id AS job_id, done.txid, done.change_vout, done.change_sats,
              x.unconfirmed_depth, x.script_pubkey
), change AS (
    -- The change of a job that signed more than once stays out of the pool
    -- until its transaction confirms: an earlier one may still replace it.
    INSERT INTO utxos (txid, vout, satoshis, script_pubkey, unconfirmed_depth, state)
    SELECT s.txid, s.change_vout, s.change_sats, s.script_pubkey,
           s.unconfirmed_depth + 1,
           CASE WHEN EXISTS (SELECT 1 FROM job_transactions t WHERE t.job_id = s.job_id)
                THEN 'pending' ELSE 'available' END
    FROM spent s
    WHERE s.change_vout IS NOT NULL
    ON CONFLICT (txid, vout) DO NOTHING
    RETURNING id, txid, vout, satoshis, unconfirmed_depth, state
), per_batch AS (
    SELECT processing_batch_id AS id, count(*)::int AS n FROM done GROUP BY 1
), counted AS (
    UPDATE batches b
    SET sent = b.sent + p.n,
        completed_at = CASE WHEN b.sent + p.n + b.failed + b.retried >= b.size
                            THEN now() ELSE b.completed_at END
    FROM per_batch p WHERE b.id = p.id
)
SELECT 'job' AS kind, id, NULL::text AS txid, NULL::int AS vout,
       NULL::bigint AS satoshis, NULL::int AS depth, age, FALSE AS failed
FROM done
UNION ALL
SELECT 'utxo', id, txid, vout, satoshis, unconfirmed_depth, NULL, FALSE
FROM change WHERE state = 'available'
