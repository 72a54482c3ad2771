//! The load test's run: submits the jobs, follows them until they finish (or the
//! timeout passes), with a progress bar or a line every 5 s, and measures it all.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use chrono::{DateTime, Utc};
use futures::stream::{self, StreamExt, TryStreamExt};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use reqwest::StatusCode;
use serde_json::{json, Value};

use super::{LoadTest, Summary};
use crate::api::MAX_BULK_JOBS;
use crate::config::Settings;
use crate::store::JobState;

struct Client {
    http: reqwest::Client,
    base: String,
    key: Option<String>,
}

impl Client {
    async fn post(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        let mut tries = 0u32;
        loop {
            tries += 1;
            let mut req = self.http.post(format!("{}{path}", self.base)).json(body);
            if let Some(k) = &self.key {
                req = req.bearer_auth(k);
            }
            let retry = match req.send().await {
                Ok(resp) => {
                    let status = resp.status();
                    let text = resp.text().await.unwrap_or_default();
                    if status.is_success() {
                        return serde_json::from_str(&text)
                            .with_context(|| format!("POST {path}: the answer is not JSON"));
                    }
                    let message = serde_json::from_str::<Value>(&text)
                        .ok()
                        .and_then(|v| v["error"]["message"].as_str().map(str::to_owned))
                        .unwrap_or(text);
                    if status.is_client_error() && status != StatusCode::TOO_MANY_REQUESTS {
                        bail!("POST {path}: {status}: {message}");
                    }
                    format!("{status}: {message}")
                }
                Err(e) => e.to_string(),
            };
            if tries >= 5 {
                bail!("POST {path}: gave up after {tries} tries: {retry}");
            }
            tokio::time::sleep(Duration::from_millis(200 * 2u64.pow(tries))).await;
        }
    }
}

fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// Runs the load test `opts` describes against the API and measures it.
pub async fn measure(settings: &Settings, opts: LoadTest) -> anyhow::Result<Summary> {
    if opts.count == 0 {
        bail!("--count must be at least 1");
    }
    if opts.bulk_size == 0 || opts.bulk_size > MAX_BULK_JOBS {
        bail!("--bulk-size must be 1 to {MAX_BULK_JOBS}");
    }
    if opts.concurrency == 0 {
        bail!("--concurrency must be at least 1");
    }
    let client = Client {
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()?,
        base: opts
            .url
            .clone()
            .unwrap_or_else(|| format!("http://{}", settings.api.listen))
            .trim_end_matches('/')
            .to_owned(),
        key: settings.api.key().map(str::to_owned),
    };
    // Fail early, with a clear message, when nothing answers.
    client
        .http
        .get(format!("{}/healthz", client.base))
        .send()
        .await
        .with_context(|| format!("no raregen API answers at {}", client.base))?;

    let run = format!("lt{}", Utc::now().format("%Y%m%d%H%M%S%3f"));
    let bar = progress_bar(opts.count, opts.json);
    let started = Instant::now();
    let deadline = started + opts.timeout;

    // Submit, several bulk requests at a time.
    let chunks: Vec<(u64, u64)> = (0..opts.count)
        .step_by(opts.bulk_size)
        .map(|from| (from, (from + opts.bulk_size as u64).min(opts.count)))
        .collect();
    let submitted_ids: Vec<Vec<i64>> = stream::iter(chunks)
        .map(|(from, to)| {
            let client = &client;
            let run = &run;
            let bar = &bar;
            let payload_bytes = opts.payload_bytes;
            async move {
                let jobs: Vec<Value> = (from..to)
                    .map(|i| {
                        json!({
                            "payload": payload(run, i, payload_bytes),
                            "idempotency_key": format!("{run}-{i}"),
                        })
                    })
                    .collect();
                let answer = client
                    .post("/v1/jobs/bulk", &json!({ "jobs": jobs }))
                    .await?;
                let ids: Vec<i64> = serde_json::from_value(answer["ids"].clone())
                    .context("the bulk answer has no ids")?;
                bar.set_message(format!("submitting: {to} of {}", bar.length().unwrap_or(0)));
                Ok::<_, anyhow::Error>(ids)
            }
        })
        .buffered(opts.concurrency)
        .try_collect()
        .await?;
    let mut pending: Vec<i64> = submitted_ids.into_iter().flatten().collect();
    let submitted = pending.len() as u64;
    let submit_seconds = started.elapsed().as_secs_f64();
    tracing::debug!(jobs = submitted, seconds = submit_seconds, "submitted");

    // Follow the jobs until each has finished or the deadline passed.
    let mut latencies: Vec<f64> = Vec::new();
    let mut first_sent: Option<DateTime<Utc>> = None;
    let mut last_sent: Option<DateTime<Utc>> = None;
    let mut failures: BTreeMap<String, u64> = BTreeMap::new();
    let (mut sent, mut failed) = (0u64, 0u64);
    let mut last_line = Instant::now();
    let mut timed_out = false;
    while !pending.is_empty() {
        let states: Vec<Vec<JobState>> = stream::iter(pending.chunks(MAX_BULK_JOBS))
            .map(|ids| {
                let client = &client;
                async move {
                    let answer = client
                        .post("/v1/jobs/lookup", &json!({ "ids": ids }))
                        .await?;
                    serde_json::from_value::<Vec<JobState>>(answer["jobs"].clone())
                        .context("the lookup answer has no jobs")
                }
            })
            .buffered(opts.concurrency)
            .try_collect()
            .await?;
        let mut finished = std::collections::HashSet::new();
        for job in states.into_iter().flatten() {
            match job.status.as_str() {
                "sent" => {
                    sent += 1;
                    if let Some(at) = job.sent_at {
                        latencies.push(
                            (at - job.created_at).num_microseconds().unwrap_or(0) as f64 / 1e6,
                        );
                        first_sent = Some(first_sent.map_or(at, |f| f.min(at)));
                        last_sent = Some(last_sent.map_or(at, |l| l.max(at)));
                    }
                    finished.insert(job.id);
                }
                "failed" => {
                    failed += 1;
                    *failures
                        .entry(
                            job.last_error
                                .unwrap_or_else(|| "(no error recorded)".into()),
                        )
                        .or_default() += 1;
                    finished.insert(job.id);
                }
                _ => {}
            }
        }
        pending.retain(|id| !finished.contains(id));
        let elapsed = started.elapsed().as_secs_f64();
        bar.set_position(sent + failed);
        bar.set_message(format!(
            "submitted {submitted}, sent {sent}, failed {failed}, {:.1} jobs/s",
            (sent + failed) as f64 / elapsed.max(1e-9)
        ));
        if bar.is_hidden()
            && !opts.json
            && (last_line.elapsed() >= Duration::from_secs(5) || pending.is_empty())
        {
            last_line = Instant::now();
            eprintln!(
                "load-test: {:>6.1} s: {submitted} submitted, {sent} sent, {failed} failed, {} waiting",
                elapsed,
                pending.len()
            );
        }
        if pending.is_empty() {
            break;
        }
        if Instant::now() >= deadline {
            timed_out = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    bar.finish_and_clear();

    latencies.sort_by(|a, b| a.total_cmp(b));
    let span = match (first_sent, last_sent) {
        (Some(f), Some(l)) => (l - f).num_microseconds().unwrap_or(0) as f64 / 1e6,
        _ => 0.0,
    };
    Ok(Summary {
        run,
        submitted,
        sent,
        failed,
        unfinished: pending.len() as u64,
        submit_seconds,
        submit_rate: submitted as f64 / submit_seconds.max(1e-9),
        total_seconds: started.elapsed().as_secs_f64(),
        broadcast_rate: if span > 0.0 && sent > 1 {
            (sent - 1) as f64 / span
        } else {
            0.0
        },
        latency_p50: percentile(&latencies, 50.0),
        latency_p95: percentile(&latencies, 95.0),
        latency_p99: percentile(&latencies, 99.0),
        latency_max: latencies.last().copied(),
        failures,
        timed_out,
    })
}

/// The payload of job `i`: unique in the run, `bytes` long at least.
fn payload(run: &str, i: u64, bytes: usize) -> String {
    let mut p = format!("raregen load-test {run} #{i}");
    while p.len() < bytes {
        p.push('.');
    }
    p
}

fn progress_bar(count: u64, quiet: bool) -> ProgressBar {
    let target = if quiet || !std::io::stderr().is_terminal() {
        ProgressDrawTarget::hidden()
    } else {
        ProgressDrawTarget::stderr()
    };
    let bar = ProgressBar::with_draw_target(Some(count), target);
    bar.set_style(
        ProgressStyle::with_template("{elapsed_precise} [{wide_bar}] {pos}/{len} {msg}")
            .expect("a valid template")
            .progress_chars("=> "),
    );
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_by_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), Some(50.0));
        assert_eq!(percentile(&v, 95.0), Some(95.0));
        assert_eq!(percentile(&v, 99.0), Some(99.0));
        assert_eq!(percentile(&[3.0], 99.0), Some(3.0));
        assert_eq!(percentile(&[], 50.0), None);
    }

    #[test]
    fn payloads_are_unique_and_long_enough() {
        assert_ne!(payload("r", 1, 0), payload("r", 11, 0));
        assert_eq!(payload("r", 1, 80).len(), 80);
    }
}
