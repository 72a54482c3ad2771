-- The UTXOs still in play (not spent, not retired), by state: the pool gauges on
-- /metrics count them every few seconds without reading the spent history, which
-- grows by one row per published job.
CREATE INDEX utxos_live_idx ON utxos (state, dirty)
    WHERE state IN ('pending', 'available', 'reserved', 'spending');

-- The oldest `sending` job (the stuck-job gauge and `raregen status`).
CREATE INDEX publish_jobs_sending_idx ON publish_jobs (sending_started_at)
    WHERE status = 'sending';
