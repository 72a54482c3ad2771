//! Counters the pipeline keeps for metrics and tests (monotonic, process-local).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use crate::chain::BroadcastOutcome;

#[derive(Default)]
pub struct Stats {
    pub accepted: AtomicU64,
    pub rejected: AtomicU64,
    pub unknown: AtomicU64,
    pub rate_limited: AtomicU64,
    pub sent: AtomicU64,
    pub retried: AtomicU64,
    pub failed: AtomicU64,
    pub restarts: AtomicU64,
    pub utxo_waits: AtomicU64,
    pub rebroadcasts: AtomicU64,
    /// Broadcast latencies in seconds since the last take (for a histogram).
    latencies: Mutex<Vec<f64>>,
}

impl Stats {
    pub fn observe_broadcast(&self, outcome: &BroadcastOutcome, took: Duration) {
        let counter = match outcome {
            BroadcastOutcome::Accepted => &self.accepted,
            BroadcastOutcome::Rejected { .. } => &self.rejected,
            BroadcastOutcome::Unknown { .. } => &self.unknown,
            BroadcastOutcome::RateLimited { .. } => &self.rate_limited,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut l) = self.latencies.lock() {
            if l.len() < 100_000 {
                l.push(took.as_secs_f64());
            }
        }
    }

    /// The broadcast latencies observed since the last call.
    pub fn take_latencies(&self) -> Vec<f64> {
        self.latencies
            .lock()
            .map(|mut l| std::mem::take(&mut *l))
            .unwrap_or_default()
    }

    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}
