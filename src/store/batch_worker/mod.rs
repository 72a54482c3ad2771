//! RareGen's batch worker's database, upgraded in place: `raregen migrate` on a database that holds
//! RareGen's batch worker schema moves the batch worker's two tables aside (schema
//! `raregen_seed`), applies raregen's migrations, and copies every row across in one
//! transaction (all or nothing). docs/operations.md, "Migrating from RareGen's batch
//! worker", describes the schema assumed here and what becomes of each row.

use std::collections::BTreeMap;

use anyhow::Context;
use sqlx::PgPool;

/// Where the batch worker's tables are kept after an adoption (dropped by the operator).
pub const ASIDE_SCHEMA: &str = "raregen_seed";

/// What a database holds, as `raregen migrate` sees it.
#[derive(Debug)]
pub enum Found {
    /// No table in the current schema.
    Empty,
    /// raregen's own (its migrations table): migrations are applied as usual.
    Raregen,
    /// The batch worker's schema, with the columns found.
    BatchWorker(BatchWorkerSchema),
    /// Anything else: refused, with why.
    Foreign(String),
}

/// The batch worker's tables as found: column name → data type.
#[derive(Debug)]
pub struct BatchWorkerSchema {
    jobs: BTreeMap<String, String>,
}

/// The columns the batch worker's runbook and its migration 006 name, which every seed
/// database has.
const SEED_JOB_COLUMNS: &[&str] = &[
    "id",
    "status",
    "payload",
    "processing_batch_id",
    "batch_seq",
    "sending_started_at",
    "sent_at",
    "created_at",
];
const SEED_UTXO_COLUMNS: &[&str] = &[
    "id",
    "txid",
    "vout",
    "satoshis",
    "dirty",
    "reserved_at",
    "created_at",
];
/// Tables raregen's migrations create (besides publish_jobs and utxos): a seed database
/// holding one of these names cannot be adopted without renaming it first.
const RAREGEN_TABLES: &[&str] = &[
    "workers",
    "batches",
    "pool_transactions",
    "job_transactions",
    "job_counts",
    "publish_jobs_archive",
    "seed_in_flight",
    "job_counts_removed",
];

/// Looks at the tables of the connection's current schema.
pub async fn inspect(pool: &PgPool) -> anyhow::Result<Found> {
    let tables: Vec<String> = sqlx::query_scalar(include_str!("sql/tables.sql"))
        .fetch_all(pool)
        .await
        .context("listing the database's tables")?;
    let mut tables = tables;
    if tables.iter().any(|t| t == "_sqlx_migrations") {
        // An empty one is what a failed first migration leaves behind: as if absent.
        let applied: i64 = sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations")
            .fetch_one(pool)
            .await
            .context("reading _sqlx_migrations")?;
        if applied == 0 {
            tables.retain(|t| t != "_sqlx_migrations");
        }
    }
    if tables.is_empty() {
        return Ok(Found::Empty);
    }
    let jobs = columns(pool, "publish_jobs").await?;
    if tables.iter().any(|t| t == "_sqlx_migrations") {
        if jobs.is_empty() || jobs.contains_key("raw_tx") {
            return Ok(Found::Raregen);
        }
        return Ok(Found::Foreign(
            "it has a _sqlx_migrations table, but its publish_jobs is not raregen's".into(),
        ));
    }
    let utxos = columns(pool, "utxos").await?;
    let missing = |have: &BTreeMap<String, String>, want: &[&str]| -> Vec<String> {
        want.iter()
            .filter(|c| !have.contains_key(**c))
            .map(|c| c.to_string())
            .collect()
    };
    if jobs.is_empty() || utxos.is_empty() {
        let shown: Vec<&str> = tables.iter().take(8).map(String::as_str).collect();
        return Ok(Found::Foreign(format!(
            "it holds tables ({}{}) but neither raregen's schema nor RareGen's batch worker's \
             (publish_jobs and utxos)",
            shown.join(", "),
            if tables.len() > shown.len() {
                ", …"
            } else {
                ""
            }
        )));
    }
    let (mj, mu) = (
        missing(&jobs, SEED_JOB_COLUMNS),
        missing(&utxos, SEED_UTXO_COLUMNS),
    );
    if !mj.is_empty() || !mu.is_empty() || jobs.contains_key("raw_tx") {
        return Ok(Found::Foreign(format!(
            "its publish_jobs and utxos are not the batch worker's (missing columns: {})",
            mj.iter()
                .map(|c| format!("publish_jobs.{c}"))
                .chain(mu.iter().map(|c| format!("utxos.{c}")))
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    let clash: Vec<&str> = RAREGEN_TABLES
        .iter()
        .copied()
        .filter(|t| tables.iter().any(|have| have == t))
        .collect();
    if !clash.is_empty() {
        return Ok(Found::Foreign(format!(
            "it holds the batch worker's schema, and also table(s) {} that raregen creates: rename \
             them, then run `raregen migrate` again",
            clash.join(", ")
        )));
    }
    for (table, column, types) in [
        ("publish_jobs", "id", &["integer", "bigint", "smallint"][..]),
        (
            "publish_jobs",
            "payload",
            &["bytea", "text", "character varying"][..],
        ),
        ("utxos", "id", &["integer", "bigint", "smallint"][..]),
    ] {
        let have = if table == "utxos" { &utxos } else { &jobs };
        if !types.contains(&have[column].as_str()) {
            return Ok(Found::Foreign(format!(
                "the batch worker's {table}.{column} is {}, not one of {}",
                have[column],
                types.join(", ")
            )));
        }
    }
    Ok(Found::BatchWorker(BatchWorkerSchema { jobs }))
}

async fn columns(pool: &PgPool, table: &str) -> anyhow::Result<BTreeMap<String, String>> {
    let rows: Vec<(String, String)> = sqlx::query_as(
        "SELECT column_name::text, data_type::text FROM information_schema.columns
         WHERE table_schema = current_schema() AND table_name = $1",
    )
    .bind(table)
    .fetch_all(pool)
    .await
    .with_context(|| format!("reading the columns of {table}"))?;
    Ok(rows.into_iter().collect())
}

mod adopt;
mod copy;

pub use adopt::{adopt, Adopted};
