//! The runner of the maintenance services, as River runs its own
//! (`internal/maintenance`): each service is its own actor on its own interval, never
//! two runs of one service at once, a bounded batch of work per run, and its own
//! metrics — run time, runs, items handled, errors. A slow service delays nobody else:
//! the lease is the [`Leaser`](crate::leaser)'s, on its own thread.
//!
//! The services: [`Rescuer`](crate::rescuer) (dead processes' claims, jobs lost between
//! claim and write-ahead, stuck `sending` re-sent),
//! [`DirtySettler`](crate::dirty_settler) (UTXOs whose spend had an unknown outcome),
//! [`ConfirmationWatcher`](crate::confirmation_watcher) (sent transactions: confirmed,
//! or gone from the node and re-sent).

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use tokio::time::Instant;

use crate::stats::names;

/// The `[janitor]` settings: one interval per service, and the thresholds they share.
#[derive(Debug, Clone)]
pub struct MaintenanceConfig {
    /// The Rescuer's interval (`janitor.interval`).
    pub rescue_interval: Duration,
    /// The DirtySettler's (`janitor.settle_interval`).
    pub settle_interval: Duration,
    /// The ConfirmationWatcher's (`janitor.confirm_interval`).
    pub confirm_interval: Duration,
    /// A job in `sending` longer than this is adopted and re-sent; a sent transaction
    /// the node has not held for this long is asked about again.
    pub stuck_after: Duration,
    /// Confirmations a foreign spend of a job's anchor needs before the job re-anchors.
    pub reanchor_confirmations: u32,
}

/// Why a maintenance step stopped short: the database or the node did not answer
/// (or could not sign). The step is tried again on the service's next run.
#[derive(Debug, thiserror::Error)]
pub enum MaintenanceError {
    #[error("store: {0}")]
    Store(#[from] crate::ports::StoreError),
    #[error("node: {0}")]
    Node(#[from] crate::ports::NodeError),
}

/// What one run did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Report {
    /// Jobs, UTXOs or transactions the run acted on.
    pub items: u64,
    /// Errors met (a node or a database away); the work waits for the next run.
    pub errors: u64,
}

impl Report {
    pub fn item(&mut self) {
        self.items += 1;
    }

    pub fn items(&mut self, n: u64) {
        self.items += n;
    }

    pub fn error(&mut self) {
        self.errors += 1;
    }
}

/// One maintenance service: a bounded piece of work, run every `interval`.
#[async_trait::async_trait]
pub trait Service: Send + Sync + 'static {
    /// The `service` label of its metrics and logs (`rescuer`, `dirty_settler`, …).
    fn name(&self) -> &'static str;

    /// One run. Never longer than its bounded batch of work takes.
    async fn run(&self) -> Report;
}

/// Runs a [`Service`] every `interval` (and once at start).
pub struct Maintenance {
    service: Arc<dyn Service>,
    interval: Duration,
    running: bool,
}

impl Maintenance {
    pub fn new(service: Arc<dyn Service>, interval: Duration) -> Maintenance {
        Maintenance {
            service,
            interval,
            running: false,
        }
    }
}

impl Actor for Maintenance {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.notify(RunNow);
        ctx.run_interval(self.interval, |_, ctx| ctx.notify(RunNow));
    }
}

/// Run once now, unless a run is under way (also what the interval sends).
#[derive(Message)]
#[rtype(result = "()")]
pub struct RunNow;

impl Handler<RunNow> for Maintenance {
    type Result = ();

    fn handle(&mut self, _: RunNow, ctx: &mut Context<Self>) {
        if self.running {
            return;
        }
        self.running = true;
        let service = self.service.clone();
        ctx.spawn(
            async move {
                let started = Instant::now();
                let report = service.run().await;
                observe(service.name(), started.elapsed(), report);
            }
            .into_actor(self)
            .map(|_, act, _| act.running = false),
        );
    }
}

fn observe(service: &'static str, took: Duration, report: Report) {
    metrics::histogram!(names::MAINTENANCE_RUN_SECONDS, "service" => service)
        .record(took.as_secs_f64());
    metrics::counter!(names::MAINTENANCE_RUNS, "service" => service).increment(1);
    metrics::counter!(names::MAINTENANCE_ITEMS, "service" => service).increment(report.items);
    metrics::counter!(names::MAINTENANCE_ERRORS, "service" => service).increment(report.errors);
    if report.items > 0 || report.errors > 0 {
        tracing::debug!(
            service,
            items = report.items,
            errors = report.errors,
            took = ?took,
            "maintenance run"
        );
    }
}
