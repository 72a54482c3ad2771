WITH u AS (
    SELECT * FROM unnest($1::bigint[], $2::int[], $3::bigint[], $4::text[], $5::bytea[])
        AS u(id, attempts, utxo_id, txid, raw_tx)
), ours AS (
    -- The entry whose fence holds (a group may also carry a stale copy of
    -- the same job, from a claim that was taken back: it must not act).
    -- Each step below carries the record on in its RETURNING rather than
    -- joining back to `u`: the planner sees one row in a CTE, and a join
    -- of two CTEs becomes a nested loop, quadratic in the group's size.
    SELECT j.id, u.attempts, u.utxo_id, u.txid, u.raw_tx,
           -- A job holds one UTXO at a time (utxos_reserved_by_idx): one
           -- that still holds another is left out below, not allowed to
           -- fail the whole group's statement. (Asked here, row by row on
           -- the index: as an anti-join below it was a scan of every held
           -- UTXO for each job.)
           EXISTS (SELECT 1 FROM utxos y
                   WHERE y.reserved_by = j.id AND y.id <> u.utxo_id
                     AND y.state IN ('reserved', 'spending')) AS holds_other
    FROM publish_jobs j JOIN u ON j.id = u.id
    WHERE j.attempts = u.attempts AND j.owner = $6
      AND (j.status = 'processing_batch' OR (j.status = 'sending' AND j.txid = u.txid))
      -- A job that signed before spends its anchor and nothing else.
      AND (j.anchor_utxo_id IS NULL OR j.anchor_utxo_id = u.utxo_id)
    FOR UPDATE OF j
), took AS (
    UPDATE utxos x
    SET state = 'spending', reserved_by = ours.id, reserved_at = now(),
        spent_by_txid = ours.txid, updated_at = now()
    FROM ours
    WHERE x.id = ours.utxo_id
      AND ((x.state = 'available' AND NOT x.dirty)
           OR (x.state = 'spending' AND x.spent_by_txid = ours.txid)
           -- the job's own anchor, kept between its attempts
           OR (x.state = 'reserved' AND x.reserved_by = ours.id AND NOT x.dirty))
      AND NOT ours.holds_other
    RETURNING ours.id, ours.utxo_id, ours.txid, ours.raw_tx
), stored AS (
    UPDATE publish_jobs j
    SET status = 'sending', utxo_id = took.utxo_id, anchor_utxo_id = took.utxo_id,
        txid = took.txid, raw_tx = took.raw_tx,
        sending_started_at = COALESCE(j.sending_started_at, now()), updated_at = now()
    FROM took
    WHERE j.id = took.id
    RETURNING j.id
)
SELECT id, TRUE FROM stored
UNION ALL
SELECT id, FALSE FROM ours WHERE id NOT IN (SELECT id FROM took)
