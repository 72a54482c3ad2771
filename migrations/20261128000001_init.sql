-- raregen schema, version 1.
--
-- Postgres is the source of truth. The column names the seed's runbook queries use
-- (publish_jobs.status, processing_batch_id, batch_seq, created_at, sent_at,
-- sending_started_at; utxos.id, txid, vout, satoshis, dirty, reserved_at, created_at)
-- are part of the interface contract and must not be renamed.

-- One row per running raregen process. Claims (jobs, batches, reservations) name the
-- process that holds them; the process refreshes heartbeat_at, and the Janitor of any
-- live process takes back the claims of a process whose lease ran out.
CREATE TABLE workers (
    id            TEXT PRIMARY KEY,
    hostname      TEXT NOT NULL,
    pid           INTEGER NOT NULL,
    mode          TEXT NOT NULL CHECK (mode IN ('batch', 'single', 'api', 'cli')),
    started_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    heartbeat_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    lease_until   TIMESTAMPTZ NOT NULL,
    stopped_at    TIMESTAMPTZ
);

-- A batch: the jobs one claim took, numbered 1..size by publish_jobs.batch_seq.
CREATE TABLE batches (
    id            BIGSERIAL PRIMARY KEY,
    owner         TEXT NOT NULL,
    size          INTEGER NOT NULL CHECK (size > 0),
    sent          INTEGER NOT NULL DEFAULT 0 CHECK (sent >= 0),
    failed        INTEGER NOT NULL DEFAULT 0 CHECK (failed >= 0),
    -- Jobs sent back to the queue for another attempt (they join a later batch).
    retried       INTEGER NOT NULL DEFAULT 0 CHECK (retried >= 0),
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    completed_at  TIMESTAMPTZ
);

CREATE TABLE publish_jobs (
    id                   BIGSERIAL PRIMARY KEY,
    status               TEXT NOT NULL DEFAULT 'queued'
                         CHECK (status IN ('queued', 'processing_batch', 'sending', 'sent', 'failed')),
    payload              BYTEA NOT NULL,
    idempotency_key      TEXT CHECK (length(idempotency_key) BETWEEN 1 AND 255),
    priority             SMALLINT NOT NULL DEFAULT 0,
    -- Claims so far; also the fencing token: a worker's state change names the
    -- (owner, attempts) it claimed with, so a worker that lost its claim changes nothing.
    attempts             INTEGER NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    next_attempt_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    last_error           TEXT,
    owner                TEXT,
    processing_batch_id  BIGINT,
    batch_seq            INTEGER CHECK (batch_seq > 0),
    claimed_at           TIMESTAMPTZ,
    -- The UTXO this job spends; set when reserved, kept after the job is sent.
    utxo_id              BIGINT,
    -- Write-ahead: the signed transaction is stored before it is broadcast, and every
    -- later broadcast of this job sends these very bytes.
    txid                 TEXT CHECK (txid ~ '^[0-9a-f]{64}$'),
    raw_tx               BYTEA,
    sending_started_at   TIMESTAMPTZ,
    sent_at              TIMESTAMPTZ,
    confirmed_at         TIMESTAMPTZ,
    block_height         INTEGER,
    block_hash           TEXT,
    created_at           TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at           TIMESTAMPTZ NOT NULL DEFAULT now(),
    CHECK (status <> 'processing_batch' OR processing_batch_id IS NOT NULL),
    CHECK (status <> 'sending' OR (raw_tx IS NOT NULL AND txid IS NOT NULL)),
    CHECK (status <> 'sent' OR (txid IS NOT NULL AND sent_at IS NOT NULL)),
    CHECK ((raw_tx IS NULL) = (txid IS NULL))
);

-- The claim reads this index in order and stops after max_batch rows; it only holds
-- queued rows, so it stays small however many finished jobs the table keeps.
CREATE INDEX publish_jobs_claim_idx ON publish_jobs (priority DESC, id)
    INCLUDE (next_attempt_at) WHERE status = 'queued';
-- Recovery scans: jobs in flight (small sets).
CREATE INDEX publish_jobs_inflight_idx ON publish_jobs (status, owner)
    WHERE status IN ('processing_batch', 'sending');
-- Idempotency keys are unique among the jobs that have one.
CREATE UNIQUE INDEX publish_jobs_idempotency_key_idx ON publish_jobs (idempotency_key)
    WHERE idempotency_key IS NOT NULL;
-- Confirmation tracking: sent and not yet confirmed, by age and by txid.
CREATE INDEX publish_jobs_unconfirmed_idx ON publish_jobs (sent_at)
    WHERE status = 'sent' AND confirmed_at IS NULL;
CREATE INDEX publish_jobs_unconfirmed_txid_idx ON publish_jobs (txid)
    WHERE status = 'sent' AND confirmed_at IS NULL;
