//! Postgres: the source of truth. Every state change is one statement for a whole
//! slice of jobs (`unnest` of arrays), never one query per job.

pub mod batch_worker;
mod claim;
mod maintenance;
mod notify;
mod outcomes;
mod pool;
mod report;
mod submit;
pub mod utxos;
mod views;

use std::time::Duration;

use anyhow::Context;
use secrecy::ExposeSecret;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, PgPool};

use crate::config::DatabaseSettings;
pub use maintenance::ANCHOR_KEEP;
pub use notify::PgNotifier;
pub use outcomes::GroupStatement;
pub use raregen_actors::StoreError;
pub use report::{
    finished_totals, pool_capacity, recent_batches, BatchSummary, BatchView, LiveGauges,
    OldestSending, PoolSummary, StatusReport, StatusRow,
};
pub use submit::{InsertOutcome, NewJob};
pub use views::{
    compact_job_counts, queue_counts, JobListing, JobState, JobStatus, JobView, QueueCounts,
    JOB_COUNTS_SQL,
};

/// The migrations in `migrations/`, compiled into the binary.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Connection options from the settings (statement logging off: it would log payloads).
pub fn connect_options(db: &DatabaseSettings) -> anyhow::Result<PgConnectOptions> {
    let options: PgConnectOptions = db.url.expose_secret().parse().with_context(|| {
        format!(
            "database.url {} is not a valid Postgres URL",
            db.redacted_url()
        )
    })?;
    Ok(options
        .application_name("raregen")
        .log_slow_statements(tracing::log::LevelFilter::Warn, Duration::from_secs(1))
        .disable_statement_logging())
}

/// A pool with one connection made now, so a bad URL or a down server is reported at once.
///
/// One direct connection is tried first: its error is the real one (refused, unknown
/// host, authentication, missing database), where a pool would retry until
/// `database.acquire_timeout` and then only say that it timed out.
pub async fn connect(db: &DatabaseSettings) -> anyhow::Result<PgPool> {
    let options = connect_options(db)?;
    probe(db, &options)
        .await
        .map_err(|e| anyhow::anyhow!(describe_connect_error(db, &options, &e)))?;
    pool_options(db)
        .connect_with(options)
        .await
        .with_context(|| format!("cannot connect to Postgres at {}", db.redacted_url()))
}

/// Like [`connect`], but creates the database first when the server says it does not
/// exist (for `migrate` and `serve` on a fresh server).
pub async fn connect_or_create(db: &DatabaseSettings) -> anyhow::Result<PgPool> {
    use sqlx::migrate::MigrateDatabase;
    let options = connect_options(db)?;
    match probe(db, &options).await {
        Err(ProbeError::Sqlx(sqlx::Error::Database(e))) if is_missing_database(&*e) => {
            sqlx::Postgres::create_database(db.url.expose_secret())
                .await
                .with_context(|| format!("creating the database of {}", db.redacted_url()))?;
            tracing::info!(database = %db.redacted_url(), "created the database");
        }
        Err(e) => anyhow::bail!(describe_connect_error(db, &options, &e)),
        Ok(()) => {
            return pool_options(db)
                .connect_with(options)
                .await
                .with_context(|| format!("cannot connect to Postgres at {}", db.redacted_url()))
        }
    }
    connect(db).await
}

/// Why the direct connection attempt failed.
enum ProbeError {
    Sqlx(sqlx::Error),
    /// No answer within `database.acquire_timeout` (a firewall dropping packets).
    Timeout,
}

/// One connection, made and closed, bounded by `database.acquire_timeout`.
async fn probe(db: &DatabaseSettings, options: &PgConnectOptions) -> Result<(), ProbeError> {
    match tokio::time::timeout(db.acquire_timeout, options.connect()).await {
        Ok(Ok(conn)) => {
            // Closing politely is best effort: the connection did its job.
            let _ = sqlx::Connection::close(conn).await;
            Ok(())
        }
        Ok(Err(e)) => Err(ProbeError::Sqlx(e)),
        Err(_) => Err(ProbeError::Timeout),
    }
}

fn is_missing_database(e: &dyn sqlx::error::DatabaseError) -> bool {
    e.code().as_deref() == Some("3D000")
}

