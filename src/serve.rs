//! `raregen serve`: the HTTP API (and, in the same process, the pipeline), until
//! SIGINT or SIGTERM.

use tokio::signal::unix::{signal, SignalKind};

use crate::api::ApiServer;
use crate::config::Settings;
use crate::store::{self, PgStore};
use crate::worker;

pub async fn run(settings: Settings) -> anyhow::Result<()> {
    let pool = store::connect_or_create(&settings.database).await?;
    store::migrate(&pool).await?;
    let worker_id = worker::new_worker_id();
    let store = PgStore::new(pool.clone(), worker_id.clone());

    let server = ApiServer::build(&settings, store)?;
    tracing::info!(
        addr = %server.addr(),
        mode = settings.mode.as_str(),
        worker = %worker_id,
        database = %settings.database.redacted_url(),
        "raregen serving"
    );
    let handle = server.handle();
    let mut server_task = tokio::spawn(server.run());

    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = sigterm.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = sigint.recv() => tracing::info!("SIGINT: shutting down"),
        result = &mut server_task => {
            result??;
            anyhow::bail!("the HTTP server stopped by itself");
        }
    }
    // Stop taking requests, let the ones in flight finish.
    handle.stop(true).await;
    server_task.await??;
    pool.close().await;
    tracing::info!("stopped");
    Ok(())
}
