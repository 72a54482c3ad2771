//! The API's view of jobs: one job, jobs by state, progress by id, counts per state.

use chrono::{DateTime, Utc};
use raregen_actors::ports::{JobId, StoreError};
use serde::Serialize;
use sqlx::{PgPool, Row};

use super::{store_error, PgStore};

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
    /// batch worker in flight, until the node has been asked about its coin).
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
    /// The state of each job in `ids` that exists (in id order).
    pub async fn job_states(&self, ids: &[JobId]) -> Result<Vec<JobState>, StoreError> {
        sqlx::query_as(include_str!("sql/views/job_states.sql"))
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
        // hold would sort every tied row: the batch worker adoption stamps thousands alike).
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
        let row = sqlx::query(include_str!("sql/views/get_job.sql"))
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
pub const JOB_COUNTS_SQL: &str = include_str!("sql/views/job_counts.sql");

/// Folds `job_counts`' deltas into one row per status (one process at a time; a no-op
/// when another is folding). The metrics refresh runs it, so readers sum a few rows.
pub async fn compact_job_counts(pool: &PgPool) -> Result<(), StoreError> {
    sqlx::query("SELECT raregen_compact_job_counts()")
        .execute(pool)
        .await
        .map_err(store_error)?;
    Ok(())
}
