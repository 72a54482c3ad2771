//! `raregen serve`: the HTTP API and the actor pipeline in one process, until SIGINT or
//! SIGTERM. Without a wallet key only the API runs (jobs are accepted and wait).

use std::sync::Arc;
use std::time::Duration;

use actix::{Actor, Addr};
use raregen_actors::collector::CollectMode;
use raregen_actors::leaser::LeaserConfig;
use raregen_actors::maintenance::Maintenance;
use raregen_actors::maintenance::MaintenanceConfig;
use raregen_actors::pipeline::{Pipeline, PipelineConfig, Stores};
use raregen_actors::pruner::{Pruner, RetentionConfig};
use raregen_actors::utxo_pool::PoolConfig;
use raregen_actors::{JobsNotifier, LeaseStore};
use tokio::signal::unix::{signal, SignalKind};

use crate::api::ApiServer;
use crate::chain::{node, TxBuilder, WalletError, WalletKey};
use crate::config::{Mode, Settings};
use crate::identity;
use crate::store::{self, PgNotifier, PgStore};
use crate::telemetry::metrics::Sampler;

/// How long a graceful stop waits for the jobs in flight.
const GRACE: Duration = Duration::from_secs(20);

/// The pipeline's settings from the configuration.
pub fn pipeline_config(settings: &Settings) -> PipelineConfig {
    PipelineConfig {
        mode: match settings.mode {
            Mode::Batch => CollectMode::Batch,
            Mode::Single => CollectMode::Single,
        },
        max_batch: settings.collector.max_batch,
        collect_interval: settings.collector.interval,
        rate_max: settings.rate_limit.max,
        rate_per: settings.rate_limit.per,
        broadcast_timeout: settings.node.timeout,
        workers: settings.broadcaster.workers,
        max_attempts: settings.broadcaster.max_attempts,
        pool: PoolConfig {
            min_available: settings.utxo_pool.min_available,
            split_outputs: settings.utxo_pool.split_outputs,
            split_amount: settings.utxo_pool.split_amount,
            reservation_timeout: settings.utxo_pool.reservation_timeout,
            max_chain_depth: settings.utxo_pool.max_chain_depth,
        },
        janitor: MaintenanceConfig {
            rescue_interval: settings.janitor.interval,
            settle_interval: settings
                .janitor
                .settle_interval
                .unwrap_or(settings.janitor.interval),
            confirm_interval: settings
                .janitor
                .confirm_interval
                .unwrap_or(settings.janitor.interval),
            stuck_after: settings.janitor.stuck_after,
            reanchor_confirmations: settings.janitor.reanchor_confirmations,
        },
        lease: LeaserConfig {
            lease: lease(settings),
            // A process counts for the rate limit until its last broadcast's window
            // has passed: `per` after the longest a broadcast can take.
            share_grace: settings.rate_limit.per + settings.node.timeout,
        },
    }
}

/// How long this process's lease lasts without a heartbeat: three Janitor intervals
/// (the Leaser renews it six times per lease).
pub fn lease(settings: &Settings) -> Duration {
    settings.janitor.interval * 3
}

/// A P2WPKH pool on a node where SegWit is not active yet (bcoin's regtest below
/// height 432) can publish nothing, and bcoin says why only in its own log: say it here,
/// in one line with the fix.
async fn warn_if_segwit_inactive(settings: &Settings) {
    use crate::config::{AddressType, NodeKind};
    if settings.node.kind != NodeKind::Bitcoind
        || settings.chain.address_type != AddressType::P2wpkh
    {
        return;
    }
    let Ok(client) = node::BitcoindClient::new(&settings.node) else {
        return;
    };
    match client.segwit().await {
        Ok(Some(state)) if !state.active => tracing::error!("{}", state.advice()),
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "could not ask the node whether SegWit is active"),
    }
}

/// The Pruner, unless `retention.keep` is zero (keep everything).
fn start_pruner(settings: &Settings, store: &PgStore) -> Option<Addr<Maintenance>> {
    let r = &settings.retention;
    if r.keep.is_zero() {
        tracing::info!("retention.keep = 0s: finished jobs are kept for ever");
        return None;
    }
    let pruner = Pruner {
        store: Arc::new(store.clone()),
        config: RetentionConfig {
            keep: r.keep,
            archive: r.archive,
            batch: r.batch,
            interval: r.interval,
        },
    };
    Some(Maintenance::new(Arc::new(pruner), r.interval).start())
}

/// Starts the pipeline against `store` (shared by `serve` and the tests).
pub async fn start_pipeline(
    settings: &Settings,
    store: PgStore,
    wallet: WalletKey,
) -> anyhow::Result<Pipeline> {
    let signer = Arc::new(TxBuilder::new(
        wallet,
        settings.chain.fee_rate,
        settings.chain.max_payload_bytes,
    ));
    crate::cmd::wallet::ensure_pool_is_ours(store.pool(), signer.wallet()).await?;
    let node = node::from_settings(&settings.node)?;
    warn_if_segwit_inactive(settings).await;
    // The lease first: from now on our claims are live.
    store.heartbeat(lease(settings)).await?;
    // Both modes wake on new jobs: nothing is claimed while nothing is queued.
    let notifier: Option<Arc<dyn JobsNotifier>> =
        Some(Arc::new(PgNotifier::start(store.pool()).await?));
    let leaser_store = Arc::new(store.with_own_pool());
    let store = Arc::new(store);
    Ok(Pipeline::start(
        pipeline_config(settings),
        Stores {
            jobs: store.clone(),
            pool: store.clone(),
            janitor: store,
            leaser: leaser_store,
            notifier,
        },
        signer,
        node,
    ))
}

pub async fn run(settings: Settings) -> anyhow::Result<()> {
    let pool = store::connect_or_create(&settings.database).await?;
    store::migrate(&pool).await?;
    let worker_id = identity::new_worker_id();
    let store = PgStore::new(pool.clone(), worker_id.clone()).with_mode(settings.mode.as_str());

    let pipeline = match WalletKey::from_settings(&settings) {
        Ok(wallet) => {
            tracing::info!(address = %wallet.address(), "wallet loaded");
            Some(Arc::new(
                start_pipeline(&settings, store.clone(), wallet).await?,
            ))
        }
        Err(WalletError::Missing) => {
            tracing::warn!(
                "no wallet key (RAREGEN_WALLET_KEY or chain.wallet_key_file): serving the API only"
            );
            None
        }
        Err(e) => return Err(e.into()),
    };

    // Retention runs with or without a pipeline (an API-only process prunes too).
    let _pruner = start_pruner(&settings, &store);
    let sampler = Sampler::start(&settings, pool.clone(), pipeline.clone());
    let server = ApiServer::build(&settings, store)?;
    tracing::info!(
        addr = %server.addr(),
        mode = settings.mode.as_str(),
        worker = %worker_id,
        database = %settings.database.redacted_url(),
        pipeline = pipeline.is_some(),
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
    if let Some(pipeline) = &pipeline {
        pipeline.shutdown(GRACE).await;
    }
    // Stop taking requests, let the ones in flight finish.
    handle.stop(true).await;
    server_task.await??;
    drop(sampler);
    pool.close().await;
    tracing::info!("stopped");
    Ok(())
}
