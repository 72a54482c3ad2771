//! `publish_jobs`: submission, lookup, the claim and the batched state changes.

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use raregen_actors::{
    Anchor, ClaimedBatch, ClaimedJob, Fence, JobId, JobStore, Recorded, Retry, Sending,
    SendingRecorded, Sent, SpendableUtxo, StoreError, StoredTx,
};
use serde::Serialize;
use sqlx::postgres::{PgArguments, Postgres};
use sqlx::query::Query;
use sqlx::{PgPool, Row};

use super::{store_error, PgStore};

/// A validated job, ready to insert.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewJob {
    pub payload: Vec<u8>,
    pub idempotency_key: Option<String>,
    pub priority: i16,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InsertOutcome {
    /// A new job.
    Created(JobId),
    /// The idempotency key names a job with the same payload: that job.
    Existing(JobId),
    /// The idempotency key names a job with another payload.
    Conflict(JobId),
}

impl InsertOutcome {
    pub fn id(self) -> JobId {
        match self {
            InsertOutcome::Created(id)
            | InsertOutcome::Existing(id)
            | InsertOutcome::Conflict(id) => id,
        }
    }
}

/// The states of a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    Queued,
    ProcessingBatch,
    Sending,
    Sent,
    Failed,
}

impl JobStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Queued => "queued",
            JobStatus::ProcessingBatch => "processing_batch",
            JobStatus::Sending => "sending",
            JobStatus::Sent => "sent",
            JobStatus::Failed => "failed",
        }
    }
}

/// A job as `GET /v1/jobs/{id}` shows it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct JobView {
    pub id: JobId,
    #[schema(value_type = JobStatus)]
    pub status: String,
    pub payload_hex: String,
    pub idempotency_key: Option<String>,
    pub priority: i16,
    pub txid: Option<String>,
    pub attempts: i32,
    pub last_error: Option<String>,
    pub processing_batch_id: Option<i64>,
    pub batch_seq: Option<i32>,
    pub created_at: DateTime<Utc>,
    /// When the job may be claimed next; `None` while it is held (adopted from the
    /// seed in flight, until the node has been asked about its coin).
    pub next_attempt_at: Option<DateTime<Utc>>,
    pub sending_started_at: Option<DateTime<Utc>>,
    pub sent_at: Option<DateTime<Utc>>,
    pub confirmed_at: Option<DateTime<Utc>>,
    pub block_height: Option<i32>,
    /// The outpoint (`txid:vout`) every transaction of the job spends, once it signed.
    pub anchor: Option<String>,
    /// Transactions signed for the job before `txid` (each refused by a node, each
    /// spending the anchor: at most one of all of them can be mined), oldest first.
    pub earlier_txids: Vec<String>,
}

/// A job's progress, as `POST /v1/jobs/lookup` and `GET /v1/jobs` answer it.
#[derive(
    Debug, Clone, Serialize, serde::Deserialize, sqlx::FromRow, PartialEq, Eq, utoipa::ToSchema,
)]
pub struct JobState {
    pub id: JobId,
    #[schema(value_type = JobStatus)]
    pub status: String,
    pub txid: Option<String>,
    pub attempts: i32,
    pub last_error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub sent_at: Option<DateTime<Utc>>,
    /// When the job last changed state.
    #[serde(default)]
    #[sqlx(default)]
    pub updated_at: Option<DateTime<Utc>>,
}

/// `GET /v1/jobs`: jobs in one state.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct JobListing {
    pub status: JobStatus,
    pub jobs: Vec<JobState>,
}

/// Jobs per state.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct QueueCounts {
    pub queued: i64,
    pub processing_batch: i64,
    pub sending: i64,
    pub sent: i64,
    pub failed: i64,
}

impl PgStore {
    /// Inserts one job, honouring its idempotency key.
    pub async fn insert_job(&self, job: &NewJob) -> Result<InsertOutcome, StoreError> {
        let mut outcomes = self.insert_jobs(std::slice::from_ref(job)).await?;
        Ok(outcomes.pop().expect("one outcome per job"))
    }

