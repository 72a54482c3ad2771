//! Starts the actors in order and stops them gracefully.

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;

use crate::batch::{Batch, BatchDepth, BatchesInFlight, Depth, Drain};
use crate::broadcaster::{Broadcaster, Deps, PREPARING_PER_BROADCAST};
use crate::collector::{CollectMode, Collector, CollectorConfig, StopClaiming};
use crate::confirmation_watcher::ConfirmationWatcher;
use crate::dirty_settler::DirtySettler;
use crate::leaser::{Leaser, LeaserConfig};
use crate::maintenance::{Maintenance, MaintenanceConfig};
use crate::ports::{Fence, JanitorStore, JobStore, JobsNotifier, LeaseStore, PoolStore};
use crate::ports::{Node, Signer};
use crate::rate_limit::{TokenBucket, Tokens, TokensLeft};
use crate::recorder::{Pending, Recorder};
use crate::rescuer::Rescuer;
use crate::stats::Stats;
use crate::utxo_pool::{PoolConfig, UtxoPool};

#[derive(Debug, Clone)]
pub struct PipelineConfig {
    pub mode: CollectMode,
    pub max_batch: u32,
    pub collect_interval: Duration,
    pub rate_max: u32,
    pub rate_per: Duration,
    /// The longest a broadcast can take (`node.timeout`).
    pub broadcast_timeout: Duration,
    pub workers: u32,
    pub max_attempts: u32,
    pub pool: PoolConfig,
    pub janitor: MaintenanceConfig,
    pub lease: LeaserConfig,
}

/// The stores the pipeline needs (one Postgres store implements them all).
pub struct Stores {
    pub jobs: Arc<dyn JobStore>,
    pub pool: Arc<dyn PoolStore>,
    pub janitor: Arc<dyn JanitorStore>,
    /// The Leaser's: the same identity, its own connections (it runs on its own
    /// thread, and a saturated pool must not delay a heartbeat).
    pub leaser: Arc<dyn LeaseStore>,
    pub notifier: Option<Arc<dyn JobsNotifier>>,
}

/// The running pipeline.
pub struct Pipeline {
    pub collector: Addr<Collector>,
    pub batch: Addr<Batch>,
    pub tokens: Addr<TokenBucket>,
    pub pool: Addr<UtxoPool>,
    pub recorder: Addr<Recorder>,
    /// The maintenance services (the Janitor): Rescuer, DirtySettler,
    /// ConfirmationWatcher, each on its own interval.
    pub maintenance: Vec<Addr<Maintenance>>,
    pub leaser: Addr<Leaser>,
    pub broadcasters: Vec<Addr<Broadcaster>>,
    pub stats: Arc<Stats>,
    jobs: Arc<dyn JobStore>,
    janitor_store: Arc<dyn JanitorStore>,
}

/// What the actors hold right now (for the metrics sampler).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Gauges {
    /// Broadcasts the rate limiter would grant now, and its current budget per window.
    pub tokens_left: u32,
    pub budget: u32,
    /// Work waiting in each actor: broadcasters waiting for a token, claimed jobs
    /// waiting for a broadcaster, records waiting for their group, UTXOs in the pool's
    /// index.
    pub token_waiters: usize,
    pub batch_waiting: usize,
    pub recorder_pending: usize,
    pub jobs_in_flight: usize,
    pub batches_in_flight: usize,
}

impl Pipeline {
    /// Asks each actor what it holds (through its mailbox, so a stuck actor shows as a
    /// sampler that does not answer).
    pub async fn gauges(&self) -> Option<Gauges> {
        let Tokens {
            left: tokens_left,
            budget,
            waiters: token_waiters,
        } = self.tokens.send(TokensLeft).await.ok()?;
        let BatchDepth {
            waiting: batch_waiting,
            in_flight: jobs_in_flight,
            ..
        } = self.batch.send(Depth).await.ok()?;
        let batches_in_flight = self.batch.send(BatchesInFlight).await.ok()?;
        let recorder_pending = self.recorder.send(Pending).await.ok()?;
        Some(Gauges {
            tokens_left,
            budget,
            token_waiters,
            batch_waiting,
            recorder_pending,
            jobs_in_flight,
            batches_in_flight,
        })
    }

