//! The adoption: the batch worker's rows read as raregen's, in one transaction.

use anyhow::Context;
use sqlx::PgPool;

use super::copy::copy_rows;
use super::*;

/// What an adoption did, row by row.
#[derive(Debug, Default, PartialEq, Eq, sqlx::FromRow)]
pub struct Adopted {
    /// Queued in the batch worker: queued.
    pub queued: i64,
    /// Claimed into a batch but not yet sending: queued again (no transaction of theirs
    /// can exist).
    pub requeued: i64,
    /// In flight (sending): held on their coin until the node is asked about it.
    pub held: i64,
    /// In flight with no coin on record (or one another job also claimed): failed,
    /// never signed again.
    pub in_doubt_failed: i64,
    pub sent: i64,
    pub failed: i64,
    /// Seed UTXOs: available and clean.
    pub utxos_clean: i64,
    /// Dirty or reserved in the batch worker, or held by an in-flight job: checked with the
    /// node before anyone spends them.
    pub utxos_dirty: i64,
    /// Spent by a sent job.
    pub utxos_spent: i64,
}

impl std::fmt::Display for Adopted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "jobs: {} queued, {} claimed and queued again, {} in flight held until the node \
             is asked about their coin, {} in flight with no coin of their own failed, \
             {} sent, {} failed; UTXOs: {} clean, {} dirty (checked with the node first), \
             {} spent",
            self.queued,
            self.requeued,
            self.held,
            self.in_doubt_failed,
            self.sent,
            self.failed,
            self.utxos_clean,
            self.utxos_dirty,
            self.utxos_spent
        )
    }
}

/// The batch worker's statuses; any other refuses the adoption.
const SEED_STATUSES: &[&str] = &["queued", "processing_batch", "sending", "sent", "failed"];

impl BatchWorkerSchema {
    fn job_column(&self, name: &str) -> bool {
        self.jobs.contains_key(name)
    }

    /// The batch worker's jobs as raregen reads them. `hex`: the payloads are text holding hex
    /// (decided once for the whole table, never row by row).
    fn seed_jobs_select(&self, hex: bool) -> String {
        let payload = match self.jobs["payload"].as_str() {
            "bytea" => "s.payload",
            _ if hex => "decode(s.payload, 'hex')",
            _ => "convert_to(s.payload, 'UTF8')",
        };
        let opt = |name: &str, cast: &str, default: &str| {
            if self.job_column(name) {
                format!("s.{name}::{cast}")
            } else {
                default.to_owned()
            }
        };
        let error = if self.job_column("last_error") {
            "s.last_error::text".to_owned()
        } else {
            opt("error", "text", "NULL::text")
        };
        // Without a record of the coins jobs spend, a claimed job may be one the batch worker's
        // unstick query moved back from `sending`: in flight, with no coin.
        let claimed_in_flight = if self.job_column("utxo_id") {
            "FALSE"
        } else {
            "s.status = 'processing_batch'"
        };
        format!(
            "SELECT s.id::bigint AS id, s.status::text AS status, {payload} AS payload,
                    -- A txid raregen can use (else none: a finished job becomes failed).
                    CASE WHEN lower({txid}) ~ '^[0-9a-f]{{64}}$' THEN lower({txid}) END AS txid,
                    {utxo} AS utxo_id,
                    GREATEST(COALESCE({attempts}, 0), 0) AS attempts, {error} AS error,
                    s.processing_batch_id::text AS batch_key, s.batch_seq::int AS batch_seq,
                    s.sending_started_at, s.sent_at, s.created_at,
                    COALESCE({updated}, s.sent_at, s.created_at) AS updated_at,
                    -- In flight: a transaction of it may exist. The batch worker's own unstick
                    -- query moves `sending` jobs back to processing_batch and clears
                    -- sending_started_at, and a job the batch worker retried is queued again:
                    -- any unfinished job that names a txid, a coin or a send time is
                    -- taken as in flight.
                    (s.status = 'sending' OR {claimed_in_flight}
                     OR (s.status IN ('queued', 'processing_batch')
                         AND (s.sending_started_at IS NOT NULL
                              OR NULLIF({txid}, '') IS NOT NULL
                              OR {utxo} IS NOT NULL))) AS in_flight
             FROM {ASIDE_SCHEMA}.publish_jobs s",
            txid = opt("txid", "text", "NULL::text"),
            utxo = opt("utxo_id", "bigint", "NULL::bigint"),
            attempts = opt("attempts", "int", "0"),
            updated = opt("updated_at", "timestamptz", "NULL::timestamptz"),
        )
    }
}

