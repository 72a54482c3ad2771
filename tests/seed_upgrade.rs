//! Upgrading the seed's database in place: `raregen migrate` adopts a database that
//! holds RareGen's batch worker schema, and `raregen serve` then publishes every job
//! that was still to publish once, against bcoin.

mod support;

use std::collections::{HashMap, HashSet};
use std::process::{Command, Stdio};
use std::time::Duration;

use raregen::chain::{TxBuilder, WalletKey};
use raregen::config::{AddressType, Network};
use raregen_actors::ports::{Signer, SpendableUtxo};
use sqlx::PgPool;
use support::e2e::{self, Daemon};
use support::regtest::RegtestNode;
use support::FreshDb;

const SEED_SCHEMA: &str = include_str!("fixtures/seed_schema.sql");

/// A job as the checks read it: id, payload, txid, status, last_error.
type JobRow = (i64, Vec<u8>, Option<String>, String, Option<String>);
/// The seed's "View Dirty UTXOs" row.
type DirtyRow = (
    i64,
    String,
    i32,
    i64,
    bool,
    Option<chrono::DateTime<chrono::Utc>>,
);

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn fake_txid(i: u64) -> String {
    format!("{i:064x}")
}

/// `raregen migrate` with `env`: (success, stdout + stderr). On a blocking thread: the
/// test's runtime keeps running meanwhile (a pool's connections close on it).
async fn migrate(env: &[(String, String)]) -> (bool, String) {
    let env = env.to_vec();
    tokio::task::spawn_blocking(move || {
        let out = Command::new(env!("CARGO_BIN_EXE_raregen"))
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("RUST_LOG", "warn")
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .arg("migrate")
            .stdin(Stdio::null())
            .output()
            .expect("raregen runs");
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    })
    .await
    .unwrap()
}

/// A database that is neither empty, raregen's, nor the seed's is refused, by
/// `migrate` and by `serve`'s own migration step, and nothing in it changes.
#[tokio::test]
async fn a_foreign_database_is_refused_and_left_alone() {
    let db = FreshDb::empty().await;
    sqlx::query("CREATE TABLE orders (id SERIAL PRIMARY KEY, note TEXT)")
        .execute(&db.pool)
        .await
        .unwrap();
    let env = vec![(
        "DATABASE_URL".to_owned(),
        support::database_url(&db.pool).await,
    )];
    let (ok, out) = migrate(&env).await;
    assert!(!ok, "{out}");
    assert!(
        out.contains("neither raregen's schema nor RareGen's batch worker's")
            && out.contains("orders"),
        "{out}"
    );
    let err = raregen::store::migrate(&db.pool).await.unwrap_err();
    assert!(format!("{err:#}").contains("refusing"), "{err:#}");
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT table_name::text FROM information_schema.tables WHERE table_schema = 'public'",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(tables, vec!["orders".to_owned()]);

    // A seed-like publish_jobs with a column of the seed missing is not the seed's.
    sqlx::query("CREATE TABLE publish_jobs (id SERIAL PRIMARY KEY, status TEXT, payload TEXT)")
        .execute(&db.pool)
        .await
        .unwrap();
    sqlx::query("CREATE TABLE utxos (id SERIAL PRIMARY KEY, txid TEXT)")
        .execute(&db.pool)
        .await
        .unwrap();
    let (ok, out) = migrate(&env).await;
    assert!(!ok, "{out}");
    assert!(
        out.contains("missing columns") && out.contains("publish_jobs.batch_seq"),
        "{out}"
    );
    db.drop_db().await;
}