/// One line saying what failed and what to check; never the password.
fn describe_connect_error(
    db: &DatabaseSettings,
    options: &PgConnectOptions,
    e: &ProbeError,
) -> String {
    let server = match options.get_socket() {
        Some(socket) => format!("Postgres at socket {}", socket.display()),
        None => format!("Postgres at {}:{}", options.get_host(), options.get_port()),
    };
    let url = db.redacted_url();
    match e {
        ProbeError::Timeout => format!(
            "cannot connect to {server}: no answer within {} (database.acquire_timeout) — \
             is it running and reachable? (DATABASE_URL / database.url is {url})",
            humantime::format_duration(db.acquire_timeout)
        ),
        ProbeError::Sqlx(sqlx::Error::Io(io)) => format!(
            "cannot connect to {server}: {io} — is it running? (DATABASE_URL / database.url is {url})"
        ),
        ProbeError::Sqlx(sqlx::Error::Database(e)) if is_missing_database(&**e) => format!(
            "{} on {server} — set DATABASE_URL / database.url (now {url}) to an existing \
             database, or run `raregen migrate`, which creates it",
            e.message()
        ),
        ProbeError::Sqlx(sqlx::Error::Database(e))
            if e.code().is_some_and(|c| c == "28P01" || c == "28000") =>
        {
            format!(
                "{server} refused the connection: {} — check the user and password in \
                 DATABASE_URL / database.url (now {url})",
                e.message()
            )
        }
        ProbeError::Sqlx(sqlx::Error::Database(e)) => format!(
            "cannot connect to {server}: {} (DATABASE_URL / database.url is {url})",
            e.message()
        ),
        ProbeError::Sqlx(other) => format!(
            "cannot connect to {server}: {other} (DATABASE_URL / database.url is {url})"
        ),
    }
}

fn pool_options(db: &DatabaseSettings) -> PgPoolOptions {
    PgPoolOptions::new()
        .max_connections(db.max_connections)
        .acquire_timeout(db.acquire_timeout)
}

/// Applies the embedded migrations; idempotent. Refuses a database that is neither
/// empty nor raregen's: the seed's is adopted by `raregen migrate` alone
/// ([`batch_worker::adopt`]), never as a side effect of starting a daemon.
pub async fn migrate(pool: &PgPool) -> anyhow::Result<()> {
    match batch_worker::inspect(pool).await? {
        batch_worker::Found::Empty | batch_worker::Found::Raregen => {}
        batch_worker::Found::BatchWorker(_) => anyhow::bail!(
            "this database holds the schema of RareGen's batch worker: stop the batch \
             worker, then run `raregen migrate` with the wallet key it used, which \
             adopts it (docs/operations.md, \"Migrating from RareGen's batch worker\")"
        ),
        batch_worker::Found::Foreign(why) => anyhow::bail!(
            "refusing to apply raregen's migrations to this database: {why}; point \
             DATABASE_URL / database.url at an empty database or at raregen's own"
        ),
    }
    MIGRATOR.run(pool).await.context("applying migrations")
}

/// True when every embedded migration is applied (for `/readyz`).
pub async fn migrations_applied(pool: &PgPool) -> Result<bool, sqlx::Error> {
    let applied: Vec<i64> =
        sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success ORDER BY version")
            .fetch_all(pool)
            .await?;
    Ok(MIGRATOR
        .iter()
        .all(|m| applied.binary_search(&m.version).is_ok()))
}

/// The store the actors use, bound to one process's identity (the owner of its claims).
#[derive(Clone)]
pub struct PgStore {
    pool: PgPool,
    owner: String,
    /// What this process runs, for its `workers` row: batch, single, api or cli.
    mode: &'static str,
}

impl PgStore {
    pub fn new(pool: PgPool, owner: impl Into<String>) -> Self {
        PgStore {
            pool,
            owner: owner.into(),
            mode: "api",
        }
    }

    pub fn with_mode(mut self, mode: &'static str) -> Self {
        self.mode = mode;
        self
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// The same identity over a small pool of its own (two connections, opened on
    /// first use): for work that runs on another thread's runtime (the Leaser), whose
    /// connections must not be shared with this runtime's (a connection belongs to the
    /// runtime that opened it, and dies with it).
    pub fn with_own_pool(&self) -> PgStore {
        let options = (*self.pool.connect_options()).clone();
        PgStore {
            pool: PgPoolOptions::new()
                .max_connections(2)
                .acquire_timeout(self.pool.options().get_acquire_timeout())
                .connect_lazy_with(options),
            owner: self.owner.clone(),
            mode: self.mode,
        }
    }

    pub fn owner(&self) -> &str {
        &self.owner
    }
}

pub(crate) fn store_error(e: sqlx::Error) -> StoreError {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Tls(_)
        | sqlx::Error::WorkerCrashed => StoreError::Unavailable(e.to_string()),
        sqlx::Error::Database(ref db)
            if db.code().is_some_and(|c| {
                c.starts_with("57P") || c.starts_with("08") || c == "40P01" || c == "40001"
            }) =>
        {
            // admin_shutdown, crash_shutdown, cannot_connect_now; connection exceptions;
            // a deadlock or serialization failure (the statement can simply run again).
            StoreError::Unavailable(e.to_string())
        }
        other => StoreError::Other(other.to_string()),
    }
}
