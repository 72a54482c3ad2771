//! Retention: the Pruner deletes (or archives) exactly the finished jobs past
//! `retention.keep` — `sent` and confirmed that long ago, `failed` that long ago — and
//! nothing live; spent UTXOs go with their jobs; the per-status counters stay exact; a
//! daemon killed in the middle of a pruning run loses nothing and the next run goes on.

mod support;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use raregen::store::{PgStore, JOB_COUNTS_SQL};
use raregen_actors::PruneStore;
use sqlx::PgPool;

const WEEK: Duration = Duration::from_secs(7 * 24 * 3600);

/// 400 jobs created 21 days ago: 1–200 `sent` and confirmed (id % 10) days and an hour
/// ago; 201–300 `failed` (id % 20) days and an hour ago; 301–340 `sent` 11 days ago and
/// never confirmed; 341–400 `queued`. One spent UTXO per sent job, spent 10 days ago;
/// a retired UTXO 10 days old, and one a day old; each failed job with an even id
/// holds the anchor it signed on (`reserved`), the odd ones never signed. Returns the
/// ids that must go after a week: sent with id % 10 in 7..=9, failed without an anchor
/// failed 7 days ago or more, failed with an anchor 14 days ago or more (the anchor
/// keep): 60 + 35 + 15 = 110 jobs.
async fn history(pool: &PgPool) -> BTreeSet<i64> {
    for sql in [
        "INSERT INTO publish_jobs (payload, created_at)
         SELECT convert_to('job-' || g, 'UTF8'), now() - interval '21 days'
         FROM generate_series(1, 400) AS g",
        "UPDATE publish_jobs SET status = 'sent', txid = lpad(to_hex(id), 64, '0'),
                raw_tx = '\\x00', sent_at = now() - interval '11 days',
                confirmed_at = now() - make_interval(days => (id % 10)::int) - interval '1 hour'
         WHERE id <= 200",
        "UPDATE publish_jobs SET status = 'failed', last_error = 'refused',
                updated_at = now() - make_interval(days => (id % 20)::int) - interval '1 hour'
         WHERE id BETWEEN 201 AND 300",
        "UPDATE publish_jobs SET status = 'sent', txid = lpad(to_hex(id), 64, '0'),
                raw_tx = '\\x00', sent_at = now() - interval '11 days'
         WHERE id BETWEEN 301 AND 340",
        "INSERT INTO utxos (txid, vout, satoshis, script_pubkey, state, reserved_by,
                            spent_by_txid, updated_at)
         SELECT lpad(to_hex(id + 100000), 64, '0'), 0, 1000, '\\x0014', 'spent', id, txid,
                now() - interval '10 days'
         FROM publish_jobs WHERE status = 'sent'",
        "UPDATE publish_jobs j SET utxo_id = x.id FROM utxos x WHERE x.reserved_by = j.id",
        "INSERT INTO utxos (txid, vout, satoshis, script_pubkey, state, updated_at) VALUES
             (lpad('aa', 64, '0'), 0, 1000, '\\x0014', 'retired', now() - interval '10 days'),
             (lpad('bb', 64, '0'), 0, 1000, '\\x0014', 'retired', now() - interval '1 day')",
        // Failed jobs keep the anchor they signed on, reserved.
        "INSERT INTO utxos (txid, vout, satoshis, script_pubkey, state, reserved_by, reserved_at)
         SELECT lpad(to_hex(id + 200000), 64, '0'), 0, 1000, '\\x0014', 'reserved', id, now()
         FROM publish_jobs WHERE status = 'failed' AND id % 2 = 0",
        "UPDATE publish_jobs j SET anchor_utxo_id = x.id FROM utxos x
         WHERE x.reserved_by = j.id AND x.state = 'reserved'",
    ] {
        sqlx::query(sql).execute(pool).await.unwrap();
    }
    let anchor_days = (raregen::store::ANCHOR_KEEP.as_secs() / 86_400) as i64;
    (1..=200)
        .filter(|id| id % 10 >= 7)
        .chain((201..=300).filter(|id| {
            let days = id % 20;
            if id % 2 == 0 {
                days >= anchor_days
            } else {
                days >= 7
            }
        }))
        .collect()
}

async fn ids(pool: &PgPool, sql: &str) -> BTreeSet<i64> {
    sqlx::query_scalar::<_, i64>(sql)
        .fetch_all(pool)
        .await
        .unwrap()
        .into_iter()
        .collect()
}

