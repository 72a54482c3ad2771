//! Collector: claims queued jobs from the store and hands them to the Batch actor.
//!
//! Batch mode claims up to `max_batch` jobs per statement, at least every `interval`
//! (while there is room) and at once whenever the broadcasters would otherwise run dry
//! while jobs may be queued: the interval is a longest wait, not a cap on throughput.
//! "May be queued" is known without asking Postgres: a notification from the store
//! (Postgres `LISTEN/NOTIFY`, one per statement that inserts jobs or puts them back in
//! the queue) says jobs arrived, a full batch says more may wait, a short one says the
//! queue is drained. So an idle Collector makes one claim per `interval` (the fallback
//! for what no notification announces: a retry whose backoff ends later), a trickle one
//! claim per arrival (notifications within 20 ms share it), and full load full batches.
//! Single mode wakes on the same notification, with the same fallback poll, and claims
//! one job at a time until none is left.

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::batch::{Batch, Depth, Enqueue};
use crate::ports::{ClaimStore, JobsNotifier};
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
    store: Arc<dyn ClaimStore>,
    notifier: Option<Arc<dyn JobsNotifier>>,
    batch: Addr<Batch>,
    last_claim: Instant,
    claiming: bool,
    stopped: bool,
    /// After a store error, no claim before this.
    pause_until: Option<Instant>,
    claims: u64,
    /// Jobs may be queued (batch mode): a notification came, or the last claim was
    /// full. Always true without a notifier.
    maybe_queued: bool,
    /// Notifications so far: one that arrives while a claim is in flight keeps
    /// `maybe_queued` (the claim's snapshot may predate the new job).
    arrivals: u64,
    /// Answered once no claim is in flight ([`StopClaiming`] waits for the last one).
    idle_waiters: Vec<oneshot::Sender<()>>,
}

impl Collector {
    pub fn new(
        config: CollectorConfig,
        store: Arc<dyn ClaimStore>,
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
            maybe_queued: true,
            arrivals: 0,
            idle_waiters: Vec::new(),
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
        let maybe_queued = self.maybe_queued || self.notifier.is_none();
        let arrivals_before = self.arrivals;
        ctx.spawn(
            async move {
                let waiting = batch.send(Depth).await.map_or(usize::MAX, |d| d.waiting);
                let room = waiting < 2 * cfg.max_batch as usize;
                let due = match cfg.mode {
                    CollectMode::Batch => {
                        (maybe_queued && waiting < cfg.low_water)
                            || (since_last >= cfg.interval && room)
                    }
                    CollectMode::Single => room,
                };
                if !due {
                    return Ok(None);
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
                        let n = claimed.jobs.len();
                        metrics::histogram!(names::BATCH_SIZE).record(n as f64);
                        crate::fail_point!("after-claim");
                        let _ = batch.send(Enqueue(claimed)).await;
                        Ok(Some(n >= max as usize))
                    }
                    None => Ok(Some(false)),
                }
            }
            .into_actor(self)
            .map(
                move |res: Result<Option<bool>, crate::ports::StoreError>, act, ctx| {
                    act.claiming = false;
                    for waiter in act.idle_waiters.drain(..) {
                        let _ = waiter.send(());
                    }
                    match res {
                        Ok(Some(full)) => {
                            act.last_claim = Instant::now();
                            act.claims += 1;
                            // A full batch: more may be waiting, look again at once. A short
                            // one (or none): the queue was drained; wait for a notification
                            // or the interval. (Single mode asks until it finds none, and
                            // again at once for a wake that came while it asked: the claim's
                            // snapshot may predate that job.)
                            let woken = act.arrivals != arrivals_before;
                            act.maybe_queued = full || woken;
                            if full || (woken && act.config.mode == CollectMode::Single) {
                                act.tick(ctx);
                            }
                        }
                        Ok(None) => {}
                        Err(e) => {
                            tracing::warn!(error = %e, "claim failed; retrying in 1 s");
                            act.pause_until = Some(Instant::now() + Duration::from_secs(1));
                        }
                    }
                },
            ),
        );
    }
}

impl Actor for Collector {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        match self.config.mode {
            CollectMode::Batch => {
                // Every 20 ms: notifications that arrived meanwhile share one claim.
                ctx.run_interval(Duration::from_millis(20), |act, ctx| act.tick(ctx));
                if let Some(notifier) = self.notifier.clone() {
                    let me = ctx.address();
                    let interval = self.config.interval;
                    ctx.spawn(
                        async move {
                            loop {
                                let arrived = notifier.wait(interval).await;
                                if !me.connected() {
                                    break;
                                }
                                if arrived {
                                    let _ = me.try_send(Arrived);
                                }
                            }
                        }
                        .into_actor(self),
                    );
                }
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

/// Jobs may have arrived (batch mode): the next 20 ms tick claims if broadcasters are
/// running dry.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Arrived;

impl Handler<Arrived> for Collector {
    type Result = ();

    fn handle(&mut self, _: Arrived, _: &mut Context<Self>) {
        self.maybe_queued = true;
        self.arrivals += 1;
    }
}

/// Stop claiming (shutdown). Answers once the claim in flight, if any, has reached the
/// Batch, so a Drain after it sees every job this process claimed.
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
        self.maybe_queued = true;
        self.arrivals += 1;
        self.tick(ctx);
    }
}

impl Handler<StopClaiming> for Collector {
    type Result = ResponseFuture<()>;

    fn handle(&mut self, _: StopClaiming, _: &mut Context<Self>) -> Self::Result {
        self.stopped = true;
        let (tx, rx) = oneshot::channel();
        if self.claiming {
            self.idle_waiters.push(tx);
        } else {
            let _ = tx.send(());
        }
        Box::pin(async move {
            let _ = rx.await;
        })
    }
}

impl Handler<Claims> for Collector {
    type Result = u64;

    fn handle(&mut self, _: Claims, _: &mut Context<Self>) -> u64 {
        self.claims
    }
}