/// The seed's database is not adopted by `serve` (nor by migrate without the key):
/// both refuse with what to do, and leave it as it was.
#[tokio::test]
async fn the_seed_is_adopted_by_migrate_with_the_key_only() {
    let db = FreshDb::empty().await;
    sqlx::raw_sql(SEED_SCHEMA).execute(&db.pool).await.unwrap();
    sqlx::query("INSERT INTO publish_jobs (payload) VALUES ('00ff')")
        .execute(&db.pool)
        .await
        .unwrap();
    let err = raregen::store::migrate(&db.pool).await.unwrap_err();
    assert!(format!("{err:#}").contains("raregen migrate"), "{err:#}");
    let env = vec![(
        "DATABASE_URL".to_owned(),
        support::database_url(&db.pool).await,
    )];
    let (ok, out) = migrate(&env).await;
    assert!(!ok, "{out}");
    assert!(out.contains("needs the wallet key"), "{out}");
    let seed_tables: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM information_schema.tables
         WHERE table_schema = 'public' AND table_name IN ('publish_jobs', 'utxos')",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(seed_tables, 2);
    let raw_tx: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM information_schema.columns WHERE column_name = 'raw_tx'",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(raw_tx, 0, "nothing of raregen's was created");

    // While another session is connected (a service of the seed still running), the
    // adoption is refused.
    sqlx::query("INSERT INTO publish_jobs (payload, status) VALUES ('01', 'paused')")
        .execute(&db.pool)
        .await
        .unwrap();
    let (_, wif) = WalletKey::generate(Network::Regtest, AddressType::P2wpkh);
    let mut env = env;
    env.push((
        "RAREGEN_WALLET_KEY".to_owned(),
        secrecy::ExposeSecret::expose_secret(&wif).to_owned(),
    ));
    let (ok, out) = migrate(&env).await;
    assert!(!ok, "{out}");
    assert!(out.contains("other sessions are connected"), "{out}");

    // An unknown status refuses the adoption, and the refusal changes nothing.
    db.pool.close().await;
    let (ok, out) = migrate(&env).await;
    assert!(!ok, "{out}");
    assert!(
        out.contains("paused") && out.contains("nothing was changed"),
        "{out}"
    );
    let pool = PgPool::connect(&env[0].1).await.unwrap();
    let schemas: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM information_schema.schemata WHERE schema_name = 'raregen_seed'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(schemas, 0);
    pool.close().await;
    db.drop_db().await;
}