-- Recovery: jobs holding a UTXO (dirty UTXO reconciliation finds its job).
CREATE INDEX publish_jobs_utxo_idx ON publish_jobs (utxo_id) WHERE status = 'sending';

-- Single mode wakes on this notification instead of polling. One per statement, so a
-- bulk insert of 10,000 jobs sends one notification, not 10,000.
CREATE FUNCTION raregen_notify_jobs() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('raregen_jobs', '');
    RETURN NULL;
END;
$$;
CREATE TRIGGER publish_jobs_notify AFTER INSERT ON publish_jobs
    FOR EACH STATEMENT EXECUTE FUNCTION raregen_notify_jobs();

CREATE TABLE utxos (
    id                 BIGSERIAL PRIMARY KEY,
    txid               TEXT NOT NULL CHECK (txid ~ '^[0-9a-f]{64}$'),
    vout               INTEGER NOT NULL CHECK (vout >= 0),
    satoshis           BIGINT NOT NULL CHECK (satoshis > 0),
    script_pubkey      BYTEA NOT NULL,
    -- pending:   an output of a transaction of ours that is stored but not yet accepted;
    -- available: may be reserved (unless dirty);
    -- reserved:  held by job reserved_by, no transaction signed yet;
    -- spending:  a stored transaction of ours (spent_by_txid) spends it, outcome pending;
    -- spent:     that transaction was accepted;
    -- retired:   gone for good (spent by something else, or never ours to spend).
    state              TEXT NOT NULL DEFAULT 'available'
                       CHECK (state IN ('pending', 'available', 'reserved', 'spending', 'spent', 'retired')),
    -- The outcome of a broadcast spending this UTXO is not known: never reserve it until
    -- the Janitor has asked the node.
    dirty              BOOLEAN NOT NULL DEFAULT FALSE,
    reserved_at        TIMESTAMPTZ,
    reserved_by        BIGINT,
    spent_by_txid      TEXT CHECK (spent_by_txid ~ '^[0-9a-f]{64}$'),
    -- Unconfirmed ancestors of this output, itself included (0: confirmed).
    unconfirmed_depth  INTEGER NOT NULL DEFAULT 0 CHECK (unconfirmed_depth >= 0),
    coinbase           BOOLEAN NOT NULL DEFAULT FALSE,
    created_at         TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at         TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (txid, vout),
    CHECK (state <> 'reserved' OR (reserved_by IS NOT NULL AND reserved_at IS NOT NULL)),
    CHECK (state NOT IN ('spending', 'spent') OR spent_by_txid IS NOT NULL)
);

-- One spender: a job holds at most one UTXO at a time.
CREATE UNIQUE INDEX utxos_reserved_by_idx ON utxos (reserved_by)
    WHERE state IN ('reserved', 'spending') AND reserved_by IS NOT NULL;
CREATE INDEX utxos_available_idx ON utxos (unconfirmed_depth, satoshis DESC)
    WHERE state = 'available' AND NOT dirty;
CREATE INDEX utxos_dirty_idx ON utxos (created_at) WHERE dirty;
CREATE INDEX utxos_unconfirmed_idx ON utxos (txid) WHERE unconfirmed_depth > 0;

-- Transactions of the pool itself (splits), stored before they are broadcast, like
-- the jobs' transactions: a retry re-sends these bytes.
CREATE TABLE pool_transactions (
    id                  BIGSERIAL PRIMARY KEY,
    kind                TEXT NOT NULL CHECK (kind IN ('split')),
    status              TEXT NOT NULL DEFAULT 'sending' CHECK (status IN ('sending', 'sent', 'failed')),
    txid                TEXT NOT NULL CHECK (txid ~ '^[0-9a-f]{64}$'),
    raw_tx              BYTEA NOT NULL,
    input_utxo_id       BIGINT NOT NULL REFERENCES utxos (id),
    outputs             INTEGER NOT NULL CHECK (outputs > 0),
    amount              BIGINT NOT NULL CHECK (amount > 0),
    fee                 BIGINT NOT NULL CHECK (fee >= 0),
    last_error          TEXT,
    created_at          TIMESTAMPTZ NOT NULL DEFAULT now(),
    sent_at             TIMESTAMPTZ,
    confirmed_at        TIMESTAMPTZ
);
-- Signing is deterministic: a split refused once and made again has the same txid.
CREATE UNIQUE INDEX pool_transactions_txid_idx ON pool_transactions (txid) WHERE status <> 'failed';
CREATE INDEX pool_transactions_sending_idx ON pool_transactions (created_at) WHERE status = 'sending';

-- A queue table churns: every claim leaves dead versions at the head of the claim
-- index. Vacuum it after 1% of its rows change instead of the default 20%.
ALTER TABLE publish_jobs SET (
    autovacuum_vacuum_scale_factor = 0.01,
    autovacuum_analyze_scale_factor = 0.02,
    autovacuum_vacuum_insert_scale_factor = 0.05
);
