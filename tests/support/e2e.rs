//! End-to-end pieces: a funded wallet on a regtest node, `raregen serve` as a child
//! process, and a proxy at the node's door that timestamps every broadcast; a
//! [`Scenario`] puts them together the way most tests start.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use bitcoin::consensus::encode::deserialize;
use bitcoin::Transaction;
use raregen::chain::WalletKey;
use raregen::cmd::wallet::Wallet;
use raregen::config::{AddressType, Network};
use secrecy::{ExposeSecret, SecretString};
use serde_json::{json, Value};
use sqlx::PgPool;

use super::regtest::RegtestNode;

/// A wallet funded on `node`: a coinbase imported into the pool, split into
/// `lanes` outputs of `amount` sats (no split when `lanes` is 0).
pub async fn funded_wallet(
    node: &RegtestNode,
    pool: &PgPool,
    lanes: u32,
    amount: u64,
) -> SecretString {
    let url = super::database_url(pool).await;
    funded_wallet_at(node, pool, &url, lanes, amount).await
}

/// [`funded_wallet`] for a pool whose URL is given (a private cluster).
pub async fn funded_wallet_at(
    node: &RegtestNode,
    pool: &PgPool,
    url: &str,
    lanes: u32,
    amount: u64,
) -> SecretString {
    let (key, wif) = WalletKey::generate(Network::Regtest, AddressType::P2wpkh);
    let coinbases = node.mine_to(key.script_pubkey(), 450).await;
    let mut env: Vec<(String, String)> = node.env();
    env.push(("DATABASE_URL".into(), url.to_owned()));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let settings = super::settings(&env);
    let wallet = Wallet {
        builder: raregen::chain::TxBuilder::new(
            WalletKey::from_wif(&wif, Network::Regtest, AddressType::P2wpkh).unwrap(),
            settings.chain.fee_rate,
            settings.chain.max_payload_bytes,
        ),
        node: raregen::chain::node::from_settings(&settings.node).unwrap(),
        pool: pool.clone(),
        settings,
        shared_limit: false,
    };
    wallet
        .import(&[format!("{}:0", coinbases[0])])
        .await
        .unwrap();
    if lanes > 0 {
        wallet.split(lanes, amount).await.unwrap();
    }
    wif
}

/// `raregen serve` in a child process.
pub struct Daemon {
    pub child: Child,
    pub base: String,
    pub lines: Arc<Mutex<Vec<String>>>,
}

impl Daemon {
    /// Starts `raregen serve` with `env` and waits until it serves.
    pub fn start(env: &[(String, String)], args: &[&str]) -> Daemon {
        let mut child = Command::new(env!("CARGO_BIN_EXE_raregen"))
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("RAREGEN__API__LISTEN", "127.0.0.1:0")
            .env("RUST_LOG", "info,raregen::http=warn,sqlx=warn")
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .args(["--log-format", "json", "serve"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("raregen starts");
        let stderr = child.stderr.take().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let kept = lines.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str::<Value>(&line) {
                    if v["message"] == "raregen serving" {
                        let _ = tx.send(v["addr"].as_str().unwrap().to_owned());
                    }
                }
                kept.lock().unwrap().push(line);
            }
        });
        let addr = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(addr) => addr,
            Err(_) => panic!("serve did not start:\n{}", lines.lock().unwrap().join("\n")),
        };
        Daemon {
            child,
            base: format!("http://{addr}"),
            lines,
        }
    }

    pub fn signal(&self, signal: &str) {
        let ok = Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(ok.success());
    }

    /// SIGKILL: no chance to clean up.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM and wait for a clean exit.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        self.signal("-TERM");
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "serve did not stop"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Submits `n` jobs (payload `{prefix}-{i}`) through the bulk API; returns their ids.
pub async fn submit(base: &str, prefix: &str, n: usize) -> Vec<i64> {
    let client = reqwest::Client::new();
    let mut ids = Vec::new();
    for chunk in (0..n).collect::<Vec<_>>().chunks(10_000) {
        let jobs: Vec<Value> = chunk
            .iter()
            .map(|i| json!({"payload": format!("{prefix}-{i}")}))
            .collect();
        let resp = client
            .post(format!("{base}/v1/jobs/bulk"))
            .json(&json!({ "jobs": jobs }))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 201);
        let body: Value = resp.json().await.unwrap();
        ids.extend(
            body["ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_i64().unwrap()),
        );
    }
    ids
}

