//! The binary as an operator runs it: `migrate`, `serve` until SIGTERM, `status`,
//! and start-up errors as one line on stderr.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sqlx::PgPool;

fn raregen(database_url: &str) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_raregen"));
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("DATABASE_URL", database_url)
        .stdin(Stdio::null());
    cmd
}

fn wait_exit(child: &mut Child, limit: Duration) -> std::process::ExitStatus {
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if started.elapsed() > limit {
            child.kill().unwrap();
            panic!("raregen did not exit within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[sqlx::test(migrations = false)]
async fn migrate_is_idempotent(pool: PgPool) {
    let url = common::database_url(&pool).await;
    for _ in 0..2 {
        let out = raregen(&url).arg("migrate").output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let tables: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM information_schema.tables
         WHERE table_name IN ('publish_jobs', 'utxos', 'batches', 'workers')",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(tables, 4);
}

#[sqlx::test(migrations = false)]
async fn serve_accepts_jobs_and_stops_cleanly_on_sigterm_and_sigint(pool: PgPool) {
    let url = common::database_url(&pool).await;
    let env = vec![("DATABASE_URL".to_owned(), url)];
    for signal in ["-TERM", "-INT"] {
        let mut daemon = common::e2e::Daemon::start(&env, &["--mode", "single"]);
        let client = reqwest::Client::new();
        let resp = client
            .post(format!("{}/v1/jobs", daemon.base))
            .json(&json!({"payload": format!("via serve {signal}")}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 201);
        let ready = client
            .get(format!("{}/readyz", daemon.base))
            .send()
            .await
            .unwrap();
        assert_eq!(ready.status(), 200);
        daemon.signal(signal);
        let status = wait_exit(&mut daemon.child, Duration::from_secs(15));
        assert!(status.success(), "{signal}: exit status {status:?}");
    }
    assert_eq!(
        common::job_count(&pool).await,
        2,
        "serve applied the migrations and stored the jobs"
    );
}

#[test]
fn bad_configuration_stops_start_up_with_one_line_naming_the_key() {
    let cases: &[(&str, &str, &str)] = &[
        ("RAREGEN__RATE_LIMIT__MAX", "many", "rate_limit.max"),
        ("RAREGEN__COLLECTOR__INTERVALL", "5s", "collector.intervall"),
        (
            "RAREGEN__JANITOR__STUCK_AFTER",
            "soon",
            "janitor.stuck_after",
        ),
    ];
    for (var, value, key) in cases {
        let out = raregen("postgres://postgres@127.0.0.1:5432/postgres")
            .arg("status")
            .env(var, value)
            .output()
            .unwrap();
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
        assert!(stderr.contains(key), "{var}: {stderr}");
    }

    let missing = raregen("postgres://postgres@127.0.0.1:5432/postgres")
        .args(["--config", "/nonexistent/raregen.toml", "status"])
        .output()
        .unwrap();
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("/nonexistent/raregen.toml"));
}

#[test]
fn an_unreachable_database_is_one_clear_line_without_the_password() {
    let out = raregen("postgres://postgres:hunter2@127.0.0.1:1/raregen")
        .env("RAREGEN__DATABASE__ACQUIRE_TIMEOUT", "2s")
        .arg("status")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    assert!(
        stderr
            .contains("cannot connect to Postgres at postgres://postgres:***@127.0.0.1:1/raregen"),
        "{stderr}"
    );
    assert!(!stderr.contains("hunter2"), "{stderr}");
}

#[sqlx::test]
async fn status_json_matches_the_database(pool: PgPool) {
    common::insert_queued(&pool, 12).await;
    let store = raregen::store::PgStore::new(pool.clone(), "cli-test");
    use raregen_actors::JobStore;
    store.claim_batch(5).await.unwrap().unwrap();
    let url = common::database_url(&pool).await;
    let out = raregen(&url).args(["status", "--json"]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let queue: Vec<(String, i64, i64)> = report["queue"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["status"].as_str().unwrap().to_owned(),
                r["count"].as_i64().unwrap(),
                r["batches"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        queue,
        vec![
            ("processing_batch".to_owned(), 5, 1),
            ("queued".to_owned(), 7, 0)
        ]
    );
    assert_eq!(report["batches"][0]["jobs"], 5);
    assert_eq!(report["batches"][0]["first_seq"], 1);
    assert_eq!(report["batches"][0]["last_seq"], 5);
    assert_eq!(report["pool"]["available"], 0);

    let text = raregen(&url).arg("status").output().unwrap();
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("processing_batch") && text.contains("UTXO pool"),
        "{text}"
    );
}
