//! The Janitor's and the UtxoPool's statements, and the single-mode notifier.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use raregen_actors::ports::Unconfirmed;
use raregen_actors::{
    Confirmation, DirtyUtxo, Fence, JanitorStore, JobId, JobsNotifier, PoolStore, Pruned, SignedTx,
    SpendableUtxo, StoreError, StoredSplit, StuckJob,
};
use sqlx::postgres::PgListener;
use sqlx::{PgPool, Row};
use tokio::sync::Notify;

use super::utxos;
use super::{store_error, PgStore};

/// The first CTE of a statement over a lane: `chain(txid, depth)`, the transaction
/// `$1` and every unconfirmed job transaction that spends an output of one in it,
/// down the lane.
macro_rules! lane {
    () => {
        "WITH RECURSIVE chain(txid, depth) AS (
                 SELECT $1::text, 0
                 UNION
                 SELECT j.txid, c.depth + 1
                 FROM chain c
                 JOIN utxos x ON x.txid = c.txid
                 JOIN publish_jobs j ON j.utxo_id = x.id AND j.txid IS NOT NULL
                      AND j.confirmed_at IS NULL
                 WHERE c.depth < 10000
             ), "
    };
}

/// How long a failed job keeps the anchor it signed on, whatever `retention.keep`: Bitcoin
/// Core's mempool expiry (`-mempoolexpiry`, 336 hours). A refused copy of the job's
/// transaction may wait that long in some node's mempool and then be mined; its coin
/// must not fund another job before.
pub const ANCHOR_KEEP: Duration = Duration::from_secs(14 * 24 * 3600);

/// The UTXO a statement returned (with its `state`), if it is available to the pool.
fn available_utxo(row: Option<sqlx::postgres::PgRow>) -> Option<SpendableUtxo> {
    row.filter(|r| r.get::<String, _>("state") == "available")
        .map(|r| utxo_from(&r))
}

fn utxo_from(r: &sqlx::postgres::PgRow) -> SpendableUtxo {
    SpendableUtxo {
        id: r.get("id"),
        txid: r.get("txid"),
        vout: r.get::<i32, _>("vout") as u32,
        satoshis: r.get::<i64, _>("satoshis") as u64,
        unconfirmed_depth: r.get::<i32, _>("unconfirmed_depth") as u32,
    }
}

#[async_trait]
impl PoolStore for PgStore {
    async fn load_available(
        &self,
        max_depth: u32,
        limit: u32,
    ) -> Result<Vec<SpendableUtxo>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, txid, vout, satoshis, unconfirmed_depth FROM utxos
             WHERE state = 'available' AND NOT dirty AND unconfirmed_depth < $1
             ORDER BY unconfirmed_depth, satoshis DESC
             LIMIT $2",
        )
        .bind(max_depth as i32)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(store_error)?;
        Ok(rows.iter().map(utxo_from).collect())
    }

    async fn store_split(
        &self,
        input: &SpendableUtxo,
        signed: &SignedTx,
        outputs: u32,
        amount: u64,
    ) -> Result<StoredSplit, StoreError> {
        let script: Vec<u8> = sqlx::query_scalar("SELECT script_pubkey FROM utxos WHERE id = $1")
            .bind(input.id)
            .fetch_one(&self.pool)
            .await
            .map_err(store_error)?;
        let mut tx = self.pool.begin().await.map_err(store_error)?;
        let taken: Option<i64> = sqlx::query_scalar(
            "SELECT id FROM utxos WHERE id = $1 AND state = 'available' AND NOT dirty FOR UPDATE",
        )
        .bind(input.id)
        .fetch_optional(&mut *tx)
        .await
        .map_err(store_error)?;
        if taken.is_none() {
            return Err(StoreError::Other(format!(
                "the coin to split ({}:{}) is not available now: spent, reserved, or waiting \
                 for the Janitor to ask the node about an earlier spend",
                input.txid, input.vout
            )));
        }
        let id = utxos::store_split(&mut tx, input, signed, outputs, amount, &script).await?;
        tx.commit().await.map_err(store_error)?;
        Ok(StoredSplit {
            id,
            txid: signed.txid.clone(),
            raw_tx: signed.raw_tx.clone(),
            input_utxo_id: input.id,
        })
    }

    async fn split_accepted(&self, split: &StoredSplit) -> Result<Vec<SpendableUtxo>, StoreError> {
        utxos::split_accepted(&self.pool, split).await?;
        let rows = sqlx::query(
            "SELECT id, txid, vout, satoshis, unconfirmed_depth FROM utxos
             WHERE txid = $1 AND state = 'available' AND NOT dirty",
        )
        .bind(&split.txid)
        .fetch_all(&self.pool)
        .await
        .map_err(store_error)?;
        Ok(rows.iter().map(utxo_from).collect())
    }

    async fn split_rejected(
        &self,
        split: &StoredSplit,
        reason: &str,
        input_problem: bool,
    ) -> Result<(), StoreError> {
        utxos::split_rejected(&self.pool, split, reason, input_problem).await
    }

    async fn split_unknown(&self, split: &StoredSplit, reason: &str) -> Result<(), StoreError> {
        utxos::split_unknown(&self.pool, split, reason).await
    }

    async fn unfinished_splits(&self) -> Result<Vec<StoredSplit>, StoreError> {
        utxos::unfinished_splits(&self.pool).await
    }
}

/// The claims of a process are live while its lease runs and it has not stopped.
const LIVE_OWNER: &str = "EXISTS (SELECT 1 FROM workers w
                                  WHERE w.id = j.owner AND w.lease_until > now() AND w.stopped_at IS NULL)";