    /// Inserts jobs all or nothing, in one transaction: the outcomes are in the order of
    /// `jobs`. When any outcome is a [`InsertOutcome::Conflict`] nothing is inserted and
    /// the outcomes say which jobs conflicted.
    pub async fn insert_jobs(&self, jobs: &[NewJob]) -> Result<Vec<InsertOutcome>, StoreError> {
        if jobs.is_empty() {
            return Ok(Vec::new());
        }
        // Within the request, a repeated key must carry the same payload; later copies
        // become the first one's job.
        let mut first_with_key: HashMap<&str, usize> = HashMap::new();
        let mut alias: Vec<Option<usize>> = vec![None; jobs.len()];
        let mut conflict_in_request = vec![false; jobs.len()];
        for (i, job) in jobs.iter().enumerate() {
            if let Some(key) = job.idempotency_key.as_deref() {
                match first_with_key.get(key) {
                    Some(&first) if jobs[first].payload == job.payload => alias[i] = Some(first),
                    Some(&first) => {
                        alias[i] = Some(first);
                        conflict_in_request[i] = true;
                    }
                    None => {
                        first_with_key.insert(key, i);
                    }
                }
            }
        }
        let unique: Vec<usize> = (0..jobs.len()).filter(|&i| alias[i].is_none()).collect();
        let mut outcome: Vec<Option<InsertOutcome>> = vec![None; jobs.len()];

        let mut tx = self.pool.begin().await.map_err(store_error)?;
        // Keys already stored are answered from the table, before any id is drawn: a
        // replay must not consume ids from the sequence.
        let keys: Vec<&str> = unique
            .iter()
            .filter_map(|&i| jobs[i].idempotency_key.as_deref())
            .collect();
        if !keys.is_empty() {
            let existing = stored_keys(&mut tx, &keys).await?;
            for &i in &unique {
                if let Some(key) = jobs[i].idempotency_key.as_deref() {
                    outcome[i] = existing.get(key).map(|stored| stored.outcome_for(&jobs[i]));
                }
            }
        }
        let new: Vec<usize> = unique
            .iter()
            .copied()
            .filter(|&i| outcome[i].is_none())
            .collect();

        if !new.is_empty() {
            // Ids are taken first so that each job's id is known by its position; the
            // insert then names them explicitly. A key first submitted by two requests
            // at once is still drawn an id by both, and the loser's id is left unused
            // (a gap in the ids, nothing more); the ON CONFLICT below settles the race.
            let ids: Vec<i64> = sqlx::query_scalar(
                "SELECT nextval(pg_get_serial_sequence('publish_jobs', 'id')) FROM generate_series(1, $1)",
            )
            .bind(new.len() as i64)
            .fetch_all(&mut *tx)
            .await
            .map_err(store_error)?;
            let payloads: Vec<&[u8]> = new.iter().map(|&i| jobs[i].payload.as_slice()).collect();
            let keys: Vec<Option<&str>> = new
                .iter()
                .map(|&i| jobs[i].idempotency_key.as_deref())
                .collect();
            let priorities: Vec<i16> = new.iter().map(|&i| jobs[i].priority).collect();
            let inserted: Vec<i64> = sqlx::query_scalar(
                "INSERT INTO publish_jobs (id, payload, idempotency_key, priority)
                 SELECT * FROM unnest($1::bigint[], $2::bytea[], $3::text[], $4::smallint[])
                 ON CONFLICT (idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
                 RETURNING id",
            )
            .bind(&ids)
            .bind(&payloads)
            .bind(&keys)
            .bind(&priorities)
            .fetch_all(&mut *tx)
            .await
            .map_err(store_error)?;

            let inserted: std::collections::HashSet<i64> = inserted.into_iter().collect();
            let mut raced_keys: Vec<&str> = Vec::new();
            for (slot, &i) in new.iter().enumerate() {
                if inserted.contains(&ids[slot]) {
                    outcome[i] = Some(InsertOutcome::Created(ids[slot]));
                } else {
                    raced_keys.push(
                        jobs[i]
                            .idempotency_key
                            .as_deref()
                            .expect("only keyed jobs conflict"),
                    );
                }
            }
            if !raced_keys.is_empty() {
                // Another transaction stored these keys after the look-up above.
                let existing = stored_keys(&mut tx, &raced_keys).await?;
                for &i in &new {
                    if outcome[i].is_some() {
                        continue;
                    }
                    let key = jobs[i].idempotency_key.as_deref().expect("keyed");
                    let stored = existing.get(key).ok_or_else(|| {
                        StoreError::Other(format!(
                            "job with idempotency key {key:?} vanished during insert"
                        ))
                    })?;
                    outcome[i] = Some(stored.outcome_for(&jobs[i]));
                }
            }
        }
        for i in 0..jobs.len() {
            if let Some(first) = alias[i] {
                let id = outcome[first].expect("first copy decided").id();
                outcome[i] = Some(if conflict_in_request[i] {
                    InsertOutcome::Conflict(id)
                } else {
                    InsertOutcome::Existing(id)
                });
            }
        }
        let outcome: Vec<InsertOutcome> =
            outcome.into_iter().map(|o| o.expect("decided")).collect();
        if outcome
            .iter()
            .any(|o| matches!(o, InsertOutcome::Conflict(_)))
        {
            tx.rollback().await.map_err(store_error)?;
        } else {
            tx.commit().await.map_err(store_error)?;
        }
        Ok(outcome)
    }

    /// The state of each job in `ids` that exists (in id order).
    pub async fn job_states(&self, ids: &[JobId]) -> Result<Vec<JobState>, StoreError> {
        sqlx::query_as(
            "SELECT id, status, txid, attempts, last_error, created_at, sent_at, updated_at
             FROM publish_jobs WHERE id = ANY($1) ORDER BY id",
        )
        .bind(ids)
        .fetch_all(&self.pool)
        .await
        .map_err(store_error)
    }

    /// Up to `limit` jobs in one state, each state read through its own index in the
    /// order an operator wants it (see `GET /v1/jobs`): the cost does not grow with
    /// the table.
    pub async fn list_jobs(&self, status: JobStatus, limit: i64) -> Result<JobListing, StoreError> {
        const COLUMNS: &str =
            "id, status, txid, attempts, last_error, created_at, sent_at, updated_at";
        // Each through a partial index in its order (a tie-breaker the index does not
        // hold would sort every tied row: the seed adoption stamps thousands alike).
        let sql = match status {
            JobStatus::Failed => format!(
                "SELECT {COLUMNS} FROM publish_jobs WHERE status = 'failed'
                 ORDER BY updated_at DESC LIMIT $1"
            ),
            JobStatus::Sending => format!(
                "SELECT {COLUMNS} FROM publish_jobs WHERE status = 'sending'
                 ORDER BY sending_started_at LIMIT $1"
            ),
            JobStatus::Queued => format!(
                "SELECT {COLUMNS} FROM publish_jobs WHERE status = 'queued'
                 ORDER BY priority DESC, id LIMIT $1"
            ),
            JobStatus::ProcessingBatch => format!(
                "SELECT {COLUMNS} FROM publish_jobs WHERE status = 'processing_batch'
                 ORDER BY id LIMIT $1"
            ),
            // Newest first: the unconfirmed by send time, then the confirmed by
            // confirmation time (the two partial indexes of sent jobs), never a walk
            // over the queued jobs' newer ids.
            JobStatus::Sent => format!(
                "SELECT {COLUMNS} FROM (
                     (SELECT {COLUMNS}, 0 AS part, sent_at AS at FROM publish_jobs
                      WHERE status = 'sent' AND confirmed_at IS NULL
                      ORDER BY sent_at DESC LIMIT $1)
                     UNION ALL
                     (SELECT {COLUMNS}, 1 AS part, confirmed_at AS at FROM publish_jobs
                      WHERE status = 'sent' AND confirmed_at IS NOT NULL
                      ORDER BY confirmed_at DESC LIMIT $1)
                 ) newest ORDER BY part, at DESC LIMIT $1"
            ),
        };
        let jobs = sqlx::query_as(&sql)
            .bind(limit)
            .fetch_all(&self.pool)
            .await
            .map_err(store_error)?;
        Ok(JobListing { status, jobs })
    }

