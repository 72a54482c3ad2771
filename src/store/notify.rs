//! The single-mode Collector's wake-up: `LISTEN raregen_jobs`.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use raregen_actors::{JobsNotifier, StoreError};
use sqlx::postgres::PgListener;
use sqlx::PgPool;
use tokio::sync::Notify;

use super::store_error;

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
