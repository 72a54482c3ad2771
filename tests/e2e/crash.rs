//! Crashes: `raregen serve` killed with SIGKILL at exact points (failpoints) and at
//! random moments, a broadcaster that panics, the node away for 30 s. Afterwards every
//! job is sent exactly once, no UTXO is spent twice, and a stored transaction is never
//! signed again.
//!
//! The failpoints need the `failpoints` feature (scripts/test turns it on).
#![cfg(feature = "failpoints")]

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::support::e2e::{self, Daemon, Proxy};
use crate::support::regtest::{free_port, RegtestNode};
use sqlx::PgPool;

/// Fast recovery for tests: leases of 3 s, stuck after 2 s.
const FAST: &[(&str, &str)] = &[
    ("RAREGEN__JANITOR__INTERVAL", "1s"),
    ("RAREGEN__JANITOR__STUCK_AFTER", "2s"),
    ("RAREGEN__RATE_LIMIT__MAX", "5000"),
    ("RAREGEN__BROADCASTER__WORKERS", "8"),
];

async fn waits_for<F, Fut>(what: &str, limit: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    while !check().await {
        assert!(started.elapsed() < limit, "waited {limit:?} for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn count(pool: &PgPool, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(pool).await.unwrap()
}

/// Every job sent, each payload in exactly one transaction on the node, that
/// transaction the job's txid; no UTXO spent by two stored transactions.
async fn assert_exactly_once(pool: &PgPool, node: &RegtestNode, jobs: usize) {
    let splits = count(
        pool,
        "SELECT count(*) FROM pool_transactions WHERE status = 'sent'",
    )
    .await as usize;
    e2e::wait_mempool(node, jobs + splits, Duration::from_secs(60)).await;
    let on_node = e2e::mempool_payloads(node).await;
    let mut by_payload: HashMap<Vec<u8>, Vec<String>> = HashMap::new();
    for (txid, payload) in on_node {
        by_payload.entry(payload).or_default().push(txid);
    }
    let rows: Vec<(i64, String, Vec<u8>, Option<String>)> =
        sqlx::query_as("SELECT id, status, payload, txid FROM publish_jobs ORDER BY id")
            .fetch_all(pool)
            .await
            .unwrap();
    assert_eq!(rows.len(), jobs);
    for (id, status, payload, txid) in &rows {
        assert_eq!(status, "sent", "job {id}");
        assert_eq!(
            by_payload.get(payload),
            Some(&vec![txid.clone().unwrap()]),
            "job {id}: its payload is in exactly one transaction, its own"
        );
    }
    assert_eq!(by_payload.len(), jobs, "no other payload on the node");
    let double: i64 = count(
        pool,
        "SELECT count(*) FROM (SELECT utxo_id FROM publish_jobs WHERE utxo_id IS NOT NULL
                               GROUP BY utxo_id HAVING count(*) > 1) d",
    )
    .await;
    assert_eq!(double, 0, "a UTXO spent by two jobs");
}

/// Stored transactions (job id → txid) at this moment.
async fn stored(pool: &PgPool) -> HashMap<i64, String> {
    sqlx::query_as::<_, (i64, String)>("SELECT id, txid FROM publish_jobs WHERE txid IS NOT NULL")
        .fetch_all(pool)
        .await
        .unwrap()
        .into_iter()
        .collect()
}

async fn killed_at(pool: PgPool, failpoint: &str, until: &str) {
    let node = RegtestNode::start().await;
    let wif = e2e::funded_wallet(&node, &pool, 100, 20_000).await;
    let proxy = Proxy::start(&node.url);
    let env = e2e::serve_env(&pool, &node, &proxy.url, &wif, FAST).await;
    let mut with_fp = env.clone();
    with_fp.push(("FAILPOINTS".into(), format!("{failpoint}=1*sleep(60000)")));
    let mut daemon = Daemon::start(&with_fp, &[]);
    e2e::submit(&daemon.base, "crash", 200).await;
    // The process freezes at the failpoint; wait until the state is the one to test.
    waits_for(until, Duration::from_secs(60), || async {
        count(&pool, until).await > 0
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    daemon.kill9();
    let before = stored(&pool).await;
    let broadcasts_before = proxy.arrivals.lock().unwrap().len();

    let mut daemon = Daemon::start(&env, &[]);
    let (sent, failed) = e2e::wait_done(&pool, Duration::from_secs(120), &daemon).await;
    assert_eq!((sent, failed), (200, 0));
    assert!(daemon.stop().success());
    let after = stored(&pool).await;
    for (id, txid) in &before {
        assert_eq!(
            after.get(id),
            Some(txid),
            "job {id} was signed again after the crash"
        );
    }
    println!(
        "{failpoint}: {} stored before the kill, {broadcasts_before} broadcasts before it",
        before.len()
    );
    assert_exactly_once(&pool, &node, 200).await;
}

#[sqlx::test]
async fn killed_mid_claim(pool: PgPool) {
    killed_at(
        pool,
        "after-claim",
        "SELECT count(*) FROM publish_jobs WHERE status = 'processing_batch'",
    )
    .await;
}

#[sqlx::test]
async fn killed_between_store_and_broadcast(pool: PgPool) {
    killed_at(
        pool,
        "after-store-before-broadcast",
        "SELECT count(*) FROM publish_jobs WHERE status = 'sending'",
    )
    .await;
}

#[sqlx::test]
async fn killed_between_broadcast_and_recording(pool: PgPool) {
    killed_at(
        pool,
        "after-broadcast-before-record",
        "SELECT count(*) FROM publish_jobs WHERE status = 'sending'",
    )
    .await;
}

#[sqlx::test]
async fn killed_at_random_moments(pool: PgPool) {
    let node = RegtestNode::start().await;
    let wif = e2e::funded_wallet(&node, &pool, 100, 20_000).await;
    let mut env = e2e::serve_env(&pool, &node, &node.url, &wif, FAST).await;
    // Slow enough that the kills land mid-run: 100 broadcasts per second.
    env.push(("RAREGEN__RATE_LIMIT__MAX".into(), "100".into()));
    env.push(("RAREGEN__RATE_LIMIT__PER".into(), "1s".into()));
    let mut daemon = Daemon::start(&env, &[]);
    e2e::submit(&daemon.base, "random", 600).await;
    let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
    for round in 0..3 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let after = Duration::from_millis(500 + seed % 1_500);
        tokio::time::sleep(after).await;
        let before = stored(&pool).await;
        daemon.kill9();
        println!(
            "round {round}: killed after {after:?} with {} stored",
            before.len()
        );
        daemon = Daemon::start(&env, &[]);
        let kept = stored(&pool).await;
        for (id, txid) in &before {
            if let Some(now) = kept.get(id) {
                assert_eq!(now, txid, "job {id} re-signed");
            }
        }
    }
    let (sent, failed) = e2e::wait_done(&pool, Duration::from_secs(180), &daemon).await;
    assert_eq!((sent, failed), (600, 0));
    assert!(daemon.stop().success());
    assert_exactly_once(&pool, &node, 600).await;
}

#[sqlx::test]
async fn a_panicking_broadcaster_is_restarted_and_its_job_completes(pool: PgPool) {
    let node = RegtestNode::start().await;
    let wif = e2e::funded_wallet(&node, &pool, 100, 20_000).await;
    let mut env = e2e::serve_env(&pool, &node, &node.url, &wif, FAST).await;
    // The first two broadcasters to get there panic once each, after storing.
    env.push((
        "FAILPOINTS".into(),
        "after-store-before-broadcast=2*panic".into(),
    ));
    let mut daemon = Daemon::start(&env, &[]);
    e2e::submit(&daemon.base, "panic", 100).await;
    let (sent, failed) = e2e::wait_done(&pool, Duration::from_secs(60), &daemon).await;
    assert_eq!((sent, failed), (100, 0));
    let log = daemon.log();
    assert_eq!(log.matches("restarting broadcaster").count(), 2, "{log}");
    assert!(daemon.stop().success());
    assert_exactly_once(&pool, &node, 100).await;
}

#[sqlx::test]
async fn the_node_away_for_30_seconds(pool: PgPool) {
    let node = RegtestNode::start().await;
    let wif = e2e::funded_wallet(&node, &pool, 200, 20_000).await;
    let proxy = Proxy::start(&node.url);
    let mut env = e2e::serve_env(&pool, &node, &proxy.url, &wif, FAST).await;
    env.push(("RAREGEN__RATE_LIMIT__MAX".into(), "50".into()));
    env.push(("RAREGEN__RATE_LIMIT__PER".into(), "1s".into()));
    let mut daemon = Daemon::start(&env, &[]);
    e2e::submit(&daemon.base, "away", 300).await;
    waits_for("some jobs sent", Duration::from_secs(30), || async {
        count(
            &pool,
            "SELECT count(*) FROM publish_jobs WHERE status = 'sent'",
        )
        .await
            >= 50
    })
    .await;
    proxy.down.store(true, std::sync::atomic::Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(30)).await;
    let failed = count(
        &pool,
        "SELECT count(*) FROM publish_jobs WHERE status = 'failed'",
    )
    .await;
    assert_eq!(failed, 0, "no job fails while the node is away");
    proxy.down.store(false, std::sync::atomic::Ordering::SeqCst);
    let (sent, failed) = e2e::wait_done(&pool, Duration::from_secs(120), &daemon).await;
    assert_eq!((sent, failed), (300, 0));
    assert!(daemon.stop().success());
    assert_exactly_once(&pool, &node, 300).await;
}

/// The node itself stopped for 30 s mid-run and started again (bcoin keeps its chain
/// on disk but comes back with an empty mempool): broadcasts in between have no answer
/// (Unknown, UTXOs dirty), no job fails; once the node is back the Janitor settles the
/// dirty UTXOs and sends again, parents first, every transaction the node lost: every
/// job ends on the node exactly once, with the txid it was first signed with.
#[sqlx::test]
async fn the_node_stopped_for_30_seconds_and_started_again(pool: PgPool) {
    let dir = std::env::temp_dir().join(format!(
        "raregen-node-stop-{}-{}",
        std::process::id(),
        rand::random::<u32>()
    ));
    let mut node = RegtestNode::start_with(dir.clone(), free_port(), true).await;
    let wif = e2e::funded_wallet(&node, &pool, 200, 20_000).await;
    let mut env = e2e::serve_env(&pool, &node, &node.url, &wif, FAST).await;
    env.push(("RAREGEN__RATE_LIMIT__MAX".into(), "50".into()));
    env.push(("RAREGEN__RATE_LIMIT__PER".into(), "1s".into()));
    env.push(("RAREGEN__NODE__TIMEOUT".into(), "2s".into()));
    let mut daemon = Daemon::start(&env, &[]);
    e2e::submit(&daemon.base, "stopped", 300).await;
    waits_for("some jobs sent", Duration::from_secs(30), || async {
        count(
            &pool,
            "SELECT count(*) FROM publish_jobs WHERE status = 'sent'",
        )
        .await
            >= 50
    })
    .await;
    node.stop();
    let stopped_at_sent = count(
        &pool,
        "SELECT count(*) FROM publish_jobs WHERE status = 'sent'",
    )
    .await;
    tokio::time::sleep(Duration::from_secs(30)).await;
    let failed = count(
        &pool,
        "SELECT count(*) FROM publish_jobs WHERE status = 'failed'",
    )
    .await;
    assert_eq!(failed, 0, "no job fails while the node is down");
    node.start_again().await;
    let (sent, failed) = e2e::wait_done(&pool, Duration::from_secs(180), &daemon).await;
    assert_eq!((sent, failed), (300, 0), "{}", daemon.log());
    // The node lost its mempool with the restart (bcoin answered "ok" to what it then
    // dropped as orphans): the Janitor sends the vanished transactions again, parents
    // first. Wait for that with the daemon running.
    let splits: i64 = count(
        &pool,
        "SELECT count(*) FROM pool_transactions WHERE status = 'sent'",
    )
    .await;
    let waited = e2e::wait_mempool(&node, 300 + splits as usize, Duration::from_secs(120)).await;
    assert!(daemon.stop().success());
    println!(
        "{stopped_at_sent} sent when the node stopped; all 300 recorded after it came back; \
         the node held them all {waited:?} later"
    );
    assert_exactly_once(&pool, &node, 300).await;
    drop(node);
    let _ = std::fs::remove_dir_all(&dir);
}
