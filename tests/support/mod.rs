//! Helpers shared by the integration tests: each test gets a fresh database from
//! `#[sqlx::test]` (DATABASE_URL names the server) and, when it needs one, the API
//! spawned on port 0 against it.
#![allow(dead_code)]

pub mod db;
pub mod e2e;
pub mod regtest;

use raregen::api::ApiServer;
use raregen::config::Settings;
use raregen::store::PgStore;
use sqlx::PgPool;

pub struct TestApp {
    pub base: String,
    pub client: reqwest::Client,
    pub pool: PgPool,
    pub store: PgStore,
}

/// Settings for tests: the defaults, port 0, and the overrides given as
/// `RAREGEN__…` pairs.
pub fn settings(overrides: &[(&str, &str)]) -> Settings {
    let mut env = vec![("RAREGEN__API__LISTEN".to_owned(), "127.0.0.1:0".to_owned())];
    env.extend(
        overrides
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string())),
    );
    Settings::load_from(None, env).expect("test settings are valid")
}

/// Spawns the API against `pool` with the given overrides.
pub async fn spawn_app_with(pool: PgPool, overrides: &[(&str, &str)]) -> TestApp {
    let settings = settings(overrides);
    let store = PgStore::new(pool.clone(), "test-api");
    let server = ApiServer::build(&settings, store.clone()).expect("the API binds");
    let base = format!("http://{}", server.addr());
    tokio::spawn(server.run());
    TestApp {
        base,
        client: reqwest::Client::new(),
        pool,
        store,
    }
}

pub async fn spawn_app(pool: PgPool) -> TestApp {
    spawn_app_with(pool, &[]).await
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub async fn post_json(&self, path: &str, body: &serde_json::Value) -> reqwest::Response {
        self.client
            .post(self.url(path))
            .json(body)
            .send()
            .await
            .expect("request sent")
    }

    pub async fn post_raw(&self, path: &str, body: impl Into<reqwest::Body>) -> reqwest::Response {
        self.client
            .post(self.url(path))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .expect("request sent")
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client
            .get(self.url(path))
            .send()
            .await
            .expect("request sent")
    }

    pub async fn job_count(&self) -> i64 {
        job_count(&self.pool).await
    }
}

pub async fn job_count(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM publish_jobs")
        .fetch_one(pool)
        .await
        .unwrap()
}

/// Inserts `n` queued jobs with payloads `job-<i>`, in one statement.
pub async fn insert_queued(pool: &PgPool, n: i64) {
    sqlx::query(
        "INSERT INTO publish_jobs (payload)
         SELECT convert_to('job-' || g, 'UTF8') FROM generate_series(1, $1) AS g",
    )
    .bind(n)
    .execute(pool)
    .await
    .unwrap();
}

/// A URL for the database behind `pool` (the test's own database), for child processes.
pub async fn database_url(pool: &PgPool) -> String {
    let name: String = sqlx::query_scalar("SELECT current_database()")
        .fetch_one(pool)
        .await
        .unwrap();
    let server = std::env::var("DATABASE_URL").expect("DATABASE_URL names the test server");
    let (base, _) = server
        .rsplit_once('/')
        .expect("DATABASE_URL ends in a database name");
    format!("{base}/{name}")
}

/// Inserts `n` available pool UTXOs (fake outpoints, 10,000 sats each); returns their ids.
pub async fn insert_utxos(pool: &PgPool, n: i64) -> Vec<i64> {
    sqlx::query_scalar(
        "INSERT INTO utxos (txid, vout, satoshis, script_pubkey)
         SELECT lpad(to_hex(g), 64, '0'), 0, 10000, '\\x0014'::bytea FROM generate_series(1, $1) AS g
         RETURNING id",
    )
    .bind(n)
    .fetch_all(pool)
    .await
    .unwrap()
}

/// A fresh, migrated database on the server DATABASE_URL names; dropped afterwards.
pub struct FreshDb {
    pub pool: PgPool,
    name: String,
    server: String,
}

impl FreshDb {
    pub async fn new() -> FreshDb {
        let db = FreshDb::empty().await;
        raregen::store::migrate(&db.pool).await.unwrap();
        db
    }

    /// A new database with nothing in it (no migrations).
    pub async fn empty() -> FreshDb {
        let server = std::env::var("DATABASE_URL").expect("DATABASE_URL names the test server");
        let name = format!("raregen_test_{:016x}", rand::random::<u64>());
        let url = db::create_empty(&server, &name).await.unwrap();
        let pool = PgPool::connect(&url).await.unwrap();
        FreshDb { pool, name, server }
    }

    pub async fn drop_db(self) {
        self.pool.close().await;
        db::drop_database(&self.server, &self.name).await.unwrap();
    }
}
