//! The seed's database, upgraded in place: `raregen migrate` on a database that holds
//! RareGen's batch worker schema moves the seed's two tables aside (schema
//! `raregen_seed`), applies raregen's migrations, and copies every row across in one
//! transaction (all or nothing). docs/operations.md, "Migrating from RareGen's batch
//! worker", describes the schema assumed here and what becomes of each row.

use std::collections::BTreeMap;

use anyhow::Context;
use sqlx::{PgPool, Postgres, Transaction};

/// Where the seed's tables are kept after an adoption (dropped by the operator).
pub const SEED_SCHEMA: &str = "raregen_seed";

/// What a database holds, as `raregen migrate` sees it.
#[derive(Debug)]
pub enum Found {
    /// No table in the current schema.
    Empty,
    /// raregen's own (its migrations table): migrations are applied as usual.
    Raregen,
    /// The seed's schema, with the columns found.
    Seed(SeedSchema),
    /// Anything else: refused, with why.
    Foreign(String),
}

/// The seed's tables as found: column name → data type.
#[derive(Debug)]
pub struct SeedSchema {
    jobs: BTreeMap<String, String>,
}

/// The columns the seed's runbook and its migration 006 name, which every seed
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
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT table_name::text FROM information_schema.tables
         WHERE table_schema = current_schema() AND table_type = 'BASE TABLE'
         ORDER BY 1",
    )
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
            "it holds tables ({}{}) but neither raregen's schema nor the seed's \
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
            "its publish_jobs and utxos are not the seed's (missing columns: {})",
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
            "it holds the seed's schema, and also table(s) {} that raregen creates: rename \
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
                "the seed's {table}.{column} is {}, not one of {}",
                have[column],
                types.join(", ")
            )));
        }
    }
    Ok(Found::Seed(SeedSchema { jobs }))
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

/// What an adoption did, row by row.
#[derive(Debug, Default, PartialEq, Eq, sqlx::FromRow)]
pub struct Adopted {
    /// Queued in the seed: queued.
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
    /// Dirty or reserved in the seed, or held by an in-flight job: checked with the
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

/// The seed's statuses; any other refuses the adoption.
const SEED_STATUSES: &[&str] = &["queued", "processing_batch", "sending", "sent", "failed"];

impl SeedSchema {
    fn job_column(&self, name: &str) -> bool {
        self.jobs.contains_key(name)
    }

    /// The seed's jobs as raregen reads them. `hex`: the payloads are text holding hex
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
        // Without a record of the coins jobs spend, a claimed job may be one the seed's
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
                    -- In flight: a transaction of it may exist. The seed's own unstick
                    -- query moves `sending` jobs back to processing_batch and clears
                    -- sending_started_at, and a job the seed retried is queued again:
                    -- any unfinished job that names a txid, a coin or a send time is
                    -- taken as in flight.
                    (s.status = 'sending' OR {claimed_in_flight}
                     OR (s.status IN ('queued', 'processing_batch')
                         AND (s.sending_started_at IS NOT NULL
                              OR NULLIF({txid}, '') IS NOT NULL
                              OR {utxo} IS NOT NULL))) AS in_flight
             FROM {SEED_SCHEMA}.publish_jobs s",
            txid = opt("txid", "text", "NULL::text"),
            utxo = opt("utxo_id", "bigint", "NULL::bigint"),
            attempts = opt("attempts", "int", "0"),
            updated = opt("updated_at", "timestamptz", "NULL::timestamptz"),
        )
    }
}

