//! `raregen load-test --count N`: submits N jobs through the HTTP API (bulk requests,
//! several at a time), follows them until each is `sent` or `failed` (or the timeout
//! passes), and reports throughput and latency. It replaces the `test-batch-load.sh`
//! of RareGen's batch worker.
//!
//! Every job carries an idempotency key made of the run's id and its index, so a bulk
//! request retried after a lost answer never submits a job twice.
//!
//! This file holds the options and [`run`]; `measure.rs` the run itself (submitting,
//! following, timing), `report.rs` the [`Summary`] it makes and how it is shown.

mod measure;
mod report;

use std::time::Duration;

use anyhow::bail;

pub use measure::measure;
pub use report::{render, Summary};

use crate::config::Settings;

/// `raregen load-test`'s options (the command line's, as clap reads them).
#[derive(Debug, Clone, clap::Args)]
pub struct LoadTest {
    /// Jobs to submit.
    #[arg(long, value_name = "N")]
    pub count: u64,
    /// The API's base URL (default: http:// + api.listen).
    #[arg(long, value_name = "URL")]
    pub url: Option<String>,
    /// Jobs per bulk request (at most 10000).
    #[arg(long, default_value_t = 1000, value_name = "N")]
    pub bulk_size: usize,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 4, value_name = "N")]
    pub concurrency: usize,
    /// Give up waiting after this long (humantime: 90s, 10m).
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    /// Pad each payload to at least this many bytes.
    #[arg(long, default_value_t = 0, value_name = "BYTES")]
    pub payload_bytes: usize,
    /// Print the summary as JSON (and no progress).
    #[arg(long)]
    pub json: bool,
}

/// Runs the load test and prints its summary; an error when any job failed or the
/// timeout passed.
pub async fn run(settings: &Settings, opts: LoadTest) -> anyhow::Result<()> {
    let json_out = opts.json;
    let timeout = opts.timeout;
    let s = measure(settings, opts).await?;
    if json_out {
        println!("{}", serde_json::to_string_pretty(&s)?);
    } else {
        print!("{}", render(&s));
    }
    if s.timed_out {
        bail!(
            "{} of {} jobs unfinished after {}",
            s.unfinished,
            s.submitted,
            humantime::format_duration(timeout)
        );
    }
    if s.failed > 0 {
        bail!("{} of {} jobs failed", s.failed, s.submitted);
    }
    Ok(())
}
