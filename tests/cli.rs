//! The binary as an operator runs it: `migrate`, `serve` until SIGTERM, `status`,
//! and start-up errors as one line on stderr.

mod support;

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
    let url = support::database_url(&pool).await;
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
    let url = support::database_url(&pool).await;
    let env = vec![("DATABASE_URL".to_owned(), url)];
    for signal in ["-TERM", "-INT"] {
        let mut daemon = support::e2e::Daemon::start(&env, &["--mode", "single"]);
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
        support::job_count(&pool).await,
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
fn an_unreachable_database_is_one_clear_line_at_once_without_the_password() {
    // A pool that waited for a connection would end with "pool timed out" after
    // acquire_timeout (an hour here); the refusal itself is what must be said, at once.
    let out = raregen("postgres://postgres:hunter2@127.0.0.1:1/raregen")
        .env("RAREGEN__DATABASE__ACQUIRE_TIMEOUT", "1h")
        .arg("status")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with("raregen: cannot connect to Postgres at 127.0.0.1:1: "),
        "{stderr}"
    );
    assert!(
        stderr.contains("Connection refused") && stderr.contains("is it running?"),
        "{stderr}"
    );
    assert!(
        stderr
            .contains("DATABASE_URL / database.url is postgres://postgres:***@127.0.0.1:1/raregen"),
        "{stderr}"
    );
    assert!(!stderr.contains("timed out"), "{stderr}");
    assert!(!stderr.contains("hunter2"), "{stderr}");
}

/// The test server's URL with another database name.
fn server_url_with_database(name: &str) -> String {
    let server = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let (base, _) = server
        .rsplit_once('/')
        .expect("DATABASE_URL ends in a database name");
    format!("{base}/{name}")
}

/// The one line on stderr of a failed run.
fn failure_line(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    stderr.trim_end().to_owned()
}

#[test]
fn a_missing_database_is_named_once_with_a_hint() {
    let name = format!("raregen_missing_{}", std::process::id());
    let line = failure_line(raregen(&server_url_with_database(&name)).arg("status"));
    assert_eq!(
        line.matches(&format!("database \"{name}\" does not exist"))
            .count(),
        1,
        "{line}"
    );
    assert!(
        line.contains("DATABASE_URL / database.url") && line.contains("`raregen migrate`"),
        "{line}"
    );
}

#[test]
fn a_missing_config_file_is_named_once() {
    let path = "/nonexistent/raregen-issue15.toml";
    let url = "postgres://postgres@127.0.0.1:5432/postgres";
    let line = failure_line(raregen(url).args(["--config", path, "status"]));
    assert_eq!(
        line,
        format!("raregen: cannot read config file {path}: No such file or directory (os error 2)")
    );
    let line = failure_line(raregen(url).env("RAREGEN_CONFIG", path).arg("status"));
    assert_eq!(
        line,
        format!(
            "raregen: cannot read config file {path} (named by RAREGEN_CONFIG): \
             No such file or directory (os error 2)"
        )
    );
}

#[test]
fn a_bad_duration_says_what_a_duration_looks_like() {
    let url = "postgres://postgres@127.0.0.1:5432/postgres";
    let line = failure_line(
        raregen(url)
            .env("RAREGEN__RATE_LIMIT__PER", "soon")
            .arg("status"),
    );
    assert_eq!(
        line,
        "raregen: config key `rate_limit.per` (from environment variable RAREGEN__RATE_LIMIT__PER): \
         expected a duration such as \"500ms\", \"3s\" or \"2m\", got \"soon\""
    );

    let file = std::env::temp_dir().join(format!("raregen-cli-{}.toml", std::process::id()));
    for (toml, want) in [
        (
            "[rate_limit]\nper = 3\n",
            "config key `rate_limit.per` (from {file}): \
             expected a duration such as \"500ms\", \"3s\" or \"2m\", got 3",
        ),
        (
            "[rate_limit]\nmax = \"lots\"\n",
            "config key `rate_limit.max` (from {file}): \
             expected an integer from 0 to 4294967295, got \"lots\"",
        ),
    ] {
        std::fs::write(&file, toml).unwrap();
        let line = failure_line(raregen(url).arg("--config").arg(&file).arg("status"));
        let want = format!(
            "raregen: {}",
            want.replace("{file}", &file.display().to_string())
        );
        assert_eq!(line, want);
    }
    let _ = std::fs::remove_file(&file);
}

#[sqlx::test]
async fn status_json_matches_the_database(pool: PgPool) {
    support::insert_queued(&pool, 12).await;
    let store = raregen::store::PgStore::new(pool.clone(), "cli-test");
    use raregen_actors::ClaimStore;
    store.claim_batch(5).await.unwrap().unwrap();
    let url = support::database_url(&pool).await;
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

/// Completions and the manual come from the command line's own definition: no
/// configuration, no database.
#[test]
fn completions_and_the_manual_need_nothing_but_the_binary() {
    let nowhere = "postgres://nobody@127.0.0.1:1/none";
    for (shell, marker) in [
        ("bash", "_raregen()"),
        ("zsh", "#compdef raregen"),
        ("fish", "complete -c raregen"),
    ] {
        let out = raregen(nowhere)
            .args(["completions", shell])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{shell}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8(out.stdout).unwrap();
        assert!(text.contains(marker), "{shell}");
        for command in ["load-test", "unstick", "wallet", "split", "completions"] {
            assert!(text.contains(command), "{shell} completes {command}");
        }
    }
    let out = raregen(nowhere).arg("man").output().unwrap();
    assert!(out.status.success());
    let page = String::from_utf8(out.stdout).unwrap();
    for title in [
        ".TH raregen 1",
        ".TH raregen-serve 1",
        ".TH raregen-wallet 1",
        ".TH raregen-load-test 1",
    ] {
        assert!(page.contains(title), "{title}");
    }
    assert!(
        page.contains("batch or single"),
        "serve's --mode is described"
    );
    let out = raregen(nowhere)
        .args(["completions", "tcsh"])
        .output()
        .unwrap();
    assert!(!out.status.success(), "an unknown shell is refused");
}