    pub async fn get_job(&self, id: JobId) -> Result<Option<JobView>, StoreError> {
        let row = sqlx::query(
            "SELECT id, status, payload, idempotency_key, priority, txid, attempts, last_error,
                    processing_batch_id, batch_seq, created_at,
                    NULLIF(next_attempt_at, 'infinity') AS next_attempt_at,
                    sending_started_at, sent_at, confirmed_at, block_height,
                    (SELECT x.txid || ':' || x.vout FROM utxos x WHERE x.id = j.anchor_utxo_id)
                        AS anchor,
                    ARRAY(SELECT t.txid FROM job_transactions t WHERE t.job_id = j.id
                          ORDER BY t.created_at, t.txid) AS earlier_txids
             FROM publish_jobs j WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await
        .map_err(store_error)?;
        Ok(row.map(|r| JobView {
            id: r.get("id"),
            status: r.get("status"),
            payload_hex: hex::encode(r.get::<Vec<u8>, _>("payload")),
            idempotency_key: r.get("idempotency_key"),
            priority: r.get("priority"),
            txid: r.get("txid"),
            attempts: r.get("attempts"),
            last_error: r.get("last_error"),
            processing_batch_id: r.get("processing_batch_id"),
            batch_seq: r.get("batch_seq"),
            created_at: r.get("created_at"),
            next_attempt_at: r.get("next_attempt_at"),
            sending_started_at: r.get("sending_started_at"),
            sent_at: r.get("sent_at"),
            confirmed_at: r.get("confirmed_at"),
            block_height: r.get("block_height"),
            anchor: r.get("anchor"),
            earlier_txids: r.get("earlier_txids"),
        }))
    }

    pub async fn queue_counts(&self) -> Result<QueueCounts, StoreError> {
        queue_counts(&self.pool).await
    }
}

/// A job already stored under an idempotency key.
struct StoredKey {
    id: JobId,
    payload: Vec<u8>,
}

impl StoredKey {
    /// The same payload is that job; another payload is a conflict.
    fn outcome_for(&self, job: &NewJob) -> InsertOutcome {
        if self.payload == job.payload {
            InsertOutcome::Existing(self.id)
        } else {
            InsertOutcome::Conflict(self.id)
        }
    }
}

/// The jobs stored under `keys`, by key.
async fn stored_keys(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    keys: &[&str],
) -> Result<HashMap<String, StoredKey>, StoreError> {
    let rows = sqlx::query(
        "SELECT id, idempotency_key, payload FROM publish_jobs WHERE idempotency_key = ANY($1)",
    )
    .bind(keys)
    .fetch_all(&mut **tx)
    .await
    .map_err(store_error)?;
    Ok(rows
        .into_iter()
        .map(|r| {
            (
                r.get("idempotency_key"),
                StoredKey {
                    id: r.get("id"),
                    payload: r.get("payload"),
                },
            )
        })
        .collect())
}

/// Jobs per state, exact, at the same cost however long the history: the sum of the
/// per-statement deltas in `job_counts` (written by triggers in the statements that
/// change the jobs; see migrations/…_job_counts.sql), never a pass over the table.
pub async fn queue_counts(pool: &PgPool) -> Result<QueueCounts, StoreError> {
    let rows: Vec<(String, i64)> = sqlx::query_as(JOB_COUNTS_SQL)
        .fetch_all(pool)
        .await
        .map_err(store_error)?;
    let mut counts = QueueCounts::default();
    for (status, n) in rows {
        match status.as_str() {
            "queued" => counts.queued = n,
            "processing_batch" => counts.processing_batch = n,
            "sending" => counts.sending = n,
            "sent" => counts.sent = n,
            "failed" => counts.failed = n,
            _ => {}
        }
    }
    Ok(counts)
}

/// Jobs per status from the deltas (statuses with no job left are not listed).
pub const JOB_COUNTS_SQL: &str = "SELECT status, sum(n)::bigint FROM job_counts
                                  GROUP BY status HAVING sum(n) <> 0 ORDER BY status";

/// Folds `job_counts`' deltas into one row per status (one process at a time; a no-op
/// when another is folding). The metrics refresh runs it, so readers sum a few rows.
pub async fn compact_job_counts(pool: &PgPool) -> Result<(), StoreError> {
    sqlx::query("SELECT raregen_compact_job_counts()")
        .execute(pool)
        .await
        .map_err(store_error)?;
    Ok(())
}

/// The claim: one statement picks the oldest due jobs of the highest priority with
/// `SKIP LOCKED` (so concurrent claimers never wait for or share a job), creates the
/// batch row, numbers the jobs 1..n and moves them to `processing_batch`.
///
/// Its commit does not wait for the WAL flush (`synchronous_commit = off` for this
/// transaction only). That is safe: if a crash loses the claim, its jobs are simply
/// `queued` again, and nothing can have been broadcast under it, because a broadcast
/// waits for the write-ahead `record_sending`, a synchronous commit, and flushing that
/// commit flushes every WAL record before it, the claim's included.
const CLAIM_SQL: &str = "
WITH no_flush_wait AS (
    SELECT set_config('synchronous_commit', 'off', true)
), picked AS MATERIALIZED (
    SELECT id, priority
    FROM publish_jobs
    WHERE status = 'queued' AND next_attempt_at <= now()
    ORDER BY priority DESC, id
    LIMIT $1
    FOR UPDATE SKIP LOCKED
), batch AS (
    INSERT INTO batches (owner, size)
    SELECT $2, count(*) FROM picked HAVING count(*) > 0
    RETURNING id, created_at
), numbered AS (
    SELECT id, (row_number() OVER (ORDER BY priority DESC, id))::int AS seq FROM picked
)
UPDATE publish_jobs j
SET status = 'processing_batch',
    processing_batch_id = batch.id,
    batch_seq = numbered.seq,
    owner = $2,
    attempts = j.attempts + 1,
    claimed_at = now(),
    sending_started_at = NULL,
    updated_at = now()
FROM numbered, batch, no_flush_wait
WHERE j.id = numbered.id
RETURNING j.id, j.batch_seq, j.payload, j.attempts, j.txid, j.raw_tx, j.utxo_id,
          j.anchor_utxo_id, batch.id AS batch_id, batch.created_at AS batch_created_at";

/// The anchors of re-claimed jobs that signed before (rare: only after a refusal), as
/// coins, with how many transactions each job signed before.
const ANCHORS_SQL: &str = "
SELECT x.id, x.txid, x.vout, x.satoshis, x.unconfirmed_depth, x.reserved_by, x.state,
       x.dirty,
       (SELECT count(*) FROM job_transactions t
        WHERE t.job_id = x.reserved_by AND t.anchor_utxo_id = x.id)::int AS signed
FROM utxos x
WHERE x.id = ANY($1)";

/// The write-ahead record of a group: the job must still be ours (fence) and its UTXO
/// still available and clean (or already taken by this very record: the statement is
/// idempotent). Then both change together: UTXO → spending, job → sending with its
/// transaction. Binds: [`SendingArgs`].
const RECORD_SENDING_SQL: &str = "WITH u AS (
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
             SELECT id, FALSE FROM ours WHERE id NOT IN (SELECT id FROM took)";

/// The `sent` record of a group: the job, its UTXO spent, its change added to the pool,
/// its batch counted.
///
/// Its commit waits for the WAL flush, unlike the claim's: the change rows' ids come
/// from a sequence and go straight into the UtxoPool's memory; a commit lost in a
/// crash would set the sequence back, and the same ids would then name other coins.
/// Binds: [`SentArgs`].
const RECORD_SENT_SQL: &str = "WITH u AS (
                 SELECT * FROM unnest($1::bigint[], $2::int[], $3::timestamptz[], $4::int[], $5::bigint[])
                     AS u(id, attempts, sent_at, change_vout, change_sats)
             ), done AS (
                 -- Each step carries what the next needs in its RETURNING: a join of two
                 -- CTEs is planned for one row each, a nested loop quadratic in the
                 -- group's size.
                 UPDATE publish_jobs j
                 SET status = 'sent', sent_at = u.sent_at, last_error = NULL, updated_at = now()
                 FROM u
                 WHERE j.id = u.id AND j.attempts = u.attempts AND j.owner = $6
                   AND j.status = 'sending'
                 RETURNING j.id, j.processing_batch_id, j.txid, j.utxo_id,
                           EXTRACT(EPOCH FROM j.sent_at - j.created_at)::float8 AS age,
                           u.change_vout, u.change_sats
             ), spent AS (
                 UPDATE utxos x SET state = 'spent', dirty = FALSE, updated_at = now()
                 FROM done WHERE x.id = done.utxo_id
                 RETURNING done.id AS job_id, done.txid, done.change_vout, done.change_sats,
                           x.unconfirmed_depth, x.script_pubkey
             ), change AS (
                 -- The change of a job that signed more than once stays out of the pool
                 -- until its transaction confirms: an earlier one may still replace it.
                 INSERT INTO utxos (txid, vout, satoshis, script_pubkey, unconfirmed_depth, state)
                 SELECT s.txid, s.change_vout, s.change_sats, s.script_pubkey,
                        s.unconfirmed_depth + 1,
                        CASE WHEN EXISTS (SELECT 1 FROM job_transactions t WHERE t.job_id = s.job_id)
                             THEN 'pending' ELSE 'available' END
                 FROM spent s
                 WHERE s.change_vout IS NOT NULL
                 ON CONFLICT (txid, vout) DO NOTHING
                 RETURNING id, txid, vout, satoshis, unconfirmed_depth, state
             ), per_batch AS (
                 SELECT processing_batch_id AS id, count(*)::int AS n FROM done GROUP BY 1
             ), counted AS (
                 UPDATE batches b
                 SET sent = b.sent + p.n,
                     completed_at = CASE WHEN b.sent + p.n + b.failed + b.retried >= b.size
                                         THEN now() ELSE b.completed_at END
                 FROM per_batch p WHERE b.id = p.id
             )
             SELECT 'job' AS kind, id, NULL::text AS txid, NULL::int AS vout,
                    NULL::bigint AS satoshis, NULL::int AS depth, age, FALSE AS failed
             FROM done
             UNION ALL
             SELECT 'utxo', id, txid, vout, satoshis, unconfirmed_depth, NULL, FALSE
             FROM change WHERE state = 'available'";

