//! Postgres restarted under a running daemon: it carries on by itself. The test runs
//! its own cluster (initdb / pg_ctl, as the `postgres` user) so that restarting it
//! disturbs no other test.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::support::e2e::{self, Daemon};
use crate::support::regtest::RegtestNode;
use secrecy::ExposeSecret;

struct PrivateCluster {
    dir: PathBuf,
    port: u16,
}

fn as_postgres(args: &[&str]) {
    let status = Command::new("runuser")
        .args(["-u", "postgres", "--"])
        .args(args)
        .status()
        .expect("runuser runs");
    assert!(status.success(), "{args:?}");
}

impl PrivateCluster {
    fn start() -> PrivateCluster {
        let dir = std::env::temp_dir().join(format!("raregen-pg-{}", rand::random::<u32>()));
        std::fs::create_dir_all(&dir).unwrap();
        Command::new("chown")
            .args(["postgres:postgres"])
            .arg(&dir)
            .status()
            .unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let data = dir.join("data");
        as_postgres(&[
            "initdb",
            "-D",
            data.to_str().unwrap(),
            "-A",
            "trust",
            "-U",
            "postgres",
            "--no-sync",
        ]);
        let cluster = PrivateCluster { dir, port };
        cluster.pg_ctl(&["start"]);
        cluster
    }

    fn pg_ctl(&self, action: &[&str]) {
        let data = self.dir.join("data");
        let opts = format!(
            "-p {} -k {} -h 127.0.0.1 -c fsync=off",
            self.port,
            self.dir.display()
        );
        let log = self.dir.join("log");
        let mut args = vec![
            "pg_ctl",
            "-D",
            data.to_str().unwrap(),
            "-l",
            log.to_str().unwrap(),
            "-o",
            &opts,
            "-w",
        ];
        args.extend_from_slice(action);
        as_postgres(&args);
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/raregen", self.port)
    }
}

impl Drop for PrivateCluster {
    fn drop(&mut self) {
        self.pg_ctl(&["stop", "-m", "immediate"]);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn cluster_tools_present() -> bool {
    Path::new("/usr/sbin/runuser").exists()
        && Command::new("initdb").arg("--version").output().is_ok()
}

#[tokio::test]
async fn postgres_restarted_mid_run() {
    assert!(
        cluster_tools_present(),
        "initdb, pg_ctl and runuser are needed"
    );
    let cluster = PrivateCluster::start();
    let url = cluster.url();
    let out = Command::new(env!("CARGO_BIN_EXE_raregen"))
        .arg("migrate")
        .env("DATABASE_URL", &url)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pool = sqlx::PgPool::connect(&url).await.unwrap();

    let node = RegtestNode::start().await;
    let wif = e2e::funded_wallet_at(&node, &pool, &url, 200, 20_000).await;
    let mut env = vec![
        ("DATABASE_URL".to_owned(), url.clone()),
        (
            "RAREGEN_WALLET_KEY".to_owned(),
            wif.expose_secret().to_owned(),
        ),
        ("RAREGEN__JANITOR__INTERVAL".to_owned(), "1s".to_owned()),
        ("RAREGEN__JANITOR__STUCK_AFTER".to_owned(), "5s".to_owned()),
        ("RAREGEN__RATE_LIMIT__MAX".to_owned(), "100".to_owned()),
        ("RAREGEN__RATE_LIMIT__PER".to_owned(), "1s".to_owned()),
    ];
    env.extend(node.env());
    let mut daemon = Daemon::start(&env, &[]);
    e2e::submit(&daemon.base, "pg", 600).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    pool.close().await;
    cluster.pg_ctl(&["restart", "-m", "fast"]);
    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    let (sent, failed) = e2e::wait_done(&pool, Duration::from_secs(120), &daemon).await;
    assert_eq!((sent, failed), (600, 0));
    assert!(
        daemon.log().contains("database"),
        "the daemon saw the restart"
    );
    assert!(daemon.stop().success());
    let splits = e2e::splits_sent(&pool).await;
    e2e::wait_mempool(&node, 600 + splits as usize, Duration::from_secs(60)).await;
    let payloads = e2e::mempool_payloads(&node).await;
    let distinct: std::collections::HashSet<&Vec<u8>> = payloads.iter().map(|p| &p.1).collect();
    assert_eq!(
        (payloads.len(), distinct.len()),
        (600, 600),
        "each job exactly once"
    );
}