    pub fn start(
        config: PipelineConfig,
        stores: Stores,
        signer: Arc<dyn Signer>,
        node: Arc<dyn Node>,
    ) -> Pipeline {
        let stats = Arc::new(Stats::default());
        // Shared with the other processes on this database (the Leaser counts them),
        // and used only while this process's lease runs.
        let tokens = TokenBucket::shared(config.rate_max, config.rate_per)
            .with_broadcast_timeout(config.broadcast_timeout)
            .start_supervised();
        // Its own thread: nothing else this process does can delay a heartbeat.
        let leaser = {
            let (lease, store, tokens) =
                (config.lease.clone(), stores.leaser.clone(), tokens.clone());
            Leaser::start_in_arbiter(&Arbiter::new().handle(), move |_| {
                Leaser::new(lease, store, tokens)
            })
        };
        let recorder = Recorder::new(stores.jobs.clone(), config.max_attempts).start();
        let pool = UtxoPool::new(
            config.pool.clone(),
            stores.pool.clone(),
            signer.clone(),
            node.clone(),
            tokens.clone(),
        )
        .start();
        let batch = Batch::default().start();
        let deps = Arc::new(Deps {
            batch: batch.clone(),
            pool: pool.clone(),
            tokens: tokens.clone(),
            recorder: recorder.clone(),
            signer,
            node,
            stats: stats.clone(),
            broadcasts: Arc::new(tokio::sync::Semaphore::new(config.workers as usize)),
        });
        let broadcasters_n = config.workers as usize * PREPARING_PER_BROADCAST as usize;
        // All on the system's thread: signing is ~50 µs, and a node on the same machine
        // (bcoin) needs the other core more than the broadcasters do (spreading them
        // over one thread per core gained 10% against a sink and lost a quarter of the
        // rate against bcoin).
        let broadcasters = (0..broadcasters_n)
            .map(|i| {
                let deps = deps.clone();
                actix::Supervisor::start(move |_| Broadcaster::new(i, deps))
            })
            .collect();
        let maintenance = {
            let j = &config.janitor;
            let rescuer = Rescuer {
                store: stores.janitor.clone(),
                deps: deps.clone(),
                stuck_after: j.stuck_after,
            };
            let settler = DirtySettler::new(
                stores.janitor.clone(),
                stores.pool.clone(),
                deps.clone(),
                j.reanchor_confirmations,
            );
            let watcher =
                ConfirmationWatcher::new(stores.janitor.clone(), deps.clone(), j.stuck_after)
                    .reanchor_after(j.reanchor_confirmations);
            vec![
                Maintenance::new(Arc::new(rescuer), j.rescue_interval).start(),
                Maintenance::new(Arc::new(settler), j.settle_interval).start(),
                Maintenance::new(Arc::new(watcher), j.confirm_interval).start(),
            ]
        };
        let collector = Collector::new(
            CollectorConfig {
                mode: config.mode,
                max_batch: config.max_batch,
                interval: config.collect_interval,
                low_water: broadcasters_n.max(1),
            },
            stores.jobs.clone(),
            stores.notifier.clone(),
            batch.clone(),
        )
        .start();
        Pipeline {
            collector,
            batch,
            tokens,
            pool,
            recorder,
            maintenance,
            leaser,
            broadcasters,
            stats,
            jobs: stores.jobs,
            janitor_store: stores.janitor,
        }
    }

    /// Jobs claimed but not started go back to the queue (not an attempt).
    async fn hand_back_unstarted(&self) {
        let Ok(unstarted) = self.batch.send(Drain).await else {
            return;
        };
        let fences: Vec<Fence> = unstarted
            .iter()
            .filter(|j| j.stored_tx.is_none())
            .map(|j| Fence {
                id: j.id,
                attempts: j.attempts,
            })
            .collect();
        if fences.is_empty() {
            return;
        }
        match self.jobs.release_claims(&fences).await {
            Ok(ids) => tracing::info!(jobs = ids.len(), "handed unstarted jobs back to the queue"),
            Err(e) => tracing::warn!(error = %e, "could not hand jobs back; the Janitor will"),
        }
    }

    /// Graceful stop: no more claims; jobs not yet started go back to the queue; the
    /// jobs in flight finish (up to `grace`); this process's lease ends. What is still
    /// in flight after `grace` stays in the database for the next start to recover.
    pub async fn shutdown(&self, grace: Duration) {
        let deadline = tokio::time::Instant::now() + grace;
        // Waits for a claim under way to land (a claim stuck on a dead database is
        // waited for no longer than `grace`; its jobs are then recovered by the Rescuer).
        let _ = tokio::time::timeout(grace, self.collector.send(StopClaiming)).await;
        self.hand_back_unstarted().await;
        let mut said = None;
        loop {
            let in_flight = self
                .batch
                .send(Depth)
                .await
                .map(|d| d.in_flight)
                .unwrap_or(0);
            let now = tokio::time::Instant::now();
            if in_flight > 0 && !matches!(said, Some(at) if now < at + Duration::from_secs(5)) {
                // Say what the stop waits for, and again every 5 s.
                let for_slot = self
                    .tokens
                    .send(TokensLeft)
                    .await
                    .map(|t| t.waiters)
                    .unwrap_or(0);
                let pool = self.pool.send(crate::utxo_pool::PoolStats).await.ok();
                let split_in_flight = pool.is_some_and(|p| p.splitting);
                tracing::info!(
                    jobs = in_flight,
                    waiting_for_rate_limit = for_slot,
                    waiting_for_utxo_or_node = in_flight.saturating_sub(for_slot),
                    split_in_flight,
                    left = ?deadline.saturating_duration_since(now),
                    "stopping: waiting for the jobs in flight to finish{}",
                    if split_in_flight && pool.is_some_and(|p| p.available == 0) {
                        " (the pool is empty until the split in flight is answered by the node)"
                    } else {
                        ""
                    }
                );
                said = Some(now);
            }
            if in_flight == 0 || now >= deadline {
                if in_flight > 0 {
                    tracing::warn!(
                        jobs = in_flight,
                        "stopping with jobs in flight; they are stored and will be recovered"
                    );
                }
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // Every job's outcome is written before the Batch actor hears it is done, so no
        // record is outstanding here; and StopClaiming answered only once the claim that
        // was under way had reached the Batch, so nothing claimed is left unseen.
        self.hand_back_unstarted().await;
        // No heartbeat after the lease has ended.
        let _ = self.leaser.send(crate::leaser::Stop).await;
        if let Err(e) = self.janitor_store.stop_worker().await {
            tracing::warn!(error = %e, "could not end the lease");
        }
    }
}