/// A group of job-side refusals (and of jobs that cannot be built): back to the queue
/// on the same anchor, or failed. Binds: [`RetryArgs`].
const RECORD_RETRY_SQL: &str = "WITH u AS (
                 SELECT * FROM unnest($1::bigint[], $2::int[], $3::text[], $4::timestamptz[], $7::bool[], $8::bool[])
                     AS u(id, attempts, error, not_before, reanchor, settles)
             ), before AS (
                 -- A job whose anchor is dirty is not sent back: a transaction of it with
                 -- an unknown outcome may still be mined; the DirtySettler settles it
                 -- first, by the same bytes again: their definitive refusal (`settles`)
                 -- sends the job back to sign again on the same anchor, which conflicts
                 -- with every copy of the refused bytes.
                 SELECT j.id, COALESCE(j.utxo_id, j.anchor_utxo_id) AS anchor, j.txid, j.raw_tx,
                        u.attempts, u.settles, u.not_before,
                        -- A job adopted from the seed in flight never leaves its anchor:
                        -- the foreign spend may be the seed's own transaction of it.
                        CASE WHEN u.reanchor AND s.job_id IS NOT NULL
                             THEN 'adopted from the seed in flight; its coin was spent by a '
                                  || 'transaction raregen did not sign (most likely the seed''s '
                                  || 'own transaction of it): never signed again (' || u.error || ')'
                             ELSE u.error END AS error,
                        u.reanchor AND s.job_id IS NULL AS reanchor,
                        -- `max_attempts` counts the job's refused transactions (the one
                        -- refused now, and those in its history), not its claims: a
                        -- claim taken back from a dead or frozen process is no attempt.
                        (u.reanchor AND s.job_id IS NOT NULL)
                        OR (NOT u.reanchor
                            AND ((j.txid IS NOT NULL)::int
                                 + (SELECT count(*) FROM job_transactions t
                                    WHERE t.job_id = j.id AND t.refused)) >= $5) AS final,
                        -- Has the job ever signed on its anchor? (One adopted from the seed
                        -- in flight may have, in the seed.)
                        (j.txid IS NOT NULL OR s.job_id IS NOT NULL OR EXISTS (
                            SELECT 1 FROM job_transactions t
                            WHERE t.job_id = j.id
                              AND t.anchor_utxo_id = COALESCE(j.utxo_id, j.anchor_utxo_id))) AS signed
                 FROM publish_jobs j JOIN u ON j.id = u.id
                 LEFT JOIN seed_in_flight s ON s.job_id = j.id
                 WHERE j.attempts = u.attempts AND j.owner = $6
                   AND j.status IN ('processing_batch', 'sending')
                   AND (u.settles
                        OR NOT EXISTS (SELECT 1 FROM utxos d
                                       WHERE d.id = COALESCE(j.utxo_id, j.anchor_utxo_id) AND d.dirty))
                 FOR UPDATE OF j
             ), history AS (
                 -- The refused transaction is kept: a copy of it may still be mined, and
                 -- it must then be recognised as the job's own.
                 INSERT INTO job_transactions (txid, job_id, anchor_utxo_id, raw_tx, refused, outcome)
                 SELECT txid, id, anchor, raw_tx, NOT reanchor, error FROM before
                 WHERE txid IS NOT NULL AND anchor IS NOT NULL
                 ON CONFLICT (txid) DO NOTHING
             ), done AS (
                 UPDATE publish_jobs j
                 SET status = CASE WHEN before.final THEN 'failed' ELSE 'queued' END,
                     next_attempt_at = CASE WHEN before.final THEN j.next_attempt_at
                                            ELSE before.not_before END,
                     last_error = before.error,
                     anchor_utxo_id = CASE WHEN before.reanchor THEN NULL ELSE before.anchor END,
                     owner = NULL, utxo_id = NULL, txid = NULL, raw_tx = NULL,
                     sending_started_at = NULL, updated_at = now()
                 -- `before` carries the record (no join back to `u`: a join of two
                 -- CTEs is planned for one row each, quadratic in the group's size).
                 FROM before
                 WHERE j.id = before.id
                 RETURNING j.id, j.processing_batch_id, j.status
             ), released AS (
                 -- A job that fails for good without ever having signed on its anchor
                 -- (it could not be built) gives the coin back to the pool.
                 UPDATE utxos x
                 SET state = 'available', reserved_by = NULL, reserved_at = NULL,
                     spent_by_txid = NULL, updated_at = now()
                 FROM before
                 WHERE x.id = before.anchor AND before.final AND NOT before.signed
                   AND NOT before.reanchor
                   AND x.state IN ('reserved', 'spending') AND x.reserved_by = before.id
                   AND NOT x.dirty
                 RETURNING x.id, x.txid, x.vout, x.satoshis, x.unconfirmed_depth
             ), kept AS (
                 -- Otherwise the job keeps its anchor: until its next attempt signs on
                 -- it, or for good once it failed (a refused copy of its transaction may
                 -- still be mined: no other job may ever spend the coin; requeued by an
                 -- operator, the job signs on it again).
                 UPDATE utxos x
                 SET state = 'reserved', reserved_at = now(), spent_by_txid = NULL,
                     dirty = FALSE, updated_at = now()
                 FROM before
                 WHERE x.id = before.anchor AND (NOT before.final OR before.signed)
                   AND NOT before.reanchor
                   AND x.state IN ('reserved', 'spending') AND x.reserved_by = before.id
                   AND (NOT x.dirty OR before.settles)
             ), per_batch AS (
                 SELECT processing_batch_id AS id,
                        (count(*) FILTER (WHERE status = 'failed'))::int AS failed,
                        (count(*) FILTER (WHERE status = 'queued'))::int AS retried
                 FROM done GROUP BY 1
             ), counted AS (
                 UPDATE batches b
                 SET failed = b.failed + p.failed, retried = b.retried + p.retried,
                     completed_at = CASE WHEN b.sent + b.failed + b.retried + p.failed + p.retried >= b.size
                                         THEN now() ELSE b.completed_at END
                 FROM per_batch p WHERE b.id = p.id
             )
             SELECT 'job' AS kind, id, NULL::text AS txid, NULL::int AS vout,
                    NULL::bigint AS satoshis, NULL::int AS depth, NULL::float8 AS age,
                    status = 'failed' AS failed
             FROM done
             UNION ALL
             SELECT 'utxo', id, txid, vout, satoshis, unconfirmed_depth, NULL, FALSE
             FROM released";

/// The arguments of [`RECORD_SENDING_SQL`], one array per column.
struct SendingArgs<'a> {
    ids: Vec<i64>,
    attempts: Vec<i32>,
    utxos: Vec<i64>,
    txids: Vec<&'a str>,
    raws: Vec<&'a [u8]>,
}

