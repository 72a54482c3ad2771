//! Collector: claims queued jobs from the store and hands them to the Batch actor.
//!
//! Batch mode claims up to `max_batch` jobs per statement, at least every `interval`
//! (while there is room) and at once whenever the broadcasters would otherwise run dry:
//! the interval is a longest wait, not a cap on throughput. Single mode wakes on a
//! notification from the store (Postgres `LISTEN/NOTIFY`), with a fallback poll every
//! `interval`, and claims one job at a time until none is left.

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use tokio::time::Instant;

use crate::batch::{Batch, Depth, Enqueue};
use crate::ports::{JobStore, JobsNotifier};
use crate::stats::names;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CollectMode {
    Batch,
    Single,
}

#[derive(Debug, Clone)]
pub struct CollectorConfig {
    pub mode: CollectMode,
    pub max_batch: u32,
    pub interval: Duration,
    /// Claim as soon as fewer jobs than this wait in the Batch actor (set it to about
    /// the number of broadcasters, so that they never wait for a claim).
    pub low_water: usize,
}

pub struct Collector {
    config: CollectorConfig,
    store: Arc<dyn JobStore>,
    notifier: Option<Arc<dyn JobsNotifier>>,
    batch: Addr<Batch>,
    last_claim: Instant,
    claiming: bool,
    stopped: bool,
    /// After a store error, no claim before this.
    pause_until: Option<Instant>,
    claims: u64,
}

impl Collector {
    pub fn new(
        config: CollectorConfig,
        store: Arc<dyn JobStore>,
        notifier: Option<Arc<dyn JobsNotifier>>,
        batch: Addr<Batch>,
    ) -> Collector {
        Collector {
            config,
            store,
            notifier,
            batch,
            last_claim: Instant::now(),
            claiming: false,
            stopped: false,
            pause_until: None,
            claims: 0,
        }
    }

    fn tick(&mut self, ctx: &mut Context<Self>) {
        if self.claiming || self.stopped || self.pause_until.is_some_and(|p| Instant::now() < p) {
            return;
        }
        self.claiming = true;
        let batch = self.batch.clone();
        let store = self.store.clone();
        let cfg = self.config.clone();
        let since_last = self.last_claim.elapsed();
        ctx.spawn(
            async move {
                let (waiting, _, _) = batch.send(Depth).await.unwrap_or((usize::MAX, 0, 0));
                let room = waiting < 2 * cfg.max_batch as usize;
                let due = match cfg.mode {
                    CollectMode::Batch => {
                        waiting < cfg.low_water || (since_last >= cfg.interval && room)
                    }
                    CollectMode::Single => room,
                };
                if !due {
                    return Ok(false);
                }
                let max = match cfg.mode {
                    CollectMode::Batch => cfg.max_batch,
                    CollectMode::Single => 1,
                };
                let started = std::time::Instant::now();
                let claimed = store.claim_batch(max).await?;
                metrics::histogram!(names::CLAIM_DURATION).record(started.elapsed().as_secs_f64());
                match claimed {
                    Some(claimed) => {
                        metrics::histogram!(names::BATCH_SIZE).record(claimed.jobs.len() as f64);
                        crate::fail_point!("after-claim");
                        let _ = batch.send(Enqueue(claimed)).await;
                        Ok(true)
                    }
                    None => Ok(false),
                }
            }
            .into_actor(self)
            .map(|res: Result<bool, crate::ports::StoreError>, act, ctx| {
                act.claiming = false;
                match res {
                    Ok(true) => {
                        act.last_claim = Instant::now();
                        act.claims += 1;
                        // More may be waiting: look again at once.
                        ctx.notify(Wake);
                    }
                    Ok(false) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "claim failed; retrying in 1 s");
                        act.pause_until = Some(Instant::now() + Duration::from_secs(1));
                    }
                }
            }),
        );
    }
}

impl Actor for Collector {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        match self.config.mode {
            CollectMode::Batch => {
                ctx.run_interval(Duration::from_millis(20), |act, ctx| act.tick(ctx));
            }
            CollectMode::Single => {
                let interval = self.config.interval;
                if let Some(notifier) = self.notifier.clone() {
                    let me = ctx.address();
                    ctx.spawn(
                        async move {
                            loop {
                                notifier.wait(interval).await;
                                if me.try_send(Wake).is_err() && !me.connected() {
                                    break;
                                }
                            }
                        }
                        .into_actor(self),
                    );
                } else {
                    ctx.run_interval(interval, |act, ctx| act.tick(ctx));
                }
                // Jobs queued before this process started.
                ctx.notify(Wake);
            }
        }
    }
}

/// Look for work now (a notification, or the last claim found some).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Wake;

/// Stop claiming (shutdown).
#[derive(Message)]
#[rtype(result = "()")]
pub struct StopClaiming;

/// Claims made so far.
#[derive(Message)]
#[rtype(result = "u64")]
pub struct Claims;

impl Handler<Wake> for Collector {
    type Result = ();

    fn handle(&mut self, _: Wake, ctx: &mut Context<Self>) {
        self.tick(ctx);
    }
}

impl Handler<StopClaiming> for Collector {
    type Result = ();

    fn handle(&mut self, _: StopClaiming, _: &mut Context<Self>) {
        self.stopped = true;
    }
}

impl Handler<Claims> for Collector {
    type Result = u64;

    fn handle(&mut self, _: Claims, _: &mut Context<Self>) -> u64 {
        self.claims
    }
}
