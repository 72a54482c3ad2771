//! The operator's view: RareGen's batch-worker runbook queries, as data for `raregen status`.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{PgPool, Row};

use super::{store_error, StoreError};

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct StatusRow {
    pub status: String,
    pub count: i64,
    pub batches: i64,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct BatchSummary {
    pub processing_batch_id: i64,
    pub jobs: i64,
    pub first_seq: Option<i32>,
    pub last_seq: Option<i32>,
    pub created: DateTime<Utc>,
    pub sent: i64,
    pub failed: i64,
}

/// The UTXO pool by state (`GET /v1/pool`, `raregen status`, `wallet balance`).
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct PoolSummary {
    pub available: i64,
    pub available_sats: i64,
    pub reserved: i64,
    pub reserved_sats: i64,
    pub dirty: i64,
    pub dirty_sats: i64,
    /// Outputs of stored transactions not yet accepted (a split in flight).
    pub pending: i64,
    /// Spent and retired UTXOs kept (history, pruned with the jobs), counted exactly
    /// only by `wallet balance` ([`PoolSummary::load_with_history`]); `None` in
    /// `raregen status`, which costs the same at any size.
    pub spent: Option<i64>,
    pub retired: Option<i64>,
    /// Spent or retired UTXOs kept: Postgres's estimate from its statistics.
    pub spent_or_retired_estimate: i64,
}

/// The job longest in `sending`, as `raregen status` shows it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct OldestSending {
    pub id: i64,
    pub txid: Option<String>,
    pub sending_started_at: Option<DateTime<Utc>>,
    pub age_seconds: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct StatusReport {
    pub queue: Vec<StatusRow>,
    pub batches: Vec<BatchSummary>,
    pub pool: PoolSummary,
    pub oldest_sending: Option<OldestSending>,
}

impl StatusReport {
    pub async fn load(pool: &PgPool) -> Result<StatusReport, StoreError> {
        // The batch worker's "Check Queue Status", at the same cost at any table size: counts
        // from `job_counts`, batches only for the jobs in flight (a small set read
        // through its partial index; the batch worker's query over the whole table still runs
        // as written, see docs/operations.md).
        let queue = sqlx::query(include_str!("sql/report/queue.sql"))
            .fetch_all(pool)
            .await
            .map_err(store_error)?
            .into_iter()
            .map(|r| StatusRow {
                status: r.get("status"),
                count: r.get("count"),
                batches: r.get("batches"),
            })
            .collect();

        // The batch worker's "Check Batch Details", from the batches' own rows (a claim numbers
        // its jobs 1..size; the records count them sent or failed): ten rows read by
        // key, where the batch worker's query groups the whole job table.
        let batches = sqlx::query(include_str!("sql/report/batches.sql"))
            .fetch_all(pool)
            .await
            .map_err(store_error)?
            .into_iter()
            .map(|r| BatchSummary {
                processing_batch_id: r.get("processing_batch_id"),
                jobs: r.get("jobs"),
                first_seq: r.get("first_seq"),
                last_seq: r.get("last_seq"),
                created: r.get("created"),
                sent: r.get("sent"),
                failed: r.get("failed"),
            })
            .collect();

        let pool_summary = PoolSummary::load(pool).await?;

        let oldest_sending = sqlx::query(include_str!("sql/report/oldest_sending.sql"))
            .fetch_optional(pool)
            .await
            .map_err(store_error)?
            .map(|r| OldestSending {
                id: r.get("id"),
                txid: r.get("txid"),
                sending_started_at: r.get("sending_started_at"),
                age_seconds: r.get::<Option<f64>, _>("age").unwrap_or(0.0),
            });

        Ok(StatusReport {
            queue,
            batches,
            pool: pool_summary,
            oldest_sending,
        })
    }
}

impl PoolSummary {
    /// [`PoolSummary::load`] with the exact counts of spent and retired UTXOs (a pass
    /// over the pool's history: `wallet balance`, not the status report).
    pub async fn load_with_history(pool: &PgPool) -> Result<PoolSummary, StoreError> {
        let mut summary = PoolSummary::load(pool).await?;
        let (spent, retired): (i64, i64) =
            sqlx::query_as(include_str!("sql/report/finished_coins.sql"))
                .fetch_one(pool)
                .await
                .map_err(store_error)?;
        summary.spent = Some(spent);
        summary.retired = Some(retired);
        Ok(summary)
    }

    pub async fn load(pool: &PgPool) -> Result<PoolSummary, StoreError> {
        let r = sqlx::query(include_str!("sql/report/pool_summary.sql"))
            .fetch_one(pool)
            .await
            .map_err(store_error)?;
        Ok(PoolSummary {
            available: r.get("available"),
            available_sats: r.get("available_sats"),
            reserved: r.get("reserved"),
            reserved_sats: r.get("reserved_sats"),
            dirty: r.get("dirty"),
            dirty_sats: r.get("dirty_sats"),
            pending: r.get("pending"),
            spent: None,
            retired: None,
            spent_or_retired_estimate: r.get("finished"),
        })
    }
}

/// The gauges `/metrics` reads from the database: the truth after any restart.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LiveGauges {
    pub queue: super::QueueCounts,
    pub utxo_available: i64,
    pub utxo_available_sats: i64,
    pub utxo_reserved: i64,
    pub utxo_dirty: i64,
    pub utxo_pending: i64,
    /// Seconds the oldest `sending` job has been sending (0 when none is).
    pub oldest_sending_seconds: f64,
}

