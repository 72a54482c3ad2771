root AS (
    SELECT id, utxo_id FROM publish_jobs
    WHERE txid = $1 AND status = 'sent' AND confirmed_at IS NULL
    FOR UPDATE
), before AS (
    SELECT p.id, p.status, p.txid, p.raw_tx, p.processing_batch_id,
           COALESCE(p.utxo_id, p.anchor_utxo_id) AS anchor,
           p.txid = $1 AS root,
           EXISTS (SELECT 1 FROM seed_in_flight s WHERE s.job_id = p.id) AS seed
    FROM publish_jobs p
    WHERE EXISTS (SELECT 1 FROM root)
      AND ((p.txid IN (SELECT txid FROM chain)
            AND p.status IN ('sent', 'sending') AND p.confirmed_at IS NULL)
           OR (p.status IN ('queued', 'processing_batch')
               AND p.anchor_utxo_id IN (SELECT x.id FROM utxos x
                                        WHERE x.txid IN (SELECT txid FROM chain))))
    FOR UPDATE OF p
), history AS (
    INSERT INTO job_transactions (txid, job_id, anchor_utxo_id, raw_tx, refused, outcome)
    SELECT txid, id, anchor, raw_tx, FALSE,
           CASE WHEN root THEN $3
                ELSE 'it spends an output of ' || $1 || ', whose coin ' || $2
                     || ' spent: ' || $3 END
    FROM before WHERE txid IS NOT NULL AND anchor IS NOT NULL
    ON CONFLICT (txid) DO NOTHING
), job AS (
    UPDATE publish_jobs p
    SET status = CASE WHEN before.seed THEN 'failed' ELSE 'queued' END,
        next_attempt_at = now(),
        attempts = p.attempts + 1,
        last_error = CASE
            WHEN before.seed THEN 'adopted from the batch worker in flight; its coin was spent by '
                 || $2 || ' (most likely the batch worker''s own transaction of it): never signed again'
            WHEN before.root THEN $3
            ELSE 'it spends an output of ' || $1 || ', which can never be mined: ' || $3 END,
        anchor_utxo_id = CASE WHEN before.seed THEN p.anchor_utxo_id END,
        owner = NULL, utxo_id = NULL, txid = NULL, raw_tx = NULL, sent_at = NULL,
        sending_started_at = NULL, updated_at = now()
    FROM before WHERE p.id = before.id
    RETURNING p.id
), coin AS (
    -- The first coin is spent, by the foreign transaction.
    UPDATE utxos x SET state = 'spent', spent_by_txid = $2, dirty = FALSE,
                       reserved_by = NULL, reserved_at = NULL, updated_at = now()
    FROM root WHERE x.id = root.utxo_id
), outputs AS (
    UPDATE utxos x SET state = 'retired', dirty = FALSE, reserved_by = NULL,
                       reserved_at = NULL, updated_at = now()
    WHERE x.txid IN (SELECT txid FROM chain) AND x.state <> 'retired'
      AND EXISTS (SELECT 1 FROM root)
), batch AS (
    -- A job counted sent in its batch is counted retried now; one not yet
    -- counted (sending, or held by a broadcaster) is counted retried.
    UPDATE batches b
    SET sent = greatest(b.sent - s.was_sent, 0),
        retried = b.retried + s.n, failed = b.failed + s.f,
        completed_at = CASE WHEN b.sent - s.was_sent + b.failed + b.retried + s.n + s.f >= b.size
                            THEN coalesce(b.completed_at, now()) ELSE b.completed_at END
    FROM (SELECT processing_batch_id AS id,
                 (count(*) FILTER (WHERE status = 'sent'))::int AS was_sent,
                 (count(*) FILTER (WHERE NOT seed))::int AS n,
                 (count(*) FILTER (WHERE seed))::int AS f
          FROM before
          WHERE status IN ('sent', 'sending', 'processing_batch')
            AND processing_batch_id IS NOT NULL
          GROUP BY 1) s
    WHERE b.id = s.id
)
SELECT b.txid FROM before b JOIN chain c ON c.txid = b.txid
WHERE b.status IN ('sent', 'sending')
GROUP BY b.txid ORDER BY min(c.depth), b.txid
