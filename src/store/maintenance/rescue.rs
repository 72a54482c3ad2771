//! Recovery of claims: a dead process's jobs back to the queue or adopted, stuck `sending` jobs adopted for a re-send of their bytes, lost claims re-queued.

use std::time::Duration;

use async_trait::async_trait;
use raregen_actors::ports::{Fence, RescueStore, StoreError, StuckJob};
use sqlx::Row;

use super::super::{store_error, PgStore};
use super::*;

#[async_trait]
impl RescueStore for PgStore {
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
        let done = sqlx::query(include_str!("sql/rescue/requeue_lost.sql"))
            .bind(&self.owner)
            .bind(older_than.as_secs_f64())
            .bind(held)
            .execute(&self.pool)
            .await
            .map_err(store_error)?;
        Ok(done.rows_affected())
    }
}
