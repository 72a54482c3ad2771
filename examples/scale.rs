//! A day at the seed's capacity, and then some: 15,000,000 finished jobs (sent and
//! confirmed over the last 10 days, so a third are past `retention.keep`) and
//! 1,000,000 queued, generated in SQL (`generate_series`, not the API). Then the
//! statements that must cost the same at any size, timed:
//!
//! - the claim of 500 jobs (the Collector);
//! - a `/metrics` refresh (job-count compaction + every database gauge);
//! - `GET /v1/queue` (jobs per status);
//! - `raregen status` (its whole report);
//! - a pruning batch of 10,000 rows (the Pruner).
//!
//! A benchmark tool, never a default: it makes and drops its own database
//! (`raregen_bench_scale` on the server DATABASE_URL names). Generating the rows takes
//! several minutes and about 5 GB of disk.
//!
//!     cargo run --release --example scale -- [FINISHED] [QUEUED]

use std::time::{Duration, Instant};

use raregen::store::{self, LiveGauges, PgStore, StatusReport};
use raregen_actors::{ClaimStore, LeaseStore, PruneStore};
use sqlx::PgPool;

#[path = "../tests/support/db.rs"]
mod db;

const DB: &str = "raregen_bench_scale";
const CHUNK: i64 = 1_000_000;

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let finished: i64 = args
        .next()
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(15_000_000);
    let queued: i64 = args
        .next()
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(1_000_000);
    actix::System::new().block_on(run(finished, queued))
}

async fn run(finished: i64, queued: i64) -> anyhow::Result<()> {
    let url = db::create_empty(&db::server_url(), DB).await?;
    let pool = PgPool::connect(&url).await?;
    store::migrate(&pool).await?;

    let started = Instant::now();
    let mut from = 1;
    while from <= finished {
        let to = (from + CHUNK - 1).min(finished);
        // Sent and confirmed, spread evenly over the last 10 days (oldest first).
        sqlx::query(
            "INSERT INTO publish_jobs (status, payload, txid, raw_tx, attempts, utxo_id,
                                       sent_at, confirmed_at, block_height, created_at, updated_at)
             SELECT 'sent', convert_to('history-' || g, 'UTF8'), lpad(to_hex(g), 64, '0'),
                    '\\x0200000001', 1, g, t, t + interval '10 minutes', 1, t, t
             FROM (SELECT g, now() - ((($3 - g)::float8 / $3) * interval '10 days') AS t
                   FROM generate_series($1::bigint, $2::bigint) AS g) s",
        )
        .bind(from)
        .bind(to)
        .bind(finished)
        .execute(&pool)
        .await?;
        eprintln!(
            "{to} finished jobs written ({:.0} s)",
            started.elapsed().as_secs_f64()
        );
        from = to + 1;
    }
    let mut from = 1;
    while from <= queued {
        let to = (from + CHUNK - 1).min(queued);
        sqlx::query(
            "INSERT INTO publish_jobs (payload)
             SELECT convert_to('queued-' || g, 'UTF8') FROM generate_series($1::bigint, $2::bigint) AS g",
        )
        .bind(from)
        .bind(to)
        .execute(&pool)
        .await?;
        eprintln!(
            "{to} queued jobs written ({:.0} s)",
            started.elapsed().as_secs_f64()
        );
        from = to + 1;
    }
    eprintln!("VACUUM ANALYZE …");
    sqlx::query("VACUUM ANALYZE").execute(&pool).await?;
    let size: String =
        sqlx::query_scalar("SELECT pg_size_pretty(pg_database_size(current_database()))")
            .fetch_one(&pool)
            .await?;
    println!(
        "{finished} finished + {queued} queued jobs, database {size}, generated in {:.0} s",
        started.elapsed().as_secs_f64()
    );

    let store = PgStore::new(pool.clone(), "scale").with_mode("batch");
    store.heartbeat(Duration::from_secs(600)).await?;
    report("claim of 500 (the Collector)", 20, || async {
        store.claim_batch(500).await.unwrap().expect("queued jobs");
    })
    .await;
    report("/metrics refresh (compact counts + gauges)", 20, || async {
        store::compact_job_counts(&pool).await.unwrap();
        LiveGauges::load(&pool).await.unwrap();
    })
    .await;
    report("GET /v1/queue (jobs per status)", 20, || async {
        store::queue_counts(&pool).await.unwrap();
    })
    .await;
    report("raregen status (whole report)", 5, || async {
        StatusReport::load(&pool).await.unwrap();
    })
    .await;
    report(
        "pruning batch of 10,000 jobs (retention.keep = 7d)",
        5,
        || async {
            let p = store
                .prune(Duration::from_secs(7 * 24 * 3600), false, 10_000)
                .await
                .unwrap();
            assert_eq!(p.jobs, 10_000, "expired jobs to prune");
        },
    )
    .await;
    pool.close().await;
    db::drop_database(&db::server_url(), DB).await?;
    Ok(())
}

/// Runs `f` `n` times; prints the median and the slowest.
async fn report<F, Fut>(what: &str, n: usize, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let mut times = Vec::with_capacity(n);
    for _ in 0..n {
        let started = Instant::now();
        f().await;
        times.push(started.elapsed());
    }
    times.sort();
    println!(
        "{what}: median {:.2} ms, max {:.2} ms ({n} runs)",
        times[n / 2].as_secs_f64() * 1e3,
        times[n - 1].as_secs_f64() * 1e3
    );
}
