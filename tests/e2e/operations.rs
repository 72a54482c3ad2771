//! What an operator runs: `/metrics` after a real run against a regtest node (checked
//! by `promtool`, against the database, and against the Grafana dashboard and the alert
//! rules), `raregen load-test`, `raregen status --json`, `raregen unstick`, and the demo.
//!
//! `promtool` comes from Debian's `prometheus` package (scripts/test installs it).

use std::collections::{BTreeSet, HashMap};
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use crate::support::e2e::{self, Daemon, Scenario};
use crate::support::regtest::free_port;
use serde_json::Value;
use sqlx::PgPool;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `raregen ARGS` with `env`, to completion.
fn raregen(env: &[(String, String)], args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_raregen"))
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("RUST_LOG", "warn")
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("raregen runs")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// `promtool ARGS` with `input` on stdin: (success, output).
fn promtool(args: &[&str], input: &str) -> (bool, String) {
    let mut child = Command::new("promtool")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool is installed (Debian package prometheus; scripts/test installs it)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        format!("{}{}", text(&out.stdout), text(&out.stderr)),
    )
}

/// A scrape: each sample as (name, labels) → value.
struct Scrape {
    samples: HashMap<(String, String), f64>,
    names: BTreeSet<String>,
}

impl Scrape {
    fn parse(body: &str) -> Scrape {
        let mut samples = HashMap::new();
        let mut names = BTreeSet::new();
        for line in body.lines() {
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (series, value) = line.rsplit_once(' ').expect("name value");
            let (name, labels) = match series.split_once('{') {
                Some((n, l)) => (n, l.trim_end_matches('}')),
                None => (series, ""),
            };
            names.insert(name.to_owned());
            samples.insert(
                (name.to_owned(), labels.to_owned()),
                value.parse::<f64>().expect("a number"),
            );
        }
        Scrape { samples, names }
    }

    fn get(&self, name: &str, labels: &str) -> f64 {
        *self
            .samples
            .get(&(name.to_owned(), labels.to_owned()))
            .unwrap_or_else(|| panic!("no sample {name}{{{labels}}}"))
    }

    fn sum(&self, name: &str) -> f64 {
        self.samples
            .iter()
            .filter(|((n, _), _)| n == name)
            .map(|(_, v)| v)
            .sum()
    }
}

/// Every `raregen_*` metric name in `expr` (PromQL), as a series name of the exposition.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let bytes = expr.as_bytes();
    let mut i = 0;
    while let Some(at) = expr[i..].find("raregen_") {
        let start = i + at;
        let boundary =
            start == 0 || !(bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
        let mut end = start;
        while end < bytes.len() && (bytes[end].is_ascii_alphanumeric() || bytes[end] == b'_') {
            end += 1;
        }
        if boundary {
            out.insert(expr[start..end].to_owned());
        }
        i = end;
    }
    out
}

/// Every `expr` in the dashboard JSON.
fn dashboard_exprs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                match (k.as_str(), v) {
                    ("expr", Value::String(e)) => out.push(e.clone()),
                    _ => dashboard_exprs(v, out),
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|v| dashboard_exprs(v, out)),
        _ => {}
    }
}

fn dashboard() -> Vec<String> {
    let path = repo().join("config/grafana/dashboards/raregen.json");
    let json: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap())
        .expect("the dashboard is JSON");
    let mut exprs = Vec::new();
    dashboard_exprs(&json, &mut exprs);
    exprs
}

fn alert_exprs() -> Vec<String> {
    std::fs::read_to_string(repo().join("config/prometheus-alerts.yml"))
        .unwrap()
        .lines()
        .filter_map(|l| l.trim().strip_prefix("expr: ").map(str::to_owned))
        .collect()
}

/// The dashboard's queries as a rules file, so that `promtool check rules` parses each
/// one (Grafana's `$__…` variables replaced by durations).
fn dashboard_as_rules(exprs: &[String]) -> String {
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, e) in exprs.iter().enumerate() {
        let e = e
            .replace("$__rate_interval", "1m")
            .replace("$__interval", "1m")
            .replace("$__range", "1h");
        rules.push_str(&format!(
            "      - record: dashboard:expr_{i}\n        expr: {}\n",
            serde_json::to_string(&e).unwrap()
        ));
    }
    rules
}

