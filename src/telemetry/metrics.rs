//! Prometheus metrics: the process-wide recorder behind `GET /metrics`, and the
//! sampler that sets the gauges.
//!
//! Counters and histograms are emitted where things happen (the actors, through the
//! `metrics` facade; names in `raregen_actors::stats::names`). Gauges are sampled here:
//! the queue depth and the pool from the database every `metrics.refresh` (so they are
//! right after any restart, never drifting counters), the rates and the actors' state
//! every second. No label carries a txid, job id or address.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use metrics::{describe_counter, describe_gauge, describe_histogram, gauge, Unit};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use raregen_actors::pipeline::Pipeline;
use raregen_actors::stats::{names, RateWindow};
use sqlx::PgPool;

use crate::config::Settings;
use crate::store::LiveGauges;

/// Gauge names (sampled here).
pub mod gauges {
    pub const QUEUE_DEPTH: &str = "raregen_queue_depth";
    pub const BROADCAST_RATE: &str = "raregen_broadcast_rate";
    pub const ERROR_RATE: &str = "raregen_error_rate";
    pub const UTXO_AVAILABLE: &str = "raregen_utxo_available";
    pub const UTXO_AVAILABLE_SATS: &str = "raregen_utxo_available_sats";
    pub const UTXO_RESERVED: &str = "raregen_utxo_reserved";
    pub const UTXO_DIRTY: &str = "raregen_utxo_dirty";
    pub const UTXO_PENDING: &str = "raregen_utxo_pending";
    pub const OLDEST_SENDING: &str = "raregen_oldest_sending_seconds";
    pub const TOKENS_LEFT: &str = "raregen_rate_limit_tokens";
    pub const BUDGET: &str = "raregen_rate_limit_budget";
    pub const RATE_MAX: &str = "raregen_rate_limit_max";
    pub const RATE_PER: &str = "raregen_rate_limit_window_seconds";
    pub const MAILBOX_DEPTH: &str = "raregen_mailbox_depth";
    pub const BATCHES_IN_FLIGHT: &str = "raregen_batches_in_flight";
    pub const JOBS_IN_FLIGHT: &str = "raregen_jobs_in_flight";
    pub const PIPELINE_RUNNING: &str = "raregen_pipeline_running";
    pub const DB_UP: &str = "raregen_database_up";
    pub const BUILD_INFO: &str = "raregen_build_info";
}

/// The five job states, as `raregen_queue_depth`'s `status` label.
pub const STATES: [&str; 5] = ["queued", "processing_batch", "sending", "sent", "failed"];

/// Broadcast outcomes, as `raregen_broadcasts_total`'s `outcome` label.
pub const OUTCOMES: [&str; 4] = ["accepted", "rejected", "unknown", "rate_limited"];

/// The actors whose waiting work `raregen_mailbox_depth` shows.
pub const MAILBOXES: [&str; 3] = ["token_bucket", "batch", "recorder"];

const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
const JOB_LATENCY_BUCKETS: &[f64] = &[
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0,
];
const BATCH_BUCKETS: &[f64] = &[
    1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0,
];

const MAINTENANCE_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0,
];

/// The process's recorder, installed on first use (one per process: tests that start
/// several servers share it).
pub fn handle() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let builder = PrometheusBuilder::new()
            .set_buckets_for_metric(
                Matcher::Full(names::BROADCAST_LATENCY.into()),
                LATENCY_BUCKETS,
            )
            .and_then(|b| {
                b.set_buckets_for_metric(
                    Matcher::Full(names::CLAIM_DURATION.into()),
                    LATENCY_BUCKETS,
                )
            })
            .and_then(|b| {
                b.set_buckets_for_metric(
                    Matcher::Full(names::JOB_LATENCY.into()),
                    JOB_LATENCY_BUCKETS,
                )
            })
            .and_then(|b| {
                b.set_buckets_for_metric(Matcher::Full(names::BATCH_SIZE.into()), BATCH_BUCKETS)
            })
            .and_then(|b| {
                b.set_buckets_for_metric(
                    Matcher::Full(names::MAINTENANCE_RUN_SECONDS.into()),
                    MAINTENANCE_BUCKETS,
                )
            })
            .expect("bucket lists are not empty");
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!("a metrics recorder was already installed; /metrics may be empty");
        }
        describe();
        handle
    })
}