impl<'a> SendingArgs<'a> {
    fn of(jobs: &'a [Sending]) -> Self {
        SendingArgs {
            ids: jobs.iter().map(|j| j.fence.id).collect(),
            attempts: jobs.iter().map(|j| j.fence.attempts).collect(),
            utxos: jobs.iter().map(|j| j.utxo_id).collect(),
            txids: jobs.iter().map(|j| j.txid.as_str()).collect(),
            raws: jobs.iter().map(|j| j.raw_tx.as_slice()).collect(),
        }
    }

    fn bind<'q>(
        self,
        q: Query<'q, Postgres, PgArguments>,
        owner: &'q str,
    ) -> Query<'q, Postgres, PgArguments>
    where
        'a: 'q,
    {
        q.bind(self.ids)
            .bind(self.attempts)
            .bind(self.utxos)
            .bind(self.txids)
            .bind(self.raws)
            .bind(owner)
    }
}

/// The arguments of [`RECORD_SENT_SQL`].
struct SentArgs {
    ids: Vec<i64>,
    attempts: Vec<i32>,
    sent_at: Vec<DateTime<Utc>>,
    change_vout: Vec<Option<i32>>,
    change_sats: Vec<Option<i64>>,
}

impl SentArgs {
    fn of(jobs: &[Sent]) -> Self {
        SentArgs {
            ids: jobs.iter().map(|j| j.fence.id).collect(),
            attempts: jobs.iter().map(|j| j.fence.attempts).collect(),
            sent_at: jobs.iter().map(|j| j.sent_at).collect(),
            change_vout: jobs.iter().map(|j| j.change.map(|c| c.0 as i32)).collect(),
            change_sats: jobs.iter().map(|j| j.change.map(|c| c.1 as i64)).collect(),
        }
    }