/// The seed's database with jobs in every state and UTXOs clean and dirty: `raregen
/// migrate` keeps every row, `raregen serve` publishes every job still to publish
/// exactly once on bcoin, never signs again a job whose seed transaction may be live,
/// and the seed's runbook queries still run.
#[sqlx::test]
async fn the_seeds_database_is_upgraded_in_place_and_published_once(funding: PgPool) {
    let node = RegtestNode::start().await;
    // Coins for the seed: a raregen pool on a scratch database makes them; the seed's
    // tables get their outpoints.
    let wif = e2e::funded_wallet(&node, &funding, 300, 20_000).await;
    let other = WalletKey::generate(Network::Regtest, AddressType::P2wpkh).0;
    node.mine_to(other.script_pubkey(), 1).await;
    let coins: Vec<(String, i32, i64)> = sqlx::query_as(
        "SELECT txid, vout, satoshis FROM utxos
         WHERE state = 'available' AND NOT dirty AND satoshis = 20000 ORDER BY id",
    )
    .fetch_all(&funding)
    .await
    .unwrap();
    assert_eq!(coins.len(), 300);

    let seed = FreshDb::empty().await;
    let db = &seed.pool;
    sqlx::raw_sql(SEED_SCHEMA).execute(db).await.unwrap();
    for (i, (txid, vout, sats)) in coins.iter().enumerate() {
        // 290 clean; 5 dirty or left reserved by the seed (the node is asked first).
        let (dirty, reserved) = match i {
            290..=292 => (true, false),
            293..=294 => (false, true),
            _ => (false, false),
        };
        sqlx::query(
            "INSERT INTO utxos (txid, vout, satoshis, dirty, reserved_at, created_at)
             VALUES ($1, $2, $3, $4, CASE WHEN $5 THEN now() - interval '1 hour' END,
                     now() - interval '1 day')",
        )
        .bind(txid)
        .bind(vout)
        .bind(sats)
        .bind(dirty)
        .bind(reserved)
        .execute(db)
        .await
        .unwrap();
    }
    let batch_a = uuid_like(1);
    let batch_b = uuid_like(2);
    // queued
    insert_jobs(db, "queued", "seed-q", 1_000, "NULL", "").await;
    // claimed into a batch, not yet sending
    insert_jobs(
        db,
        "processing_batch",
        "seed-p",
        200,
        &format!("'{batch_a}'"),
        "",
    )
    .await;
    // sent (history), in batches, and failed
    insert_jobs(
        db,
        "sent",
        "seed-s",
        1_000,
        &format!("'{batch_b}'"),
        ", txid = lpad(to_hex(id), 64, '0'), sent_at = now() - interval '2 days'",
    )
    .await;
    insert_jobs(
        db,
        "failed",
        "seed-f",
        500,
        "NULL",
        ", error = 'node said no', attempts = 5",
    )
    .await;
    // In flight on coins the seed never spent (296..=298): published by raregen, once.
    // In flight on a coin the seed's transaction did spend (300): never signed again.
    // In flight with no coin on record: failed at once.
    let mut held_unspent = Vec::new();
    for (n, utxo_id) in [(0, 296), (1, 297), (2, 298)] {
        held_unspent
            .push(insert_in_flight(db, &format!("seed-a-{n}"), Some(utxo_id), &batch_a).await);
    }
    // Queued again by the seed after an attempt on coin 299 (it names the coin): in
    // flight too, held, published on that coin.
    let retried: i32 = sqlx::query_scalar(
        "INSERT INTO publish_jobs (status, payload, utxo_id, attempts, error)
         VALUES ('queued', encode(convert_to('seed-r-0', 'UTF8'), 'hex'), 299, 1, 'timeout')
         RETURNING id",
    )
    .fetch_one(db)
    .await
    .unwrap();
    held_unspent.push(i64::from(retried));
    let spent_job = insert_in_flight(db, "seed-b-0", Some(300), &batch_a).await;
    let no_coin = insert_in_flight(db, "seed-c-0", None, &batch_a).await;
    let key = WalletKey::from_wif(&wif, Network::Regtest, AddressType::P2wpkh).unwrap();
    // The seed signed with its own code: another fee than raregen's, so another
    // transaction than raregen would sign for the job on the same coin.
    let builder = TxBuilder::new(key, 3.0, 80);
    let (txid, vout, sats) = &coins[299];
    let seed_tx = builder
        .publish(
            &SpendableUtxo {
                id: 300,
                txid: txid.clone(),
                vout: *vout as u32,
                satoshis: *sats as u64,
                unconfirmed_depth: 0,
            },
            b"seed-b-0",
            0,
        )
        .unwrap();
    node.rpc(
        "sendrawtransaction",
        serde_json::json!([hex(&seed_tx.raw_tx)]),
    )
    .await;
    // bcoin answers before it verifies: wait until it holds the seed's transaction.
    let started = std::time::Instant::now();
    while !node.mempool().await.contains(&seed_tx.txid) {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "bcoin did not take the seed's transaction:\n{}",
            node.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let seed_rows: Vec<(i64, String)> =
        sqlx::query_as("SELECT id::bigint, status FROM publish_jobs ORDER BY id")
            .fetch_all(db)
            .await
            .unwrap();
    assert_eq!(seed_rows.len(), 2_706);

    // Adopt.
    let env = e2e::serve_env(
        db,
        &node,
        &node.url,
        &wif,
        &[("RAREGEN__JANITOR__SETTLE_INTERVAL", "1s")],
    )
    .await;
    // Adoption needs the seed's services stopped: no other session on the database.
    let url = support::database_url(db).await;
    seed.pool.close().await;
    let (ok, out) = migrate(&env).await;
    assert!(ok, "{out}");
    let reopened = PgPool::connect(&url).await.unwrap();
    let db = &reopened;
    assert!(
        out.contains("1000 queued, 200 claimed and queued again, 5 in flight held")
            && out.contains("1 in flight with no coin of their own failed, 1000 sent, 500 failed"),
        "{out}"
    );
    // A second run is a plain (idempotent) migrate.
    let (ok, out) = migrate(&env).await;
    assert!(ok && out.contains("migrations applied"), "{out}");
    let adopted: Vec<(i64, String)> =
        sqlx::query_as("SELECT id, status FROM publish_jobs ORDER BY id")
            .fetch_all(db)
            .await
            .unwrap();
    assert_eq!(adopted.len(), seed_rows.len(), "every row kept");
    let held: Vec<i64> = sqlx::query_scalar(
        "SELECT id FROM publish_jobs WHERE next_attempt_at = 'infinity' ORDER BY id",
    )
    .fetch_all(db)
    .await
    .unwrap();
    let mut expect_held = held_unspent.clone();
    expect_held.push(spent_job);
    assert_eq!(held, expect_held);
    // The API shows a held job (no next attempt yet) rather than failing on 'infinity'.
    let view = raregen::store::PgStore::new(db.clone(), "test")
        .get_job(held[0])
        .await
        .unwrap()
        .unwrap();
    assert_eq!(view.next_attempt_at, None);
    assert_eq!(view.status, "queued");
    runbook_queries_run(db).await;

    // Serve until nothing is left to do.
    let mut daemon = Daemon::start(&env, &["--mode", "batch"]);
    let (sent, failed) = e2e::wait_done(db, Duration::from_secs(240), &daemon).await;
    assert!(daemon.stop().success());
    assert_eq!(
        (sent, failed),
        (1_000 + 1_200 + 4, 500 + 2),
        "{}",
        daemon.log()
    );
    let jobs: Vec<JobRow> = sqlx::query_as(
        "SELECT id, payload, txid, status, last_error FROM publish_jobs ORDER BY id",
    )
    .fetch_all(db)
    .await
    .unwrap();
    let ids: Vec<i64> = jobs.iter().map(|j| j.0).collect();
    assert_eq!(ids, seed_rows.iter().map(|r| r.0).collect::<Vec<_>>());
    for (id, payload, txid, status, error) in &jobs {
        let payload = String::from_utf8_lossy(payload);
        if payload.starts_with("seed-s-") {
            assert_eq!(
                (status.as_str(), txid.clone()),
                ("sent", Some(fake_txid(*id as u64))),
                "history kept"
            );
        } else if payload.starts_with("seed-f-") {
            assert_eq!(
                (status.as_str(), error.as_deref()),
                ("failed", Some("node said no"))
            );
        } else if *id == spent_job {
            assert_eq!(status, "failed");
            // Its coin is spent in the node's mempool (by the seed's transaction): the
            // job is never signed again.
            assert!(
                error.as_deref().unwrap_or("").contains("coin is spent"),
                "{error:?}"
            );
        } else if *id == no_coin {
            assert_eq!(status, "failed");
            assert!(
                error
                    .as_deref()
                    .unwrap_or("")
                    .contains("no coin of its own"),
                "{error:?}"
            );
        } else {
            assert_eq!(status, "sent", "job {id} ({payload}): {error:?}");
        }
    }

    // On the node: every job raregen sent, once, with its recorded txid; the seed's
    // in-flight transaction, once; nothing else.
    let published: HashMap<Vec<u8>, String> = jobs
        .iter()
        .filter(|j| j.3 == "sent" && !j.1.starts_with(b"seed-s-"))
        .map(|j| (j.1.clone(), j.2.clone().unwrap()))
        .collect();
    assert_eq!(published.len(), 1_204);
    e2e::wait_mempool(&node, published.len() + 1, Duration::from_secs(60)).await;
    let on_node = e2e::mempool_payloads(&node).await;
    let by_payload = e2e::txids_by_payload(&on_node);
    let wrong: Vec<String> = published
        .iter()
        .filter(|(payload, txid)| by_payload.get(*payload) != Some(&vec![(*txid).clone()]))
        .map(|(payload, _)| String::from_utf8_lossy(payload).into_owned())
        .collect();
    assert!(wrong.is_empty(), "not published exactly once: {wrong:?}");
    assert_eq!(
        by_payload.get(b"seed-b-0".as_slice()),
        Some(&vec![seed_tx.txid.clone()])
    );
    assert!(!by_payload.contains_key(b"seed-c-0".as_slice()));
    assert_eq!(on_node.len(), 1_205, "nothing else carries a payload");
    // The coins the seed left dirty or reserved were asked about and are usable again
    // (unspent), the seed's spent coin is retired.
    let states: HashSet<(i64, String, bool)> =
        sqlx::query_as("SELECT id, state, dirty FROM utxos WHERE id BETWEEN 291 AND 300")
            .fetch_all(db)
            .await
            .unwrap()
            .into_iter()
            .collect();
    assert!(states.iter().all(|(_, _, dirty)| !dirty), "{states:?}");
    assert!(
        states.contains(&(300, "retired".to_owned(), false)),
        "{states:?}"
    );
    runbook_queries_run(db).await;
    // The jobs adopted in flight are on record (they never leave their coin).
    let in_flight: i64 = sqlx::query_scalar("SELECT count(*) FROM seed_in_flight")
        .fetch_one(db)
        .await
        .unwrap();
    assert_eq!(in_flight, 6);
    reopened.close().await;
    seed.drop_db().await;
}

fn uuid_like(n: u32) -> String {
    format!("00000000-0000-4000-8000-{n:012x}")
}

/// `n` seed jobs in `status` with payload `{prefix}-{i}` (hex text, as the seed's API
/// stored it), in batch `batch` (SQL), then `set` (SQL, after a comma).
async fn insert_jobs(db: &PgPool, status: &str, prefix: &str, n: i64, batch: &str, set: &str) {
    let ids: Vec<i32> = sqlx::query_scalar(&format!(
        "INSERT INTO publish_jobs (status, payload, processing_batch_id, batch_seq, created_at,
                                   updated_at)
         SELECT $1, encode(convert_to($2 || '-' || i, 'UTF8'), 'hex'), {batch}::uuid,
                CASE WHEN {batch}::uuid IS NOT NULL THEN i + 1 END,
                now() - interval '3 days', now() - interval '2 days'
         FROM generate_series(0, $3 - 1) i
         RETURNING id"
    ))
    .bind(status)
    .bind(prefix)
    .bind(n)
    .fetch_all(db)
    .await
    .unwrap();
    if !set.is_empty() {
        sqlx::query(&format!(
            "UPDATE publish_jobs SET updated_at = updated_at {set} WHERE id = ANY($1)"
        ))
        .bind(&ids)
        .execute(db)
        .await
        .unwrap();
    }
}