#[test]
fn the_dashboard_and_the_alerts_are_valid_promql_and_provisioning() {
    let exprs = dashboard();
    assert!(exprs.len() >= 20, "{} queries", exprs.len());
    let dir = tempdir("rules");
    let rules = dir.join("dashboard.yml");
    std::fs::write(&rules, dashboard_as_rules(&exprs)).unwrap();
    let (ok, out) = promtool(&["check", "rules", rules.to_str().unwrap()], "");
    assert!(ok, "dashboard queries:\n{out}");
    let (ok, out) = promtool(
        &[
            "check",
            "config",
            repo().join("config/prometheus.yml").to_str().unwrap(),
        ],
        "",
    );
    assert!(ok, "prometheus.yml:\n{out}");
    // The panels the issue names are there.
    let all = exprs.join("\n");
    for needed in [
        "raregen_queue_depth",
        "raregen_rate_limit_max",
        "raregen_batch_size_bucket",
        "raregen_utxo_available",
        "raregen_utxo_reserved",
        "raregen_utxo_dirty",
        "raregen_error_rate",
        "raregen_broadcast_latency_seconds_bucket",
        "raregen_job_latency_seconds_bucket",
        "raregen_actor_restarts_total",
    ] {
        assert!(all.contains(needed), "the dashboard shows no {needed}");
    }
    let provider =
        std::fs::read_to_string(repo().join("config/grafana/provisioning/dashboards/raregen.yml"))
            .unwrap();
    assert!(provider.contains("path: /var/lib/grafana/dashboards"));
}