/// Waits until no job is queued, claimed or sending; returns (sent, failed).
pub async fn wait_done(pool: &PgPool, limit: Duration, daemon: &Daemon) -> (i64, i64) {
    let started = Instant::now();
    loop {
        let (open, sent, failed): (i64, i64, i64) = sqlx::query_as(
            "SELECT count(*) FILTER (WHERE status IN ('queued', 'processing_batch', 'sending')),
                    count(*) FILTER (WHERE status = 'sent'),
                    count(*) FILTER (WHERE status = 'failed')
             FROM publish_jobs",
        )
        .fetch_one(pool)
        .await
        .unwrap();
        if open == 0 {
            return (sent, failed);
        }
        assert!(
            started.elapsed() < limit,
            "{open} jobs still open after {limit:?} ({sent} sent, {failed} failed); log:\n{}",
            daemon
                .log()
                .lines()
                .rev()
                .take(40)
                .collect::<Vec<_>>()
                .join("\n")
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits until the node's mempool holds at least `n` transactions (bcoin answers a
/// broadcast before it verifies it); returns how long that took.
pub async fn wait_mempool(node: &RegtestNode, n: usize, limit: Duration) -> Duration {
    let started = Instant::now();
    while node.mempool().await.len() < n && started.elapsed() < limit {
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    started.elapsed()
}

/// Exactly-once at the node: every `sent` job's payload is in the node's mempool in
/// exactly one transaction, the job's recorded txid, and no payload of a job that is
/// not `sent` is there at all. Waits up to `limit` for bcoin's verification queue.
/// Returns the number of sent jobs checked.
pub async fn assert_published_once(pool: &PgPool, node: &RegtestNode, limit: Duration) -> usize {
    let jobs: Vec<(i64, Vec<u8>, Option<String>, String)> =
        sqlx::query_as("SELECT id, payload, txid, status FROM publish_jobs ORDER BY id")
            .fetch_all(pool)
            .await
            .unwrap();
    let sent = jobs.iter().filter(|j| j.3 == "sent").count();
    let started = Instant::now();
    loop {
        let on_node = mempool_payloads(node).await;
        let wrong = wrong_publications(&jobs, &on_node);
        if wrong.is_empty() {
            assert_eq!(
                on_node.len(),
                sent,
                "no other transaction carries a payload"
            );
            return sent;
        }
        assert!(
            started.elapsed() < limit,
            "{} jobs not published exactly once, e.g. {:?}",
            wrong.len(),
            &wrong[..wrong.len().min(5)]
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The jobs (id, payload, txid, status) not published exactly once in `on_node`
/// (txid, payload): a `sent` job's payload in exactly one transaction, its recorded
/// txid; any other job's nowhere.
pub fn wrong_publications(
    jobs: &[(i64, Vec<u8>, Option<String>, String)],
    on_node: &[(String, Vec<u8>)],
) -> Vec<String> {
    let mut by_payload: std::collections::HashMap<&[u8], Vec<&str>> = Default::default();
    for (txid, payload) in on_node {
        by_payload.entry(payload).or_default().push(txid);
    }
    jobs.iter()
        .filter_map(|(id, payload, txid, status)| {
            let found = by_payload
                .get(payload.as_slice())
                .cloned()
                .unwrap_or_default();
            let expected: Vec<&str> = match status.as_str() {
                "sent" => txid.as_deref().into_iter().collect(),
                _ => Vec::new(),
            };
            (found != expected).then(|| format!("job {id} ({status}): on the node {found:?}"))
        })
        .collect()
}

/// Every transaction a job ever signed (its history and its current one) spends the
/// same outpoint, the job's anchor: at most one of them can be mined. Returns how many
/// earlier transactions the jobs have.
pub async fn assert_one_outpoint_per_job(pool: &PgPool) -> usize {
    let txs: Vec<(i64, Vec<u8>, Option<Vec<u8>>)> = sqlx::query_as(
        "SELECT t.job_id, t.raw_tx, j.raw_tx FROM job_transactions t
         JOIN publish_jobs j ON j.id = t.job_id",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    let input = |raw: &[u8]| {
        let tx: Transaction = deserialize(raw).unwrap();
        tx.input[0].previous_output
    };
    for (job, earlier, current) in &txs {
        assert_eq!(
            input(earlier),
            input(
                current
                    .as_deref()
                    .expect("a sent job keeps its transaction")
            ),
            "job {job} signed on two outpoints"
        );
    }
    txs.len()
}

/// Every OP_RETURN payload in the blocks above `from_height`, with the txid carrying it.
pub async fn block_payloads(node: &RegtestNode, from_height: u64) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for height in from_height + 1..=node.height().await {
        let hash = node.rpc("getblockhash", serde_json::json!([height])).await;
        let block = node
            .rpc("getblock", serde_json::json!([hash, true, false]))
            .await;
        for txid in block["tx"].as_array().unwrap().iter().skip(1) {
            let txid = txid.as_str().unwrap();
            out.extend(payloads_of(txid, &node.raw_transaction(txid).await));
        }
    }
    out
}

fn payloads_of(txid: &str, raw: &[u8]) -> Vec<(String, Vec<u8>)> {
    let tx: Transaction = deserialize(raw).unwrap();
    tx.output
        .iter()
        .filter(|o| o.script_pubkey.is_op_return())
        .map(|o| {
            let data = o.script_pubkey.instructions().nth(1).unwrap().unwrap();
            (
                txid.to_owned(),
                data.push_bytes().unwrap().as_bytes().to_vec(),
            )
        })
        .collect()
}

/// The txids carrying each payload, from `on_node` (txid, payload).
pub fn txids_by_payload(
    on_node: &[(String, Vec<u8>)],
) -> std::collections::HashMap<Vec<u8>, Vec<String>> {
    let mut by_payload: std::collections::HashMap<Vec<u8>, Vec<String>> = Default::default();
    for (txid, payload) in on_node {
        by_payload
            .entry(payload.clone())
            .or_default()
            .push(txid.clone());
    }
    by_payload
}

/// Every OP_RETURN payload in the node's mempool, with the txid carrying it.
pub async fn mempool_payloads(node: &RegtestNode) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for txid in node.mempool().await {
        out.extend(payloads_of(&txid, &node.raw_transaction(&txid).await));
    }
    out
}

/// A proxy in front of the node: forwards every JSON-RPC call and timestamps each
/// `sendrawtransaction` as it arrives (the node's door). It can be made to refuse
/// connections' requests (`down`) to play a node that is away, and to answer some
/// broadcasts late in the worst way ([`Late`]).
pub struct Proxy {
    pub url: String,
    pub arrivals: Arc<Mutex<Vec<Instant>>>,
    pub down: Arc<AtomicBool>,
    pub late: Arc<Late>,
}

/// A lying door: every `every`-th `sendrawtransaction` (0: none) is answered 504 at
/// once and forwarded to the node `delay` later, so that the node gets the transaction
/// after raregen has been told the outcome is unknown, and after it has asked.
#[derive(Default)]
pub struct Late {
    pub every: std::sync::atomic::AtomicU32,
    pub delay_ms: std::sync::atomic::AtomicU64,
    seen: std::sync::atomic::AtomicU32,
    /// Forwards done late, and still waiting to be done.
    pub forwarded: std::sync::atomic::AtomicU32,
    pub pending: std::sync::atomic::AtomicU32,
    /// Answer those broadcasts with a definitive refusal (Core's `-26 min relay fee not
    /// met`) instead of 504: the worst lie, since a refusal allows a new signature.
    pub refuse: AtomicBool,
    /// When set (`spread_to_ms` > 0), the late forwards are spread over
    /// [`delay_ms`, `spread_to_ms`) instead of all coming `delay_ms` late.
    pub spread_to_ms: std::sync::atomic::AtomicU64,
    /// Late ones alternate: 504, then a refusal (overrides `refuse`).
    pub mixed: AtomicBool,
    /// Every `hang_every`-th broadcast (0: none) is forwarded at once and answered only
    /// `hang_ms` later (past the client's timeout: it never hears the node's answer).
    pub hang_every: std::sync::atomic::AtomicU32,
    pub hang_ms: std::sync::atomic::AtomicU64,
    /// Broadcasts answered only after the client gave up.
    pub hung: std::sync::atomic::AtomicU32,
    /// A transaction sent a second time (the same bytes) is refused (`-26 min relay fee
    /// not met`) and not forwarded: a node whose minimum fee rose between a broadcast
    /// whose outcome was unknown and its re-send.
    pub refuse_repeats: AtomicBool,
    /// Re-sends refused so.
    pub repeats_refused: std::sync::atomic::AtomicU32,
    /// The first this many broadcasts are late (answered 504, forwarded `delay_ms`
    /// later), whatever `every`.
    pub first_late: std::sync::atomic::AtomicU32,
    /// The first this many broadcasts are answered "accepted" (with their txid) and
    /// never forwarded: a node that takes a transaction and then drops it.
    pub swallow: std::sync::atomic::AtomicU32,
    /// Broadcasts answered so.
    pub swallowed: std::sync::atomic::AtomicU32,
    seen_bytes: Mutex<std::collections::HashSet<String>>,
}

/// The node's words for a definitive refusal of a transaction (the fee).
const FEE_REFUSAL: &str =
    r#"{"result":null,"error":{"code":-26,"message":"min relay fee not met"},"id":"raregen"}"#;

impl Late {
    pub fn set(&self, every: u32, delay: Duration) {
        self.delay_ms
            .store(delay.as_millis() as u64, Ordering::SeqCst);
        self.every.store(every, Ordering::SeqCst);
    }

    /// Every `every`-th broadcast late by a delay spread over [`from`, `to`).
    pub fn set_spread(&self, every: u32, from: Duration, to: Duration) {
        self.spread_to_ms
            .store(to.as_millis() as u64, Ordering::SeqCst);
        self.set(every, from);
    }

    /// Waits until every late forward has reached the node.
    pub async fn drained(&self) {
        while self.pending.load(Ordering::SeqCst) > 0 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

struct ProxyState {
    target: String,
    client: reqwest::Client,
    arrivals: Arc<Mutex<Vec<Instant>>>,
    down: Arc<AtomicBool>,
    late: Arc<Late>,
}

async fn forward(state: web::Data<ProxyState>, req: HttpRequest, body: web::Bytes) -> HttpResponse {
    if state.down.load(Ordering::SeqCst) {
        return HttpResponse::ServiceUnavailable().body("node away");
    }
    // The same method and path (JSON-RPC at the root; bcoin's REST, e.g. GET /coin/…).
    let url = format!(
        "{}{}",
        state.target.trim_end_matches('/'),
        req.uri().path_and_query().map_or("/", |p| p.as_str())
    );
    let mut out = state
        .client
        .request(
            reqwest::Method::from_bytes(req.method().as_str().as_bytes()).unwrap(),
            url,
        )
        .body(body.to_vec());
    if let Some(auth) = req.headers().get("authorization") {
        out = out.header("authorization", auth.to_str().unwrap());
    }
    out = out.header("content-type", "application/json");
    if body.windows(18).any(|w| w == b"sendrawtransaction") {
        if state.late.refuse_repeats.load(Ordering::SeqCst) {
            let hex = serde_json::from_slice::<Value>(&body)
                .ok()
                .and_then(|v| v["params"][0].as_str().map(str::to_owned));
            if let Some(hex) = hex {
                if !state.late.seen_bytes.lock().unwrap().insert(hex) {
                    state.late.repeats_refused.fetch_add(1, Ordering::SeqCst);
                    return HttpResponse::InternalServerError()
                        .content_type("application/json")
                        .body(FEE_REFUSAL);
                }
            }
        }
        let every = state.late.every.load(Ordering::SeqCst);
        let n = state.late.seen.fetch_add(1, Ordering::SeqCst) + 1;
        if n <= state.late.swallow.load(Ordering::SeqCst) {
            let txid = serde_json::from_slice::<Value>(&body)
                .ok()
                .and_then(|v| v["params"][0].as_str().and_then(|h| hex::decode(h).ok()))
                .and_then(|raw| {
                    bitcoin::consensus::encode::deserialize::<bitcoin::Transaction>(&raw).ok()
                })
                .map(|tx| tx.compute_txid().to_string());
            if let Some(txid) = txid {
                state.late.swallowed.fetch_add(1, Ordering::SeqCst);
                return HttpResponse::Ok().content_type("application/json").body(
                    serde_json::json!({"result": txid, "error": null, "id": "raregen"}).to_string(),
                );
            }
        }
        if (every > 0 && n.is_multiple_of(every))
            || n <= state.late.first_late.load(Ordering::SeqCst)
        {
            let late = state.late.clone();
            let mut delay = Duration::from_millis(late.delay_ms.load(Ordering::SeqCst));
            let to = Duration::from_millis(late.spread_to_ms.load(Ordering::SeqCst));
            if to > delay {
                // A cheap spread without a random number generator: by request number
                // (Knuth's multiplicative hash), uniform over [delay, to).
                delay += (to - delay) * (n.wrapping_mul(2_654_435_761) % 1_000) / 1_000;
            }
            late.pending.fetch_add(1, Ordering::SeqCst);
            let arrivals = state.arrivals.clone();
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                arrivals.lock().unwrap().push(Instant::now());
                let _ = out.send().await;
                late.forwarded.fetch_add(1, Ordering::SeqCst);
                late.pending.fetch_sub(1, Ordering::SeqCst);
            });
            let refuse = if state.late.mixed.load(Ordering::SeqCst) {
                (n / every).is_multiple_of(2)
            } else {
                state.late.refuse.load(Ordering::SeqCst)
            };
            if refuse {
                return HttpResponse::InternalServerError()
                    .content_type("application/json")
                    .body(FEE_REFUSAL);
            }
            return HttpResponse::GatewayTimeout().body("upstream timed out");
        }
        state.arrivals.lock().unwrap().push(Instant::now());
        let hang = state.late.hang_every.load(Ordering::SeqCst);
        if hang > 0 && n.is_multiple_of(hang) {
            state.late.hung.fetch_add(1, Ordering::SeqCst);
            let _ = out.send().await;
            let ms = state.late.hang_ms.load(Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(ms)).await;
            return HttpResponse::GatewayTimeout().body("upstream timed out");
        }
    }
    match out.send().await {
        Ok(resp) => {
            let status = resp.status().as_u16();
            let bytes = resp.bytes().await.unwrap_or_default();
            HttpResponse::build(actix_web::http::StatusCode::from_u16(status).unwrap())
                .content_type("application/json")
                .body(bytes)
        }
        Err(_) => HttpResponse::BadGateway().body("node unreachable"),
    }
}

impl Proxy {
    pub fn start(target: &str) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let arrivals = Arc::new(Mutex::new(Vec::new()));
        let down = Arc::new(AtomicBool::new(false));
        let late = Arc::new(Late::default());
        let state = web::Data::new(ProxyState {
            target: target.to_owned(),
            client: reqwest::Client::new(),
            arrivals: arrivals.clone(),
            down: down.clone(),
            late: late.clone(),
        });
        let server = HttpServer::new(move || {
            App::new()
                .app_data(state.clone())
                .default_service(web::to(forward))
        })
        .workers(2)
        .listen(listener)
        .unwrap()
        .run();
        tokio::spawn(server);
        Proxy {
            url: format!("http://{addr}"),
            arrivals,
            down,
            late,
        }
    }
}

#[allow(unused_imports)]
pub use raregen_actors::rate_limit::{max_in_window, sustained_rate};

/// The environment for `raregen serve` against `pool`'s database and a node at `url`.
pub async fn serve_env(
    pool: &PgPool,
    node: &RegtestNode,
    node_url: &str,
    wif: &SecretString,
    extra: &[(&str, &str)],
) -> Vec<(String, String)> {
    let mut env = vec![
        ("DATABASE_URL".to_owned(), super::database_url(pool).await),
        (
            "RAREGEN_WALLET_KEY".to_owned(),
            wif.expose_secret().to_owned(),
        ),
        ("RAREGEN__NODE__URL".to_owned(), node_url.to_owned()),
        ("RAREGEN__NODE__USER".to_owned(), "raregen".to_owned()),
        ("RAREGEN__NODE__PASSWORD".to_owned(), node.password.clone()),
    ];
    env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    env
}

/// How many jobs are in `status` now.
pub async fn jobs_with_status(pool: &PgPool, status: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM publish_jobs WHERE status = $1")
        .bind(status)
        .fetch_one(pool)
        .await
        .unwrap()
}

/// How many of the pool's own transactions (splits) were sent: each is one more
/// transaction in the node's mempool beside the jobs'.
pub async fn splits_sent(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM pool_transactions WHERE status = 'sent'")
        .fetch_one(pool)
        .await
        .unwrap()
}

/// The set-up the end-to-end tests share: a regtest node, a wallet funded on it, a
/// [`Proxy`] at the node's door if the test wants one, and the environment for
/// `raregen serve` ([`serve_env`], pointed at the proxy when there is one, with the
/// test's own keys). Start with [`Scenario::funded`]; start daemons with
/// [`Scenario::serve`].
pub struct Scenario {
    pub pool: PgPool,
    /// Shared, so that a task the test spawns can use it too (e.g. a miner).
    pub node: Arc<RegtestNode>,
    pub wif: SecretString,
    /// `raregen serve`'s environment.
    pub env: Vec<(String, String)>,
    proxy: Option<Proxy>,
}

/// A [`Scenario`] still to start: [`Scenario::funded`] makes one, the methods below
/// say what it is to have, and [`ScenarioBuilder::start`] starts it.
pub struct ScenarioBuilder {
    pool: PgPool,
    lanes: u32,
    node: Option<RegtestNode>,
    proxy: bool,
    extra: Vec<(String, String)>,
}

impl Scenario {
    /// A scenario on `pool` whose wallet has `lanes` coins of 20,000 sats split from a
    /// coinbase ([`funded_wallet`]; 0: the one coinbase, not split).
    pub fn funded(pool: &PgPool, lanes: u32) -> ScenarioBuilder {
        ScenarioBuilder {
            pool: pool.clone(),
            lanes,
            node: None,
            proxy: false,
            extra: Vec::new(),
        }
    }

    /// The proxy at the node's door (the scenario was built [`ScenarioBuilder::proxied`]).
    pub fn proxy(&self) -> &Proxy {
        self.proxy
            .as_ref()
            .expect("a scenario with a proxy (ScenarioBuilder::proxied)")
    }

    /// `raregen serve ARGS` with the scenario's environment, serving.
    pub fn serve(&self, args: &[&str]) -> Daemon {
        Daemon::start(&self.env, args)
    }

    /// [`Scenario::serve`] with `extra` keys for this daemon only (e.g. `FAILPOINTS`).
    pub fn serve_with(&self, extra: &[(&str, &str)], args: &[&str]) -> Daemon {
        let mut env = self.env.clone();
        env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        Daemon::start(&env, args)
    }

    /// Waits up to `limit` until no job is open ([`wait_done`]); then all `n` are sent
    /// and none failed (the daemon's log otherwise).
    pub async fn assert_all_sent(&self, daemon: &Daemon, n: i64, limit: Duration) {
        let (sent, failed) = wait_done(&self.pool, limit, daemon).await;
        assert_eq!((sent, failed), (n, 0), "{}", daemon.log());
    }

    /// [`assert_published_once`] on the scenario's database and node; the number of
    /// sent jobs checked.
    pub async fn assert_published_once(&self, limit: Duration) -> usize {
        assert_published_once(&self.pool, &self.node, limit).await
    }

    /// [`assert_published_once`], and it checked `n` sent jobs.
    pub async fn assert_all_published_once(&self, n: usize, limit: Duration) {
        assert_eq!(self.assert_published_once(limit).await, n);
    }

    /// The closing checks: `daemon` stops cleanly, then
    /// [`Scenario::assert_all_published_once`].
    pub async fn finish(&self, daemon: &mut Daemon, n: usize, limit: Duration) {
        assert!(daemon.stop().success());
        self.assert_all_published_once(n, limit).await;
    }
}

impl ScenarioBuilder {
    /// On `node` rather than a fresh in-memory one (e.g. a persistent node).
    pub fn on_node(mut self, node: RegtestNode) -> Self {
        self.node = Some(node);
        self
    }

    /// A [`Proxy`] at the node's door: `raregen serve` talks to the node through it.
    pub fn proxied(mut self) -> Self {
        self.proxy = true;
        self
    }

    /// Keys for `raregen serve`'s environment, after those before (a later key wins).
    pub fn env(mut self, extra: &[(&str, &str)]) -> Self {
        self.extra
            .extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        self
    }

    /// Starts the node (unless given), funds the wallet, starts the proxy and builds the
    /// environment.
    pub async fn start(self) -> Scenario {
        let node = match self.node {
            Some(node) => node,
            None => RegtestNode::start().await,
        };
        let wif = funded_wallet(&node, &self.pool, self.lanes, 20_000).await;
        let proxy = self.proxy.then(|| Proxy::start(&node.url));
        let node_url = proxy.as_ref().map_or(&node.url, |p| &p.url);
        let extra: Vec<(&str, &str)> = self
            .extra
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let env = serve_env(&self.pool, &node, node_url, &wif, &extra).await;
        Scenario {
            pool: self.pool,
            node: Arc::new(node),
            wif,
            env,
            proxy,
        }
    }
}