#[async_trait]
impl JanitorStore for PgStore {
    async fn heartbeat(&self, lease: Duration) -> Result<(), StoreError> {
        // A stopped process's row is never revived (a heartbeat still in flight when it
        // stopped must not make it look alive again).
        let renewed: Option<i32> = sqlx::query_scalar(
            "INSERT INTO workers (id, hostname, pid, mode, lease_until)
             VALUES ($1, $2, $3, $4, now() + make_interval(secs => $5))
             ON CONFLICT (id) DO UPDATE
             SET heartbeat_at = now(), lease_until = EXCLUDED.lease_until
             WHERE workers.stopped_at IS NULL
             RETURNING 1",
        )
        .bind(&self.owner)
        .bind(crate::identity::hostname())
        .bind(std::process::id() as i32)
        .bind(self.mode)
        .bind(lease.as_secs_f64())
        .fetch_optional(&self.pool)
        .await
        .map_err(store_error)?;
        match renewed {
            Some(_) => Ok(()),
            None => Err(StoreError::Other(
                "this process has stopped: its lease is not renewed".into(),
            )),
        }
    }

    async fn live_pipelines(&self, ended_within: Duration) -> Result<u32, StoreError> {
        // A stopped worker's lease ends when it stops (stop_worker), a dead one's when
        // its last heartbeat's lease runs out.
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM workers
             WHERE mode IN ('batch', 'single', 'cli')
               AND lease_until > now() - make_interval(secs => $1)",
        )
        .bind(ended_within.as_secs_f64())
        .fetch_one(&self.pool)
        .await
        .map_err(store_error)?;
        Ok(n.max(1) as u32)
    }

    async fn stop_worker(&self) -> Result<(), StoreError> {
        sqlx::query("UPDATE workers SET stopped_at = now(), lease_until = now() WHERE id = $1")
            .bind(&self.owner)
            .execute(&self.pool)
            .await
            .map_err(store_error)?;
        Ok(())
    }

    async fn prune(&self, keep: Duration, archive: bool, limit: u32) -> Result<Pruned, StoreError> {
        let keep = keep.as_secs_f64();
        let limit = i64::from(limit);
        // One batch is one transaction, and one process prunes at a time (the others
        // find the lock taken and wait for their next run).
        let mut tx = self.pool.begin().await.map_err(store_error)?;
        let ours: bool =
            sqlx::query_scalar("SELECT pg_try_advisory_xact_lock(hashtext('raregen_prune'))")
                .fetch_one(&mut *tx)
                .await
                .map_err(store_error)?;
        if !ours {
            return Ok(Pruned::default());
        }
        // The oldest first, through the partial indexes of finished rows; the DELETE
        // checks the conditions again (a row requeued meanwhile is not taken). A job's
        // history (job_transactions) goes with it (ON DELETE CASCADE); the UTXOs it
        // spent or was anchored on go with it once spent or retired; an anchor a failed
        // job still held goes back to the pool dirty (the DirtySettler asks the node
        // before anyone spends it: a refused transaction of the job may have been
        // mined after all). A failed job that holds the anchor it signed on stays at
        // least `ANCHOR_KEEP` (a refused copy of its transaction may wait that long in
        // a node's mempool, and be mined: its coin must not fund another job before).
        let anchored_keep = keep.max(ANCHOR_KEEP.as_secs_f64());
        let (jobs, utxos): (i64, i64) = sqlx::query_as(
            "WITH doomed AS (
                 (SELECT id FROM publish_jobs
                  WHERE status = 'sent' AND confirmed_at IS NOT NULL
                    AND confirmed_at < now() - make_interval(secs => $1)
                  ORDER BY confirmed_at LIMIT $2)
                 UNION ALL
                 (SELECT id FROM publish_jobs j
                  WHERE status = 'failed' AND updated_at < now() - make_interval(secs => $1)
                    AND (updated_at < now() - make_interval(secs => $4)
                         OR NOT EXISTS (SELECT 1 FROM utxos x
                                        WHERE x.reserved_by = j.id AND x.state = 'reserved'))
                  ORDER BY updated_at LIMIT $2)
                 LIMIT $2
             ), gone AS (
                 DELETE FROM publish_jobs j USING doomed
                 WHERE j.id = doomed.id
                   AND ((j.status = 'sent' AND j.confirmed_at < now() - make_interval(secs => $1))
                        OR (j.status = 'failed' AND j.updated_at < now() - make_interval(secs => $1)
                            AND (j.updated_at < now() - make_interval(secs => $4)
                                 OR NOT EXISTS (SELECT 1 FROM utxos x
                                                WHERE x.reserved_by = j.id
                                                  AND x.state = 'reserved'))))
                 RETURNING j.*
             ), archived AS (
                 INSERT INTO publish_jobs_archive SELECT gone.* FROM gone WHERE $3
                 RETURNING 1
             ), freed AS (
                 UPDATE utxos x SET state = 'available', dirty = TRUE, reserved_by = NULL,
                                    reserved_at = NULL, updated_at = now()
                 FROM gone WHERE x.reserved_by = gone.id AND x.state = 'reserved'
                 RETURNING x.id
             ), dropped AS (
                 DELETE FROM utxos x USING gone
                 WHERE x.id IN (gone.utxo_id, gone.anchor_utxo_id)
                   AND x.state IN ('spent', 'retired')
                   AND NOT EXISTS (SELECT 1 FROM pool_transactions p WHERE p.input_utxo_id = x.id)
                 RETURNING 1
             )
             SELECT (SELECT count(*) FROM gone), (SELECT count(*) FROM dropped)",
        )
        .bind(keep)
        .bind(limit)
        .bind(archive)
        .bind(anchored_keep)
        .fetch_one(&mut *tx)
        .await
        .map_err(store_error)?;
        let batches = sqlx::query(
            "DELETE FROM batches WHERE id IN (
                 SELECT id FROM batches
                 WHERE completed_at IS NOT NULL AND completed_at < now() - make_interval(secs => $1)
                 ORDER BY completed_at LIMIT $2)",
        )
        .bind(keep)
        .bind(limit)
        .execute(&mut *tx)
        .await
        .map_err(store_error)?
        .rows_affected();
        // Splits, and the coins they spent.
        let (splits, split_inputs): (i64, i64) = sqlx::query_as(
            "WITH gone AS (
                 DELETE FROM pool_transactions WHERE id IN (
                     SELECT id FROM pool_transactions
                     WHERE (status = 'sent' AND confirmed_at < now() - make_interval(secs => $1))
                        OR (status = 'failed' AND created_at < now() - make_interval(secs => $1))
                     ORDER BY id LIMIT $2)
                 RETURNING id, input_utxo_id
             ), dropped AS (
                 -- (This statement's own DELETE is not visible to its subqueries: a
                 -- split still naming the coin is one not deleted here.)
                 DELETE FROM utxos x USING gone
                 WHERE x.id = gone.input_utxo_id AND x.state IN ('spent', 'retired')
                   AND NOT EXISTS (SELECT 1 FROM pool_transactions p
                                   WHERE p.input_utxo_id = x.id
                                     AND p.id NOT IN (SELECT id FROM gone))
                 RETURNING 1
             )
             SELECT (SELECT count(*) FROM gone), (SELECT count(*) FROM dropped)",
        )
        .bind(keep)
        .bind(limit)
        .fetch_one(&mut *tx)
        .await
        .map_err(store_error)?;
        tx.commit().await.map_err(store_error)?;
        Ok(Pruned {
            jobs: jobs as u64,
            batches,
            utxos: (utxos + split_inputs) as u64,
            splits: splits as u64,
        })
    }

    async fn reclaim_dead(&self) -> Result<u64, StoreError> {
        let sql = format!(
            "UPDATE publish_jobs j SET status = 'queued', owner = NULL, updated_at = now()
             WHERE j.status = 'processing_batch' AND j.raw_tx IS NULL
               AND j.owner IS DISTINCT FROM $1 AND NOT {LIVE_OWNER}"
        );
        let done = sqlx::query(&sql)
            .bind(&self.owner)
            .execute(&self.pool)
            .await
            .map_err(store_error)?;
        Ok(done.rows_affected())
    }

    async fn adopt_stuck(
        &self,
        older_than: Duration,
        limit: u32,
        held: &[i64],
    ) -> Result<Vec<StuckJob>, StoreError> {
        let sql = format!(
            "WITH picked AS (
                 SELECT j.id FROM publish_jobs j
                 WHERE j.status IN ('sending', 'processing_batch') AND j.raw_tx IS NOT NULL
                   AND (COALESCE(j.sending_started_at, j.claimed_at, j.updated_at)
                            < now() - make_interval(secs => $1)
                        OR j.owner IS DISTINCT FROM $3 AND NOT {LIVE_OWNER})
                   AND NOT EXISTS (SELECT 1 FROM utxos x WHERE x.id = j.utxo_id AND x.dirty)
                   AND NOT (j.owner IS NOT DISTINCT FROM $3 AND j.id = ANY($4))
                 ORDER BY j.id
                 LIMIT $2
                 FOR UPDATE SKIP LOCKED
             )
             UPDATE publish_jobs j
             -- A takeover is a new claim: the fencing token moves on, so that no
             -- earlier holder (of this process or another) can record anything.
             SET owner = $3, attempts = j.attempts + 1, status = 'sending',
                 sending_started_at = now(), updated_at = now()
             FROM picked WHERE j.id = picked.id
             RETURNING j.id, j.attempts, j.txid, j.raw_tx, j.utxo_id"
        );
        let rows = sqlx::query(&sql)
            .bind(older_than.as_secs_f64())
            .bind(i64::from(limit))
            .bind(&self.owner)
            .bind(held)
            .fetch_all(&self.pool)
            .await
            .map_err(store_error)?;
        Ok(rows
            .into_iter()
            .map(|r| StuckJob {
                fence: Fence {
                    id: r.get("id"),
                    attempts: r.get("attempts"),
                },
                txid: r.get("txid"),
                raw_tx: r.get("raw_tx"),
                utxo_id: r.get("utxo_id"),
            })
            .collect())
    }

    async fn requeue_lost(&self, older_than: Duration, held: &[i64]) -> Result<u64, StoreError> {
        let done = sqlx::query(
            "UPDATE publish_jobs SET status = 'queued', owner = NULL, updated_at = now()
             WHERE status = 'processing_batch' AND raw_tx IS NULL AND owner = $1
               AND claimed_at < now() - make_interval(secs => $2)
               AND id <> ALL($3)",
        )
        .bind(&self.owner)
        .bind(older_than.as_secs_f64())
        .bind(held)
        .execute(&self.pool)
        .await
        .map_err(store_error)?;
        Ok(done.rows_affected())
    }

    async fn dirty_utxos(&self, limit: u32) -> Result<Vec<DirtyUtxo>, StoreError> {
        let rows = sqlx::query(
            "SELECT x.id, x.txid, x.vout, x.spent_by_txid, j.id AS job_id, pt.id AS split_id
             FROM utxos x
             LEFT JOIN publish_jobs j
                    ON j.utxo_id = x.id AND j.status = 'sending' AND j.txid = x.spent_by_txid
             LEFT JOIN pool_transactions pt
                    ON pt.input_utxo_id = x.id AND pt.status = 'sending' AND pt.txid = x.spent_by_txid
             WHERE x.dirty AND x.state IN ('available', 'reserved', 'spending', 'retired')
             ORDER BY x.id
             LIMIT $1",
        )
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(store_error)?;
        let job_ids: Vec<i64> = rows
            .iter()
            .filter_map(|r| r.get::<Option<i64>, _>("job_id"))
            .collect();
        // The jobs are adopted (a new fencing token: no earlier holder records anything), so
        // that their outcome can be recorded under our fence.
        let adopted: Vec<(i64, i32, String, Vec<u8>, Option<i64>)> = sqlx::query_as(
            "UPDATE publish_jobs j
             SET owner = $2, attempts = j.attempts + 1, sending_started_at = now(),
                 updated_at = now()
             FROM utxos x
             -- Still as read: sending, its UTXO still dirty under the same transaction
             -- (a job settled or re-signed meanwhile is not taken).
             WHERE j.id = ANY($1) AND j.status = 'sending'
               AND x.id = j.utxo_id AND x.dirty AND x.spent_by_txid = j.txid
             RETURNING j.id, j.attempts, j.txid, j.raw_tx, j.utxo_id",
        )
        .bind(&job_ids)
        .bind(&self.owner)
        .fetch_all(&self.pool)
        .await
        .map_err(store_error)?;
        Ok(rows
            .iter()
            .map(|r| {
                let job_id: Option<i64> = r.get("job_id");
                let job = job_id
                    .and_then(|id| adopted.iter().find(|a| a.0 == id))
                    .map(|a| StuckJob {
                        fence: Fence {
                            id: a.0,
                            attempts: a.1,
                        },
                        txid: a.2.clone(),
                        raw_tx: a.3.clone(),
                        utxo_id: a.4,
                    });
                DirtyUtxo {
                    id: r.get("id"),
                    txid: r.get("txid"),
                    vout: r.get::<i32, _>("vout") as u32,
                    spent_by_txid: r.get("spent_by_txid"),
                    job,
                    split_id: r.get("split_id"),
                }
            })
            .collect())
    }

    async fn utxo_clean(&self, id: i64) -> Result<Option<SpendableUtxo>, StoreError> {
        // A job adopted from the seed in flight and held on this coin (its anchor) is
        // released: the coin is unspent, so no transaction of the seed's spends it, and
        // every transaction the job signs from now on spends this very coin.
        let row = sqlx::query(
            "WITH released AS (
                 UPDATE publish_jobs SET next_attempt_at = now(), updated_at = now()
                 WHERE anchor_utxo_id = $1 AND status = 'queued' AND next_attempt_at = 'infinity'
                   AND EXISTS (SELECT 1 FROM utxos WHERE id = $1 AND dirty)
             )
             -- Fenced: only while nothing live holds the coin (a job sending on it, or
             -- a split, whose outcome another process's settler may still be asking).
             UPDATE utxos x SET dirty = FALSE, updated_at = now()
             WHERE x.id = $1 AND x.dirty
               AND NOT EXISTS (SELECT 1 FROM publish_jobs j
                               WHERE j.utxo_id = x.id AND j.status IN ('processing_batch', 'sending'))
               AND NOT EXISTS (SELECT 1 FROM pool_transactions pt
                               WHERE pt.input_utxo_id = x.id AND pt.status = 'sending')
             RETURNING id, txid, vout, satoshis, unconfirmed_depth, state",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await
        .map_err(store_error)?;
        Ok(available_utxo(row))
    }

    async fn utxo_retire(&self, id: i64) -> Result<(), StoreError> {
        // A job adopted from the seed in flight and held on this coin fails: the coin is
        // spent, most likely by the seed's own transaction of the job, so signing it
        // again on any coin could publish it twice.
        sqlx::query(
            "WITH failed AS (
                 UPDATE publish_jobs
                 SET status = 'failed', updated_at = now(),
                     last_error = 'adopted from the seed in flight; its coin is spent (most likely '
                                  || 'by the seed''s own transaction of it): never signed again; '
                                  || COALESCE(last_error, '')
                 WHERE anchor_utxo_id = $1 AND status = 'queued' AND next_attempt_at = 'infinity'
             )
             UPDATE utxos SET state = 'retired', dirty = FALSE, reserved_by = NULL, updated_at = now()
             WHERE id = $1",
        )
        .bind(id)
        .execute(&self.pool)
        .await
        .map_err(store_error)?;
        Ok(())
    }

    async fn unconfirmed(
        &self,
        limit: u32,
        settled: Duration,
    ) -> Result<Vec<Unconfirmed>, StoreError> {
        // Parents before children: the pool's splits first (in the order they were
        // made), then the jobs in the order they were sent (a lane's next job spends
        // the change of the one before). A node that lost its mempool then gets each
        // transaction after the one it spends, not as an orphan.
        let rows = sqlx::query(
            "SELECT t.txid, t.raw_tx, t.settled, x.txid AS input_txid, x.vout AS input_vout,
                    t.k = 0 AS split
             FROM (
                 (SELECT txid, raw_tx, sent_at < now() - make_interval(secs => $2) AS settled,
                         0 AS k, created_at AS at, input_utxo_id AS input
                  FROM pool_transactions WHERE status = 'sent' AND confirmed_at IS NULL
                  ORDER BY id LIMIT $1)
                 UNION ALL
                 (SELECT txid, raw_tx, sent_at < now() - make_interval(secs => $2),
                         1, sent_at, utxo_id
                  FROM publish_jobs WHERE status = 'sent' AND confirmed_at IS NULL AND raw_tx IS NOT NULL
                  ORDER BY sent_at LIMIT $1)
             ) t LEFT JOIN utxos x ON x.id = t.input
             ORDER BY t.k, t.at",
        )
        .bind(i64::from(limit))
        .bind(settled.as_secs_f64())
        .fetch_all(&self.pool)
        .await
        .map_err(store_error)?;
        Ok(rows
            .iter()
            .map(|r| {
                let input_txid: Option<String> = r.get("input_txid");
                let input_vout: Option<i32> = r.get("input_vout");
                Unconfirmed {
                    txid: r.get("txid"),
                    raw_tx: r.get("raw_tx"),
                    settled: r.get("settled"),
                    input: input_txid.zip(input_vout.map(|v| v as u32)),
                    split: r.get("split"),
                }
            })
            .collect())
    }

    async fn fail_unheld(&self, txid: &str, reason: &str) -> Result<u64, StoreError> {
        // The transaction and every one that spends its outputs, down the lane: none of
        // them can ever be mined. All fail; their outputs leave the pool; so does the
        // coin the first one spent (unspent, the Janitor checked): a node that takes a
        // spend of it and never holds one is refusing the coin itself (another key's, a
        // wrong amount); `raregen wallet import` brings it back if it was not.
        let failed: i64 = sqlx::query_scalar(concat!(
            lane!(),
            "before AS (
                 SELECT p.id, p.status FROM publish_jobs p
                 WHERE (p.txid IN (SELECT txid FROM chain)
                        AND p.status IN ('sent', 'sending') AND p.confirmed_at IS NULL)
                    -- Jobs between attempts whose anchor is an output of the lane: that
                    -- coin can never exist, and they may sign on nothing else.
                    OR (p.status IN ('queued', 'processing_batch')
                        AND p.anchor_utxo_id IN (SELECT x.id FROM utxos x
                                                 WHERE x.txid IN (SELECT txid FROM chain)))
                 FOR UPDATE OF p
             ), job AS (
                 UPDATE publish_jobs p
                 SET status = 'failed',
                     last_error = CASE WHEN p.txid = $1 THEN $2
                                       ELSE 'it spends an output of ' || $1 || ', a transaction the node never held' END,
                     owner = NULL, sending_started_at = NULL, updated_at = now()
                 FROM before WHERE p.id = before.id
                 RETURNING p.id, p.utxo_id, p.processing_batch_id, p.txid, p.txid = $1 AS root
             ), coin AS (
                 UPDATE utxos x SET state = 'retired', dirty = FALSE, reserved_by = NULL,
                                    reserved_at = NULL, updated_at = now()
                 FROM job WHERE job.root AND x.id = job.utxo_id AND x.state IN ('spending', 'spent')
             ), outputs AS (
                 -- The outputs of every transaction of the lane (failed now or before:
                 -- a second run catches a change recorded while the first ran).
                 UPDATE utxos x SET state = 'retired', dirty = FALSE, reserved_by = NULL,
                                    reserved_at = NULL, updated_at = now()
                 WHERE x.txid IN (SELECT txid FROM chain) AND x.state <> 'retired'
                   AND x.id NOT IN (SELECT utxo_id FROM job WHERE root AND utxo_id IS NOT NULL)
             ), batch AS (
                 UPDATE batches b
                 SET sent = greatest(b.sent - s.was_sent, 0), failed = b.failed + s.n
                 FROM (SELECT job.processing_batch_id AS id,
                              (count(*) FILTER (WHERE before.status = 'sent'))::int AS was_sent,
                              count(*)::int AS n
                       FROM job JOIN before ON before.id = job.id
                       WHERE before.status IN ('sent', 'sending') GROUP BY 1) s
                 WHERE b.id = s.id
             )
             SELECT count(*) FROM job"
        ),
        )
        .bind(txid)
        .bind(reason)
        .fetch_one(&self.pool)
        .await
        .map_err(store_error)?;
        Ok(failed as u64)
    }

    async fn reanchor_sent(
        &self,
        txid: &str,
        spent_by: &str,
        reason: &str,
    ) -> Result<Vec<String>, StoreError> {
        // The lane may grow while the statement runs (a child's `sent` adds its change, a
        // write-ahead takes a lane output); one statement's snapshot would miss what
        // lands meanwhile. So first lock every job and coin of the lane, again on a fresh
        // snapshot until nothing new turns up: once they are all held, nothing can join
        // the lane (joining writes a row we hold), and the statement below, on its own
        // fresh snapshot in the same transaction, sees the whole lane.
        let mut tx = self.pool.begin().await.map_err(store_error)?;
        let mut held = -1i64;
        for _ in 0..LANE_LOCK_ROUNDS {
            let now: i64 = sqlx::query_scalar(LOCK_LANE_SQL)
                .bind(txid)
                .fetch_one(&mut *tx)
                .await
                .map_err(store_error)?;
            if now == 0 {
                // The root is not a sent job (any more): nothing to do.
                return Ok(Vec::new());
            }
            if now == held {
                break;
            }
            held = now;
        }
        let set_aside = sqlx::query_scalar(REANCHOR_SENT_SQL)
            .bind(txid)
            .bind(spent_by)
            .bind(reason)
            .fetch_all(&mut *tx)
            .await
            .map_err(store_error)?;
        tx.commit().await.map_err(store_error)?;
        Ok(set_aside)
    }

    async fn fail_unsettled(
        &self,
        job: Fence,
        reason: &str,
        release: bool,
    ) -> Result<Option<SpendableUtxo>, StoreError> {
        let row = sqlx::query(
            "WITH job AS (
                 UPDATE publish_jobs SET status = 'failed', last_error = $3, owner = NULL,
                                         sending_started_at = NULL, updated_at = now()
                 WHERE id = $1 AND attempts = $2 AND owner = $4 AND status = 'sending'
                 RETURNING id, utxo_id, processing_batch_id
             ), batch AS (
                 UPDATE batches b SET failed = b.failed + 1,
                     completed_at = CASE WHEN b.sent + b.failed + 1 + b.retried >= b.size
                                         THEN coalesce(b.completed_at, now()) ELSE b.completed_at END
                 FROM job WHERE b.id = job.processing_batch_id
             )
             -- Unspent: the coin stays the failed job's anchor (`reserved`), never another
             -- job's: a copy of the job's transaction may still be mined, and a job that
             -- spent the coin next would be recorded sent with a transaction that never
             -- can be. Requeued by an operator, the job signs on it again.
             UPDATE utxos x
             SET state = CASE WHEN $5 THEN 'reserved' ELSE 'retired' END, dirty = FALSE,
                 reserved_by = CASE WHEN $5 THEN x.reserved_by END,
                 reserved_at = CASE WHEN $5 THEN now() END,
                 spent_by_txid = CASE WHEN $5 THEN NULL ELSE x.spent_by_txid END,
                 updated_at = now()
             FROM job WHERE x.id = job.utxo_id AND x.state IN ('reserved', 'spending')
             RETURNING x.id, x.txid, x.vout, x.satoshis, x.unconfirmed_depth, x.state",
        )
        .bind(job.id)
        .bind(job.attempts)
        .bind(reason)
        .bind(&self.owner)
        .bind(release)
        .fetch_optional(&self.pool)
        .await
        .map_err(store_error)?;
        Ok(available_utxo(row))
    }

    async fn record_confirmations(&self, confirmed: &[Confirmation]) -> Result<(), StoreError> {
        let txids: Vec<&str> = confirmed.iter().map(|c| c.txid.as_str()).collect();
        let heights: Vec<Option<i32>> = confirmed
            .iter()
            .map(|c| c.block_height.map(|h| h as i32))
            .collect();
        let hashes: Vec<Option<&str>> = confirmed.iter().map(|c| c.block_hash.as_deref()).collect();
        sqlx::query(
            "WITH c AS (
                 SELECT * FROM unnest($1::text[], $2::int[], $3::text[]) AS c(txid, height, hash)
             ), jobs AS (
                 UPDATE publish_jobs p
                 SET confirmed_at = now(), block_height = c.height, block_hash = c.hash
                 FROM c WHERE p.txid = c.txid AND p.status = 'sent' AND p.confirmed_at IS NULL
             ), splits AS (
                 UPDATE pool_transactions p SET confirmed_at = now()
                 FROM c WHERE p.txid = c.txid AND p.confirmed_at IS NULL
             )
             -- A confirmed transaction's outputs are depth 0; those kept out of the
             -- pool until now (the change of a job that signed more than once) join it.
             UPDATE utxos u SET unconfirmed_depth = 0,
                                state = CASE WHEN u.state = 'pending' THEN 'available'
                                             ELSE u.state END,
                                updated_at = now()
             FROM c WHERE u.txid = c.txid AND (u.unconfirmed_depth > 0 OR u.state = 'pending')",
        )
        .bind(&txids)
        .bind(&heights)
        .bind(&hashes)
        .execute(&self.pool)
        .await
        .map_err(store_error)?;
        Ok(())
    }

    async fn earlier_transactions(&self, job: JobId) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        sqlx::query_as(
            "SELECT txid, raw_tx FROM job_transactions WHERE job_id = $1 ORDER BY created_at",
        )
        .bind(job)
        .fetch_all(&self.pool)
        .await
        .map_err(store_error)
    }

    async fn earlier_of_sent(&self, txid: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        sqlx::query_as(
            "SELECT t.txid, t.raw_tx FROM job_transactions t
             JOIN publish_jobs j ON j.id = t.job_id
             WHERE j.txid = $1 AND j.status = 'sent'
             ORDER BY t.created_at",
        )
        .bind(txid)
        .fetch_all(&self.pool)
        .await
        .map_err(store_error)
    }

    async fn switch_sent(
        &self,
        txid: &str,
        earlier: &str,
        change: Option<(u32, u64)>,
    ) -> Result<bool, StoreError> {
        let switched: Option<i64> = sqlx::query_scalar(
            "WITH cur AS (
                 SELECT id, txid, raw_tx, anchor_utxo_id FROM publish_jobs
                 WHERE txid = $1 AND status = 'sent'
                 FOR UPDATE
             ), earlier AS (
                 DELETE FROM job_transactions t USING cur
                 WHERE t.job_id = cur.id AND t.txid = $2
                 RETURNING t.txid, t.raw_tx
             ), kept AS (
                 INSERT INTO job_transactions (txid, job_id, anchor_utxo_id, raw_tx, refused, outcome)
                 SELECT cur.txid, cur.id, cur.anchor_utxo_id, cur.raw_tx, FALSE,
                        'accepted, then not held: the node keeps an earlier transaction of the job'
                 FROM cur, earlier
                 ON CONFLICT (txid) DO NOTHING
             ), old_change AS (
                 UPDATE utxos x SET state = 'retired', updated_at = now()
                 FROM cur, earlier
                 WHERE x.txid = cur.txid AND x.state IN ('pending', 'available')
             ), new_change AS (
                 INSERT INTO utxos (txid, vout, satoshis, script_pubkey, state, unconfirmed_depth)
                 SELECT earlier.txid, $3, $4, a.script_pubkey, 'pending', a.unconfirmed_depth + 1
                 FROM cur, earlier, utxos a
                 WHERE a.id = cur.anchor_utxo_id AND $3 IS NOT NULL
                 ON CONFLICT (txid, vout) DO NOTHING
             ), anchor AS (
                 UPDATE utxos x SET spent_by_txid = earlier.txid, updated_at = now()
                 FROM cur, earlier WHERE x.id = cur.anchor_utxo_id
             )
             UPDATE publish_jobs j SET txid = earlier.txid, raw_tx = earlier.raw_tx,
                                       updated_at = now()
             FROM cur, earlier WHERE j.id = cur.id
             RETURNING j.id",
        )
        .bind(txid)
        .bind(earlier)
        .bind(change.map(|c| c.0 as i32))
        .bind(change.map(|c| c.1 as i64))
        .fetch_optional(&self.pool)
        .await
        .map_err(store_error)?;
        Ok(switched.is_some())
    }

    async fn take_up_earlier(&self, job: Fence, txid: &str) -> Result<bool, StoreError> {
        // The row's transaction and the earlier one change places: the row holds the
        // one that can be mined, the history every other one. The anchor's record of
        // its spender follows.
        let taken: Option<i64> = sqlx::query_scalar(
            "WITH cur AS (
                 SELECT id, txid, raw_tx, anchor_utxo_id FROM publish_jobs
                 WHERE id = $1 AND attempts = $2 AND owner = $4 AND status = 'sending'
                 FOR UPDATE
             ), earlier AS (
                 DELETE FROM job_transactions t USING cur
                 WHERE t.job_id = cur.id AND t.txid = $3
                 RETURNING t.txid, t.raw_tx
             ), kept AS (
                 INSERT INTO job_transactions (txid, job_id, anchor_utxo_id, raw_tx, refused, outcome)
                 SELECT cur.txid, cur.id, cur.anchor_utxo_id, cur.raw_tx, FALSE,
                        'replaced: an earlier transaction of the job is the one the node holds'
                 FROM cur, earlier
                 ON CONFLICT (txid) DO NOTHING
             ), anchor AS (
                 UPDATE utxos x SET spent_by_txid = earlier.txid, updated_at = now()
                 FROM cur, earlier
                 WHERE x.id = cur.anchor_utxo_id AND x.reserved_by = cur.id
             )
             UPDATE publish_jobs j SET txid = earlier.txid, raw_tx = earlier.raw_tx,
                                       updated_at = now()
             FROM cur, earlier WHERE j.id = cur.id
             RETURNING j.id",
        )
        .bind(job.id)
        .bind(job.attempts)
        .bind(txid)
        .bind(&self.owner)
        .fetch_optional(&self.pool)
        .await
        .map_err(store_error)?;
        Ok(taken.is_some())
    }
}