async fn assert_counts_exact(pool: &PgPool) {
    let counted: Vec<(String, i64)> = sqlx::query_as(JOB_COUNTS_SQL)
        .fetch_all(pool)
        .await
        .unwrap();
    let actual: Vec<(String, i64)> =
        sqlx::query_as("SELECT status, count(*) FROM publish_jobs GROUP BY status ORDER BY status")
            .fetch_all(pool)
            .await
            .unwrap();
    assert_eq!(counted, actual, "job_counts after pruning");
}

/// Prunes in batches of 25 until nothing is left to prune; answers the jobs pruned.
async fn prune_all(store: &PgStore, archive: bool) -> u64 {
    let mut total = 0;
    loop {
        let p = store.prune(WEEK, archive, 25).await.unwrap();
        total += p.jobs;
        if p.jobs == 0 && p.utxos == 0 && p.batches == 0 && p.splits == 0 {
            return total;
        }
    }
}

#[sqlx::test]
async fn exactly_the_expired_finished_jobs_go_and_nothing_live(pool: PgPool) {
    let expired = history(&pool).await;
    let all = ids(&pool, "SELECT id FROM publish_jobs").await;
    let store = PgStore::new(pool.clone(), "pruner");
    assert_eq!(prune_all(&store, false).await, 110);
    let left = ids(&pool, "SELECT id FROM publish_jobs").await;
    assert_eq!(left, all.difference(&expired).copied().collect());
    // Spent UTXOs went with their jobs, and only those; retired ones of no job stay.
    let spent_left = ids(&pool, "SELECT reserved_by FROM utxos WHERE state = 'spent'").await;
    assert_eq!(
        spent_left,
        (1..=340)
            .filter(|id| !expired.contains(id))
            .filter(|id| *id <= 200 || *id > 300)
            .collect()
    );
    let retired: i64 = sqlx::query_scalar("SELECT count(*) FROM utxos WHERE state = 'retired'")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(retired, 2, "retired UTXOs of no job stay");
    // The anchors the pruned failed jobs held (failed 14 days ago or more) are back in
    // the pool, dirty (asked about before anyone spends them); the kept failed jobs
    // still hold theirs, also those failed more than a week ago.
    let freed: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM utxos
         WHERE state = 'available' AND dirty AND reserved_by IS NULL AND satoshis = 1000",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(freed, 15);
    let held = ids(
        &pool,
        "SELECT reserved_by FROM utxos WHERE state = 'reserved'",
    )
    .await;
    assert_eq!(
        held,
        (201..=300)
            .filter(|id| id % 2 == 0 && id % 20 < 14)
            .collect()
    );
    assert_counts_exact(&pool).await;
    // Nothing more to do: a second pass prunes nothing.
    assert_eq!(prune_all(&store, false).await, 0);
}

#[sqlx::test]
async fn archiving_moves_the_same_jobs_whole(pool: PgPool) {
    let expired = history(&pool).await;
    let before: Vec<(i64, String, Option<String>)> =
        sqlx::query_as("SELECT id, status, txid FROM publish_jobs WHERE id = ANY($1) ORDER BY id")
            .bind(expired.iter().copied().collect::<Vec<_>>())
            .fetch_all(&pool)
            .await
            .unwrap();
    let store = PgStore::new(pool.clone(), "pruner");
    assert_eq!(prune_all(&store, true).await, 110);
    let archived: Vec<(i64, String, Option<String>)> =
        sqlx::query_as("SELECT id, status, txid FROM publish_jobs_archive ORDER BY id")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(archived, before);
    // The archive has publish_jobs' columns in the same order, then `archived_at` (a
    // migration that adds a column to one must add it to the other, in place).
    let columns = |table: &'static str| {
        let pool = pool.clone();
        async move {
            sqlx::query_scalar::<_, String>(
                "SELECT column_name::text FROM information_schema.columns
                 WHERE table_name = $1 ORDER BY ordinal_position",
            )
            .bind(table)
            .fetch_all(&pool)
            .await
            .unwrap()
        }
    };
    let mut jobs = columns("publish_jobs").await;
    jobs.push("archived_at".into());
    assert_eq!(columns("publish_jobs_archive").await, jobs);
    assert_counts_exact(&pool).await;
}

