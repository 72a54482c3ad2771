//! This process's lease in `workers`: the heartbeat, the stop, and how many pipelines share the node's limit.

use std::time::Duration;

use async_trait::async_trait;
use raregen_actors::ports::{LeaseStore, StoreError};

use super::super::{store_error, PgStore};

#[async_trait]
impl LeaseStore for PgStore {
    async fn heartbeat(&self, lease: Duration) -> Result<(), StoreError> {
        // A stopped process's row is never revived (a heartbeat still in flight when it
        // stopped must not make it look alive again).
        let renewed: Option<i32> = sqlx::query_scalar(include_str!("sql/lease/heartbeat.sql"))
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
        let n: i64 = sqlx::query_scalar(include_str!("sql/lease/live_pipelines.sql"))
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
}