/// Rounds of [`LOCK_LANE_SQL`] at most (a lane grows by a write or two per round while
/// its rows are being locked; it stops growing once they all are).
const LANE_LOCK_ROUNDS: usize = 20;

/// Locks the root sent job, every job of its lane (and those waiting on a lane output)
/// and every output of the lane; answers how many rows it holds (0: no such root).
const LOCK_LANE_SQL: &str = concat!(
    lane!(),
    "root AS (
                 SELECT id FROM publish_jobs
                 WHERE txid = $1 AND status = 'sent' AND confirmed_at IS NULL
                 FOR UPDATE
             ), jobs AS (
                 SELECT p.id FROM publish_jobs p
                 WHERE EXISTS (SELECT 1 FROM root)
                   AND ((p.txid IN (SELECT txid FROM chain)
                         AND p.status IN ('sent', 'sending') AND p.confirmed_at IS NULL)
                        OR (p.status IN ('queued', 'processing_batch')
                            AND p.anchor_utxo_id IN (SELECT x.id FROM utxos x
                                                     WHERE x.txid IN (SELECT txid FROM chain))))
                 ORDER BY p.id
                 FOR UPDATE OF p
             ), coins AS (
                 SELECT x.id FROM utxos x
                 WHERE EXISTS (SELECT 1 FROM root) AND x.txid IN (SELECT txid FROM chain)
                 ORDER BY x.id
                 FOR UPDATE OF x
             )
             SELECT CASE WHEN EXISTS (SELECT 1 FROM root)
                         THEN 1 + (SELECT count(*) FROM jobs) + (SELECT count(*) FROM coins)
                         ELSE 0 END"
);