/// Adopts the batch worker's database: `script_pubkey` is the wallet key's (the batch worker's UTXOs
/// carry no script; they must pay to the key raregen runs with). One transaction: on
/// any error nothing changed.
pub async fn adopt(
    pool: &PgPool,
    schema: &BatchWorkerSchema,
    script_pubkey: &[u8],
) -> anyhow::Result<Adopted> {
    // The batch worker's processes must be stopped: its worker would spend coins raregen now
    // holds, and its API would write rows into raregen's table by name.
    // (A client that just disconnected may still be listed for a moment: a few seconds'
    // grace.)
    let mut others: Vec<String> = Vec::new();
    for _ in 0..25 {
        others = sqlx::query_scalar(include_str!("sql/other_sessions.sql"))
            .fetch_all(pool)
            .await
            .context("listing the database's other sessions")?;
        if others.is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    anyhow::ensure!(
        others.is_empty(),
        "other sessions are connected to the batch worker's database ({}): stop every service of \
         the batch worker (its worker and its API) before adopting it; nothing was changed",
        others.join(", ")
    );
    let mut tx = pool.begin().await.context("starting the adoption")?;
    // Nobody else migrates meanwhile, and nobody writes to the batch worker's tables (a session
    // that holds them makes the adoption give up rather than wait).
    sqlx::query("SET LOCAL lock_timeout = '10s'")
        .execute(&mut *tx)
        .await?;
    sqlx::query("LOCK TABLE publish_jobs, utxos IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *tx)
        .await
        .context(
            "locking the batch worker's tables (is a service of the batch worker still running?)",
        )?;
    sqlx::query("SET LOCAL lock_timeout = 0")
        .execute(&mut *tx)
        .await?;
    let statuses: Vec<String> =
        sqlx::query_scalar("SELECT DISTINCT status::text FROM publish_jobs ORDER BY 1")
            .fetch_all(&mut *tx)
            .await
            .context("reading the batch worker's job statuses")?;
    let unknown: Vec<&String> = statuses
        .iter()
        .filter(|s| !SEED_STATUSES.contains(&s.as_str()))
        .collect();
    anyhow::ensure!(
        unknown.is_empty(),
        "the batch worker's publish_jobs has statuses raregen does not know ({}): only {} are \
         adopted; nothing was changed",
        unknown
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join(", "),
        SEED_STATUSES.join(", ")
    );
    // Text payloads: hex if every one is hex (what the batch worker's API stored), else UTF-8.
    let hex = schema.jobs["payload"] != "bytea"
        && sqlx::query_scalar::<_, Option<bool>>(
            "SELECT bool_and(payload::text ~ '^([0-9a-fA-F]{2})*$') FROM publish_jobs",
        )
        .fetch_one(&mut *tx)
        .await
        .context("reading the batch worker's payloads")?
        .unwrap_or(true);
    let bad_coins: Vec<i64> = sqlx::query_scalar(include_str!("sql/bad_coins.sql"))
        .fetch_all(&mut *tx)
        .await
        .context("checking the batch worker's UTXOs")?;
    anyhow::ensure!(
        bad_coins.is_empty(),
        "the batch worker's utxos has rows that are no coin (a txid that is not 64 hex digits, a \
         negative vout or no satoshis), ids {:?}: fix or delete them, then run `raregen \
         migrate` again; nothing was changed",
        bad_coins
    );
    for statement in [
        format!("CREATE SCHEMA {ASIDE_SCHEMA}"),
        format!("ALTER TABLE publish_jobs SET SCHEMA {ASIDE_SCHEMA}"),
        format!("ALTER TABLE utxos SET SCHEMA {ASIDE_SCHEMA}"),
    ] {
        sqlx::query(&statement)
            .execute(&mut *tx)
            .await
            .with_context(|| format!("moving the batch worker's tables aside: {statement}"))?;
    }
    crate::store::MIGRATOR
        .run(&mut *tx)
        .await
        .context("applying raregen's migrations")?;
    let adopted = copy_rows(&mut tx, &schema.seed_jobs_select(hex), script_pubkey).await?;
    sqlx::query(&format!(
        "COMMENT ON SCHEMA {ASIDE_SCHEMA} IS 'The batch worker''s publish_jobs and utxos as they were \
         when raregen adopted them ({}); raregen never reads them again: drop this schema \
         once satisfied.'",
        chrono::Utc::now().format("%Y-%m-%d %H:%M:%S UTC")
    ))
    .execute(&mut *tx)
    .await?;
    tx.commit().await.context("committing the adoption")?;
    Ok(adopted)
}