    fn bind<'q>(
        self,
        q: Query<'q, Postgres, PgArguments>,
        owner: &'q str,
    ) -> Query<'q, Postgres, PgArguments> {
        q.bind(self.ids)
            .bind(self.attempts)
            .bind(self.sent_at)
            .bind(self.change_vout)
            .bind(self.change_sats)
            .bind(owner)
    }
}

/// The arguments of [`RECORD_RETRY_SQL`].
struct RetryArgs<'a> {
    ids: Vec<i64>,
    attempts: Vec<i32>,
    errors: Vec<&'a str>,
    not_before: Vec<DateTime<Utc>>,
    max_attempts: i64,
    reanchor: Vec<bool>,
    settles: Vec<bool>,
}

impl<'a> RetryArgs<'a> {
    fn of(jobs: &'a [Retry], max_attempts: u32) -> Self {
        RetryArgs {
            ids: jobs.iter().map(|j| j.fence.id).collect(),
            attempts: jobs.iter().map(|j| j.fence.attempts).collect(),
            errors: jobs.iter().map(|j| j.error.as_str()).collect(),
            not_before: jobs.iter().map(|j| j.not_before).collect(),
            max_attempts: i64::from(max_attempts),
            reanchor: jobs.iter().map(|j| j.reanchor).collect(),
            settles: jobs.iter().map(|j| j.settles_dirty).collect(),
        }
    }

    fn bind<'q>(
        self,
        q: Query<'q, Postgres, PgArguments>,
        owner: &'q str,
    ) -> Query<'q, Postgres, PgArguments>
    where
        'a: 'q,
    {
        q.bind(self.ids)
            .bind(self.attempts)
            .bind(self.errors)
            .bind(self.not_before)
            .bind(self.max_attempts)
            .bind(owner)
            .bind(self.reanchor)
            .bind(self.settles)
    }
}

