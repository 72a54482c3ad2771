//! The pipeline end to end: `raregen serve` against Postgres and a bcoin regtest node,
//! with a proxy at the node's door counting broadcasts.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use crate::support::e2e::{self, Scenario, ScenarioBuilder};
use crate::support::regtest::RegtestNode;
use raregen::chain::WalletKey;
use raregen::config::{AddressType, Network};
use sqlx::PgPool;

/// A budget shared by processes (or commands) on one database: 300 broadcasts per 2 s,
/// maintenance every second.
const SHARED_LIMIT: &[(&str, &str)] = &[
    ("RAREGEN__RATE_LIMIT__MAX", "300"),
    ("RAREGEN__RATE_LIMIT__PER", "2s"),
    ("RAREGEN__JANITOR__INTERVAL", "1s"),
];

/// 5,000 jobs in batch mode at 500 broadcasts per 3 s.
#[sqlx::test]
async fn five_thousand_jobs_batch_mode_under_the_rate_limit(pool: PgPool) {
    let s = Scenario::funded(&pool, 500)
        .proxied()
        .env(&[
            ("RAREGEN__RATE_LIMIT__MAX", "500"),
            ("RAREGEN__RATE_LIMIT__PER", "3s"),
        ])
        .start()
        .await;
    let (node, proxy) = (&s.node, s.proxy());
    let mut daemon = s.serve(&["--mode", "batch"]);
    let ids = e2e::submit(&daemon.base, "job", 5_000).await;
    assert_eq!(ids.len(), 5_000);
    s.assert_all_sent(&daemon, 5_000, Duration::from_secs(240))
        .await;
    assert!(daemon.stop().success());
    let daemon_log = daemon.log();

    // Every job's transaction is on the node with its payload; no payload twice. (bcoin
    // answers before it verifies: give its queue a moment.)
    let waited = e2e::wait_mempool(node, 5_000 + 1, Duration::from_secs(60)).await;
    println!("mempool complete {waited:?} after the last job was recorded sent");
    let on_node = e2e::mempool_payloads(node).await;
    let by_payload = e2e::txids_by_payload(&on_node);
    let jobs: Vec<(i64, Vec<u8>, String)> =
        sqlx::query_as("SELECT id, payload, txid FROM publish_jobs ORDER BY id")
            .fetch_all(&pool)
            .await
            .unwrap();
    let missing: Vec<&i64> = jobs
        .iter()
        .filter(|(_, payload, txid)| by_payload.get(payload) != Some(&vec![txid.clone()]))
        .map(|j| &j.0)
        .collect();
    assert!(
        missing.is_empty(),
        "{} jobs not on the node, e.g. {:?}; node log:\n{}",
        missing.len(),
        &missing[..missing.len().min(5)],
        node.log()
            .lines()
            .rev()
            .take(20)
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert_eq!(on_node.len(), 5_000, "nothing else carries a payload");

    // At the node's door: never more than 500 in any 3 s window (and the sustained rate,
    // printed).
    let arrivals = proxy.arrivals.lock().unwrap().clone();
    let per = Duration::from_secs(3);
    let most = e2e::max_in_window(&arrivals, per);
    assert!(most <= 500, "{most} broadcasts in one 3 s window");
    let first = *arrivals.iter().min().unwrap();
    let last = *arrivals.iter().max().unwrap();
    let rate = e2e::sustained_rate(&arrivals, per);
    println!(
        "broadcasts: {} in {:.1} s; most in a 3 s window: {most}; sustained after the first window: {rate:.1}/s",
        arrivals.len(),
        (last - first).as_secs_f64()
    );
    let (claims, mean): (i64, f64) =
        sqlx::query_as("SELECT count(*), coalesce(avg(size), 0)::float8 FROM batches")
            .fetch_one(&pool)
            .await
            .unwrap();
    println!("full load: {claims} claims, mean batch size {mean:.0}");
    // The rate is a figure, not a check (a loaded machine may not reach the limit):
    // docs/benchmarks.md has the measured figures.
    for warning in daemon_log
        .lines()
        .filter(|l| l.contains("WARN") || l.contains("ERROR"))
        .take(20)
    {
        println!("daemon: {warning}");
    }
    let batches: i64 =
        sqlx::query_scalar("SELECT count(*) FROM batches WHERE completed_at IS NOT NULL")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert!(batches >= 10, "batches of at most 500: {batches}");
}

/// Single mode: a lone job is claimed on NOTIFY and broadcast at once.
#[sqlx::test]
async fn single_mode_broadcasts_a_lone_job_at_once(pool: PgPool) {
    let s = Scenario::funded(&pool, 50)
        .proxied()
        .env(&[("RAREGEN__COLLECTOR__INTERVAL", "30s")])
        .start()
        .await;
    let proxy = s.proxy();
    let mut daemon = s.serve(&["--mode", "single"]);
    tokio::time::sleep(Duration::from_secs(1)).await; // idle pipeline
    let mut latencies = Vec::new();
    for i in 0..5 {
        let before = proxy.arrivals.lock().unwrap().len();
        let submitted = Instant::now();
        e2e::submit(&daemon.base, &format!("lone-{i}"), 1).await;
        let started = Instant::now();
        loop {
            let arrivals = proxy.arrivals.lock().unwrap().clone();
            if arrivals.len() > before {
                latencies.push(arrivals[before] - submitted);
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "not broadcast: {}",
                daemon.log()
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    println!("single mode, submission to broadcast: {latencies:?}");
    let (sent, failed) = e2e::wait_done(&pool, Duration::from_secs(30), &daemon).await;
    assert_eq!((sent, failed), (5, 0));
    assert!(daemon.stop().success());
}

/// Claim statements so far (`raregen_claim_duration_seconds_count`) and jobs claimed
/// (`raregen_batch_size_sum`), from the daemon's `/metrics`.
async fn claims(base: &str) -> (f64, f64) {
    let body = reqwest::get(format!("{base}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let value = |name: &str| {
        body.lines()
            .find_map(|l| {
                l.strip_prefix(name)
                    .and_then(|v| v.trim().parse::<f64>().ok())
            })
            .unwrap_or(0.0)
    };
    (
        value("raregen_claim_duration_seconds_count "),
        value("raregen_batch_size_sum "),
    )
}

/// Batch mode at rest asks Postgres nothing but its interval's fallback claim, and a
/// new job wakes it at once (a notification, not a poll): with a 120 s interval, 30 s
/// of idling make at most one claim statement, and a trickle of 10 jobs (1 per
/// second) is published long before the fallback would have claimed it.
#[sqlx::test]
async fn batch_mode_at_rest_makes_no_claims_and_wakes_on_new_jobs(pool: PgPool) {
    let s = Scenario::funded(&pool, 50)
        .env(&[("RAREGEN__COLLECTOR__INTERVAL", "120s")])
        .start()
        .await;
    let mut daemon = s.serve(&["--mode", "batch"]);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (before, _) = claims(&daemon.base).await;
    tokio::time::sleep(Duration::from_secs(30)).await;
    let (idle, _) = claims(&daemon.base).await;
    println!("idle: {} claim statements in 30 s", idle - before);
    assert!(
        idle - before <= 1.0,
        "{} claim statements in 30 s of idling",
        idle - before
    );
    let started = Instant::now();
    for i in 0..10 {
        e2e::submit(&daemon.base, &format!("trickle-{i}"), 1).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    s.assert_all_sent(&daemon, 10, Duration::from_secs(40))
        .await;
    let (after, jobs) = claims(&daemon.base).await;
    println!(
        "trickle of 1 job/s: {} claim statements for {jobs} jobs in {:?}",
        after - idle,
        started.elapsed()
    );
    assert!(
        started.elapsed() < Duration::from_secs(100),
        "published only by the 120 s fallback"
    );
    assert!(daemon.stop().success());
    s.assert_published_once(Duration::from_secs(30)).await;
}

/// One funded UTXO and nothing else: auto-split keeps the broadcasters fed.
#[sqlx::test]
async fn auto_split_feeds_the_pool_from_one_utxo(pool: PgPool) {
    let s = Scenario::funded(&pool, 0)
        .env(&[
            ("RAREGEN__UTXO_POOL__MIN_AVAILABLE", "200"),
            ("RAREGEN__UTXO_POOL__SPLIT_OUTPUTS", "500"),
            ("RAREGEN__UTXO_POOL__SPLIT_AMOUNT", "20000"),
            ("RAREGEN__RATE_LIMIT__MAX", "2000"),
        ])
        .start()
        .await;
    let mut daemon = s.serve(&[]);
    e2e::submit(&daemon.base, "split-fed", 1_000).await;
    s.assert_all_sent(&daemon, 1_000, Duration::from_secs(60))
        .await;
    assert!(daemon.stop().success());
    let splits = e2e::splits_sent(&pool).await;
    assert!(splits >= 1, "the pool split its one UTXO");
    e2e::wait_mempool(&s.node, 1_000 + splits as usize, Duration::from_secs(60)).await;
    let txids: HashSet<String> = e2e::mempool_payloads(&s.node)
        .await
        .into_iter()
        .map(|p| p.0)
        .collect();
    assert_eq!(txids.len(), 1_000);
}

/// A split whose outcome is unknown is never signed again, and its coin is not handed
/// to a job: the door answers the first broadcast (the split of the one funded coin)
/// 504 and hands it to the node 8 s later. The DirtySettler finds it not on the node
/// and sends the same bytes again, which the node takes: one split was ever signed on
/// the coin, and it is the one on the node. (Before, the split was marked refused, its
/// outputs dropped and its coin released on "not on the node" alone, and the pool split
/// it again: here the same bytes, signatures being deterministic; with another output
/// count or fee, a second transaction on the coin that the late copy could beat on
/// another node, its outputs then unknown to the pool.)
#[sqlx::test]
async fn a_split_with_an_unknown_outcome_is_sent_again_never_signed_again(pool: PgPool) {
    use std::sync::atomic::Ordering::SeqCst;
    let s = at_a_lying_door(&pool, 0)
        .env(&[
            ("RAREGEN__UTXO_POOL__MIN_AVAILABLE", "50"),
            ("RAREGEN__UTXO_POOL__SPLIT_OUTPUTS", "200"),
            ("RAREGEN__UTXO_POOL__SPLIT_AMOUNT", "20000"),
        ])
        .start()
        .await;
    let proxy = s.proxy();
    proxy.late.first_late.store(1, SeqCst);
    proxy.late.set(0, Duration::from_secs(8));
    let mut daemon = s.serve(&[]);
    e2e::submit(&daemon.base, "split-late", 100).await;
    s.assert_all_sent(&daemon, 100, Duration::from_secs(90))
        .await;
    proxy.late.drained().await;
    assert_eq!(proxy.late.forwarded.load(SeqCst), 1, "the split went late");
    assert!(daemon.stop().success());
    let splits: Vec<(String, String)> =
        sqlx::query_as("SELECT txid, status FROM pool_transactions ORDER BY id")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(splits.len(), 1, "one split signed on the coin: {splits:?}");
    assert_eq!(splits[0].1, "sent");
    let mempool: HashSet<String> = s.node.mempool().await.into_iter().collect();
    assert!(mempool.contains(&splits[0].0), "the split is on the node");
    s.assert_all_published_once(100, Duration::from_secs(60))
        .await;
}

/// A job's anchor spent by a transaction that is none of the job's, confirmed, while the
/// job's own broadcast had an unknown outcome: the door answers the job's broadcast 504
/// (delivering it only after the test), the node is away while the test signs another
/// payload on the job's coin with the wallet's key, sends it to the node directly and
/// mines it. bitcoind and bcoin do not say who spent a coin: the DirtySettler looks for
/// the spender in the blocks, finds it confirmed and none of the job's, and only then
/// does the job sign again on another coin, and is sent. (Before, the spender was never
/// known on these nodes and the job was given up as failed.)
#[sqlx::test]
async fn an_anchor_spent_by_a_confirmed_foreign_transaction_re_anchors_the_job(pool: PgPool) {
    use std::sync::atomic::Ordering::SeqCst;
    let s = one_lane(&pool).start().await;
    let proxy = s.proxy();
    proxy.late.first_late.store(1, SeqCst);
    proxy.late.set(0, Duration::from_secs(600));
    let mut daemon = s.serve(&[]);
    e2e::submit(&daemon.base, "reanchored", 1).await;
    let started = Instant::now();
    while proxy.late.pending.load(SeqCst) == 0 {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "{}",
            daemon.log()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The job's broadcast went unanswered: the node is away until its coin is spent.
    proxy.down.store(true, SeqCst);
    let anchor: (String, i32, i64) = loop {
        let dirty = sqlx::query_as(
            "SELECT x.txid, x.vout, x.satoshis FROM publish_jobs j JOIN utxos x ON x.id = j.utxo_id
             WHERE j.status = 'sending' AND x.dirty",
        )
        .fetch_optional(&pool)
        .await
        .unwrap();
        if let Some(dirty) = dirty {
            break dirty;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "{}",
            daemon.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let foreign = mine_a_strangers_spend(&s.node, &s.wif, &anchor).await;
    proxy.down.store(false, SeqCst);
    s.assert_all_sent(&daemon, 1, Duration::from_secs(60)).await;
    // On the node, in one transaction, the job's recorded one (bcoin takes the first
    // transaction sent again and only then finds its coin spent: without the re-anchor
    // the job is recorded `sent` with a transaction that can never be mined).
    s.finish(&mut daemon, 1, Duration::from_secs(30)).await;
    let (txid, raw_tx): (String, Vec<u8>) = sqlx::query_as("SELECT txid, raw_tx FROM publish_jobs")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_ne!(txid, foreign);
    // The first transaction is kept in the job's history, with why it was left.
    let outcome: Option<String> = sqlx::query_scalar("SELECT outcome FROM job_transactions")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(
        outcome.as_deref().unwrap_or_default().contains(&foreign),
        "the job names the spend it re-anchored for: {outcome:?}"
    );
    assert_signed_on_another_coin(&raw_tx, &anchor);
}

/// A measurement, not a check: the pipeline with the rate limit lifted against the
/// regtest node. Run it alone:
/// `scripts/test -E 'test(unthrottled_against_regtest)' --run-ignored only --no-capture`
#[sqlx::test]
#[ignore]
async fn unthrottled_against_regtest(pool: PgPool) {
    let s = Scenario::funded(&pool, 500)
        .env(&[
            ("RAREGEN__RATE_LIMIT__MAX", "1000000"),
            ("RAREGEN__RATE_LIMIT__PER", "1s"),
        ])
        .start()
        .await;
    let mut daemon = s.serve(&[]);
    let started = Instant::now();
    e2e::submit(&daemon.base, "fast", 5_000).await;
    let (sent, failed) = e2e::wait_done(&pool, Duration::from_secs(300), &daemon).await;
    let took = started.elapsed();
    assert_eq!((sent, failed), (5_000, 0));
    let verified = e2e::wait_mempool(&s.node, 5_001, Duration::from_secs(120)).await;
    println!(
        "unthrottled: 5000 jobs sent in {:.1} s ({:.0} jobs/s); bcoin had verified them all {:.1} s later",
        took.as_secs_f64(),
        5_000.0 / took.as_secs_f64(),
        verified.as_secs_f64()
    );
    assert!(daemon.stop().success());
}

/// Two processes on one database and one node share the rate limit (design.md: "global
/// across worker processes, kept in Postgres"): B joins mid-run and leaves mid-run;
/// A's heartbeat stalls once for longer than its lease (as on a starved machine), so
/// B takes A's claims back and A stops broadcasting until it has rejoined; at the
/// node's door no 2 s window holds more than 300 broadcasts, both processes published,
/// and every job is on the node exactly once.
#[sqlx::test]
async fn two_processes_share_the_rate_limit(pool: PgPool) {
    let s = Scenario::funded(&pool, 600)
        .proxied()
        .env(SHARED_LIMIT)
        .start()
        .await;
    let (node, proxy) = (&s.node, s.proxy());
    // A's Leaser: 16 heartbeats (8 s at one per 500 ms), then one that takes 5 s, with
    // a lease of 3 s.
    let mut a = s.serve_with(
        &[("FAILPOINTS", "leaser-heartbeat=16*off->1*sleep(5000)")],
        &[],
    );
    e2e::submit(&a.base, "shared", 3_000).await;
    while e2e::jobs_with_status(&pool, "sent").await < 300 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let t0 = Instant::now();
    let mut b = s.serve(&[]);
    while e2e::jobs_with_status(&pool, "sent").await < 1_800 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let b_joined_to_stop = t0.elapsed();
    assert!(b.stop().success(), "B stops gracefully");
    let (done, failed) = e2e::wait_done(&pool, Duration::from_secs(120), &a).await;
    println!(
        "B from start to stop {b_joined_to_stop:?}; all done {:?} after the submission",
        t0.elapsed()
    );
    for line in a
        .log()
        .lines()
        .filter(|l| l.contains("WARN") || l.contains("shared"))
        .take(30)
    {
        println!("A: {line}");
    }
    assert_eq!((done, failed), (3_000, 0), "{}", a.log());
    assert!(a.stop().success());

    let owners: Vec<(String, i64)> = sqlx::query_as(
        "SELECT owner, count(*) FROM publish_jobs WHERE status = 'sent' GROUP BY owner",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(owners.len(), 2, "both processes published: {owners:?}");
    assert!(owners.iter().all(|(_, n)| *n >= 100), "{owners:?}");
    assert!(
        b.log().contains("rate limit shared") && a.log().contains("\"processes\":2"),
        "A learned of B:\n{}",
        a.log()
    );
    assert!(
        a.log().contains("lease renewed after it had lapsed"),
        "A's lease lapsed once and A rejoined:\n{}",
        a.log()
    );

    let arrivals = proxy.arrivals.lock().unwrap().clone();
    let most = e2e::max_in_window(&arrivals, Duration::from_secs(2));
    println!(
        "{owners:?}; {} broadcasts, most in a 2 s window: {most}",
        arrivals.len()
    );
    assert!(most <= 300, "{most} broadcasts in one 2 s window");

    e2e::wait_mempool(node, 3_000, Duration::from_secs(60)).await;
    let mut payloads: HashMap<Vec<u8>, usize> = HashMap::new();
    for (_, payload) in e2e::mempool_payloads(node).await {
        *payloads.entry(payload).or_default() += 1;
    }
    assert_eq!(payloads.len(), 3_000);
    assert!(
        payloads.values().all(|&n| n == 1),
        "a payload published twice"
    );
}

/// A node that answers "accepted" and then does not hold the transaction (bcoin answers
/// before it verifies): the job does not stay `sent` with a re-send every round
/// forever; after a bounded number of re-sends it fails, with the reason, and so do the
/// jobs that spent its change (they can never be mined either); nothing else is
/// disturbed. Here one pool coin is a real, unspent coin of another key, recorded as
/// ours: bcoin takes each spend of it and then refuses the signature.
#[sqlx::test]
async fn accepted_but_never_held_ends_failed_not_in_an_endless_loop(pool: PgPool) {
    unheld_jobs_end_failed(pool, false).await;
}

/// When the node refuses every re-send of the transaction it dropped (here the door
/// refuses any bytes it has seen: `-26 min relay fee not met`, as a node whose minimum
/// fee rose): the re-sends come in a bounded burst and then stop for a while (before,
/// a refused transaction was re-sent every run forever), and the job is not failed on a
/// refusal that may pass (a copy may still be mined elsewhere).
#[sqlx::test]
async fn refused_when_sent_again_is_resent_in_bounded_bursts_not_every_run(pool: PgPool) {
    unheld_jobs_end_failed(pool, true).await;
}

async fn unheld_jobs_end_failed(pool: PgPool, refuse_resends: bool) {
    let s = Scenario::funded(&pool, 4)
        .proxied()
        .env(&[
            ("RAREGEN__JANITOR__INTERVAL", "1s"),
            ("RAREGEN__JANITOR__STUCK_AFTER", "2s"),
            ("RAREGEN__UTXO_POOL__MIN_AVAILABLE", "1"),
        ])
        .start()
        .await;
    let (node, proxy) = (&s.node, s.proxy());
    proxy
        .late
        .refuse_repeats
        .store(refuse_resends, std::sync::atomic::Ordering::SeqCst);
    let (stranger, _) = WalletKey::generate(Network::Regtest, AddressType::P2wpkh);
    let theirs = node.mine_to(stranger.script_pubkey(), 101).await;
    // Unconfirmed depth 0 (the lanes are at 1), so it is handed out first.
    let ghost = theirs[0].clone();
    sqlx::query(
        "INSERT INTO utxos (txid, vout, satoshis, script_pubkey)
         SELECT $1, 0, 20000, script_pubkey FROM utxos LIMIT 1",
    )
    .bind(&ghost)
    .execute(&pool)
    .await
    .unwrap();
    let mut daemon = s.serve(&["--mode", "single"]);
    for i in 0..10 {
        e2e::submit(&daemon.base, &format!("held-{i}"), 1).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    e2e::wait_done(&pool, Duration::from_secs(120), &daemon).await;
    if refuse_resends {
        // The first burst of re-sends ends: the count of refused re-sends stays the
        // same for 4 s, then for 4 s more (a run every second: before, it grew by one
        // per unheld transaction every run).
        use std::sync::atomic::Ordering::SeqCst;
        let started = Instant::now();
        let mut last = (proxy.late.repeats_refused.load(SeqCst), Instant::now());
        while last.0 == 0 || last.1.elapsed() < Duration::from_secs(4) {
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "re-sends never stop: {} so far",
                last.0
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
            let now = proxy.late.repeats_refused.load(SeqCst);
            if now != last.0 {
                last = (now, Instant::now());
            }
        }
        tokio::time::sleep(Duration::from_secs(4)).await;
        let refused = proxy.late.repeats_refused.load(SeqCst);
        assert_eq!(refused, last.0, "no re-send every run");
        let unheld: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM publish_jobs WHERE status = 'sent' AND confirmed_at IS NULL",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        assert!(
            refused as i64
                <= unheld * raregen_actors::confirmation_watcher::MAX_UNHELD_RESENDS as i64,
            "{refused} refused re-sends"
        );
        let failed = e2e::jobs_with_status(&pool, "failed").await;
        assert_eq!(failed, 0, "no job failed on a refusal that may pass");
        println!("{refused} refused re-sends in one burst, then none");
        assert!(daemon.stop().success());
        return;
    }
    // Wait until every job is either held by the node or failed.
    let started = Instant::now();
    let (sent, failed) = loop {
        let mempool: HashSet<String> = node.mempool().await.into_iter().collect();
        let jobs: Vec<(String, Option<String>)> =
            sqlx::query_as("SELECT status, txid FROM publish_jobs")
                .fetch_all(&pool)
                .await
                .unwrap();
        let unheld = jobs
            .iter()
            .filter(|(s, t)| s == "sent" && !t.as_ref().is_some_and(|t| mempool.contains(t)))
            .count();
        let failed = jobs.iter().filter(|(s, _)| s == "failed").count();
        if unheld == 0 && failed > 0 {
            break (jobs.len() - failed, failed);
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "{unheld} jobs sent but not on the node, {failed} failed: {}",
            daemon.log()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let reasons: Vec<(i64, String)> = sqlx::query_as(
        "SELECT id, last_error FROM publish_jobs WHERE status = 'failed' ORDER BY id",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    println!("{sent} sent, {failed} failed: {reasons:?}");
    assert!(
        reasons.iter().all(|(_, r)| r.contains("never held")),
        "{reasons:?}"
    );
    // A few more rounds: nothing is re-sent for the failed jobs any more.
    let resent = |log: &str| {
        log.matches("re-sent a transaction the node no longer had")
            .count()
    };
    let before = resent(&daemon.log());
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(resent(&daemon.log()), before, "no endless re-send loop");
    assert!(
        before <= failed * raregen_actors::confirmation_watcher::MAX_UNHELD_RESENDS as usize,
        "{before} re-sends for {failed} failed jobs"
    );
    // The coin the node refuses has left the pool: no other job is failed on it.
    let state: String = sqlx::query_scalar("SELECT state FROM utxos WHERE txid = $1")
        .bind(&ghost)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(state, "retired");
    s.finish(&mut daemon, sent, Duration::from_secs(30)).await;
}

/// An outcome that is unknown is never answered with a new signature: the door answers
/// every 7th broadcast 504 at once and hands it to the node 6 s later, after the
/// Janitor has looked (its interval is 1 s) and found neither the transaction nor a
/// spend of its UTXO. Re-signing the job on another UTXO then would publish it twice
/// when the late copy lands; the same bytes again cannot.
#[sqlx::test]
async fn an_unknown_outcome_is_answered_with_the_same_bytes(pool: PgPool) {
    let s = at_a_lying_door(&pool, 100).start().await;
    let proxy = s.proxy();
    proxy.late.set(7, Duration::from_secs(6));
    let mut daemon = s.serve(&[]);
    e2e::submit(&daemon.base, "late", 300).await;
    s.assert_all_sent(&daemon, 300, Duration::from_secs(120))
        .await;
    proxy.late.set(0, Duration::ZERO);
    proxy.late.drained().await;
    let late = proxy
        .late
        .forwarded
        .load(std::sync::atomic::Ordering::SeqCst);
    assert!(late >= 30, "the door answered {late} broadcasts late");
    assert!(daemon.stop().success());
    let resigned: i64 = sqlx::query_scalar("SELECT count(*) FROM publish_jobs WHERE attempts > 1")
        .fetch_one(&pool)
        .await
        .unwrap();
    println!(
        "{late} broadcasts forwarded late; {resigned} jobs claimed or taken over more than once"
    );
    s.assert_all_published_once(300, Duration::from_secs(60))
        .await;
}

/// A refusal that lies: the door answers every 5th broadcast with a definitive
/// refusal (`-26 min relay fee not met`) and still hands the transaction to the node
/// 2-10 s later. A refusal allows a new signature; on another UTXO, the late copy and
/// the new transaction would both be mined. Signed on the job's anchor, they conflict:
/// the node keeps one (the late copy, if it came first: the Janitor then finds it among
/// the job's earlier transactions and records the job sent with it; the new one, if it
/// came first or replaced it by fee). Every job is on the node once, with its recorded
/// txid, and every transaction a job ever signed spends the same outpoint.
#[sqlx::test]
async fn a_refused_transaction_that_lands_late_is_published_once(pool: PgPool) {
    let s = at_a_lying_door(&pool, 100)
        // Every 5th broadcast is refused: a job refused five times in a row is likely
        // among 300 (about 1 in 10 runs); failing it would be right, but this test is
        // about publishing once, not about the limit.
        .env(&[("RAREGEN__BROADCASTER__MAX_ATTEMPTS", "20")])
        .start()
        .await;
    let proxy = s.proxy();
    proxy
        .late
        .refuse
        .store(true, std::sync::atomic::Ordering::SeqCst);
    proxy
        .late
        .set_spread(5, Duration::from_secs(2), Duration::from_secs(10));
    let mut daemon = s.serve(&[]);
    e2e::submit(&daemon.base, "refused", 300).await;
    s.assert_all_sent(&daemon, 300, Duration::from_secs(180))
        .await;
    proxy.late.set(0, Duration::ZERO);
    proxy.late.drained().await;
    // Give the Janitor a few rounds to settle what the late copies stirred up.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(daemon.stop().success());
    let late = proxy
        .late
        .forwarded
        .load(std::sync::atomic::Ordering::SeqCst);
    assert!(
        late >= 50,
        "the door refused and forwarded {late} broadcasts"
    );
    s.assert_all_published_once(300, Duration::from_secs(60))
        .await;
    // Every transaction of a job spends the job's anchor.
    let earlier = e2e::assert_one_outpoint_per_job(&pool).await;
    assert!(
        earlier as u32 >= late / 2,
        "{earlier} earlier transactions kept for {late} refusals"
    );
    let log = daemon.log();
    let taken_up = log
        .matches("an earlier transaction of the job is on the node")
        .count()
        + log.matches("the job is recorded with it").count();
    println!(
        "{late} refusals forwarded late; {earlier} earlier transactions kept; {taken_up} jobs sent with an earlier transaction"
    );
}

/// A definitive refusal of a re-send signs again on the anchor: the door answers every
/// 10th broadcast 504 and hands it to the node 30 s later, and refuses every re-send of
/// bytes it has seen (`-26 min relay fee not met`: a node whose minimum fee rose). The
/// DirtySettler's re-send of those bytes is refused; the job then signs again on its
/// anchor with a higher fee, and that transaction is accepted. The late copy, landing
/// afterwards, conflicts with it and is refused by the node: every job is sent, on the
/// node once, with its recorded txid. (Before, the job was re-sent until it was given
/// up as failed, and the late copy then published it while it was recorded failed.)
#[sqlx::test]
async fn a_refused_resend_signs_again_on_the_anchor(pool: PgPool) {
    use std::sync::atomic::Ordering::SeqCst;
    let s = at_a_lying_door(&pool, 100).start().await;
    let proxy = s.proxy();
    proxy.late.refuse_repeats.store(true, SeqCst);
    proxy.late.set(10, Duration::from_secs(30));
    let mut daemon = s.serve(&[]);
    e2e::submit(&daemon.base, "resend-refused", 100).await;
    s.assert_all_sent(&daemon, 100, Duration::from_secs(120))
        .await;
    proxy.late.set(0, Duration::ZERO);
    proxy.late.drained().await;
    assert!(daemon.stop().success());
    let late = proxy.late.forwarded.load(SeqCst);
    let refused = proxy.late.repeats_refused.load(SeqCst);
    assert!(late >= 10, "the door answered {late} broadcasts late");
    assert!(
        refused >= late,
        "{refused} re-sends refused for {late} late ones"
    );
    let log = daemon.log();
    let resigned = log
        .matches("re-send refused; the job signs again on its anchor")
        .count();
    assert!(
        resigned >= late as usize,
        "{resigned} jobs signed again\n{log}"
    );
    s.assert_all_published_once(100, Duration::from_secs(60))
        .await;
    let earlier = e2e::assert_one_outpoint_per_job(&pool).await;
    assert!(
        earlier >= late as usize,
        "{earlier} earlier transactions kept"
    );
    println!("{late} late copies; {refused} re-sends refused; {resigned} jobs signed again on their anchor");
}

/// The rate limiter fails closed: stopped (failpoint `token-bucket-acquire` at its
/// 201st request), nothing is broadcast while it is down, and its supervisor starts it
/// again, after which it grants nothing for one `per` and then resumes under the limit:
/// at the node's door nothing but what was granted before the stop in the window after
/// the restart, no window over `max`, every job on the node once.
#[sqlx::test]
async fn a_stopped_rate_limiter_stops_broadcasting_and_resumes_under_the_limit(pool: PgPool) {
    let s = Scenario::funded(&pool, 200)
        .proxied()
        .env(&[
            ("RAREGEN__RATE_LIMIT__MAX", "100"),
            ("RAREGEN__RATE_LIMIT__PER", "2s"),
            ("FAILPOINTS", "token-bucket-acquire=200*off->1*return->off"),
            ("RAREGEN__BROADCASTER__WORKERS", "8"),
        ])
        .start()
        .await;
    let proxy = s.proxy();
    let (started, started_wall) = (std::time::Instant::now(), chrono::Utc::now());
    let mut daemon = s.serve(&[]);
    e2e::submit(&daemon.base, "limited", 400).await;
    s.assert_all_sent(&daemon, 400, Duration::from_secs(180))
        .await;
    assert!(daemon.stop().success());
    let log = daemon.log();
    assert!(
        log.contains("rate limiter restarted"),
        "the failpoint stopped the limiter: {log}"
    );
    let mut arrivals = proxy.arrivals.lock().unwrap().clone();
    arrivals.sort();
    let per = Duration::from_secs(2);
    let most = e2e::max_in_window(&arrivals, per);
    assert!(most <= 100, "{most} broadcasts in one 2 s window");
    // While it restarts and for one `per` after, only broadcasts granted before it
    // stopped can reach the door: at most one per holder of a grant (8 broadcasters,
    // the Janitor, the pool's split).
    let restarted = log
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|l| {
            l["message"]
                .as_str()
                .is_some_and(|m| m.contains("rate limiter restarted"))
        })
        .and_then(|l| l["timestamp"].as_str().map(str::to_owned))
        .expect("the restart is logged");
    let restarted: chrono::DateTime<chrono::Utc> = restarted.parse().unwrap();
    let at = started + (restarted - started_wall).to_std().unwrap();
    let inside = arrivals
        .iter()
        .filter(|&&t| t >= at && t < at + per)
        .count();
    assert!(
        inside <= 10,
        "{inside} broadcasts reached the door in the window after the limiter restarted"
    );
    println!("{inside} broadcasts in the window after the restart; most in a 2 s window: {most}");
    s.assert_published_once(Duration::from_secs(60)).await;
}

/// A lying node, a chain that moves: in front of bcoin a door that answers every 29th
/// broadcast at once (alternately 504 and a definitive refusal) and hands it to the node
/// 5-150 s later (long after the job was sent again, often after it was mined), and forwards every 37th at once but answers it only after the client
/// has given up (3 s, past `node.timeout`); a block is mined every 3 s. 2,000 jobs:
/// every one `sent`, and every payload in exactly one transaction on the node (mempool
/// and the blocks mined), the job's recorded txid.
#[sqlx::test]
async fn a_lying_node_and_new_blocks_publish_every_job_once(pool: PgPool) {
    use std::sync::atomic::Ordering::SeqCst;
    let s = Scenario::funded(&pool, 400)
        .proxied()
        .env(&[
            ("RAREGEN__JANITOR__INTERVAL", "1s"),
            ("RAREGEN__JANITOR__STUCK_AFTER", "6s"),
            ("RAREGEN__NODE__TIMEOUT", "2s"),
        ])
        .start()
        .await;
    let (node, proxy) = (&s.node, s.proxy());
    proxy.late.mixed.store(true, SeqCst);
    proxy.late.hang_every.store(37, SeqCst);
    proxy.late.hang_ms.store(3_000, SeqCst);
    proxy
        .late
        .set_spread(29, Duration::from_secs(5), Duration::from_secs(150));
    let mut daemon = s.serve(&[]);
    let from_height = node.height().await;
    let mining = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let miner = {
        let (node, mining) = (node.clone(), mining.clone());
        let script = WalletKey::generate(Network::Regtest, AddressType::P2wpkh)
            .0
            .script_pubkey()
            .clone();
        tokio::spawn(async move {
            let mut failures = 0;
            while mining.load(SeqCst) {
                tokio::time::sleep(Duration::from_secs(3)).await;
                // A busy node may answer late; the block is read back from the chain.
                if node.try_mine(&script, 1).await.is_err() {
                    failures += 1;
                }
            }
            failures
        })
    };
    e2e::submit(&daemon.base, "lied-to", 2_000).await;
    s.assert_all_sent(&daemon, 2_000, Duration::from_secs(400))
        .await;
    proxy.late.set(0, Duration::ZERO);
    proxy.late.hang_every.store(0, SeqCst);
    proxy.late.drained().await;
    let (late, hung) = (
        proxy.late.forwarded.load(SeqCst),
        proxy.late.hung.load(SeqCst),
    );
    assert!(
        late >= 20 && hung >= 20,
        "{late} late forwards, {hung} hung answers"
    );
    // The daemon keeps settling (a copy that landed late, a replacement a node dropped)
    // while blocks are mined; the check repeats until it holds, for up to 2 minutes.
    let started = Instant::now();
    let mut miner = Some(miner);
    loop {
        tokio::time::sleep(Duration::from_secs(4)).await;
        if let Some(m) = miner.take() {
            if started.elapsed() > Duration::from_secs(20) {
                mining.store(false, SeqCst);
                let failures = m.await.unwrap();
                println!("{failures} mining calls answered late");
            } else {
                miner = Some(m);
                continue;
            }
        }
        let jobs: Vec<(i64, Vec<u8>, Option<String>, String)> =
            sqlx::query_as("SELECT id, payload, txid, status FROM publish_jobs ORDER BY id")
                .fetch_all(&pool)
                .await
                .unwrap();
        let mut on_node = e2e::mempool_payloads(node).await;
        on_node.extend(e2e::block_payloads(node, from_height).await);
        let wrong = e2e::wrong_publications(&jobs, &on_node);
        if wrong.is_empty() {
            assert_eq!(
                on_node.len(),
                2_000,
                "no other transaction carries a payload"
            );
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(140),
            "{} jobs not published exactly once, e.g. {:?}",
            wrong.len(),
            &wrong[..wrong.len().min(5)]
        );
    }
    assert!(daemon.stop().success());
    let log = daemon.log();
    let confirmed: i64 =
        sqlx::query_scalar("SELECT count(*) FROM publish_jobs WHERE confirmed_at IS NOT NULL")
            .fetch_one(&pool)
            .await
            .unwrap();
    println!(
        "{} late forwards, {} blocks, {confirmed} jobs confirmed; {} jobs switched to an earlier transaction",
        proxy.late.forwarded.load(SeqCst),
        node.height().await - from_height,
        log.matches("an earlier transaction of the job").count()
    );
}

/// Three daemons on one database and chaos: every 3 s (for 90 s at most) one of them is
/// killed (SIGKILL; never the first, so that its stalled Leaser is seen to rejoin,
/// then started again) or frozen (SIGSTOP for 1-4 s, shorter than the time its peers
/// keep counting its share, then SIGCONT); the first one's Leaser also stalls once past
/// its lease (failpoint). 5,000 jobs: none lost (all `sent`), none published twice
/// (each payload once on the node, with the job's recorded txid), and no 2 s window at
/// the node's door over the shared `max`.
#[sqlx::test]
async fn three_daemons_killed_and_frozen_at_random_lose_nothing(pool: PgPool) {
    let s = Scenario::funded(&pool, 600)
        .proxied()
        .env(SHARED_LIMIT)
        .env(&[
            ("RAREGEN__JANITOR__STUCK_AFTER", "3s"),
            // A restarted daemon waits SHARE_REFRESH × 2 + per + node.timeout before
            // its first grant: keep that short.
            ("RAREGEN__NODE__TIMEOUT", "3s"),
        ])
        .start()
        .await;
    let proxy = s.proxy();
    let mut daemons = vec![
        s.serve_with(
            &[("FAILPOINTS", "leaser-heartbeat=6*off->1*sleep(5000)")],
            &[],
        ),
        s.serve(&[]),
        s.serve(&[]),
    ];
    e2e::submit(&daemons[1].base, "chaos", 5_000).await;
    let seed: u64 = rand::random();
    println!("chaos seed {seed}");
    let mut rng = seed | 1;
    let mut next = move |below: u64| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng % below
    };
    let (mut kills, mut freezes) = (0, 0);
    let started = Instant::now();
    while e2e::jobs_with_status(&pool, "sent").await < 4_500
        && started.elapsed() < Duration::from_secs(90)
    {
        tokio::time::sleep(Duration::from_secs(3)).await;
        let i = next(3) as usize;
        // The first daemon (whose Leaser stalls) is frozen, never killed, so that its
        // lapse and rejoin are seen.
        if next(2) == 0 && i > 0 {
            daemons[i].kill9();
            kills += 1;
            daemons[i] = s.serve(&[]);
        } else {
            daemons[i].signal("-STOP");
            tokio::time::sleep(Duration::from_millis(1_000 + next(3_000))).await;
            daemons[i].signal("-CONT");
            freezes += 1;
        }
    }
    let (done, failed) = e2e::wait_done(&pool, Duration::from_secs(240), &daemons[1]).await;
    assert_eq!(
        (done, failed),
        (5_000, 0),
        "seed {seed}; {}",
        daemons[1].log()
    );
    for d in &mut daemons {
        assert!(d.stop().success(), "seed {seed}");
    }
    assert!(
        daemons[0]
            .log()
            .contains("lease renewed after it had lapsed"),
        "seed {seed}: the first daemon's lease lapsed and it rejoined:\n{}",
        daemons[0].log()
    );
    let arrivals = proxy.arrivals.lock().unwrap().clone();
    let most = e2e::max_in_window(&arrivals, Duration::from_secs(2));
    println!(
        "{kills} kills, {freezes} freezes in {:?}; {} broadcasts at the door, most in a 2 s window: {most}",
        started.elapsed(),
        arrivals.len()
    );
    assert!(
        most <= 300,
        "seed {seed}: {most} broadcasts in one 2 s window"
    );
    // A figure: how often one job was claimed (a claim taken back from a killed or
    // frozen daemon is no attempt: `store::claims_taken_back_are_no_attempts`).
    let most_claims: i32 = sqlx::query_scalar("SELECT max(attempts) FROM publish_jobs")
        .fetch_one(&pool)
        .await
        .unwrap();
    println!("most claims of one job: {most_claims}");
    assert_eq!(
        s.assert_published_once(Duration::from_secs(90)).await,
        5_000,
        "seed {seed}"
    );
}

/// A job that waits, however long, is not lost: throttled to 20 broadcasts per 2 s with
/// the Janitor looking for lost claims every second (`stuck_after` 2 s), 120 claimed
/// jobs wait up to 12 s for a slot, and none is sent back to the queue and claimed again
/// (each claim is an attempt: a re-claimed job would be one step nearer `failed`).
#[sqlx::test]
async fn jobs_waiting_for_a_slot_are_not_requeued(pool: PgPool) {
    let s = Scenario::funded(&pool, 150)
        .env(&[
            ("RAREGEN__RATE_LIMIT__MAX", "20"),
            ("RAREGEN__RATE_LIMIT__PER", "2s"),
            ("RAREGEN__JANITOR__INTERVAL", "1s"),
            ("RAREGEN__JANITOR__STUCK_AFTER", "2s"),
        ])
        .start()
        .await;
    let mut daemon = s.serve(&["--mode", "batch"]);
    e2e::submit(&daemon.base, "patient", 120).await;
    s.assert_all_sent(&daemon, 120, Duration::from_secs(120))
        .await;
    assert!(daemon.stop().success());
    let claims: i64 = sqlx::query_scalar("SELECT sum(attempts) FROM publish_jobs")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(
        claims, 120,
        "a waiting job was requeued and claimed again, or taken over"
    );
    assert!(
        !daemon.log().contains("requeued claimed jobs"),
        "{}",
        daemon.log()
    );
    s.assert_published_once(Duration::from_secs(30)).await;
}

/// The commands that broadcast outside `serve` join its rate limit: `raregen unstick
/// --older-than 0s` (which takes over the jobs the daemon is sending and sends their
/// bytes again) and `raregen wallet split`, run again and again beside a daemon
/// publishing at its full budget: at the node's door no 2 s window holds more than
/// 300 broadcasts, and every job is on the node once.
#[sqlx::test]
async fn unstick_and_split_beside_a_busy_daemon_stay_under_the_limit(pool: PgPool) {
    let s = Scenario::funded(&pool, 600)
        .proxied()
        .env(SHARED_LIMIT)
        .start()
        .await;
    let mut daemon = s.serve(&[]);
    e2e::submit(&daemon.base, "beside", 2_400).await;
    while e2e::jobs_with_status(&pool, "sent").await < 300 {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let cli = |args: &'static [&'static str]| {
        let env = s.env.clone();
        tokio::task::spawn_blocking(move || {
            std::process::Command::new(env!("CARGO_BIN_EXE_raregen"))
                .env_clear()
                .env("PATH", std::env::var("PATH").unwrap_or_default())
                .envs(env)
                .args(args)
                .stdin(std::process::Stdio::null())
                .output()
                .unwrap()
        })
    };
    let mut unstuck = 0;
    for _ in 0..3 {
        let (unstick, split) = tokio::join!(
            cli(&["unstick", "--older-than", "0s"]),
            cli(&["wallet", "split", "--outputs", "50", "--amount", "20000"]),
        );
        let (unstick, split) = (unstick.unwrap(), split.unwrap());
        let said = String::from_utf8_lossy(&unstick.stdout).into_owned();
        assert!(
            unstick.status.success(),
            "{said}{}",
            String::from_utf8_lossy(&unstick.stderr)
        );
        assert!(
            split.status.success(),
            "{}",
            String::from_utf8_lossy(&split.stderr)
        );
        unstuck += said
            .split_whitespace()
            .next()
            .and_then(|n| n.parse::<usize>().ok())
            .unwrap_or(0);
    }
    s.assert_all_sent(&daemon, 2_400, Duration::from_secs(120))
        .await;
    assert!(daemon.stop().success());
    assert!(unstuck > 0, "unstick took over jobs the daemon was sending");
    let arrivals = s.proxy().arrivals.lock().unwrap().clone();
    let most = e2e::max_in_window(&arrivals, Duration::from_secs(2));
    println!(
        "{} broadcasts ({unstuck} by unstick, 3 splits); most in a 2 s window: {most}",
        arrivals.len()
    );
    assert!(most <= 300, "{most} broadcasts in one 2 s window");
    s.assert_published_once(Duration::from_secs(60)).await;
}

/// A node that answers "accepted" and drops the transaction (the door swallows it),
/// and a stranger's spend of the job's anchor mined meanwhile: none of the job's
/// transactions can ever be mined, so the job, recorded `sent`, is queued again and
/// signs on another coin; it is published once. (Before, its bytes were re-sent for
/// ever and the job stayed `sent` with a transaction that can never be mined.)
#[sqlx::test]
async fn a_sent_job_whose_anchor_a_stranger_spent_is_signed_again_on_another_coin(pool: PgPool) {
    use std::sync::atomic::Ordering::SeqCst;
    let s = one_lane(&pool).start().await;
    let (node, proxy) = (&s.node, s.proxy());
    proxy.late.swallow.store(1, SeqCst);
    let mut daemon = s.serve(&[]);
    e2e::submit(&daemon.base, "dropped", 1).await;
    let started = Instant::now();
    let (swallowed, anchor): (String, (String, i32, i64)) = loop {
        let row: Option<(String, String, i32, i64)> = sqlx::query_as(
            "SELECT j.txid, x.txid, x.vout, x.satoshis FROM publish_jobs j
             JOIN utxos x ON x.id = j.utxo_id WHERE j.status = 'sent'",
        )
        .fetch_optional(&pool)
        .await
        .unwrap();
        if let Some((txid, a, v, s)) = row {
            // The node is away until the anchor is spent: no re-send reaches it.
            proxy.down.store(true, SeqCst);
            break (txid, (a, v, s));
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "{}",
            daemon.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(proxy.late.swallowed.load(SeqCst), 1);
    assert!(
        !node.mempool().await.contains(&swallowed),
        "the door dropped it"
    );
    let foreign = mine_a_strangers_spend(node, &s.wif, &anchor).await;
    proxy.down.store(false, SeqCst);
    // Recorded sent again, with another transaction.
    loop {
        let now: Option<(String, String)> =
            sqlx::query_as("SELECT status, txid FROM publish_jobs WHERE txid IS NOT NULL")
                .fetch_optional(&pool)
                .await
                .unwrap();
        if matches!(&now, Some((status, txid)) if status == "sent" && *txid != swallowed) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "still {now:?}, the swallowed one being {swallowed}; log:\n{}",
            daemon.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    s.finish(&mut daemon, 1, Duration::from_secs(30)).await;
    let raw_tx: Vec<u8> = sqlx::query_scalar("SELECT raw_tx FROM publish_jobs")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_signed_on_another_coin(&raw_tx, &anchor);
    // The dropped transaction is kept in the job's history, with why it was left.
    let (txid, outcome): (String, Option<String>) =
        sqlx::query_as("SELECT txid, outcome FROM job_transactions")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(txid, swallowed);
    assert!(
        outcome.as_deref().unwrap_or_default().contains(&foreign),
        "the job names the spend it re-anchored for: {outcome:?}"
    );
    let coin: (String, Option<String>) =
        sqlx::query_as("SELECT state, spent_by_txid FROM utxos WHERE txid = $1 AND vout = $2")
            .bind(&anchor.0)
            .bind(anchor.1)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(coin, ("spent".into(), Some(foreign.clone())));
}

/// The scenario of the tests whose door lies (they set its [`e2e::Late`]): `lanes`
/// coins behind a proxy, maintenance every second, `sending` stuck after 3 s.
fn at_a_lying_door(pool: &PgPool, lanes: u32) -> ScenarioBuilder {
    Scenario::funded(pool, lanes).proxied().env(&[
        ("RAREGEN__JANITOR__INTERVAL", "1s"),
        ("RAREGEN__JANITOR__STUCK_AFTER", "3s"),
    ])
}

/// The re-anchor tests' scenario: 10 coins [`at_a_lying_door`], no auto-split (the
/// first broadcast at the door is the job's).
fn one_lane(pool: &PgPool) -> ScenarioBuilder {
    at_a_lying_door(pool, 10).env(&[("RAREGEN__UTXO_POOL__MIN_AVAILABLE", "1")])
}

/// The job's transaction `raw_tx` spends another coin than `anchor` (txid, vout, sats).
fn assert_signed_on_another_coin(raw_tx: &[u8], anchor: &(String, i32, i64)) {
    let tx: bitcoin::Transaction = bitcoin::consensus::encode::deserialize(raw_tx).unwrap();
    let spent = tx.input[0].previous_output;
    assert_ne!(
        (spent.txid.to_string(), spent.vout),
        (anchor.0.clone(), anchor.1 as u32),
        "signed again on another coin"
    );
}

/// A stranger's spend of `anchor` (txid, vout, sats), sent to the node directly and
/// mined in a block at once; its txid.
async fn mine_a_strangers_spend(
    node: &RegtestNode,
    wif: &secrecy::SecretString,
    anchor: &(String, i32, i64),
) -> String {
    use raregen::chain::TxBuilder;
    use raregen_actors::ports::{Signer, SpendableUtxo};
    let key = WalletKey::from_wif(wif, Network::Regtest, AddressType::P2wpkh).unwrap();
    let foreign = TxBuilder::new(key, 3.0, 80)
        .publish(
            &SpendableUtxo {
                id: 0,
                txid: anchor.0.clone(),
                vout: anchor.1 as u32,
                satoshis: anchor.2 as u64,
                unconfirmed_depth: 0,
            },
            b"not-the-job",
            0,
        )
        .unwrap();
    node.rpc(
        "sendrawtransaction",
        serde_json::json!([hex::encode(&foreign.raw_tx)]),
    )
    .await;
    let (stranger, _) = WalletKey::generate(Network::Regtest, AddressType::P2wpkh);
    node.mine_to(stranger.script_pubkey(), 1).await;
    foreign.txid
}
