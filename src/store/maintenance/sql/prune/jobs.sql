WITH doomed AS (
    (SELECT id FROM publish_jobs
     WHERE status = 'sent' AND confirmed_at IS NOT NULL
       AND confirmed_at < now() - make_interval(secs => $1)
     ORDER BY confirmed_at LIMIT $2)
    UNION ALL
    (SELECT id FROM publish_jobs j
     WHERE status = 'failed' AND updated_at < now() - make_interval(secs => $1)
       AND (updated_at < now() - make_interval(secs => $4)
            OR NOT EXISTS (SELECT 1 FROM utxos x
                           WHERE x.reserved_by = j.id AND x.state = 'reserved'))
     ORDER BY updated_at LIMIT $2)
    LIMIT $2
), gone AS (
    DELETE FROM publish_jobs j USING doomed
    WHERE j.id = doomed.id
      AND ((j.status = 'sent' AND j.confirmed_at < now() - make_interval(secs => $1))
           OR (j.status = 'failed' AND j.updated_at < now() - make_interval(secs => $1)
               AND (j.updated_at < now() - make_interval(secs => $4)
                    OR NOT EXISTS (SELECT 1 FROM utxos x
                                   WHERE x.reserved_by = j.id
                                     AND x.state = 'reserved'))))
    RETURNING j.*
), archived AS (
    INSERT INTO publish_jobs_archive SELECT gone.* FROM gone WHERE $3
    RETURNING 1
), freed AS (
    UPDATE utxos x SET state = 'available', dirty = TRUE, reserved_by = NULL,
                       reserved_at = NULL, updated_at = now()
    FROM gone WHERE x.reserved_by = gone.id AND x.state = 'reserved'
    RETURNING x.id
), dropped AS (
    DELETE FROM utxos x USING gone
    WHERE x.id IN (gone.utxo_id, gone.anchor_utxo_id)
      AND x.state IN ('spent', 'retired')
      AND NOT EXISTS (SELECT 1 FROM pool_transactions p WHERE p.input_utxo_id = x.id)
    RETURNING 1
)
SELECT (SELECT count(*) FROM gone), (SELECT count(*) FROM dropped)