/// A group statement for [`PgStore::explain_group`].
pub enum GroupStatement<'a> {
    Sending(&'a [Sending]),
    Sent(&'a [Sent]),
    Retry(&'a [Retry], u32),
}

impl GroupStatement<'_> {
    /// The statement, and its parameters' types (for `PREPARE`).
    fn sql(&self) -> (&'static str, &'static str) {
        match self {
            GroupStatement::Sending(_) => (
                RECORD_SENDING_SQL,
                "bigint[], int[], bigint[], text[], bytea[], text",
            ),
            GroupStatement::Sent(_) => (
                RECORD_SENT_SQL,
                "bigint[], int[], timestamptz[], int[], bigint[], text",
            ),
            GroupStatement::Retry(..) => (
                RECORD_RETRY_SQL,
                "bigint[], int[], text[], timestamptz[], bigint, text, bool[], bool[]",
            ),
        }
    }
}

impl PgStore {
    /// The plan of a group statement as it runs (`EXPLAIN (ANALYZE, FORMAT JSON)`), in
    /// a transaction rolled back: nothing changes. `generic`: the plan Postgres
    /// switches a prepared statement to after five runs, made without the arguments'
    /// values (how every connection of the pool runs these statements soon after
    /// start). For the test that keeps the hot statements linear in a group's size.
    #[doc(hidden)]
    pub async fn explain_group(
        &self,
        statement: GroupStatement<'_>,
        generic: bool,
    ) -> Result<serde_json::Value, StoreError> {
        let (sql, types) = statement.sql();
        let bind = |query| match statement {
            GroupStatement::Sending(jobs) => SendingArgs::of(jobs).bind(query, &self.owner),
            GroupStatement::Sent(jobs) => SentArgs::of(jobs).bind(query, &self.owner),
            GroupStatement::Retry(jobs, max) => RetryArgs::of(jobs, max).bind(query, &self.owner),
        };
        // `EXPLAIN EXECUTE` takes no parameters: the arguments go in as literals, which
        // Postgres itself writes from the bound values.
        let literals = types
            .split(", ")
            .enumerate()
            .map(|(i, t)| format!("quote_nullable(${}::{t}) || '::{t}'", i + 1))
            .collect::<Vec<_>>()
            .join(", ");
        let literals = format!("SELECT concat_ws(', ', {literals})");
        let explain = if generic {
            let args: String = bind(sqlx::query(&literals))
                .fetch_one(&self.pool)
                .await
                .map_err(store_error)?
                .get(0);
            format!("EXPLAIN (ANALYZE, FORMAT JSON) EXECUTE raregen_explain({args})")
        } else {
            format!("EXPLAIN (ANALYZE, FORMAT JSON) {sql}")
        };
        let query = if generic {
            sqlx::query(&explain)
        } else {
            bind(sqlx::query(&explain))
        };
        let mut conn = self.pool.acquire().await.map_err(store_error)?;
        if generic {
            sqlx::raw_sql(&format!("PREPARE raregen_explain({types}) AS {sql}"))
                .execute(&mut *conn)
                .await
                .map_err(store_error)?;
        }
        let plan = async {
            let mut tx = sqlx::Connection::begin(&mut *conn).await?;
            if generic {
                sqlx::query("SET LOCAL plan_cache_mode = force_generic_plan")
                    .execute(&mut *tx)
                    .await?;
            }
            let row = query.fetch_one(&mut *tx).await?;
            tx.rollback().await?;
            // The plan is `json` (its text, also on the wire).
            row.try_get_unchecked::<String, _>(0)
        }
        .await;
        if generic {
            sqlx::raw_sql("DEALLOCATE raregen_explain")
                .execute(&mut *conn)
                .await
                .map_err(store_error)?;
        }
        serde_json::from_str(&plan.map_err(store_error)?)
            .map_err(|e| StoreError::Unavailable(format!("unreadable plan: {e}")))
    }
}

#[async_trait]
impl JobStore for PgStore {
    async fn claim_batch(&self, max: u32) -> Result<Option<ClaimedBatch>, StoreError> {
        let rows = sqlx::query(CLAIM_SQL)
            .bind(i64::from(max))
            .bind(&self.owner)
            .fetch_all(&self.pool)
            .await
            .map_err(store_error)?;
        let Some(first) = rows.first() else {
            return Ok(None);
        };
        let id: i64 = first.get("batch_id");
        let created_at: DateTime<Utc> = first.get("batch_created_at");
        let mut jobs: Vec<ClaimedJob> = rows
            .iter()
            .map(|r| {
                let txid: Option<String> = r.get("txid");
                let raw_tx: Option<Vec<u8>> = r.get("raw_tx");
                ClaimedJob {
                    id: r.get("id"),
                    batch_seq: r.get("batch_seq"),
                    payload: r.get("payload"),
                    attempts: r.get("attempts"),
                    stored_tx: txid.zip(raw_tx).map(|(txid, raw_tx)| StoredTx {
                        txid,
                        raw_tx,
                        utxo_id: r.get("utxo_id"),
                    }),
                    anchor: r
                        .get::<Option<i64>, _>("anchor_utxo_id")
                        .map(|utxo_id| Anchor {
                            utxo_id,
                            utxo: None,
                            signed_before: 0,
                            retired: false,
                        }),
                }
            })
            .collect();
        // A job that will sign again (it has an anchor and no stored transaction) is
        // handed its anchor as a coin, if it still holds it.
        let anchors: Vec<i64> = jobs
            .iter()
            .filter(|j| j.stored_tx.is_none())
            .filter_map(|j| j.anchor.as_ref().map(|a| a.utxo_id))
            .collect();
        if !anchors.is_empty() {
            let rows = sqlx::query(ANCHORS_SQL)
                .bind(&anchors)
                .fetch_all(&self.pool)
                .await
                .map_err(store_error)?;
            for r in rows {
                let holder: Option<i64> = r.get("reserved_by");
                let id: i64 = r.get("id");
                if r.get::<&str, _>("state") == "retired" {
                    // Gone for good (the lane it was made in was never held): no
                    // transaction of the job can be mined now, and it may sign on no
                    // other coin.
                    for j in jobs.iter_mut().filter(|j| j.stored_tx.is_none()) {
                        if let Some(a) = j.anchor.as_mut().filter(|a| a.utxo_id == id) {
                            a.retired = true;
                        }
                    }
                    continue;
                }
                if r.get::<&str, _>("state") != "reserved" || r.get::<bool, _>("dirty") {
                    continue;
                }
                if let Some(anchor) = jobs
                    .iter_mut()
                    .filter(|j| Some(j.id) == holder)
                    .find_map(|j| j.anchor.as_mut().filter(|a| a.utxo_id == id))
                {
                    anchor.signed_before = r.get::<i32, _>("signed").max(0) as u32;
                    anchor.utxo = Some(SpendableUtxo {
                        id,
                        txid: r.get("txid"),
                        vout: r.get::<i32, _>("vout") as u32,
                        satoshis: r.get::<i64, _>("satoshis") as u64,
                        unconfirmed_depth: r.get::<i32, _>("unconfirmed_depth") as u32,
                    });
                }
            }
        }
        jobs.sort_by_key(|j| j.batch_seq);
        Ok(Some(ClaimedBatch {
            id,
            created_at,
            jobs,
        }))
    }

    async fn record_sending(&self, jobs: &[Sending]) -> Result<SendingRecorded, StoreError> {
        if jobs.is_empty() {
            return Ok(SendingRecorded::default());
        }
        let rows: Vec<(i64, bool)> = SendingArgs::of(jobs)
            .bind(sqlx::query(RECORD_SENDING_SQL), &self.owner)
            .fetch_all(&self.pool)
            .await
            .map_err(store_error)?
            .into_iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        let mut out = SendingRecorded::default();
        for (id, stored) in rows {
            if stored {
                out.stored.push(id);
            } else {
                out.utxo_taken.push(id);
            }
        }
        Ok(out)
    }

    async fn record_sent(&self, jobs: &[Sent]) -> Result<Recorded, StoreError> {
        if jobs.is_empty() {
            return Ok(Recorded::default());
        }
        let rows = SentArgs::of(jobs)
            .bind(sqlx::query(RECORD_SENT_SQL), &self.owner)
            .fetch_all(&self.pool)
            .await
            .map_err(store_error)?;
        Ok(recorded(rows))
    }

    async fn record_retry(
        &self,
        jobs: &[Retry],
        max_attempts: u32,
    ) -> Result<Recorded, StoreError> {
        if jobs.is_empty() {
            return Ok(Recorded::default());
        }
        let rows = RetryArgs::of(jobs, max_attempts)
            .bind(sqlx::query(RECORD_RETRY_SQL), &self.owner)
            .fetch_all(&self.pool)
            .await
            .map_err(store_error)?;
        Ok(recorded(rows))
    }

    async fn mark_dirty(&self, jobs: &[Fence]) -> Result<Vec<JobId>, StoreError> {
        if jobs.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<i64> = jobs.iter().map(|j| j.id).collect();
        let attempts: Vec<i32> = jobs.iter().map(|j| j.attempts).collect();
        sqlx::query_scalar(
            "UPDATE utxos x SET dirty = TRUE, updated_at = now()
             FROM publish_jobs j JOIN unnest($1::bigint[], $2::int[]) AS u(id, attempts) ON j.id = u.id
             WHERE j.attempts = u.attempts AND j.owner = $3 AND j.status = 'sending'
               AND x.id = j.utxo_id
             RETURNING j.id",
        )
        .bind(&ids)
        .bind(&attempts)
        .bind(&self.owner)
        .fetch_all(&self.pool)
        .await
        .map_err(store_error)
    }

    async fn release_claims(&self, jobs: &[Fence]) -> Result<Vec<JobId>, StoreError> {
        if jobs.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<i64> = jobs.iter().map(|j| j.id).collect();
        let attempts: Vec<i32> = jobs.iter().map(|j| j.attempts).collect();
        // Handing back is not an attempt: the count goes back down.
        sqlx::query_scalar(
            "UPDATE publish_jobs j
             SET status = 'queued', owner = NULL, attempts = j.attempts - 1, updated_at = now()
             FROM unnest($1::bigint[], $2::int[]) AS u(id, attempts)
             WHERE j.id = u.id AND j.attempts = u.attempts AND j.owner = $3
               AND j.status = 'processing_batch' AND j.raw_tx IS NULL
             RETURNING j.id",
        )
        .bind(&ids)
        .bind(&attempts)
        .bind(&self.owner)
        .fetch_all(&self.pool)
        .await
        .map_err(store_error)
    }
}

/// Splits the rows of a statement that returns both job ids and pool UTXOs.
fn recorded(rows: Vec<sqlx::postgres::PgRow>) -> Recorded {
    let mut out = Recorded::default();
    for r in rows {
        let kind: &str = r.get("kind");
        if kind == "job" {
            out.ids.push(r.get("id"));
            if let Some(age) = r.get::<Option<f64>, _>("age") {
                out.latencies.push(Duration::from_secs_f64(age.max(0.0)));
            }
            if r.get::<bool, _>("failed") {
                out.failed += 1;
            }
        } else {
            out.utxos.push(SpendableUtxo {
                id: r.get("id"),
                txid: r.get("txid"),
                vout: r.get::<i32, _>("vout") as u32,
                satoshis: r.get::<i64, _>("satoshis") as u64,
                unconfirmed_depth: r.get::<i32, _>("depth") as u32,
            });
        }
    }
    out
}