/// A sent job's anchor was spent by a confirmed transaction that is none of its own:
/// the job's transaction (`$1`) and every one down its lane can never be mined. Their
/// jobs go back to the queue without an anchor and under a new fencing token (a
/// broadcaster still on one records nothing); jobs waiting with a lane output as their
/// anchor lose it (that coin can never exist). Binds: txid, the foreign spender, why.
const REANCHOR_SENT_SQL: &str = concat!(
    lane!(),
    "root AS (
                 SELECT id, utxo_id FROM publish_jobs
                 WHERE txid = $1 AND status = 'sent' AND confirmed_at IS NULL
                 FOR UPDATE
             ), before AS (
                 SELECT p.id, p.status, p.txid, p.raw_tx, p.processing_batch_id,
                        COALESCE(p.utxo_id, p.anchor_utxo_id) AS anchor,
                        p.txid = $1 AS root,
                        EXISTS (SELECT 1 FROM seed_in_flight s WHERE s.job_id = p.id) AS seed
                 FROM publish_jobs p
                 WHERE EXISTS (SELECT 1 FROM root)
                   AND ((p.txid IN (SELECT txid FROM chain)
                         AND p.status IN ('sent', 'sending') AND p.confirmed_at IS NULL)
                        OR (p.status IN ('queued', 'processing_batch')
                            AND p.anchor_utxo_id IN (SELECT x.id FROM utxos x
                                                     WHERE x.txid IN (SELECT txid FROM chain))))
                 FOR UPDATE OF p
             ), history AS (
                 INSERT INTO job_transactions (txid, job_id, anchor_utxo_id, raw_tx, refused, outcome)
                 SELECT txid, id, anchor, raw_tx, FALSE,
                        CASE WHEN root THEN $3
                             ELSE 'it spends an output of ' || $1 || ', whose coin ' || $2
                                  || ' spent: ' || $3 END
                 FROM before WHERE txid IS NOT NULL AND anchor IS NOT NULL
                 ON CONFLICT (txid) DO NOTHING
             ), job AS (
                 UPDATE publish_jobs p
                 SET status = CASE WHEN before.seed THEN 'failed' ELSE 'queued' END,
                     next_attempt_at = now(),
                     attempts = p.attempts + 1,
                     last_error = CASE
                         WHEN before.seed THEN 'adopted from the seed in flight; its coin was spent by '
                              || $2 || ' (most likely the seed''s own transaction of it): never signed again'
                         WHEN before.root THEN $3
                         ELSE 'it spends an output of ' || $1 || ', which can never be mined: ' || $3 END,
                     anchor_utxo_id = CASE WHEN before.seed THEN p.anchor_utxo_id END,
                     owner = NULL, utxo_id = NULL, txid = NULL, raw_tx = NULL, sent_at = NULL,
                     sending_started_at = NULL, updated_at = now()
                 FROM before WHERE p.id = before.id
                 RETURNING p.id
             ), coin AS (
                 -- The first coin is spent, by the foreign transaction.
                 UPDATE utxos x SET state = 'spent', spent_by_txid = $2, dirty = FALSE,
                                    reserved_by = NULL, reserved_at = NULL, updated_at = now()
                 FROM root WHERE x.id = root.utxo_id
             ), outputs AS (
                 UPDATE utxos x SET state = 'retired', dirty = FALSE, reserved_by = NULL,
                                    reserved_at = NULL, updated_at = now()
                 WHERE x.txid IN (SELECT txid FROM chain) AND x.state <> 'retired'
                   AND EXISTS (SELECT 1 FROM root)
             ), batch AS (
                 -- A job counted sent in its batch is counted retried now; one not yet
                 -- counted (sending, or held by a broadcaster) is counted retried.
                 UPDATE batches b
                 SET sent = greatest(b.sent - s.was_sent, 0),
                     retried = b.retried + s.n, failed = b.failed + s.f,
                     completed_at = CASE WHEN b.sent - s.was_sent + b.failed + b.retried + s.n + s.f >= b.size
                                         THEN coalesce(b.completed_at, now()) ELSE b.completed_at END
                 FROM (SELECT processing_batch_id AS id,
                              (count(*) FILTER (WHERE status = 'sent'))::int AS was_sent,
                              (count(*) FILTER (WHERE NOT seed))::int AS n,
                              (count(*) FILTER (WHERE seed))::int AS f
                       FROM before
                       WHERE status IN ('sent', 'sending', 'processing_batch')
                         AND processing_batch_id IS NOT NULL
                       GROUP BY 1) s
                 WHERE b.id = s.id
             )
             SELECT b.txid FROM before b JOIN chain c ON c.txid = b.txid
             WHERE b.status IN ('sent', 'sending')
             GROUP BY b.txid ORDER BY min(c.depth), b.txid"
);

