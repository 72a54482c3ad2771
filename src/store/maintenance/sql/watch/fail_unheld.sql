before AS (
    SELECT p.id, p.status FROM publish_jobs p
    WHERE (p.txid IN (SELECT txid FROM chain)
           AND p.status IN ('sent', 'sending') AND p.confirmed_at IS NULL)
       -- Jobs between attempts whose anchor is an output of the lane: that
       -- coin can never exist, and they may sign on nothing else.
       OR (p.status IN ('queued', 'processing_batch')
           AND p.anchor_utxo_id IN (SELECT x.id FROM utxos x
                                    WHERE x.txid IN (SELECT txid FROM chain)))
    FOR UPDATE OF p
), job AS (
    UPDATE publish_jobs p
    SET status = 'failed',
        last_error = CASE WHEN p.txid = $1 THEN $2
                          ELSE 'it spends an output of ' || $1 || ', a transaction the node never held' END,
        owner = NULL, sending_started_at = NULL, updated_at = now()
    FROM before WHERE p.id = before.id
    RETURNING p.id, p.utxo_id, p.processing_batch_id, p.txid, p.txid = $1 AS root
), coin AS (
    UPDATE utxos x SET state = 'retired', dirty = FALSE, reserved_by = NULL,
                       reserved_at = NULL, updated_at = now()
    FROM job WHERE job.root AND x.id = job.utxo_id AND x.state IN ('spending', 'spent')
), outputs AS (
    -- The outputs of every transaction of the lane (failed now or before:
    -- a second run catches a change recorded while the first ran).
    UPDATE utxos x SET state = 'retired', dirty = FALSE, reserved_by = NULL,
                       reserved_at = NULL, updated_at = now()
    WHERE x.txid IN (SELECT txid FROM chain) AND x.state <> 'retired'
      AND x.id NOT IN (SELECT utxo_id FROM job WHERE root AND utxo_id IS NOT NULL)
), batch AS (
    UPDATE batches b
    SET sent = greatest(b.sent - s.was_sent, 0), failed = b.failed + s.n
    FROM (SELECT job.processing_batch_id AS id,
                 (count(*) FILTER (WHERE before.status = 'sent'))::int AS was_sent,
                 count(*)::int AS n
          FROM job JOIN before ON before.id = job.id
          WHERE before.status IN ('sent', 'sending') GROUP BY 1) s
    WHERE b.id = s.id
)
SELECT count(*) FROM job
