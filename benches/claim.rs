//! The claim of one batch of 500 jobs from a table of 1,000,000 queued rows.
//!
//! Needs a Postgres server: DATABASE_URL names it (default
//! `postgres://postgres@127.0.0.1:5432/postgres`); the bench makes and drops its own
//! database `raregen_bench_claim`. Run: `cargo bench --bench claim`.

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use raregen::store::{self, PgStore};
use raregen_actors::ClaimStore;
use sqlx::postgres::PgPoolOptions;

const ROWS: i64 = 1_000_000;
const BATCH: u32 = 500;
const DB: &str = "raregen_bench_claim";

#[path = "../tests/support/db.rs"]
mod db;

async fn setup() -> PgStore {
    let url = db::create_empty(&db::server_url(), DB)
        .await
        .expect("Postgres answers");
    let pool = PgPoolOptions::new()
        .max_connections(4)
        .connect(&url)
        .await
        .unwrap();
    store::migrate(&pool).await.unwrap();
    let started = Instant::now();
    sqlx::query(
        "INSERT INTO publish_jobs (payload)
         SELECT convert_to('bench-job-' || g, 'UTF8') FROM generate_series(1, $1) AS g",
    )
    .bind(ROWS)
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query("VACUUM ANALYZE publish_jobs")
        .execute(&pool)
        .await
        .unwrap();
    eprintln!("inserted {ROWS} queued jobs in {:?}", started.elapsed());
    PgStore::new(pool, "bench")
}

fn claim(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let store = rt.block_on(setup());
    let mut group = c.benchmark_group("claim");
    group
        .sample_size(50)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5));
    group.bench_function("500 of 1,000,000 queued", |b| {
        b.to_async(&rt).iter_custom(|iters| {
            let store = store.clone();
            async move {
                let started = Instant::now();
                for _ in 0..iters {
                    let batch = store.claim_batch(BATCH).await.unwrap().unwrap();
                    assert_eq!(
                        batch.jobs.len(),
                        BATCH as usize,
                        "the bench ran out of jobs"
                    );
                }
                started.elapsed()
            }
        })
    });
    group.finish();
    rt.block_on(async {
        store.pool().close().await;
        db::drop_database(&db::server_url(), DB).await.unwrap();
    });
}

criterion_group!(benches, claim);
criterion_main!(benches);