/// `raregen serve` prunes by itself; killed (SIGKILL) in the middle of a run (a
/// failpoint slows each batch), it has removed only expired jobs, and the next start
/// finishes the work.
#[sqlx::test(migrations = false)]
async fn a_daemon_killed_mid_pruning_loses_nothing(pool: PgPool) {
    let url = support::database_url(&pool).await;
    let env = |slow: bool| {
        let mut env = vec![
            ("DATABASE_URL".to_owned(), url.clone()),
            ("RAREGEN__RETENTION__BATCH".to_owned(), "10".to_owned()),
            ("RAREGEN__RETENTION__INTERVAL".to_owned(), "1s".to_owned()),
        ];
        if slow {
            env.push((
                "FAILPOINTS".to_owned(),
                "pruner-between-batches=sleep(400)".to_owned(),
            ));
        }
        env
    };
    // The first start migrates; the history goes in while it runs.
    let mut daemon = support::e2e::Daemon::start(&env(true), &["--mode", "batch"]);
    let expired = history(&pool).await;
    let all = ids(&pool, "SELECT id FROM publish_jobs").await;
    let started = Instant::now();
    loop {
        let left = ids(&pool, "SELECT id FROM publish_jobs").await;
        if all.len() - left.len() >= 20 || started.elapsed() > Duration::from_secs(60) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    daemon.kill9();
    let left = ids(&pool, "SELECT id FROM publish_jobs").await;
    let gone: BTreeSet<i64> = all.difference(&left).copied().collect();
    assert!(
        !gone.is_empty() && gone.len() < expired.len(),
        "killed mid-run: {} of {} pruned",
        gone.len(),
        expired.len()
    );
    assert!(gone.is_subset(&expired), "only expired jobs go: {gone:?}");
    assert_counts_exact(&pool).await;
    let mut daemon = support::e2e::Daemon::start(&env(false), &["--mode", "batch"]);
    let started = Instant::now();
    loop {
        let left = ids(&pool, "SELECT id FROM publish_jobs").await;
        if left == all.difference(&expired).copied().collect()
            || started.elapsed() > Duration::from_secs(60)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(daemon.stop().success());
    let left = ids(&pool, "SELECT id FROM publish_jobs").await;
    assert_eq!(
        left,
        all.difference(&expired).copied().collect(),
        "{}",
        daemon.log()
    );
    assert_counts_exact(&pool).await;
    assert!(
        daemon.log().contains("pruner: removed finished rows"),
        "a log line per run that removed rows"
    );
}

/// The counters survive what bypasses their statement triggers: a TRUNCATE empties
/// them with the table, and `raregen_recount_job_counts()` rebuilds them from the table
/// (after, say, a data-only restore with triggers off).
#[sqlx::test]
async fn the_counters_follow_a_truncate_and_a_recount_repairs_them(pool: PgPool) {
    history(&pool).await;
    assert_counts_exact(&pool).await;
    sqlx::query("TRUNCATE publish_jobs CASCADE")
        .execute(&pool)
        .await
        .unwrap();
    assert_counts_exact(&pool).await;
    support::insert_queued(&pool, 7).await;
    sqlx::query("INSERT INTO job_counts (status, n) VALUES ('sent', 1000), ('queued', -3)")
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query("SELECT raregen_recount_job_counts()")
        .execute(&pool)
        .await
        .unwrap();
    assert_counts_exact(&pool).await;
}

/// A failed job requeued by an operator while a pruning batch runs is not deleted: the
/// batch picked it as expired, waited for the requeue's lock, and must check again.
#[sqlx::test]
async fn a_job_requeued_during_a_pruning_batch_stays(pool: PgPool) {
    let expired = history(&pool).await;
    let victim = *expired
        .iter()
        .find(|id| **id > 200)
        .expect("an expired failed job");
    let mut requeue = pool.begin().await.unwrap();
    sqlx::query("UPDATE publish_jobs SET status = 'queued', next_attempt_at = now() WHERE id = $1")
        .bind(victim)
        .execute(&mut *requeue)
        .await
        .unwrap();
    let store = PgStore::new(pool.clone(), "pruner");
    let pruning = tokio::spawn(async move { store.prune(WEEK, false, 1_000).await.unwrap() });
    tokio::time::sleep(Duration::from_millis(500)).await;
    requeue.commit().await.unwrap();
    let pruned = pruning.await.unwrap();
    assert_eq!(pruned.jobs, 109, "every expired job but the requeued one");
    let status: String = sqlx::query_scalar("SELECT status FROM publish_jobs WHERE id = $1")
        .bind(victim)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(status, "queued");
    assert_counts_exact(&pool).await;
}
