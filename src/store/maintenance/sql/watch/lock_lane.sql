root AS (
    SELECT id FROM publish_jobs
    WHERE txid = $1 AND status = 'sent' AND confirmed_at IS NULL
    FOR UPDATE
), jobs AS (
    SELECT p.id FROM publish_jobs p
    WHERE EXISTS (SELECT 1 FROM root)
      AND ((p.txid IN (SELECT txid FROM chain)
            AND p.status IN ('sent', 'sending') AND p.confirmed_at IS NULL)
           OR (p.status IN ('queued', 'processing_batch')
               AND p.anchor_utxo_id IN (SELECT x.id FROM utxos x
                                        WHERE x.txid IN (SELECT txid FROM chain))))
    ORDER BY p.id
    FOR UPDATE OF p
), coins AS (
    SELECT x.id FROM utxos x
    WHERE EXISTS (SELECT 1 FROM root) AND x.txid IN (SELECT txid FROM chain)
    ORDER BY x.id
    FOR UPDATE OF x
)
SELECT CASE WHEN EXISTS (SELECT 1 FROM root)
            THEN 1 + (SELECT count(*) FROM jobs) + (SELECT count(*) FROM coins)
            ELSE 0 END
