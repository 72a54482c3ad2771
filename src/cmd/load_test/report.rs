//! The load test's report: what a run measured ([`Summary`], printed as is for
//! `--json`) and the summary as an operator reads it.

use std::collections::BTreeMap;

use serde::Serialize;

/// What a run measured.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub run: String,
    pub submitted: u64,
    pub sent: u64,
    pub failed: u64,
    /// Jobs neither sent nor failed when the run ended (the timeout passed).
    pub unfinished: u64,
    pub submit_seconds: f64,
    pub submit_rate: f64,
    /// Seconds from the first submission to the last job finished.
    pub total_seconds: f64,
    /// Sent jobs per second between the first and the last `sent_at`.
    pub broadcast_rate: f64,
    pub latency_p50: Option<f64>,
    pub latency_p95: Option<f64>,
    pub latency_p99: Option<f64>,
    pub latency_max: Option<f64>,
    /// Failed jobs by their last error.
    pub failures: BTreeMap<String, u64>,
    pub timed_out: bool,
}

/// The summary as an operator reads it.
pub fn render(s: &Summary) -> String {
    let secs = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{:.3} s", v));
    // The run's id only matters to find its jobs again: say so.
    let keys = match s.submitted {
        0 => String::new(),
        1 => format!(" (job idempotency key {}-0)", s.run),
        n => format!(" (job idempotency keys {}-0 to -{})", s.run, n - 1),
    };
    let mut out = format!(
        "load-test run {}{keys}\n\
         jobs:        {} submitted, {} sent, {} failed, {} unfinished\n\
         submission:  {:.2} s ({:.0} jobs/s)\n\
         broadcast:   {:.1} jobs/s sustained (first to last sent), {:.1} s in all\n\
         latency:     p50 {}  p95 {}  p99 {}  max {} (submission to sent)\n",
        s.run,
        s.submitted,
        s.sent,
        s.failed,
        s.unfinished,
        s.submit_seconds,
        s.submit_rate,
        s.broadcast_rate,
        s.total_seconds,
        secs(s.latency_p50),
        secs(s.latency_p95),
        secs(s.latency_p99),
        secs(s.latency_max),
    );
    if !s.failures.is_empty() {
        out.push_str("failures:\n");
        for (reason, n) in &s.failures {
            out.push_str(&format!("  {n:>6}  {reason}\n"));
        }
    }
    if s.timed_out {
        out.push_str("timed out: jobs were still unfinished\n");
    }
    out
}