/// HELP texts and units; every series starts at zero so dashboards see it at once.
fn describe() {
    describe_gauge!(
        gauges::QUEUE_DEPTH,
        "Jobs by status, counted in the database."
    );
    describe_histogram!(names::BATCH_SIZE, "Jobs per claimed batch.");
    describe_histogram!(
        names::CLAIM_DURATION,
        Unit::Seconds,
        "Time one claim statement took."
    );
    describe_gauge!(
        gauges::BROADCAST_RATE,
        "Broadcasts per second over the last 10 s."
    );
    describe_gauge!(
        gauges::ERROR_RATE,
        "Share of the last 10 s's broadcasts not accepted (0..1)."
    );
    describe_counter!(names::BROADCASTS, "Broadcasts by outcome.");
    describe_histogram!(
        names::BROADCAST_LATENCY,
        Unit::Seconds,
        "Time from asking the node to its answer."
    );
    describe_histogram!(
        names::JOB_LATENCY,
        Unit::Seconds,
        "Time from a job's submission to its record as sent."
    );
    describe_counter!(names::JOBS_SENT, "Jobs recorded as sent by this process.");
    describe_counter!(
        names::JOBS_RETRIED,
        "Jobs sent back to the queue (or failed) after a rejection."
    );
    describe_counter!(
        names::JOBS_FAILED,
        "Jobs recorded as failed by this process."
    );
    describe_counter!(
        names::ACTOR_RESTARTS,
        "Actor restarts after an error or a panic."
    );
    describe_counter!(
        names::REBROADCASTS,
        "Stored transactions broadcast again by the Janitor."
    );
    describe_counter!(
        names::UTXO_WAITS,
        "Times a broadcaster found the UTXO pool empty and waited."
    );
    describe_histogram!(
        names::MAINTENANCE_RUN_SECONDS,
        Unit::Seconds,
        "Seconds one run of a maintenance service took (rescuer, dirty_settler, confirmation_watcher)."
    );
    describe_counter!(names::MAINTENANCE_RUNS, "Runs of a maintenance service.");
    describe_counter!(
        names::PRUNED,
        "Rows the Pruner removed or archived past retention.keep (jobs, batches, utxos, splits)."
    );
    describe_counter!(
        names::MAINTENANCE_ITEMS,
        "Jobs, UTXOs or transactions a maintenance service acted on."
    );
    describe_counter!(
        names::MAINTENANCE_ERRORS,
        "Errors a maintenance service met; the work waits for its next run."
    );
    describe_gauge!(
        gauges::UTXO_AVAILABLE,
        "Pool UTXOs available to spend (not dirty)."
    );
    describe_gauge!(gauges::UTXO_AVAILABLE_SATS, "Sats in available pool UTXOs.");
    describe_gauge!(gauges::UTXO_RESERVED, "Pool UTXOs reserved or being spent.");
    describe_gauge!(
        gauges::UTXO_DIRTY,
        "Pool UTXOs marked dirty, waiting for the Janitor."
    );
    describe_gauge!(
        gauges::UTXO_PENDING,
        "Outputs of a split not yet accepted by the node."
    );
    describe_gauge!(
        gauges::OLDEST_SENDING,
        "Age of the oldest job in sending (0 when none)."
    );
    describe_gauge!(
        gauges::TOKENS_LEFT,
        "Broadcasts the rate limiter would grant now."
    );
    describe_gauge!(
        gauges::BUDGET,
        "The rate limiter's budget per window now (shrinks after a 429)."
    );
    describe_gauge!(
        gauges::RATE_MAX,
        "Configured rate_limit.max: broadcasts per window."
    );
    describe_gauge!(gauges::RATE_PER, "Configured rate_limit.per, in seconds.");
    describe_gauge!(
        gauges::MAILBOX_DEPTH,
        "Work waiting in an actor: broadcasters waiting for a token, jobs waiting for a broadcaster, records waiting for their group."
    );
    describe_gauge!(
        gauges::BATCHES_IN_FLIGHT,
        "Claimed batches with jobs waiting or in flight."
    );
    describe_gauge!(gauges::JOBS_IN_FLIGHT, "Jobs held by broadcasters.");
    describe_gauge!(
        gauges::PIPELINE_RUNNING,
        "1 when this process runs the pipeline, 0 when it serves the API only."
    );
    describe_gauge!(gauges::DB_UP, "1 when the last database refresh succeeded.");
    describe_gauge!(gauges::BUILD_INFO, "Always 1; the version as a label.");

    for outcome in OUTCOMES {
        metrics::counter!(names::BROADCASTS, "outcome" => outcome).absolute(0);
    }
    for counter in [
        names::JOBS_SENT,
        names::JOBS_RETRIED,
        names::JOBS_FAILED,
        names::REBROADCASTS,
        names::UTXO_WAITS,
    ] {
        metrics::counter!(counter).absolute(0);
    }
    metrics::counter!(names::ACTOR_RESTARTS, "actor" => "broadcaster").absolute(0);
    gauge!(gauges::BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
}

/// Sets the gauges until dropped (aborts its task).
pub struct Sampler {
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Sampler {
    /// Starts sampling: the database every `metrics.refresh`, the pipeline (when this
    /// process runs one) every second.
    pub fn start(settings: &Settings, pool: PgPool, pipeline: Option<Arc<Pipeline>>) -> Sampler {
        let _ = handle();
        let refresh = settings.metrics.refresh;
        gauge!(gauges::RATE_MAX).set(f64::from(settings.rate_limit.max));
        gauge!(gauges::RATE_PER).set(settings.rate_limit.per.as_secs_f64());
        gauge!(gauges::PIPELINE_RUNNING).set(if pipeline.is_some() { 1.0 } else { 0.0 });
        let task = actix::spawn(async move {
            let mut window = RateWindow::new(Duration::from_secs(10));
            let mut last_db: Option<Instant> = None;
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                if last_db.is_none_or(|t| t.elapsed() >= refresh) {
                    last_db = Some(Instant::now());
                    refresh_db(&pool).await;
                }
                if let Some(p) = &pipeline {
                    let (all, bad) = p.stats.broadcasts();
                    let (rate, share) = window.sample(Instant::now(), all, bad);
                    gauge!(gauges::BROADCAST_RATE).set(rate);
                    gauge!(gauges::ERROR_RATE).set(share);
                    sample_pipeline(p).await;
                } else {
                    gauge!(gauges::BROADCAST_RATE).set(0.0);
                    gauge!(gauges::ERROR_RATE).set(0.0);
                }
                handle().run_upkeep();
            }
        });
        Sampler { task }
    }
}

async fn refresh_db(pool: &PgPool) {
    // Fold the job counters' deltas, so that every reader sums a handful of rows.
    if let Err(e) = crate::store::compact_job_counts(pool).await {
        tracing::debug!(error = %e, "metrics: job counts not compacted");
    }
    match LiveGauges::load(pool).await {
        Ok(g) => {
            set_live(&g);
            gauge!(gauges::DB_UP).set(1.0);
        }
        Err(e) => {
            gauge!(gauges::DB_UP).set(0.0);
            tracing::debug!(error = %e, "metrics: database gauges not refreshed");
        }
    }
}

/// Sets the database gauges from `g`.
pub fn set_live(g: &LiveGauges) {
    let q = &g.queue;
    for (status, n) in
        STATES
            .iter()
            .zip([q.queued, q.processing_batch, q.sending, q.sent, q.failed])
    {
        gauge!(gauges::QUEUE_DEPTH, "status" => *status).set(n as f64);
    }
    gauge!(gauges::UTXO_AVAILABLE).set(g.utxo_available as f64);
    gauge!(gauges::UTXO_AVAILABLE_SATS).set(g.utxo_available_sats as f64);
    gauge!(gauges::UTXO_RESERVED).set(g.utxo_reserved as f64);
    gauge!(gauges::UTXO_DIRTY).set(g.utxo_dirty as f64);
    gauge!(gauges::UTXO_PENDING).set(g.utxo_pending as f64);
    gauge!(gauges::OLDEST_SENDING).set(g.oldest_sending_seconds);
}

async fn sample_pipeline(p: &Pipeline) {
    let sampled = tokio::time::timeout(Duration::from_secs(1), p.gauges()).await;
    let Ok(Some(g)) = sampled else {
        tracing::debug!("metrics: the actors did not answer within 1 s");
        return;
    };
    gauge!(gauges::TOKENS_LEFT).set(f64::from(g.tokens_left));
    gauge!(gauges::BUDGET).set(f64::from(g.budget));
    gauge!(gauges::MAILBOX_DEPTH, "actor" => "token_bucket").set(g.token_waiters as f64);
    gauge!(gauges::MAILBOX_DEPTH, "actor" => "batch").set(g.batch_waiting as f64);
    gauge!(gauges::MAILBOX_DEPTH, "actor" => "recorder").set(g.recorder_pending as f64);
    gauge!(gauges::BATCHES_IN_FLIGHT).set(g.batches_in_flight as f64);
    gauge!(gauges::JOBS_IN_FLIGHT).set(g.jobs_in_flight as f64);
}

/// The text exposition for `GET /metrics`.
pub fn render() -> String {
    handle().render()
}