/// Adopts the seed's database: `script_pubkey` is the wallet key's (the seed's UTXOs
/// carry no script; they must pay to the key raregen runs with). One transaction: on
/// any error nothing changed.
pub async fn adopt(
    pool: &PgPool,
    seed: &SeedSchema,
    script_pubkey: &[u8],
) -> anyhow::Result<Adopted> {
    // The seed's processes must be stopped: its worker would spend coins raregen now
    // holds, and its API would write rows into raregen's table by name.
    // (A client that just disconnected may still be listed for a moment: a few seconds'
    // grace.)
    let mut others: Vec<String> = Vec::new();
    for _ in 0..25 {
        others = sqlx::query_scalar(
            "SELECT DISTINCT COALESCE(NULLIF(application_name, ''), 'unnamed')
                    || ' from ' || COALESCE(host(client_addr), 'a local socket')
             FROM pg_stat_activity
             WHERE datname = current_database() AND pid <> pg_backend_pid()
               -- (NULL: another role's session, whose details this role may not see.)
               AND COALESCE(backend_type, 'client backend') = 'client backend'
               AND application_name IS DISTINCT FROM 'raregen'
             ORDER BY 1",
        )
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
        "other sessions are connected to the seed's database ({}): stop every service of \
         the seed (its worker and its API) before adopting it; nothing was changed",
        others.join(", ")
    );
    let mut tx = pool.begin().await.context("starting the adoption")?;
    // Nobody else migrates meanwhile, and nobody writes to the seed's tables (a session
    // that holds them makes the adoption give up rather than wait).
    sqlx::query("SET LOCAL lock_timeout = '10s'")
        .execute(&mut *tx)
        .await?;
    sqlx::query("LOCK TABLE publish_jobs, utxos IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *tx)
        .await
        .context("locking the seed's tables (is a service of the seed still running?)")?;
    sqlx::query("SET LOCAL lock_timeout = 0")
        .execute(&mut *tx)
        .await?;
    let statuses: Vec<String> =
        sqlx::query_scalar("SELECT DISTINCT status::text FROM publish_jobs ORDER BY 1")
            .fetch_all(&mut *tx)
            .await
            .context("reading the seed's job statuses")?;
    let unknown: Vec<&String> = statuses
        .iter()
        .filter(|s| !SEED_STATUSES.contains(&s.as_str()))
        .collect();
    anyhow::ensure!(
        unknown.is_empty(),
        "the seed's publish_jobs has statuses raregen does not know ({}): only {} are \
         adopted; nothing was changed",
        unknown
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join(", "),
        SEED_STATUSES.join(", ")
    );
    // Text payloads: hex if every one is hex (what the seed's API stored), else UTF-8.
    let hex = seed.jobs["payload"] != "bytea"
        && sqlx::query_scalar::<_, Option<bool>>(
            "SELECT bool_and(payload::text ~ '^([0-9a-fA-F]{2})*$') FROM publish_jobs",
        )
        .fetch_one(&mut *tx)
        .await
        .context("reading the seed's payloads")?
        .unwrap_or(true);
    let bad_coins: Vec<i64> = sqlx::query_scalar(
        "SELECT id::bigint FROM utxos WHERE NOT (lower(txid) ~ '^[0-9a-f]{64}$')
            OR vout < 0 OR satoshis <= 0 ORDER BY id LIMIT 10",
    )
    .fetch_all(&mut *tx)
    .await
    .context("checking the seed's UTXOs")?;
    anyhow::ensure!(
        bad_coins.is_empty(),
        "the seed's utxos has rows that are no coin (a txid that is not 64 hex digits, a \
         negative vout or no satoshis), ids {:?}: fix or delete them, then run `raregen \
         migrate` again; nothing was changed",
        bad_coins
    );
    for statement in [
        format!("CREATE SCHEMA {SEED_SCHEMA}"),
        format!("ALTER TABLE publish_jobs SET SCHEMA {SEED_SCHEMA}"),
        format!("ALTER TABLE utxos SET SCHEMA {SEED_SCHEMA}"),
    ] {
        sqlx::query(&statement)
            .execute(&mut *tx)
            .await
            .with_context(|| format!("moving the seed's tables aside: {statement}"))?;
    }
    super::MIGRATOR
        .run(&mut *tx)
        .await
        .context("applying raregen's migrations")?;
    let adopted = copy_rows(&mut tx, &seed.seed_jobs_select(hex), script_pubkey).await?;
    sqlx::query(&format!(
        "COMMENT ON SCHEMA {SEED_SCHEMA} IS 'The seed''s publish_jobs and utxos as they were \
         when raregen adopted them ({}); raregen never reads them again: drop this schema \
         once satisfied.'",
        chrono::Utc::now().format("%Y-%m-%d %H:%M:%S UTC")
    ))
    .execute(&mut *tx)
    .await?;
    tx.commit().await.context("committing the adoption")?;
    Ok(adopted)
}

async fn copy_rows(
    tx: &mut Transaction<'_, Postgres>,
    seed_jobs: &str,
    script_pubkey: &[u8],
) -> anyhow::Result<Adopted> {
    let steps: Vec<(&str, String)> = vec![
        // Statistics for the planner (a database loaded in bulk may have none yet).
        ("analysing", format!("ANALYZE {SEED_SCHEMA}.publish_jobs, {SEED_SCHEMA}.utxos")),
        (
            "linking the seed's jobs to their coins",
            // Per coin a job names: the lowest in-flight job naming it (the one that may
            // hold it: a coin claimed twice anchors one job), and the txid of a sent job
            // that spent it.
            format!(
                "CREATE TEMP TABLE seed_links ON COMMIT DROP AS
                 SELECT utxo_id,
                        min(id) FILTER (WHERE in_flight) AS in_flight_job,
                        min(txid) FILTER (WHERE status = 'sent' AND txid IS NOT NULL) AS spent_by
                 FROM ({seed_jobs}) j WHERE utxo_id IS NOT NULL GROUP BY utxo_id"
            ),
        ),
        // Temporary tables have no statistics until analysed (autovacuum never sees
        // them): without, the planner joins a million jobs to them by nested loops.
        ("analysing", "ANALYZE seed_links".to_owned()),
        (
            "choosing the anchors of the jobs in flight",
            format!(
                "CREATE TEMP TABLE seed_anchors ON COMMIT DROP AS
                 SELECT l.utxo_id, l.in_flight_job AS job_id
                 FROM seed_links l JOIN {SEED_SCHEMA}.utxos u ON u.id = l.utxo_id
                 WHERE l.in_flight_job IS NOT NULL AND l.spent_by IS NULL"
            ),
        ),
        ("analysing", "ANALYZE seed_anchors".to_owned()),
        (
            "copying the seed's UTXOs",
            // Spent by a sent job: spent. An in-flight job's coin: its anchor, reserved by
            // it and dirty (its transaction may be live). Any other coin a job named, or
            // dirty or reserved in the seed: dirty (the node is asked before anyone spends
            // it). The rest: clean.
            format!(
                "INSERT INTO utxos (id, txid, vout, satoshis, script_pubkey, state, dirty,
                                    reserved_at, reserved_by, spent_by_txid, created_at, updated_at)
                 SELECT u.id, lower(u.txid), u.vout, u.satoshis, $1,
                        CASE WHEN l.spent_by IS NOT NULL THEN 'spent'
                             WHEN a.job_id IS NOT NULL THEN 'reserved'
                             ELSE 'available' END,
                        CASE WHEN l.spent_by IS NOT NULL THEN FALSE
                             ELSE a.job_id IS NOT NULL OR l.utxo_id IS NOT NULL
                                  OR COALESCE(u.dirty, FALSE) OR u.reserved_at IS NOT NULL END,
                        CASE WHEN l.spent_by IS NULL AND a.job_id IS NOT NULL
                             THEN COALESCE(u.reserved_at, now()) END,
                        CASE WHEN l.spent_by IS NULL THEN a.job_id END,
                        l.spent_by, COALESCE(u.created_at, now()), now()
                 FROM {SEED_SCHEMA}.utxos u
                 LEFT JOIN seed_links l ON l.utxo_id = u.id
                 LEFT JOIN seed_anchors a ON a.utxo_id = u.id"
            ),
        ),
        (
            "numbering the seed's batches",
            format!(
                "CREATE TEMP TABLE seed_batches ON COMMIT DROP AS
                 SELECT batch_key, nextval(pg_get_serial_sequence('batches', 'id')) AS id,
                        count(*) AS size,
                        count(*) FILTER (WHERE status = 'sent') AS sent,
                        count(*) FILTER (WHERE status = 'failed') AS failed,
                        count(*) FILTER (WHERE status NOT IN ('sent', 'failed')) AS retried,
                        -- Completed at the adoption: retention counts from it.
                        min(created_at) AS created_at, now() AS completed_at
                 FROM ({seed_jobs}) j WHERE batch_key IS NOT NULL GROUP BY batch_key"
            ),
        ),
        ("analysing", "ANALYZE seed_batches, utxos".to_owned()),
        (
            "copying the seed's batches",
            "INSERT INTO batches (id, owner, size, sent, failed, retried, created_at, completed_at)
             SELECT id, 'seed', size, sent, failed, retried, created_at, completed_at
             FROM seed_batches"
                .to_owned(),
        ),
        (
            "copying the seed's jobs",
            // queued → queued; processing_batch not yet sending → queued (no transaction
            // of it can exist); in flight with a coin → queued but held (next_attempt_at
            // 'infinity') on that coin until the DirtySettler has asked the node; in
            // flight with no coin → failed, never signed again; sent → sent, taken as
            // final (the seed kept no confirmations, nor the signed bytes); failed →
            // failed. Finished jobs keep their batch.
            format!(
                "INSERT INTO publish_jobs (id, status, payload, attempts, next_attempt_at, last_error,
                                           processing_batch_id, batch_seq, utxo_id, anchor_utxo_id,
                                           txid, sending_started_at, sent_at, confirmed_at,
                                           created_at, updated_at)
                 SELECT j.id, f.status, j.payload, j.attempts,
                        CASE WHEN a.job_id IS NOT NULL THEN 'infinity'::timestamptz ELSE now() END,
                        CASE WHEN j.status = 'sent' AND j.txid IS NULL
                                 THEN 'adopted from the seed: marked sent with no txid on record'
                             WHEN a.job_id IS NOT NULL
                                 THEN 'adopted from the seed in flight (seed txid: '
                                      || COALESCE(j.txid, 'not recorded')
                                      || '): held until the node has been asked about its coin'
                             WHEN j.in_flight
                                 THEN 'adopted from the seed in flight with no coin of its own on '
                                      || 'record (seed txid: ' || COALESCE(j.txid, 'not recorded')
                                      || '): never signed again, since the seed may have published '
                                      || 'it; submit it again if the chain does not have it'
                             ELSE j.error END,
                        CASE WHEN f.finished THEN b.id END,
                        CASE WHEN f.finished AND j.batch_seq > 0 THEN j.batch_seq END,
                        CASE WHEN f.status = 'sent' THEN x.id END,
                        CASE WHEN a.job_id IS NOT NULL THEN a.utxo_id
                             WHEN f.status = 'sent' THEN x.id END,
                        CASE WHEN f.status = 'sent' THEN j.txid END,
                        CASE WHEN f.finished THEN j.sending_started_at END,
                        CASE WHEN f.status = 'sent' THEN COALESCE(j.sent_at, j.updated_at) END,
                        -- Taken as final at adoption (and kept `retention.keep` from it).
                        CASE WHEN f.status = 'sent' THEN now() END,
                        j.created_at, now()
                 FROM ({seed_jobs}) j
                 LEFT JOIN seed_anchors a ON a.job_id = j.id
                 LEFT JOIN seed_batches b ON b.batch_key = j.batch_key
                 LEFT JOIN utxos x ON x.id = j.utxo_id
                 CROSS JOIN LATERAL (
                     SELECT CASE WHEN j.status = 'sent' AND j.txid IS NOT NULL THEN 'sent'
                                 WHEN j.status IN ('sent', 'failed') THEN 'failed'
                                 WHEN j.in_flight AND a.job_id IS NULL THEN 'failed'
                                 ELSE 'queued' END AS status
                 ) s0
                 CROSS JOIN LATERAL (SELECT s0.status, s0.status <> 'queued' AS finished) f"
            ),
        ),
        (
            "recording the jobs adopted in flight",
            format!(
                "INSERT INTO seed_in_flight (job_id, seed_txid)
                 SELECT id, txid FROM ({seed_jobs}) j WHERE j.in_flight"
            ),
        ),
        (
            "moving the id sequences past the seed's ids",
            "SELECT setval(pg_get_serial_sequence('publish_jobs', 'id'),
                           GREATEST((SELECT max(id) FROM publish_jobs), 1)),
                    setval(pg_get_serial_sequence('utxos', 'id'),
                           GREATEST((SELECT max(id) FROM utxos), 1))"
                .to_owned(),
        ),
    ];
    for (what, sql) in steps {
        // Progress: each step of a big table takes a while.
        let started = std::time::Instant::now();
        tracing::info!("adopting the seed's database: {what}");
        let query = sqlx::query(&sql);
        let query = if sql.contains("$1") {
            query.bind(script_pubkey)
        } else {
            query
        };
        query
            .execute(&mut **tx)
            .await
            .with_context(|| format!("adopting the seed's database: {what}"))?;
        tracing::info!(elapsed = ?started.elapsed(), "adopting the seed's database: {what}: done");
    }
    let adopted: Adopted = sqlx::query_as(&format!(
        "SELECT count(*) FILTER (WHERE j.status = 'queued' AND NOT j.in_flight) AS queued,
                count(*) FILTER (WHERE j.status = 'processing_batch' AND NOT j.in_flight) AS requeued,
                count(a.job_id) AS held,
                count(*) FILTER (WHERE j.in_flight AND a.job_id IS NULL) AS in_doubt_failed,
                count(*) FILTER (WHERE j.status = 'sent' AND j.txid IS NOT NULL) AS sent,
                count(*) FILTER (WHERE j.status = 'failed' OR (j.status = 'sent' AND j.txid IS NULL))
                    AS failed,
                (SELECT count(*) FROM utxos WHERE state = 'available' AND NOT dirty) AS utxos_clean,
                (SELECT count(*) FROM utxos WHERE dirty) AS utxos_dirty,
                (SELECT count(*) FROM utxos WHERE state = 'spent') AS utxos_spent
         FROM ({seed_jobs}) j LEFT JOIN seed_anchors a ON a.job_id = j.id"
    ))
    .fetch_one(&mut **tx)
    .await
    .context("counting what was adopted")?;
    Ok(adopted)
}
