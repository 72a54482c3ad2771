//! What the pipeline counts: process-local atomics (read by tests and by the sampler
//! behind `raregen_broadcast_rate` / `raregen_error_rate`) and the Prometheus series
//! emitted through the `metrics` facade (a no-op until a recorder is installed).
//!
//! Every metric name the actors emit is here, so that the exporter, the dashboard and
//! the tests have one list to check against.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::ports::BroadcastOutcome;

/// Metric names (Prometheus base units; counters end in `_total`).
pub mod names {
    /// Broadcasts by outcome: `accepted`, `rejected`, `unknown`, `rate_limited`.
    pub const BROADCASTS: &str = "raregen_broadcasts_total";
    /// Seconds from asking the node to its answer.
    pub const BROADCAST_LATENCY: &str = "raregen_broadcast_latency_seconds";
    /// Seconds from a job's submission to its record as `sent`.
    pub const JOB_LATENCY: &str = "raregen_job_latency_seconds";
    /// Jobs recorded `sent` by this process.
    pub const JOBS_SENT: &str = "raregen_jobs_sent_total";
    /// Jobs sent back to the queue after a rejection (or failed once out of attempts).
    pub const JOBS_RETRIED: &str = "raregen_jobs_retried_total";
    /// Jobs recorded `failed` (out of attempts, or their transaction cannot be built).
    pub const JOBS_FAILED: &str = "raregen_jobs_failed_total";
    /// Jobs per claim.
    pub const BATCH_SIZE: &str = "raregen_batch_size";
    /// Seconds one claim statement took.
    pub const CLAIM_DURATION: &str = "raregen_claim_duration_seconds";
    /// Actor restarts by actor (`broadcaster`).
    pub const ACTOR_RESTARTS: &str = "raregen_actor_restarts_total";
    /// Stored transactions broadcast again by the Janitor.
    pub const REBROADCASTS: &str = "raregen_rebroadcasts_total";
    /// Times a broadcaster found the UTXO pool empty and waited.
    pub const UTXO_WAITS: &str = "raregen_utxo_waits_total";
    /// Seconds one run of a maintenance service took, by `service`.
    pub const MAINTENANCE_RUN_SECONDS: &str = "raregen_maintenance_run_seconds";
    /// Runs of a maintenance service, by `service`.
    pub const MAINTENANCE_RUNS: &str = "raregen_maintenance_runs_total";
    /// Jobs, UTXOs or transactions a maintenance service acted on, by `service`.
    pub const MAINTENANCE_ITEMS: &str = "raregen_maintenance_items_total";
    /// Errors a maintenance service met (the work waits for its next run), by `service`.
    pub const MAINTENANCE_ERRORS: &str = "raregen_maintenance_errors_total";
    /// Rows the Pruner removed (or archived), by `what`: `jobs`, `batches`, `utxos`,
    /// `splits`.
    pub const PRUNED: &str = "raregen_pruned_total";
}

/// The broadcast counts this process keeps in memory (the error rate's inputs); every
/// other figure is a Prometheus counter only.
#[derive(Default)]
pub struct Stats {
    accepted: AtomicU64,
    rejected: AtomicU64,
    unknown: AtomicU64,
    rate_limited: AtomicU64,
}

impl Stats {
    pub fn observe_broadcast(&self, outcome: &BroadcastOutcome, took: Duration) {
        let (counter, label) = match outcome {
            BroadcastOutcome::Accepted => (&self.accepted, "accepted"),
            BroadcastOutcome::Rejected { .. } => (&self.rejected, "rejected"),
            BroadcastOutcome::Unknown { .. } => (&self.unknown, "unknown"),
            BroadcastOutcome::RateLimited { .. } => (&self.rate_limited, "rate_limited"),
        };
        counter.fetch_add(1, Ordering::Relaxed);
        metrics::counter!(names::BROADCASTS, "outcome" => label).increment(1);
        metrics::histogram!(names::BROADCAST_LATENCY).record(took.as_secs_f64());
    }

    /// A job recorded `sent` (its latency is recorded by the Recorder, which learns it
    /// from the database's clock).
    pub fn observe_sent(&self) {
        metrics::counter!(names::JOBS_SENT).increment(1);
    }

    pub fn observe_retry(&self) {
        metrics::counter!(names::JOBS_RETRIED).increment(1);
    }

    pub fn observe_restart(&self, actor: &'static str) {
        metrics::counter!(names::ACTOR_RESTARTS, "actor" => actor).increment(1);
    }

    pub fn observe_rebroadcast(&self) {
        metrics::counter!(names::REBROADCASTS).increment(1);
    }

    pub fn observe_utxo_wait(&self) {
        metrics::counter!(names::UTXO_WAITS).increment(1);
    }

    /// Broadcasts so far: (all, not accepted).
    pub fn broadcasts(&self) -> (u64, u64) {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let bad = get(&self.rejected) + get(&self.unknown) + get(&self.rate_limited);
        (get(&self.accepted) + bad, bad)
    }
}

/// Rates over a trailing window from samples of monotonic counters: feed it
/// `(all, bad)` every second or so; it answers events per second and the bad share
/// over the last `window`.
pub struct RateWindow {
    window: Duration,
    samples: std::collections::VecDeque<(std::time::Instant, u64, u64)>,
}

impl RateWindow {
    pub fn new(window: Duration) -> RateWindow {
        RateWindow {
            window,
            samples: Default::default(),
        }
    }

    /// Adds a sample taken at `now`; answers (per second, bad share) over the window.
    pub fn sample(&mut self, now: std::time::Instant, all: u64, bad: u64) -> (f64, f64) {
        self.samples.push_back((now, all, bad));
        // Keep the newest sample at least `window` old as the base.
        while self.samples.len() > 2 && now.duration_since(self.samples[1].0) >= self.window {
            self.samples.pop_front();
        }
        let (t0, all0, bad0) = self.samples[0];
        let elapsed = now.duration_since(t0).as_secs_f64();
        let (d_all, d_bad) = (all.saturating_sub(all0), bad.saturating_sub(bad0));
        let rate = if elapsed > 0.0 {
            d_all as f64 / elapsed
        } else {
            0.0
        };
        let share = if d_all > 0 {
            d_bad as f64 / d_all as f64
        } else {
            0.0
        };
        (rate, share)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn rate_window_answers_the_last_ten_seconds() {
        let mut w = RateWindow::new(Duration::from_secs(10));
        let t0 = Instant::now();
        assert_eq!(w.sample(t0, 0, 0), (0.0, 0.0));
        // 100/s for 20 s, 10% bad in the first 10 s, none after.
        let mut last = (0.0, 0.0);
        for s in 1..=20u64 {
            let bad = s.min(10) * 10;
            last = w.sample(t0 + Duration::from_secs(s), s * 100, bad);
        }
        assert!((last.0 - 100.0).abs() < 1e-9, "{last:?}");
        assert_eq!(last.1, 0.0, "the bad broadcasts left the window");
        let mut w = RateWindow::new(Duration::from_secs(10));
        w.sample(t0, 0, 0);
        let (rate, share) = w.sample(t0 + Duration::from_secs(5), 250, 25);
        assert!((rate - 50.0).abs() < 1e-9);
        assert!((share - 0.1).abs() < 1e-9);
    }
}