/// Wakes on `NOTIFY raregen_jobs` (sent by a trigger on every insert of jobs).
pub struct PgNotifier {
    notify: Arc<Notify>,
}

impl PgNotifier {
    /// Starts listening in the background (reconnecting after errors).
    pub async fn start(pool: &PgPool) -> Result<PgNotifier, StoreError> {
        let mut listener = PgListener::connect_with(pool).await.map_err(store_error)?;
        listener.listen("raregen_jobs").await.map_err(store_error)?;
        let notify = Arc::new(Notify::new());
        let wake = notify.clone();
        tokio::spawn(async move {
            loop {
                // `try_recv` answers `None` when the connection was lost (it reconnects
                // and listens again on the next call): notifications sent meanwhile are
                // gone, so look once.
                match listener.try_recv().await {
                    Ok(Some(_)) => wake.notify_one(),
                    Ok(None) => {
                        tracing::warn!("LISTEN connection lost; reconnected");
                        wake.notify_one();
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "LISTEN connection lost; reconnecting");
                        // Jobs may have arrived meanwhile: look once.
                        wake.notify_one();
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            }
        });
        Ok(PgNotifier { notify })
    }
}

#[async_trait]
impl JobsNotifier for PgNotifier {
    async fn wait(&self, timeout: Duration) -> bool {
        tokio::time::timeout(timeout, self.notify.notified())
            .await
            .is_ok()
    }
}