/// One seed job in `sending` (on `utxo_id`, with no txid recorded).
async fn insert_in_flight(db: &PgPool, payload: &str, utxo_id: Option<i32>, batch: &str) -> i64 {
    let id: i32 = sqlx::query_scalar(
        "INSERT INTO publish_jobs (status, payload, utxo_id, attempts, processing_batch_id,
                                   batch_seq, sending_started_at, created_at, updated_at)
         VALUES ('sending', encode(convert_to($1, 'UTF8'), 'hex'), $2, 1, $3::uuid, 1,
                 now() - interval '10 minutes', now() - interval '1 hour',
                 now() - interval '10 minutes')
         RETURNING id",
    )
    .bind(payload)
    .bind(utxo_id)
    .bind(batch)
    .fetch_one(db)
    .await
    .unwrap();
    if let Some(utxo_id) = utxo_id {
        sqlx::query("UPDATE utxos SET reserved_at = now() - interval '10 minutes' WHERE id = $1")
            .bind(utxo_id)
            .execute(db)
            .await
            .unwrap();
    }
    i64::from(id)
}

/// The seed's runbook queries (docs: the seed's "Check Queue Status", "Check Batch
/// Details", "Test Rate Limit", "View Dirty UTXOs"), as written, on raregen's schema.
async fn runbook_queries_run(db: &PgPool) {
    let queue: Vec<(String, i64, i64)> = sqlx::query_as(
        "
  SELECT 
    status,
    COUNT(*) as count,
    COUNT(DISTINCT processing_batch_id) as batches
  FROM publish_jobs
  GROUP BY status
  ORDER BY status;",
    )
    .fetch_all(db)
    .await
    .unwrap();
    let total: i64 = queue.iter().map(|q| q.1).sum();
    assert_eq!(total, 2_706, "{queue:?}");
    let batches: Vec<(Option<i64>, i64)> = sqlx::query_as(
        "
  SELECT 
    processing_batch_id,
    COUNT(*) as jobs
  FROM publish_jobs
  WHERE processing_batch_id IS NOT NULL
  GROUP BY processing_batch_id
  ORDER BY MIN(created_at) DESC
  LIMIT 10;",
    )
    .fetch_all(db)
    .await
    .unwrap();
    assert!(!batches.is_empty());
    let _recent: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM publish_jobs WHERE status = 'sent' AND sent_at > NOW() - INTERVAL '10 seconds';",
    )
    .fetch_one(db)
    .await
    .unwrap();
    let dirty: Vec<DirtyRow> = sqlx::query_as(
        "
  SELECT id, txid, vout, satoshis, dirty, reserved_at
  FROM utxos
  WHERE dirty = TRUE
  ORDER BY created_at DESC
  LIMIT 20;",
    )
    .fetch_all(db)
    .await
    .unwrap();
    assert!(dirty.iter().all(|d| d.4));
}
