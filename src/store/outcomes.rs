//! The outcomes of claimed jobs: the write-ahead, `sent`, retries, dirty marks and
//! released claims, each one statement for a whole group of jobs.

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use raregen_actors::ports::{
    Fence, JobId, OutcomeStore, Recorded, Retry, Sending, SendingRecorded, Sent, SpendableUtxo,
    StoreError,
};
use sqlx::postgres::{PgArguments, Postgres};
use sqlx::query::Query;
use sqlx::Row;

use super::{store_error, PgStore};

/// The write-ahead record of a group: the job must still be ours (fence) and its UTXO
/// still available and clean (or already taken by this very record: the statement is
/// idempotent). Then both change together: UTXO → spending, job → sending with its
/// transaction. Binds: [`SendingArgs`].
const RECORD_SENDING_SQL: &str = include_str!("sql/outcomes/record_sending.sql");

/// The `sent` record of a group: the job, its UTXO spent, its change added to the pool,
/// its batch counted.
///
/// Its commit waits for the WAL flush, unlike the claim's: the change rows' ids come
/// from a sequence and go straight into the UtxoPool's memory; a commit lost in a
/// crash would set the sequence back, and the same ids would then name other coins.
/// Binds: [`SentArgs`].
const RECORD_SENT_SQL: &str = include_str!("sql/outcomes/record_sent.sql");

/// A group of job-side refusals (and of jobs that cannot be built): back to the queue
/// on the same anchor, or failed. Binds: [`RetryArgs`].
const RECORD_RETRY_SQL: &str = include_str!("sql/outcomes/record_retry.sql");

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
impl OutcomeStore for PgStore {
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
        self.fenced(include_str!("sql/outcomes/mark_dirty.sql"), jobs)
            .await
    }

    async fn release_claims(&self, jobs: &[Fence]) -> Result<Vec<JobId>, StoreError> {
        // Handing back is not an attempt: the count goes back down.
        self.fenced(include_str!("sql/outcomes/release_claims.sql"), jobs)
            .await
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

impl PgStore {
    /// Runs `sql` over the jobs `jobs` name (binds: their ids, their attempts, this
    /// process): the ids of those whose fence held.
    async fn fenced(&self, sql: &'static str, jobs: &[Fence]) -> Result<Vec<JobId>, StoreError> {
        if jobs.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<i64> = jobs.iter().map(|j| j.id).collect();
        let attempts: Vec<i32> = jobs.iter().map(|j| j.attempts).collect();
        sqlx::query_scalar(sql)
            .bind(&ids)
            .bind(&attempts)
            .bind(&self.owner)
            .fetch_all(&self.pool)
            .await
            .map_err(store_error)
    }
}
