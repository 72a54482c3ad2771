//! Crashes: `raregen serve` killed with SIGKILL at exact points (failpoints) and at
//! random moments, a broadcaster that panics, the node away for 30 s. Afterwards every
//! job is sent exactly once, no UTXO is spent twice, and a stored transaction is never
//! signed again.
//!
//! The failpoints need the `failpoints` feature (scripts/test turns it on).
#![cfg(feature = "failpoints")]

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::support::e2e::{self, Daemon, Scenario};
use crate::support::regtest::{free_port, RegtestNode};
use sqlx::PgPool;

/// Fast recovery for tests: leases of 3 s, stuck after 2 s.
const FAST: &[(&str, &str)] = &[
    ("RAREGEN__JANITOR__INTERVAL", "1s"),
    ("RAREGEN__JANITOR__STUCK_AFTER", "2s"),
    ("RAREGEN__RATE_LIMIT__MAX", "5000"),
    ("RAREGEN__BROADCASTER__WORKERS", "8"),
];

/// After [`FAST`], for the node-away tests: 50 broadcasts per second, so that the run
/// is still going when the node goes.
const SLOW: &[(&str, &str)] = &[
    ("RAREGEN__RATE_LIMIT__MAX", "50"),
    ("RAREGEN__RATE_LIMIT__PER", "1s"),
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

/// Waits (30 s at most) until 50 jobs are sent: the run is under way.
async fn some_jobs_sent(pool: &PgPool) {
    waits_for("some jobs sent", Duration::from_secs(30), || async {
        e2e::jobs_with_status(pool, "sent").await >= 50
    })
    .await;
}

/// Every job sent, each payload in exactly one transaction on the node, that
/// transaction the job's txid; no UTXO spent by two stored transactions.
async fn assert_exactly_once(pool: &PgPool, node: &RegtestNode, jobs: usize) {
    let splits = e2e::splits_sent(pool).await as usize;
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

/// The closing checks: within `limit` all `jobs` are sent and none failed, `daemon`
/// stops cleanly, and [`assert_exactly_once`].
async fn finish_exactly_once(s: &Scenario, daemon: &mut Daemon, jobs: i64, limit: Duration) {
    let (sent, failed) = e2e::wait_done(&s.pool, limit, daemon).await;
    assert_eq!((sent, failed), (jobs, 0));
    assert!(daemon.stop().success());
    assert_exactly_once(&s.pool, &s.node, jobs as usize).await;
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

/// A daemon frozen at `failpoint` once the state `until` (a count) shows, and killed;
/// a second one finishes the run: nothing stored before the kill is signed again.
async fn killed_at(pool: PgPool, failpoint: &str, until: &str) {
    let s = Scenario::funded(&pool, 100)
        .proxied()
        .env(FAST)
        .start()
        .await;
    let freeze = format!("{failpoint}=1*sleep(60000)");
    let mut daemon = s.serve_with(&[("FAILPOINTS", &freeze)], &[]);
    e2e::submit(&daemon.base, "crash", 200).await;
    // The process freezes at the failpoint; wait until the state is the one to test.
    waits_for(until, Duration::from_secs(60), || async {
        count(&pool, until).await > 0
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    daemon.kill9();
    let before = stored(&pool).await;
    let broadcasts_before = s.proxy().arrivals.lock().unwrap().len();

    let mut daemon = s.serve(&[]);
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
    assert_exactly_once(&pool, &s.node, 200).await;
}

/// The states [`killed_at`] waits for.
const CLAIMED: &str = "SELECT count(*) FROM publish_jobs WHERE status = 'processing_batch'";
const SENDING: &str = "SELECT count(*) FROM publish_jobs WHERE status = 'sending'";

#[sqlx::test]
async fn killed_mid_claim(pool: PgPool) {
    killed_at(pool, "after-claim", CLAIMED).await;
}

#[sqlx::test]
async fn killed_between_store_and_broadcast(pool: PgPool) {
    killed_at(pool, "after-store-before-broadcast", SENDING).await;
}

#[sqlx::test]
async fn killed_between_broadcast_and_recording(pool: PgPool) {
    killed_at(pool, "after-broadcast-before-record", SENDING).await;
}

#[sqlx::test]
async fn killed_at_random_moments(pool: PgPool) {
    let s = Scenario::funded(&pool, 100)
        .env(FAST)
        // Slow enough that the kills land mid-run: 100 broadcasts per second.
        .env(&[
            ("RAREGEN__RATE_LIMIT__MAX", "100"),
            ("RAREGEN__RATE_LIMIT__PER", "1s"),
        ])
        .start()
        .await;
    let mut daemon = s.serve(&[]);
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
        daemon = s.serve(&[]);
        let kept = stored(&pool).await;
        for (id, txid) in &before {
            if let Some(now) = kept.get(id) {
                assert_eq!(now, txid, "job {id} re-signed");
            }
        }
    }
    finish_exactly_once(&s, &mut daemon, 600, Duration::from_secs(180)).await;
}

#[sqlx::test]
async fn a_panicking_broadcaster_is_restarted_and_its_job_completes(pool: PgPool) {
    let s = Scenario::funded(&pool, 100)
        .env(FAST)
        // The first two broadcasters to get there panic once each, after storing.
        .env(&[("FAILPOINTS", "after-store-before-broadcast=2*panic")])
        .start()
        .await;
    let mut daemon = s.serve(&[]);
    e2e::submit(&daemon.base, "panic", 100).await;
    let (sent, failed) = e2e::wait_done(&pool, Duration::from_secs(60), &daemon).await;
    assert_eq!((sent, failed), (100, 0));
    let log = daemon.log();
    assert_eq!(log.matches("restarting broadcaster").count(), 2, "{log}");
    assert!(daemon.stop().success());
    assert_exactly_once(&pool, &s.node, 100).await;
}

#[sqlx::test]
async fn the_node_away_for_30_seconds(pool: PgPool) {
    let s = Scenario::funded(&pool, 200)
        .proxied()
        .env(FAST)
        .env(SLOW)
        .start()
        .await;
    let proxy = s.proxy();
    let mut daemon = s.serve(&[]);
    e2e::submit(&daemon.base, "away", 300).await;
    some_jobs_sent(&pool).await;
    proxy.down.store(true, std::sync::atomic::Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(30)).await;
    let failed = e2e::jobs_with_status(&pool, "failed").await;
    assert_eq!(failed, 0, "no job fails while the node is away");
    proxy.down.store(false, std::sync::atomic::Ordering::SeqCst);
    finish_exactly_once(&s, &mut daemon, 300, Duration::from_secs(120)).await;
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
    let s = Scenario::funded(&pool, 200)
        .on_node(RegtestNode::start_with(dir.clone(), free_port(), true).await)
        .env(FAST)
        .env(SLOW)
        .env(&[("RAREGEN__NODE__TIMEOUT", "2s")])
        .start()
        .await;
    let node = &s.node;
    let mut daemon = s.serve(&[]);
    e2e::submit(&daemon.base, "stopped", 300).await;
    some_jobs_sent(&pool).await;
    node.stop();
    let stopped_at_sent = e2e::jobs_with_status(&pool, "sent").await;
    tokio::time::sleep(Duration::from_secs(30)).await;
    let failed = e2e::jobs_with_status(&pool, "failed").await;
    assert_eq!(failed, 0, "no job fails while the node is down");
    node.start_again().await;
    s.assert_all_sent(&daemon, 300, Duration::from_secs(180))
        .await;
    // The node lost its mempool with the restart (bcoin answered "ok" to what it then
    // dropped as orphans): the Janitor sends the vanished transactions again, parents
    // first. Wait for that with the daemon running.
    let splits = e2e::splits_sent(&pool).await;
    let waited = e2e::wait_mempool(node, 300 + splits as usize, Duration::from_secs(120)).await;
    assert!(daemon.stop().success());
    println!(
        "{stopped_at_sent} sent when the node stopped; all 300 recorded after it came back; \
         the node held them all {waited:?} later"
    );
    assert_exactly_once(&pool, node, 300).await;
    drop(s);
    let _ = std::fs::remove_dir_all(&dir);
}
