//! The ports: what the actors need from the world, as small traits.

use async_trait::async_trait;
use chrono::{DateTime, Utc};

pub type JobId = i64;
pub type BatchId = i64;

/// A job as a claim hands it out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimedJob {
    pub id: JobId,
    /// Position in its batch, 1..=n.
    pub batch_seq: i32,
    pub payload: Vec<u8>,
    /// The fencing token of this claim (see [`Fence`]).
    pub attempts: i32,
    /// A transaction stored by an earlier attempt (write-ahead). When present it is
    /// re-broadcast as it is: never signed again.
    pub stored_tx: Option<StoredTx>,
}

/// A signed transaction stored before its broadcast.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredTx {
    pub txid: String,
    pub raw_tx: Vec<u8>,
    pub utxo_id: Option<i64>,
}

/// The jobs of one claim, in `batch_seq` order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimedBatch {
    pub id: BatchId,
    pub created_at: DateTime<Utc>,
    pub jobs: Vec<ClaimedJob>,
}

/// Names the claim a state change is made under: the change applies only while the job
/// is still held by this process with this attempt number, so a worker that lost its
/// claim cannot overwrite the newer owner's outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fence {
    pub id: JobId,
    pub attempts: i32,
}

/// Write-ahead record: the signed transaction, stored before it is broadcast.
#[derive(Debug, Clone)]
pub struct Sending {
    pub fence: Fence,
    pub utxo_id: i64,
    pub txid: String,
    pub raw_tx: Vec<u8>,
}

/// The node accepted the job's transaction.
#[derive(Debug, Clone)]
pub struct Sent {
    pub fence: Fence,
    pub sent_at: DateTime<Utc>,
}

/// A job-side rejection: back to `queued` after `not_before`, or `failed` when the
/// attempts are used up.
#[derive(Debug, Clone)]
pub struct Retry {
    pub fence: Fence,
    pub error: String,
    pub not_before: DateTime<Utc>,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database could not be reached or the connection broke: retry later.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    #[error("database error: {0}")]
    Other(String),
}

/// The job queue, as the actors see it. Every method is one round trip for the whole
/// slice it is given, and each returns the ids whose fence held (the others belong to
/// somebody else now and were left alone).
#[async_trait]
pub trait JobStore: Send + Sync + 'static {
    /// Claims up to `max` queued jobs whose time has come (highest priority first, then
    /// oldest) into a new batch, numbered 1..=n. `None` when nothing is queued.
    async fn claim_batch(&self, max: u32) -> Result<Option<ClaimedBatch>, StoreError>;
    /// Stores signed transactions and moves their jobs to `sending`.
    async fn record_sending(&self, jobs: &[Sending]) -> Result<Vec<JobId>, StoreError>;
    /// Moves jobs to `sent`.
    async fn record_sent(&self, jobs: &[Sent]) -> Result<Vec<JobId>, StoreError>;
    /// Sends jobs back to `queued` with a backoff, or to `failed` once `max_attempts`
    /// claims have been made.
    async fn record_retry(
        &self,
        jobs: &[Retry],
        max_attempts: u32,
    ) -> Result<Vec<JobId>, StoreError>;
}