fn tempdir(what: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "raregen-{what}-{}-{}",
        std::process::id(),
        rand::random::<u32>()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

async fn scrape(base: &str) -> String {
    let resp = reqwest::get(format!("{base}/metrics")).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    resp.text().await.unwrap()
}

async fn count(pool: &PgPool, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(pool).await.unwrap()
}

/// A bcoin node, a wallet of `coins` funded on it, and `raregen serve --mode batch`
/// publishing to it with `overrides`: the setup of the end-to-end operations tests.
async fn publishing_daemon(
    pool: &PgPool,
    coins: u32,
    overrides: &[(&str, &str)],
) -> (Scenario, Daemon) {
    let s = Scenario::funded(pool, coins).env(overrides).start().await;
    let daemon = s.serve(&["--mode", "batch"]);
    (s, daemon)
}

/// `raregen load-test --count N --json` against `daemon`: its summary.
fn load_test(env: &[(String, String)], daemon: &Daemon, count: u32, timeout: &str) -> Value {
    let out = raregen(
        env,
        &[
            "load-test",
            "--count",
            &count.to_string(),
            "--url",
            &daemon.base,
            "--timeout",
            timeout,
            "--json",
        ],
    );
    assert!(
        out.status.success(),
        "load-test failed: {}\n{}",
        text(&out.stderr),
        daemon.log()
    );
    serde_json::from_slice(&out.stdout).expect("the summary is JSON")
}

/// 5,000 jobs through `raregen load-test` against `raregen serve` and bcoin; then the
/// scrape, the dashboard, the alerts and `status --json` checked against the database.
#[sqlx::test]
async fn load_test_metrics_and_status_after_five_thousand_jobs(pool: PgPool) {
    let (s, mut daemon) =
        publishing_daemon(&pool, 500, &[("RAREGEN__METRICS__REFRESH", "1s")]).await;
    let env = &s.env;
    let summary = load_test(env, &daemon, 5000, "4m");
    println!("load-test summary: {summary:#}");
    assert_eq!(summary["submitted"], 5000);
    assert_eq!(summary["sent"], 5000);
    assert_eq!(summary["failed"], 0);
    assert_eq!(summary["unfinished"], 0);
    let rate = summary["broadcast_rate"].as_f64().unwrap();
    // At most 500 in any 3 s: 5,000 broadcasts span at least 27 s (the first window
    // may be a burst), so first-to-last is at most 4,999 / 27 per second (26 s here, for
    // the jitter between a broadcast and its `sent_at`).
    assert!(rate > 0.0 && rate <= 4999.0 / 26.0, "broadcast rate {rate}");
    let (p50, p99) = (
        summary["latency_p50"].as_f64().unwrap(),
        summary["latency_p99"].as_f64().unwrap(),
    );
    assert!(0.0 < p50 && p50 <= p99, "p50 {p50} p99 {p99}");
    // The jobs it counted are the database's.
    assert_eq!(e2e::jobs_with_status(&pool, "sent").await, 5000);

    // Let the sampler refresh from the database, then scrape.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let body = scrape(&daemon.base).await;
    let (ok, out) = promtool(&["check", "metrics"], &body);
    assert!(ok, "promtool check metrics:\n{out}");
    let m = Scrape::parse(&body);

    let queue: Vec<(String, i64)> =
        sqlx::query_as("SELECT status, count(*) FROM publish_jobs GROUP BY status")
            .fetch_all(&pool)
            .await
            .unwrap();
    let queue: HashMap<String, i64> = queue.into_iter().collect();
    for status in ["queued", "processing_batch", "sending", "sent", "failed"] {
        assert_eq!(
            m.get("raregen_queue_depth", &format!("status=\"{status}\"")),
            *queue.get(status).unwrap_or(&0) as f64,
            "queue depth {status}"
        );
    }
    assert_eq!(
        m.get("raregen_broadcasts_total", "outcome=\"accepted\""),
        5000.0
    );
    assert_eq!(m.get("raregen_jobs_sent_total", ""), 5000.0);
    assert_eq!(m.get("raregen_jobs_failed_total", ""), 0.0);
    assert_eq!(m.get("raregen_job_latency_seconds_count", ""), 5000.0);
    assert!(m.get("raregen_broadcast_latency_seconds_count", "") >= 5000.0);
    // Batches of at most 500: at least 10 claims, all 5,000 jobs in them. A job can be
    // claimed more than once (a job-side rejection sends it back to the queue for
    // another attempt), and `attempts` counts its claims and takeovers (the fencing
    // token moves on at each): the histogram counts at most what the database recorded,
    // whatever the machine's load made of the run.
    assert!(m.get("raregen_batch_size_count", "") >= 10.0);
    let claims = count(&pool, "SELECT sum(attempts) FROM publish_jobs").await;
    let retried: Vec<(i64, i32, Option<String>)> = sqlx::query_as(
        "SELECT id, attempts, last_error FROM publish_jobs WHERE attempts > 1 ORDER BY id",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    println!("jobs claimed or taken over more than once: {retried:?}");
    let claimed = m.get("raregen_batch_size_sum", "");
    assert!(
        (5000.0..=claims as f64).contains(&claimed),
        "{claimed} claims for 5000 jobs, {claims} claims and takeovers recorded"
    );
    // Each maintenance service ran and says so.
    for service in ["rescuer", "dirty_settler", "confirmation_watcher"] {
        let label = format!("service=\"{service}\"");
        assert!(
            m.get("raregen_maintenance_runs_total", &label) >= 1.0,
            "{service}"
        );
        assert!(m.get("raregen_maintenance_run_seconds_count", &label) >= 1.0);
        assert!(m.get("raregen_maintenance_errors_total", &label) >= 0.0);
    }
    // However often a job was claimed, its payload is on the node once.
    s.assert_all_published_once(5000, Duration::from_secs(60))
        .await;
    assert_eq!(
        m.get("raregen_batch_size_bucket", "le=\"+Inf\""),
        m.get("raregen_batch_size_count", "")
    );
    let available = count(
        &pool,
        "SELECT count(*) FROM utxos WHERE state = 'available' AND NOT dirty",
    )
    .await;
    assert_eq!(m.get("raregen_utxo_available", ""), available as f64);
    assert!(available > 0);
    assert_eq!(m.get("raregen_utxo_dirty", ""), 0.0);
    assert_eq!(m.get("raregen_rate_limit_max", ""), 500.0);
    assert_eq!(m.get("raregen_rate_limit_window_seconds", ""), 3.0);
    assert_eq!(m.get("raregen_rate_limit_budget", ""), 500.0);
    let tokens = m.get("raregen_rate_limit_tokens", "");
    assert!((0.0..=500.0).contains(&tokens));
    assert_eq!(
        m.get("raregen_actor_restarts_total", "actor=\"broadcaster\""),
        0.0
    );
    assert_eq!(m.get("raregen_pipeline_running", ""), 1.0);
    assert_eq!(m.get("raregen_database_up", ""), 1.0);
    for actor in ["token_bucket", "batch", "recorder"] {
        assert!(m.get("raregen_mailbox_depth", &format!("actor=\"{actor}\"")) >= 0.0);
    }
    assert!(m.names.contains("raregen_batches_in_flight"));
    assert!(m.names.contains("raregen_broadcast_rate"));
    assert!((0.0..=1.0).contains(&m.get("raregen_error_rate", "")));
    assert!(m.sum("raregen_broadcasts_total") >= 5000.0);
    // No label carries a txid, a job id or an address.
    for (name, labels) in m.samples.keys() {
        let named: Vec<&str> = labels
            .split(',')
            .filter_map(|l| l.split_once('=').map(|(k, _)| k.trim()))
            .collect();
        assert!(
            !named
                .iter()
                .any(|k| k.contains("txid") || k.contains("job") || k.contains("address")),
            "{name}{{{labels}}}"
        );
    }

    // The dashboard and the alerts name only series the daemon exports.
    let mut named = BTreeSet::new();
    for e in dashboard().iter().chain(alert_exprs().iter()) {
        named.extend(metric_names(e));
    }
    let missing: Vec<&String> = named.iter().filter(|n| !m.names.contains(*n)).collect();
    assert!(missing.is_empty(), "not exported: {missing:?}");
    assert!(named.len() >= 20, "{named:?}");

    // `status --json` is the database's view.
    let out = raregen(env, &["status", "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let status: Value = serde_json::from_slice(&out.stdout).unwrap();
    let shown: HashMap<String, i64> = status["queue"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["status"].as_str().unwrap().to_owned(),
                r["count"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(shown, queue);
    assert_eq!(status["pool"]["available"].as_i64().unwrap(), available);
    let batches = status["batches"].as_array().unwrap();
    assert_eq!(batches.len(), 10, "the last 10 batches");
    assert!(status["oldest_sending"].is_null());

    assert!(daemon.stop().success());
}

/// A job stuck in `sending` (the process died between storing its transaction and
/// broadcasting it) is re-broadcast by `raregen unstick` from the stored bytes.
#[cfg(feature = "failpoints")]
#[sqlx::test]
async fn unstick_rebroadcasts_the_stored_bytes(pool: PgPool) {
    let s = Scenario::funded(&pool, 10)
        // A Janitor that would not step in during the test.
        .env(&[("RAREGEN__JANITOR__STUCK_AFTER", "1h")])
        .start()
        .await;
    let (node, env) = (&s.node, &s.env);
    let mut daemon = s.serve_with(
        &[("FAILPOINTS", "after-store-before-broadcast=1*sleep(60000)")],
        &[],
    );
    let ids = e2e::submit(&daemon.base, "stuck", 1).await;
    let started = std::time::Instant::now();
    while e2e::jobs_with_status(&pool, "sending").await == 0 {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "{}",
            daemon.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    daemon.kill9();
    let (txid, raw): (String, Vec<u8>) =
        sqlx::query_as("SELECT txid, raw_tx FROM publish_jobs WHERE id = $1")
            .bind(ids[0])
            .fetch_one(&pool)
            .await
            .unwrap();
    assert!(
        !node.mempool().await.contains(&txid),
        "the transaction was never broadcast"
    );

    // Too young for --older-than 10m: left alone.
    let out = raregen(env, &["unstick", "--older-than", "10m"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).starts_with("0 stuck job(s)"),
        "{}",
        text(&out.stdout)
    );

    let out = raregen(env, &["unstick", "--older-than", "0s"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let said = text(&out.stdout);
    assert!(said.starts_with("1 stuck job(s) re-broadcast"), "{said}");
    assert!(said.contains("1 sent"), "{said}");
    let (status, after): (String, String) =
        sqlx::query_as("SELECT status, txid FROM publish_jobs WHERE id = $1")
            .bind(ids[0])
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(status, "sent");
    assert_eq!(
        after, txid,
        "never signed again: the txid is the stored one"
    );
    // bcoin answers before it verifies: on a busy machine the transaction shows a while
    // after the answer.
    let started = std::time::Instant::now();
    while !node.mempool().await.contains(&txid) {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "the re-sent transaction never reached the mempool"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(node.raw_transaction(&txid).await, raw, "the stored bytes");
    // Its change is in the pool, one deeper.
    assert_eq!(
        count(
            &pool,
            &format!("SELECT count(*) FROM utxos WHERE txid = '{txid}' AND state = 'available'")
        )
        .await,
        1
    );
}

/// `raregen unstick` without a wallet key says what is missing, in one line.
#[test]
fn unstick_without_a_wallet_key_explains() {
    let out = raregen(&[], &["unstick"]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("wallet key"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
}

/// `raregen load-test` against nothing fails fast with a clear message.
#[test]
fn load_test_without_a_daemon_fails_clearly() {
    let out = raregen(
        &[],
        &["load-test", "--count", "10", "--url", "http://127.0.0.1:9"],
    );
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("no raregen API answers at http://127.0.0.1:9"),
        "{err}"
    );
    let out = raregen(&[], &["load-test", "--count", "0"]);
    assert!(text(&out.stderr).contains("--count must be at least 1"));
}

/// The README's first command, as CI can run it: `scripts/demo --once` with this
/// build, a fresh demo database, a private node and a throwaway wallet.
#[test]
fn the_demo_publishes_its_jobs_and_stops_what_it_started() {
    let node_port = free_port();
    let api_port = free_port();
    let out = Command::new(repo().join("scripts/demo"))
        .args(["--once", "--jobs", "300"])
        .env("RAREGEN_BIN", env!("CARGO_BIN_EXE_raregen"))
        .env("DEMO_API_PORT", api_port.to_string())
        .env("DEMO_NODE_PORT", node_port.to_string())
        .env(
            "DATABASE_URL",
            std::env::var("DATABASE_URL")
                .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/raregen".into()),
        )
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("300 submitted, 300 sent, 0 failed"),
        "{stdout}\n{stderr}"
    );
    // What the demo says goes to stdout, in order, and ends with what it stopped.
    let done = stdout.find("demo done (--once)").expect(&stdout);
    assert!(
        stdout.find("300 submitted").is_some_and(|at| at < done),
        "{stdout}"
    );
    assert!(stdout[done..].contains("stopped"), "{stdout}");
    // Everything it started is stopped.
    for port in [api_port, node_port] {
        assert!(
            std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
            "port {port} still answers"
        );
    }
}

/// The `sh` blocks of docs/operations.md, in order.
fn runbook_blocks() -> Vec<String> {
    let doc = std::fs::read_to_string(repo().join("docs/operations.md")).unwrap();
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in doc.lines() {
        match (&mut current, line.trim_end()) {
            (None, "```sh") => current = Some(String::new()),
            (Some(block), "```") => {
                blocks.push(std::mem::take(block));
                current = None;
            }
            (Some(block), l) => {
                block.push_str(l);
                block.push('\n');
            }
            _ => {}
        }
    }
    blocks
}

/// Every `sh` command of the runbook runs as written against a daemon publishing to a
/// regtest node (raregen on the PATH, DATABASE_URL and RAREGEN_API set as the runbook
/// says).
#[sqlx::test]
async fn the_runbook_commands_run_as_written(pool: PgPool) {
    let blocks = runbook_blocks();
    assert!(blocks.len() >= 10, "{} runnable blocks", blocks.len());
    let s = Scenario::funded(&pool, 100).start().await;
    let mut daemon = s.serve(&[]);
    e2e::submit(&daemon.base, "runbook", 20).await;
    let mut env = s.env.clone();
    let bin_dir = PathBuf::from(env!("CARGO_BIN_EXE_raregen"))
        .parent()
        .unwrap()
        .to_owned();
    env.push((
        "PATH".into(),
        format!(
            "{}:{}",
            bin_dir.display(),
            std::env::var("PATH").unwrap_or_default()
        ),
    ));
    env.push(("RAREGEN_API".into(), daemon.base.clone()));
    for block in &blocks {
        let out = Command::new("bash")
            .args(["-euo", "pipefail", "-c", block])
            .env_clear()
            .env("RUST_LOG", "warn")
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "runbook block failed:\n{block}\nstdout:\n{}\nstderr:\n{}",
            text(&out.stdout),
            text(&out.stderr)
        );
    }
    assert!(daemon.stop().success());
}

/// A real Prometheus (Debian's `prometheus`) on a free port, scraping `target` every
/// second with the project's alert rules loaded; stopped when dropped.
struct Prometheus {
    child: std::process::Child,
    base: String,
    _dir: PathBuf,
}

impl Prometheus {
    fn start(target: &str) -> Prometheus {
        let dir = tempdir("prometheus");
        std::fs::copy(
            repo().join("config/prometheus-alerts.yml"),
            dir.join("prometheus-alerts.yml"),
        )
        .unwrap();
        // The project's config with the test's target and a short interval.
        let config = std::fs::read_to_string(repo().join("config/prometheus.yml"))
            .unwrap()
            .replace("raregen:8080", target)
            .replace("scrape_interval: 5s", "scrape_interval: 1s")
            .replace("evaluation_interval: 15s", "evaluation_interval: 1s");
        assert!(
            config.contains(target),
            "config/prometheus.yml names raregen:8080"
        );
        std::fs::write(dir.join("prometheus.yml"), config).unwrap();
        let port = free_port();
        let log = std::fs::File::create(dir.join("prometheus.log")).unwrap();
        let child = Command::new("prometheus")
            .arg(format!(
                "--config.file={}",
                dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect(
                "prometheus is installed (Debian package prometheus; scripts/test installs it)",
            );
        Prometheus {
            child,
            base: format!("http://127.0.0.1:{port}"),
            _dir: dir,
        }
    }

    /// An instant query at now: the result array (vector) or a one-element array (scalar).
    async fn query(&self, expr: &str) -> Vec<Value> {
        let resp: Value = reqwest::Client::new()
            .get(format!("{}/api/v1/query", self.base))
            .query(&[("query", expr)])
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(resp["status"], "success", "{expr}: {resp}");
        match resp["data"]["resultType"].as_str() {
            Some("scalar") => vec![resp["data"]["result"].clone()],
            _ => resp["data"]["result"]
                .as_array()
                .cloned()
                .unwrap_or_default(),
        }
    }

    async fn wait_up(&self) {
        for _ in 0..120 {
            if let Ok(resp) = reqwest::get(format!("{}/api/v1/query?query=up", self.base)).await {
                if let Ok(v) = resp.json::<Value>().await {
                    if v["data"]["result"][0]["value"][1] == "1" {
                        return;
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        panic!("Prometheus never scraped the daemon");
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The operands of an alert's expression without their thresholds
/// (`a > 0 and b < 10` → `a`, `b`): what must have data for the alert to mean anything.
fn alert_operands(expr: &str) -> Vec<String> {
    expr.split(" and ")
        .flat_map(|part| part.split(" or "))
        .map(|part| {
            let mut part = part.trim();
            for op in ["==", "!=", ">=", "<=", ">", "<"] {
                if let Some((left, right)) = part.rsplit_once(op) {
                    if right.trim().parse::<f64>().is_ok() {
                        part = left.trim();
                        break;
                    }
                }
            }
            part.to_owned()
        })
        .collect()
}

/// Debian's Prometheus scrapes a daemon publishing to bcoin; the alert rules load, and
/// every query of the Grafana dashboard and every operand of the alert rules returns
/// data through Prometheus's HTTP API: no panel stays blank.
#[sqlx::test]
async fn prometheus_finds_data_for_every_panel_and_alert(pool: PgPool) {
    let (s, daemon) = publishing_daemon(&pool, 200, &[("RAREGEN__METRICS__REFRESH", "1s")]).await;
    let prometheus = Prometheus::start(daemon.base.trim_start_matches("http://"));
    prometheus.wait_up().await;
    let summary = load_test(&s.env, &daemon, 1500, "3m");
    assert_eq!(summary["sent"], 1500);
    // A few scrapes and rule evaluations after the last job.
    tokio::time::sleep(Duration::from_secs(4)).await;

    let rules: Value = reqwest::get(format!("{}/api/v1/rules", prometheus.base))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let loaded: Vec<&Value> = rules["data"]["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap())
        .collect();
    assert_eq!(
        loaded.len(),
        alert_exprs().len(),
        "every alert rule is loaded"
    );
    for rule in &loaded {
        assert_eq!(rule["health"], "ok", "{rule}");
    }

    let mut blank = Vec::new();
    let dashboard = dashboard();
    for expr in &dashboard {
        // Grafana's variables as a dashboard over the last few minutes would set them.
        let expr = expr
            .replace("$__rate_interval", "30s")
            .replace("$__interval", "5s")
            .replace("$__range", "5m");
        if prometheus.query(&expr).await.is_empty() {
            blank.push(format!("dashboard: {expr}"));
        }
    }
    let alerts = alert_exprs();
    for alert in &alerts {
        for operand in alert_operands(alert) {
            if prometheus.query(&operand).await.is_empty() {
                blank.push(format!("alert `{alert}`: {operand}"));
            }
        }
    }
    assert!(
        blank.is_empty(),
        "queries with no data after 1,500 jobs:\n{}",
        blank.join("\n")
    );
    println!(
        "Prometheus: {} dashboard queries and {} alert rules, all with data",
        dashboard.len(),
        alerts.len()
    );
    // And what it measured is what happened (the last scrape may be a second behind).
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let sent = prometheus
            .query("sum(raregen_jobs_sent_total)")
            .await
            .first()
            .and_then(|s| s["value"][1].as_str().map(|v| v.parse::<f64>().unwrap()));
        if sent == Some(1500.0) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "Prometheus counted {sent:?} jobs sent, not 1,500"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// GET `path` on the daemon with the API key, as JSON.
async fn api(base: &str, key: &str, path: &str) -> Value {
    let resp = reqwest::Client::new()
        .get(format!("{base}{path}"))
        .bearer_auth(key)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "{path}");
    resp.json().await.unwrap()
}

/// The operator console in a real browser (Debian's Chromium, driven by
/// tests/console/drive.cjs) against a daemon publishing to bcoin: the key goes in
/// through the login field, every figure on the page is the API's, nothing leaves the
/// daemon's origin, the key is kept nowhere, and the phone width needs no sideways
/// scrolling. The screenshots are saved in target/console-screenshots/.
#[sqlx::test]
async fn the_console_shows_what_the_api_says_in_a_real_browser(pool: PgPool) {
    const KEY: &str = "console-test-key";
    let (_s, daemon) = publishing_daemon(&pool, 200, &[("RAREGEN__API__API_KEY", KEY)]).await;
    let client = reqwest::Client::new();
    let mut ids = Vec::new();
    for chunk in 0..3 {
        let jobs: Vec<Value> = (0..500)
            .map(|i| serde_json::json!({"payload": format!("console-{chunk}-{i}")}))
            .collect();
        let resp: Value = client
            .post(format!("{}/v1/jobs/bulk", daemon.base))
            .bearer_auth(KEY)
            .json(&serde_json::json!({ "jobs": jobs }))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        ids.extend(
            resp["ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_i64().unwrap()),
        );
    }
    let (sent, failed) = e2e::wait_done(&pool, Duration::from_secs(120), &daemon).await;
    assert_eq!((sent, failed), (1500, 0));
    // Two failures to show: the pipeline against bcoin fails nothing, so these are set
    // by hand, as an operator's `UPDATE … SET status = 'failed'` would.
    let failures = [ids[0], ids[1]];
    sqlx::query(
        "UPDATE publish_jobs SET status = 'failed', last_error = 'refused: <b>bad</b> & co',
                updated_at = now() - make_interval(secs => id)
         WHERE id = ANY($1)",
    )
    .bind(&failures[..])
    .execute(&pool)
    .await
    .unwrap();
    let looked_up = ids[700];
    // The rate chart needs two samples (5 s apart) to draw a line.
    tokio::time::sleep(Duration::from_secs(11)).await;

    let out_dir = repo().join("target/console-screenshots");
    std::fs::create_dir_all(&out_dir).unwrap();
    let mut command = Command::new("node");
    command
        .arg(repo().join("tests/console/drive.cjs"))
        .env(
            "NODE_PATH",
            repo().join("target/tools/console-driver/node_modules"),
        )
        .env("BASE", &daemon.base)
        .env("KEY", KEY)
        .env("JOB", looked_up.to_string())
        .env("OUT", &out_dir);
    let output = tokio::task::spawn_blocking(move || command.output())
        .await
        .unwrap()
        .expect("node runs (scripts/test installs the console driver)");
    assert!(
        output.status.success(),
        "the browser run failed:\n{}",
        text(&output.stderr)
    );
    let seen: Value = serde_json::from_slice(&output.stdout).expect("the driver prints JSON");

    let ids_of = |v: &Value, key: &str| -> Vec<i64> {
        v[key]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x["id"].as_i64().unwrap())
            .collect()
    };
    // The API itself says what the database holds (checked here once; the page is then
    // checked against the answers it got, which a split or a maintenance run could
    // move between two reads).
    let queue = api(&daemon.base, KEY, "/v1/queue").await;
    assert_eq!(
        (queue["sent"].as_i64(), queue["failed"].as_i64()),
        (Some(1498), Some(2))
    );
    let failed_now = api(&daemon.base, KEY, "/v1/jobs?status=failed&limit=20").await;
    // Newest failure first: job ids[0] failed a second after ids[1].
    assert_eq!(ids_of(&failed_now, "jobs"), vec![failures[0], failures[1]]);
    for width in ["desktop", "phone"] {
        let page = &seen[width];
        let figure = |id: &str| page["figures"][id].as_str().unwrap_or("").to_owned();
        let answer = |path: &str| -> Value {
            let v = page["answers"][path].clone();
            assert!(!v.is_null(), "{width}: the page never read {path}");
            v
        };
        let queue = answer("/v1/queue");
        let pool_view = answer("/v1/pool");
        let info = answer("/v1/info");
        let rate = answer("/v1/rate");
        let batches = answer("/v1/batches?limit=10");
        let failed_jobs = answer("/v1/jobs?status=failed&limit=20");
        let sending_jobs = answer("/v1/jobs?status=sending&limit=20");
        let job = answer(&format!("/v1/jobs/{looked_up}"));
        assert_eq!(page["beforeLogin"]["auth"], "API key needed", "{width}");
        assert!(
            page["problems"].as_array().unwrap().is_empty(),
            "{width}: {}",
            page["problems"]
        );
        assert!(page["error"].is_null(), "{width}: {}", page["error"]);
        for status in ["queued", "processing_batch", "sending", "sent", "failed"] {
            assert_eq!(
                figure(&format!("queue-{status}")),
                queue[status].to_string(),
                "{width} {status}"
            );
        }
        for field in [
            "available",
            "available_sats",
            "reserved",
            "reserved_sats",
            "dirty",
            "dirty_sats",
            "pending",
            "capacity",
        ] {
            assert_eq!(
                figure(&format!("pool-{field}")),
                pool_view[field].to_string(),
                "{width} pool {field}"
            );
        }
        assert_eq!(figure("info-network"), info["network"].as_str().unwrap());
        assert_eq!(figure("info-mode"), "batch");
        assert_eq!(figure("info-limit-max"), info["rate_limit_max"].to_string());
        assert_eq!(
            figure("rate-limit"),
            format!("{:.1}", rate["limit_per_second"].as_f64().unwrap())
        );
        let points = rate["points"].as_array().unwrap();
        assert!(points.len() >= 2, "{rate}");
        assert_eq!(
            figure("rate-now"),
            format!(
                "{:.1}",
                points.last().unwrap()["sent_per_second"].as_f64().unwrap()
            )
        );
        assert!(
            page["chartPoints"].as_u64().unwrap() >= 1,
            "{width}: the chart draws the rate"
        );
        assert_eq!(
            page["batches"],
            serde_json::json!(ids_of(&batches, "batches")),
            "{width}"
        );
        assert_eq!(
            page["failed"],
            serde_json::json!(ids_of(&failed_jobs, "jobs")),
            "{width}"
        );
        assert_eq!(ids_of(&failed_jobs, "jobs").len(), 2);
        assert!(
            page["failedReasons"][0]
                .as_str()
                .unwrap()
                .contains("refused: <b>bad</b> & co"),
            "{width}: the reason, as text: {}",
            page["failedReasons"]
        );
        assert_eq!(
            figure("sending-count"),
            ids_of(&sending_jobs, "jobs").len().to_string()
        );
        assert_eq!(figure("ready"), "ready");
        assert_eq!(figure("job-status"), job["status"].as_str().unwrap());
        assert_eq!(figure("job-attempts"), job["attempts"].to_string());
        assert!(
            figure("job-txid").starts_with(job["txid"].as_str().unwrap()),
            "{width}"
        );
        let mut history: Vec<Value> = job["earlier_txids"].as_array().unwrap().clone();
        history.push(job["txid"].clone());
        assert_eq!(page["history"], Value::Array(history), "{width}");
        // The key lives in the page's memory only.
        assert_eq!(page["stored"]["local"], 0);
        assert_eq!(page["stored"]["session"], 0);
        assert_eq!(page["stored"]["cookie"], "");
        assert!(!page["stored"]["url"].as_str().unwrap().contains(KEY));
    }
    let phone = &seen["phone"];
    assert!(
        phone["scrollWidth"].as_u64() <= phone["innerWidth"].as_u64(),
        "the phone width scrolls sideways: {} > {}",
        phone["scrollWidth"],
        phone["innerWidth"]
    );
    for name in ["desktop", "phone"] {
        let shot = out_dir.join(format!("console-{name}.png"));
        assert!(
            std::fs::metadata(&shot).unwrap().len() > 10_000,
            "{}",
            shot.display()
        );
    }
    assert!(!daemon.log().contains(KEY), "the API key reached the log");
}
