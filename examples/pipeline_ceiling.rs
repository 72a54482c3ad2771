//! The pipeline's own ceiling: every job through claim → UTXO → build + sign →
//! write-ahead → broadcast → record, against a local sink that answers every broadcast
//! at once (JSON-RPC over HTTP on loopback), with the rate limit lifted.
//!
//! A benchmark tool, never a default: it makes and drops its own database
//! (`raregen_bench_pipeline` on the server DATABASE_URL names, default
//! postgres://postgres@127.0.0.1:5432/postgres) and uses fake pool outpoints, which
//! only a sink accepts.
//!
//!     cargo run --release --example pipeline_ceiling -- [JOBS] [WORKERS]

use std::net::TcpListener;
use std::time::{Duration, Instant};

use actix_web::{web, App, HttpResponse, HttpServer};
use raregen::config::{AddressType, Network, Settings};
use raregen::store::{self, PgStore};

#[path = "../tests/support/db.rs"]
mod db;

const DB: &str = "raregen_bench_pipeline";

async fn sink(body: web::Json<serde_json::Value>) -> HttpResponse {
    let result = match body["method"].as_str() {
        Some("sendrawtransaction") => serde_json::json!("00".repeat(32)),
        // Everything sent is "in the mempool" (an entry; `null` would mean absent).
        Some("getmempoolentry") => serde_json::json!({ "vsize": 200 }),
        _ => serde_json::json!(null),
    };
    HttpResponse::Ok().json(serde_json::json!({"result": result, "error": null, "id": body["id"]}))
}

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let jobs: i64 = args
        .next()
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(20_000);
    let workers: u32 = args.next().map(|a| a.parse()).transpose()?.unwrap_or(64);
    actix::System::new().block_on(run(jobs, workers))
}

async fn run(jobs: i64, workers: u32) -> anyhow::Result<()> {
    let url = db::create_empty(&db::server_url(), DB).await?;

    let listener = TcpListener::bind("127.0.0.1:0")?;
    let sink_url = format!("http://{}", listener.local_addr()?);
    let sink_server = HttpServer::new(|| App::new().route("/", web::post().to(sink)))
        .workers(1)
        .listen(listener)?
        .run();
    actix::spawn(sink_server);

    let settings = Settings::load_from(
        None,
        vec![
            ("DATABASE_URL".to_owned(), url.clone()),
            ("RAREGEN__NODE__URL".to_owned(), sink_url),
            ("RAREGEN__RATE_LIMIT__MAX".to_owned(), "1000000".to_owned()),
            ("RAREGEN__RATE_LIMIT__PER".to_owned(), "1s".to_owned()),
            (
                "RAREGEN__BROADCASTER__WORKERS".to_owned(),
                workers.to_string(),
            ),
            (
                "RAREGEN__COLLECTOR__MAX_BATCH".to_owned(),
                "2000".to_owned(),
            ),
            (
                "RAREGEN__DATABASE__MAX_CONNECTIONS".to_owned(),
                "16".to_owned(),
            ),
        ],
    )?;
    let pool = store::connect(&settings.database).await?;
    store::migrate(&pool).await?;
    let (wallet, _) = raregen::chain::WalletKey::generate(Network::Regtest, AddressType::P2wpkh);
    // One fake pool UTXO per job: the sink accepts any transaction.
    sqlx::query(
        "INSERT INTO utxos (txid, vout, satoshis, script_pubkey)
         SELECT lpad(to_hex(g), 64, '0'), 0, 20000, $2 FROM generate_series(1, $1) AS g",
    )
    .bind(jobs)
    .bind(wallet.script_pubkey().as_bytes())
    .execute(&pool)
    .await?;
    sqlx::query(
        "INSERT INTO publish_jobs (payload)
         SELECT convert_to('ceiling-' || g, 'UTF8') FROM generate_series(1, $1) AS g",
    )
    .bind(jobs)
    .execute(&pool)
    .await?;
    sqlx::query("VACUUM ANALYZE").execute(&pool).await?;

    let store = PgStore::new(pool.clone(), "bench").with_mode("batch");
    let mut peak_rss = 0;
    let cpu_before = CpuTimes::read();
    let started = Instant::now();
    let pipeline = raregen::cmd::serve::start_pipeline(&settings, store, wallet).await?;
    loop {
        // From the per-status counters: a count over the table would itself load the run.
        let sent: i64 = sqlx::query_scalar(
            "SELECT coalesce(sum(n), 0)::bigint FROM job_counts WHERE status = 'sent'",
        )
        .fetch_one(&pool)
        .await?;
        peak_rss = peak_rss.max(rss_kib("VmRSS"));
        if sent >= jobs {
            break;
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(600),
            "only {sent} sent in 10 min"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let took = started.elapsed();
    let cpu = CpuTimes::read().since(&cpu_before);
    pipeline.shutdown(Duration::from_secs(5)).await;
    println!(
        "{jobs} jobs sent in {:.2} s: {:.0} jobs/s ({workers} broadcasters)",
        took.as_secs_f64(),
        jobs as f64 / took.as_secs_f64()
    );
    println!("the machine's CPU during the run (all cores, /proc/stat): {cpu}");
    println!(
        "resident memory of the process (pipeline + sink): peak sampled {} MiB, high-water mark {} MiB",
        peak_rss / 1024,
        rss_kib("VmHWM") / 1024
    );
    pool.close().await;
    db::drop_database(&db::server_url(), DB).await?;
    Ok(())
}

/// A line of /proc/self/status in KiB (`VmRSS`: now; `VmHWM`: the peak).
fn rss_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// The machine's CPU time by kind, from the `cpu` line of /proc/stat (all cores, in
/// clock ticks): what vmstat shows, over exactly the timed part of the run.
#[derive(Default)]
struct CpuTimes {
    user: u64,
    system: u64,
    idle: u64,
    iowait: u64,
    steal: u64,
    total: u64,
}

impl CpuTimes {
    fn read() -> CpuTimes {
        let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
        let Some(line) = stat.lines().find(|l| l.starts_with("cpu ")) else {
            return CpuTimes::default();
        };
        // user nice system idle iowait irq softirq steal guest guest_nice
        let f: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .filter_map(|v| v.parse().ok())
            .collect();
        let at = |i: usize| f.get(i).copied().unwrap_or(0);
        CpuTimes {
            user: at(0) + at(1),
            system: at(2) + at(5) + at(6),
            idle: at(3),
            iowait: at(4),
            steal: at(7),
            // guest time is already counted in user
            total: (0..8).map(at).sum(),
        }
    }

    fn since(&self, before: &CpuTimes) -> CpuTimes {
        CpuTimes {
            user: self.user - before.user,
            system: self.system - before.system,
            idle: self.idle - before.idle,
            iowait: self.iowait - before.iowait,
            steal: self.steal - before.steal,
            total: self.total - before.total,
        }
    }
}

impl std::fmt::Display for CpuTimes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let pct = |v: u64| 100.0 * v as f64 / self.total.max(1) as f64;
        write!(
            f,
            "us {:.0} % · sy {:.0} % · idle {:.0} % · wa {:.0} % · steal {:.0} %",
            pct(self.user),
            pct(self.system),
            pct(self.idle),
            pct(self.iowait),
            pct(self.steal)
        )
    }
}
