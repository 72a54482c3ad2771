//! A real bcoin regtest node per test, started with the project's own
//! `scripts/regtest-node run` on a free loopback port and killed when the test ends
//! (also if the test process dies: the node gets SIGKILL with its parent).

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bitcoin::Script;
use raregen::chain::node::BitcoindClient;
use raregen::config::Settings;
use serde_json::{json, Value};

pub struct RegtestNode {
    /// The bcoin process, behind a lock so that a node shared by a test and a task it
    /// spawned (`Arc<RegtestNode>`, as in [`super::e2e::Scenario`]) can be stopped.
    child: Mutex<Child>,
    pub url: String,
    pub password: String,
    pub dir: PathBuf,
    pub port: u16,
    persistent: bool,
    client: BitcoindClient,
}

/// A port nothing listens on now (for a node or a daemon to bind).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Runs `scripts/regtest-node run`, which execs bcoin, so the child is the node itself.
fn spawn(dir: &std::path::Path, port: u16, persistent: bool, password: &str) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("node.log"))
        .unwrap();
    let mut cmd = Command::new(repo_root().join("scripts/regtest-node"));
    cmd.arg("run")
        .args(["--port", &port.to_string(), "--api-key", password])
        .arg("--dir")
        .arg(dir)
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log);
    if persistent {
        cmd.arg("--persistent");
    }
    // SAFETY: prctl is async-signal-safe; it only asks the kernel to kill the node when
    // the test process goes away.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    cmd.spawn().expect("scripts/regtest-node runs")
}

impl RegtestNode {
    /// A node whose chain lives in memory.
    pub async fn start() -> RegtestNode {
        let dir = std::env::temp_dir().join(format!(
            "raregen-regtest-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        Self::start_with(dir, free_port(), false).await
    }

    /// A node keeping its chain and mempool in `dir` (survives a restart).
    pub async fn start_with(dir: PathBuf, port: u16, persistent: bool) -> RegtestNode {
        let password = format!("{:032x}", rand::random::<u128>());
        std::fs::create_dir_all(&dir).unwrap();
        let child = Mutex::new(spawn(&dir, port, persistent, &password));
        let url = format!("http://127.0.0.1:{port}");
        let client = BitcoindClient::new(&Self::settings_for(&url, &password).node).unwrap();
        let node = RegtestNode {
            child,
            url,
            password,
            dir,
            port,
            persistent,
            client,
        };
        node.wait_ready().await;
        node
    }

    fn settings_for(url: &str, password: &str) -> Settings {
        super::settings(&[
            ("RAREGEN__NODE__URL", url),
            ("RAREGEN__NODE__USER", "raregen"),
            ("RAREGEN__NODE__PASSWORD", password),
        ])
    }

    async fn wait_ready(&self) {
        let started = Instant::now();
        loop {
            if self.client.call("getblockcount", json!([])).await.is_ok() {
                return;
            }
            let exited = self.child.lock().unwrap().try_wait().unwrap();
            if let Some(status) = exited {
                let log = std::fs::read_to_string(self.dir.join("node.log")).unwrap_or_default();
                panic!("bcoin exited with {status} before answering:\n{log}");
            }
            assert!(
                started.elapsed() < Duration::from_secs(120),
                "bcoin did not start in 120 s"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Stops the node (SIGTERM, then SIGKILL).
    pub fn stop(&self) {
        let mut child = self.child.lock().unwrap();
        let pid = child.id() as i32;
        // The script execs node, so the child is bcoin itself.
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
        let started = Instant::now();
        while child.try_wait().unwrap().is_none() {
            if started.elapsed() > Duration::from_secs(10) {
                let _ = child.kill();
                let _ = child.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Starts the node again on the same port and data folder.
    pub async fn restart(&self) {
        self.stop();
        self.start_again().await;
    }

    /// Starts a node stopped with [`RegtestNode::stop`] again (same port, same data
    /// folder: with `persistent`, the same chain and mempool).
    pub async fn start_again(&self) {
        *self.child.lock().unwrap() = spawn(&self.dir, self.port, self.persistent, &self.password);
        self.wait_ready().await;
    }

    pub fn client(&self) -> &BitcoindClient {
        &self.client
    }

    /// The `RAREGEN__NODE__…` settings that point raregen at this node.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            ("RAREGEN__NODE__URL".into(), self.url.clone()),
            ("RAREGEN__NODE__USER".into(), "raregen".into()),
            ("RAREGEN__NODE__PASSWORD".into(), self.password.clone()),
        ]
    }

    pub async fn rpc(&self, method: &str, params: Value) -> Value {
        self.client
            .call(method, params)
            .await
            .unwrap_or_else(|e| panic!("{method} failed: {e:?}"))
    }

    /// Mines `n` blocks paying `script`; returns their coinbase txids, oldest first.
    pub async fn mine_to(&self, script: &Script, n: u32) -> Vec<String> {
        let address = bcoin_regtest_address(script);
        let hashes = self.rpc("generatetoaddress", json!([n, address])).await;
        let mut coinbases = Vec::new();
        for hash in hashes.as_array().unwrap() {
            let block = self.rpc("getblock", json!([hash, true, false])).await;
            coinbases.push(block["tx"][0].as_str().unwrap().to_owned());
        }
        coinbases
    }

    /// Mines `n` blocks paying `script`; an error (a busy node that answers late) is
    /// returned, not a panic: the block may have been mined all the same.
    pub async fn try_mine(&self, script: &Script, n: u32) -> Result<(), String> {
        let address = bcoin_regtest_address(script);
        self.client
            .call("generatetoaddress", json!([n, address]))
            .await
            .map(|_| ())
            .map_err(|e| format!("{e:?}"))
    }

    pub async fn height(&self) -> u64 {
        self.rpc("getblockcount", json!([])).await.as_u64().unwrap()
    }

    pub async fn mempool(&self) -> Vec<String> {
        serde_json::from_value(self.rpc("getrawmempool", json!([])).await).unwrap()
    }

    /// The raw bytes of a transaction the node knows.
    pub async fn raw_transaction(&self, txid: &str) -> Vec<u8> {
        let hex_tx = self.rpc("getrawtransaction", json!([txid, false])).await;
        hex::decode(hex_tx.as_str().unwrap()).unwrap()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("node.log")).unwrap_or_default()
    }
}

impl Drop for RegtestNode {
    fn drop(&mut self) {
        let child = self
            .child
            .get_mut()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let _ = child.kill();
        let _ = child.wait();
        if !self.persistent {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// bcoin's regtest address for `script` (see `raregen::chain::wallet`).
pub fn bcoin_regtest_address(script: &Script) -> String {
    raregen::chain::key::bcoin_regtest_address(script).expect("a P2WPKH or P2PKH script")
}
