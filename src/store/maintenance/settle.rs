//! Dirty coins (a spend whose outcome is unknown) settled by what the node says: clean again, retired, or the job failed; a job's earlier transactions taken up when the node holds one.

use async_trait::async_trait;
use raregen_actors::ports::{
    DirtyUtxo, EarlierTx, Fence, JobId, SettleStore, StoreError, StuckJob,
};
use sqlx::Row;

use super::super::{store_error, PgStore};
use super::*;

#[async_trait]
impl SettleStore for PgStore {
    async fn dirty_utxos(&self, limit: u32) -> Result<Vec<DirtyUtxo>, StoreError> {
        let rows = sqlx::query(include_str!("sql/settle/dirty_utxos.sql"))
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
        let adopted: Vec<(i64, i32, String, Vec<u8>, Option<i64>)> =
            sqlx::query_as(include_str!("sql/settle/adopt_dirty_jobs.sql"))
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
        // A job adopted from the batch worker in flight and held on this coin (its anchor) is
        // released: the coin is unspent, so no transaction of the batch worker's spends it, and
        // every transaction the job signs from now on spends this very coin.
        let row = sqlx::query(include_str!("sql/settle/utxo_clean.sql"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(store_error)?;
        Ok(available_utxo(row))
    }

    async fn utxo_retire(&self, id: i64) -> Result<(), StoreError> {
        // A job adopted from the batch worker in flight and held on this coin fails: the coin is
        // spent, most likely by the batch worker's own transaction of the job, so signing it
        // again on any coin could publish it twice.
        sqlx::query(include_str!("sql/settle/utxo_retire.sql"))
            .bind(id)
            .execute(&self.pool)
            .await
            .map_err(store_error)?;
        Ok(())
    }

    async fn fail_unsettled(
        &self,
        job: Fence,
        reason: &str,
        unspent: bool,
    ) -> Result<(), StoreError> {
        sqlx::query(include_str!("sql/settle/fail_unsettled.sql"))
            .bind(job.id)
            .bind(job.attempts)
            .bind(reason)
            .bind(&self.owner)
            .bind(unspent)
            .execute(&self.pool)
            .await
            .map_err(store_error)?;
        Ok(())
    }

    async fn earlier_transactions(&self, job: JobId) -> Result<Vec<EarlierTx>, StoreError> {
        let rows: Vec<(String, Vec<u8>)> = sqlx::query_as(
            "SELECT txid, raw_tx FROM job_transactions WHERE job_id = $1 ORDER BY created_at",
        )
        .bind(job)
        .fetch_all(&self.pool)
        .await
        .map_err(store_error)?;
        Ok(earlier_txs(rows))
    }

    async fn take_up_earlier(&self, job: Fence, txid: &str) -> Result<bool, StoreError> {
        // The row's transaction and the earlier one change places: the row holds the
        // one that can be mined, the history every other one. The anchor's record of
        // its spender follows.
        let taken: Option<i64> = sqlx::query_scalar(include_str!("sql/settle/take_up_earlier.sql"))
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
