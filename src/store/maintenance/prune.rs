//! Retention: finished jobs, and the batches, splits and spent coins nothing live refers to, deleted (or archived) in bounded batches.

use std::time::Duration;

use async_trait::async_trait;
use raregen_actors::ports::{PruneStore, Pruned, StoreError};

use super::super::{store_error, PgStore};
use super::*;

#[async_trait]
impl PruneStore for PgStore {
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
        let (jobs, utxos): (i64, i64) = sqlx::query_as(include_str!("sql/prune/jobs.sql"))
            .bind(keep)
            .bind(limit)
            .bind(archive)
            .bind(anchored_keep)
            .fetch_one(&mut *tx)
            .await
            .map_err(store_error)?;
        let batches = sqlx::query(include_str!("sql/prune/batches.sql"))
            .bind(keep)
            .bind(limit)
            .execute(&mut *tx)
            .await
            .map_err(store_error)?
            .rows_affected();
        // Splits, and the coins they spent.
        let (splits, split_inputs): (i64, i64) =
            sqlx::query_as(include_str!("sql/prune/splits.sql"))
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
}
