-- Adopting the seed's database (`raregen migrate` on a database that holds RareGen's
-- batch worker schema, see docs/operations.md "Migrating from RareGen's batch worker").
--
-- 1. The seed's finished jobs carry the txid they were published with, but the seed
--    never stored the signed bytes. A job's transaction is still stored before it is
--    broadcast (`sending` requires raw_tx); a finished job may name its txid alone.
DO $$
DECLARE name text;
BEGIN
    SELECT conname INTO name FROM pg_constraint
    WHERE conrelid = 'publish_jobs'::regclass AND contype = 'c'
      AND pg_get_constraintdef(oid) = 'CHECK (((raw_tx IS NULL) = (txid IS NULL)))';
    IF name IS NULL THEN
        RAISE EXCEPTION 'publish_jobs: the raw_tx/txid check of the first migration is not there';
    END IF;
    EXECUTE format('ALTER TABLE publish_jobs DROP CONSTRAINT %I', name);
END $$;
-- NOT VALID: every existing row already holds (the dropped check implied both), and a
-- large table is not scanned under its lock; new and updated rows are checked.
ALTER TABLE publish_jobs ADD CONSTRAINT publish_jobs_raw_tx_has_txid
    CHECK (raw_tx IS NULL OR txid IS NOT NULL) NOT VALID;
ALTER TABLE publish_jobs ADD CONSTRAINT publish_jobs_txid_has_raw_tx
    CHECK (txid IS NULL OR raw_tx IS NOT NULL OR status IN ('sent', 'failed')) NOT VALID;

-- 2. A seed job that was in flight (its transaction may be live) is adopted `queued`
--    but held (next_attempt_at = 'infinity': the claim never takes it) on its seed
--    coin, which is its anchor, reserved by it and dirty. The DirtySettler asks the
--    node about that coin: unspent, the job is released and signs on that very coin
--    (any late copy of the seed's transaction conflicts with it); spent, the job
--    fails and is never signed again. This index finds the held job of a coin.
CREATE INDEX publish_jobs_held_idx ON publish_jobs (anchor_utxo_id)
    WHERE status = 'queued' AND next_attempt_at = 'infinity';

-- 3. The jobs adopted in flight (with the seed's txid, where it kept one). Such a job
--    never leaves its anchor for another coin: a transaction raregen did not sign that
--    spends the anchor may be the seed's own transaction of the job, so the job fails
--    instead (record_retry). Empty unless the database was adopted from the seed.
CREATE TABLE seed_in_flight (
    job_id     BIGINT PRIMARY KEY REFERENCES publish_jobs (id) ON DELETE CASCADE,
    seed_txid  TEXT
);
