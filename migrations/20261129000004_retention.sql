-- Retention (the Pruner): finished jobs older than `retention.keep` are deleted, or
-- moved here when `retention.archive = true`, in bounded batches. These partial
-- indexes hold only finished rows in the order they expire, so a pruning run reads
-- the oldest first and stops at the first one still to keep.
CREATE INDEX publish_jobs_expire_sent_idx ON publish_jobs (confirmed_at)
    WHERE status = 'sent' AND confirmed_at IS NOT NULL;
CREATE INDEX publish_jobs_expire_failed_idx ON publish_jobs (updated_at)
    WHERE status = 'failed';
CREATE INDEX batches_completed_idx ON batches (completed_at) WHERE completed_at IS NOT NULL;
CREATE INDEX utxos_finished_idx ON utxos (updated_at) WHERE state IN ('spent', 'retired');

-- Archived jobs: the same columns as publish_jobs (a migration that adds a column to
-- publish_jobs adds it here too), no constraints beyond the key, no triggers.
CREATE TABLE publish_jobs_archive (LIKE publish_jobs INCLUDING DEFAULTS);
ALTER TABLE publish_jobs_archive ADD PRIMARY KEY (id);
ALTER TABLE publish_jobs_archive ADD COLUMN archived_at TIMESTAMPTZ NOT NULL DEFAULT now();
