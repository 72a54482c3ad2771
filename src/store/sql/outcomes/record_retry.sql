WITH u AS (
    SELECT * FROM unnest($1::bigint[], $2::int[], $3::text[], $4::timestamptz[], $7::bool[], $8::bool[])
        AS u(id, attempts, error, not_before, reanchor, settles)
), before AS (
    -- A job whose anchor is dirty is not sent back: a transaction of it with
    -- an unknown outcome may still be mined; the DirtySettler settles it
    -- first, by the same bytes again: their definitive refusal (`settles`)
    -- sends the job back to sign again on the same anchor, which conflicts
    -- with every copy of the refused bytes.
    SELECT j.id, COALESCE(j.utxo_id, j.anchor_utxo_id) AS anchor, j.txid, j.raw_tx,
           u.attempts, u.settles, u.not_before,
           -- A job adopted from the batch worker in flight never leaves its anchor:
           -- the foreign spend may be the batch worker's own transaction of it.
           CASE WHEN u.reanchor AND s.job_id IS NOT NULL
                THEN 'adopted from the batch worker in flight; its coin was spent by a '
                     || 'transaction raregen did not sign (most likely the batch worker''s '
                     || 'own transaction of it): never signed again (' || u.error || ')'
                ELSE u.error END AS error,
           u.reanchor AND s.job_id IS NULL AS reanchor,
           -- `max_attempts` counts the job's refused transactions (the one
           -- refused now, and those in its history), not its claims: a
           -- claim taken back from a dead or frozen process is no attempt.
           (u.reanchor AND s.job_id IS NOT NULL)
           OR (NOT u.reanchor
               AND ((j.txid IS NOT NULL)::int
                    + (SELECT count(*) FROM job_transactions t
                       WHERE t.job_id = j.id AND t.refused)) >= $5) AS final,
           -- Has the job ever signed on its anchor? (One adopted from the batch worker
           -- in flight may have, in the batch worker.)
           (j.txid IS NOT NULL OR s.job_id IS NOT NULL OR EXISTS (
               SELECT 1 FROM job_transactions t
               WHERE t.job_id = j.id
                 AND t.anchor_utxo_id = COALESCE(j.utxo_id, j.anchor_utxo_id))) AS signed
    FROM publish_jobs j JOIN u ON j.id = u.id
    LEFT JOIN seed_in_flight s ON s.job_id = j.id
    WHERE j.attempts = u.attempts AND j.owner = $6
      AND j.status IN ('processing_batch', 'sending')
      AND (u.settles
           OR NOT EXISTS (SELECT 1 FROM utxos d
                          WHERE d.id = COALESCE(j.utxo_id, j.anchor_utxo_id) AND d.dirty))
    FOR UPDATE OF j
), history AS (
    -- The refused transaction is kept: a copy of it may still be mined, and
    -- it must then be recognised as the job's own.
    INSERT INTO job_transactions (txid, job_id, anchor_utxo_id, raw_tx, refused, outcome)
    SELECT txid, id, anchor, raw_tx, NOT reanchor, error FROM before
    WHERE txid IS NOT NULL AND anchor IS NOT NULL
    ON CONFLICT (txid) DO NOTHING
), done AS (
    UPDATE publish_jobs j
    SET status = CASE WHEN before.final THEN 'failed' ELSE 'queued' END,
        next_attempt_at = CASE WHEN before.final THEN j.next_attempt_at
                               ELSE before.not_before END,
        last_error = before.error,
        anchor_utxo_id = CASE WHEN before.reanchor THEN NULL ELSE before.anchor END,
        owner = NULL, utxo_id = NULL, txid = NULL, raw_tx = NULL,
        sending_started_at = NULL, updated_at = now()
    -- `before` carries the record (no join back to `u`: a join of two
    -- CTEs is planned for one row each, quadratic in the group's size).
    FROM before
    WHERE j.id = before.id
    RETURNING j.id, j.processing_batch_id, j.status
), released AS (
    -- A job that fails for good without ever having signed on its anchor
    -- (it could not be built) gives the coin back to the pool.
    UPDATE utxos x
    SET state = 'available', reserved_by = NULL, reserved_at = NULL,
        spent_by_txid = NULL, updated_at = now()
    FROM before
    WHERE x.id = before.anchor AND before.final AND NOT before.signed
      AND NOT before.reanchor
      AND x.state IN ('reserved', 'spending') AND x.reserved_by = before.id
      AND NOT x.dirty
    RETURNING x.id, x.txid, x.vout, x.satoshis, x.unconfirmed_depth
), kept AS (
    -- Otherwise the job keeps its anchor: until its next attempt signs on
    -- it, or for good once it failed (a refused copy of its transaction may
    -- still be mined: no other job may ever spend the coin; requeued by an
    -- operator, the job signs on it again).
    UPDATE utxos x
    SET state = 'reserved', reserved_at = now(), spent_by_txid = NULL,
        dirty = FALSE, updated_at = now()
    FROM before
    WHERE x.id = before.anchor AND (NOT before.final OR before.signed)
      AND NOT before.reanchor
      AND x.state IN ('reserved', 'spending') AND x.reserved_by = before.id
      AND (NOT x.dirty OR before.settles)
), per_batch AS (
    SELECT processing_batch_id AS id,
           (count(*) FILTER (WHERE status = 'failed'))::int AS failed,
           (count(*) FILTER (WHERE status = 'queued'))::int AS retried
    FROM done GROUP BY 1
), counted AS (
    UPDATE batches b
    SET failed = b.failed + p.failed, retried = b.retried + p.retried,
        completed_at = CASE WHEN b.sent + b.failed + b.retried + p.failed + p.retried >= b.size
                            THEN now() ELSE b.completed_at END
    FROM per_batch p WHERE b.id = p.id
)
SELECT 'job' AS kind, id, NULL::text AS txid, NULL::int AS vout,
       NULL::bigint AS satoshis, NULL::int AS depth, NULL::float8 AS age,
       status = 'failed' AS failed
FROM done
UNION ALL
SELECT 'utxo', id, txid, vout, satoshis, unconfirmed_depth, NULL, FALSE
FROM released