impl LiveGauges {
    pub async fn load(pool: &PgPool) -> Result<LiveGauges, StoreError> {
        let queue = super::queue_counts(pool).await?;
        let r = sqlx::query(include_str!("sql/report/live_gauges.sql"))
            .fetch_one(pool)
            .await
            .map_err(store_error)?;
        Ok(LiveGauges {
            queue,
            utxo_available: r.get("available"),
            utxo_available_sats: r.get("available_sats"),
            utxo_reserved: r.get("reserved"),
            utxo_dirty: r.get("dirty"),
            utxo_pending: r.get("pending"),
            oldest_sending_seconds: r.get::<f64, _>("oldest").max(0.0),
        })
    }
}

/// A batch as `GET /v1/batches` shows it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, sqlx::FromRow, utoipa::ToSchema)]
pub struct BatchView {
    pub id: i64,
    /// The process that claimed it.
    pub owner: String,
    /// Jobs claimed.
    pub size: i32,
    pub sent: i32,
    pub failed: i32,
    /// Jobs sent back to the queue for another attempt (they join a later batch).
    pub retried: i32,
    pub created_at: DateTime<Utc>,
    pub completed_at: Option<DateTime<Utc>>,
}

/// The last `limit` batches, newest first (read by key: the same cost at any size).
pub async fn recent_batches(pool: &PgPool, limit: i64) -> Result<Vec<BatchView>, StoreError> {
    sqlx::query_as(include_str!("sql/report/recent_batches.sql"))
        .bind(limit)
        .fetch_all(pool)
        .await
        .map_err(store_error)
}

/// Jobs that ever reached `sent` and `failed` (those the Pruner removed included): the
/// rate chart's samples.
pub async fn finished_totals(pool: &PgPool) -> Result<(i64, i64), StoreError> {
    sqlx::query_as(include_str!("sql/report/finished_totals.sql"))
        .fetch_one(pool)
        .await
        .map_err(store_error)
}

/// Transactions the pool's available clean coins can fund before the next confirmation
/// (see `GET /v1/pool`'s `capacity`).
pub async fn pool_capacity(pool: &PgPool, max_chain_depth: u32) -> Result<i64, StoreError> {
    let max = i32::try_from(max_chain_depth).unwrap_or(i32::MAX);
    sqlx::query_scalar(include_str!("sql/report/pool_capacity.sql"))
        .bind(max)
        .fetch_one(pool)
        .await
        .map_err(store_error)
}
