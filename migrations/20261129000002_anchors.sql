-- One anchor outpoint per job. The UTXO a job takes at its first write-ahead is its
-- anchor: every transaction ever signed for the job spends it, so at most one of them
-- can be mined (they conflict with each other). Between attempts the anchor stays
-- `reserved` by the job (utxos.reserved_by); the job leaves it only when the Janitor
-- has seen it spent by a confirmed transaction that is none of the job's own
-- (re-anchor), or when the job fails for good (the anchor goes back to the pool).
ALTER TABLE publish_jobs ADD COLUMN anchor_utxo_id BIGINT;

-- Jobs in flight when this migration runs: their UTXO is their anchor.
UPDATE publish_jobs SET anchor_utxo_id = utxo_id
WHERE status IN ('sending', 'sent') AND utxo_id IS NOT NULL;

-- Every transaction signed for a job that is not (or no longer) the one on its row: a
-- job signed again after a definitive refusal keeps its earlier transactions here, with
-- the refusal that retired each, so that a late copy that is mined after all can be
-- recognised as the job's own (and no second signature ever spends another outpoint).
CREATE TABLE job_transactions (
    txid            TEXT PRIMARY KEY CHECK (txid ~ '^[0-9a-f]{64}$'),
    job_id          BIGINT NOT NULL REFERENCES publish_jobs (id) ON DELETE CASCADE,
    anchor_utxo_id  BIGINT NOT NULL,
    raw_tx          BYTEA NOT NULL,
    -- Refused by a node for a reason of the job (counts toward broadcaster.max_attempts);
    -- false for one set aside otherwise (its anchor spent by a confirmed foreign
    -- transaction, or another transaction of the job held instead).
    refused         BOOLEAN NOT NULL,
    outcome         TEXT,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX job_transactions_job_idx ON job_transactions (job_id);
