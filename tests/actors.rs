//! The actors that talk to the store, started in-process against the real Postgres (a
//! fresh database per test): what their message tests on the in-memory fakes
//! (actors/tests/messages) cannot show — the claim, the group statements and the pool's
//! reloads as the real store answers them.

mod support;

use std::sync::Arc;
use std::time::Duration;
use support::FreshDb;

use actix::prelude::*;
use raregen::store::PgStore;
use raregen_actors::batch::{next_job, Batch, Depth};
use raregen_actors::collector::{Claims, CollectMode, Collector, CollectorConfig, StopClaiming};
use raregen_actors::rate_limit::TokenBucket;
use raregen_actors::recorder::{MarkDirty, RecordRetry, RecordSending, RecordSent, Recorder};
use raregen_actors::utxo_pool::{
    Forget, PoolConfig, PoolState, PoolStats, Release, Reserve, UtxoPool,
};
use raregen_actors::{ClaimStore, Fence, Retry, Sending, Sent};
use sqlx::PgPool;

/// Runs `test` inside an actix system (actors need one).
fn in_system<F, Fut>(test: F)
where
    F: FnOnce(PgPool) -> Fut + 'static,
    Fut: std::future::Future<Output = ()> + 'static,
{
    actix::System::new().block_on(async move {
        let db = FreshDb::new().await;
        test(db.pool.clone()).await;
        db.drop_db().await;
    });
}

/// The next job of `batch`, which must have one waiting (an empty queue would answer
/// only when a batch arrives).
async fn take(batch: &Addr<Batch>) -> (i64, raregen_actors::ClaimedJob) {
    actix::clock::timeout(Duration::from_secs(10), next_job(batch))
        .await
        .expect("a job was waiting")
        .expect("not draining")
}

async fn insert_jobs(pool: &PgPool, n: i64) {
    sqlx::query("INSERT INTO publish_jobs (payload) SELECT convert_to('a-' || g, 'UTF8') FROM generate_series(1, $1) g")
        .bind(n)
        .execute(pool)
        .await
        .unwrap();
}

async fn insert_utxos(pool: &PgPool, n: i64, sats: i64) -> Vec<i64> {
    sqlx::query_scalar(
        "INSERT INTO utxos (txid, vout, satoshis, script_pubkey)
         SELECT lpad(to_hex(g), 64, '0'), 0, $2, '\\x0014'::bytea FROM generate_series(1, $1) g RETURNING id",
    )
    .bind(n)
    .bind(sats)
    .fetch_all(pool)
    .await
    .unwrap()
}

#[test]
fn collector_claims_when_the_queue_runs_low_and_stays_bounded() {
    in_system(|pool| async move {
        insert_jobs(&pool, 2_000).await;
        let store: Arc<dyn ClaimStore> = Arc::new(PgStore::new(pool.clone(), "actor-test"));
        let batch = Batch::default().start();
        let collector = Collector::new(
            CollectorConfig {
                mode: CollectMode::Batch,
                max_batch: 300,
                interval: Duration::from_secs(3600),
                low_water: 50,
            },
            store,
            None,
            batch.clone(),
        )
        .start();
        // Nobody takes jobs: the collector claims one batch (the queue was empty, under
        // the low-water mark) and then waits, however long the interval.
        actix::clock::sleep(Duration::from_millis(500)).await;
        assert_eq!(batch.send(Depth).await.unwrap().waiting, 300);
        assert_eq!(collector.send(Claims).await.unwrap(), 1);
        // Taking jobs below the low-water mark brings the next claim at once.
        for _ in 0..260 {
            take(&batch).await;
        }
        actix::clock::sleep(Duration::from_millis(300)).await;
        assert_eq!(collector.send(Claims).await.unwrap(), 2);
        assert_eq!(batch.send(Depth).await.unwrap().waiting, 340);
        collector.send(StopClaiming).await.unwrap();
        for _ in 0..340 {
            take(&batch).await;
        }
        actix::clock::sleep(Duration::from_millis(300)).await;
        assert_eq!(
            collector.send(Claims).await.unwrap(),
            2,
            "no claim after StopClaiming"
        );
        let claimed: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM publish_jobs WHERE status = 'processing_batch'",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        assert_eq!(claimed, 600);
    });
}

#[test]
fn recorder_writes_groups_and_fences() {
    in_system(|pool| async move {
        insert_jobs(&pool, 300).await;
        let utxos = insert_utxos(&pool, 300, 10_000).await;
        let store = PgStore::new(pool.clone(), "actor-test");
        let claimed = store.claim_batch(300).await.unwrap().unwrap();
        let recorder = Recorder::new(Arc::new(store), 5).start();
        // 300 write-ahead records at once, answered one by one.
        let answers = futures::future::join_all(claimed.jobs.iter().zip(&utxos).map(|(j, u)| {
            recorder.send(RecordSending(Sending {
                fence: Fence {
                    id: j.id,
                    attempts: j.attempts,
                },
                utxo_id: *u,
                txid: format!("{:064x}", j.id),
                raw_tx: vec![1, 2, 3],
            }))
        }))
        .await;
        assert!(answers.iter().all(|a| matches!(a, Ok(Ok(true)))));
        // A stale fence is refused.
        let j = &claimed.jobs[0];
        let stale = recorder
            .send(RecordSent {
                sent: Sent {
                    fence: Fence {
                        id: j.id,
                        attempts: j.attempts + 1,
                    },
                    sent_at: chrono::Utc::now(),
                    change: None,
                },
                txid: format!("{:064x}", j.id),
            })
            .await
            .unwrap();
        assert!(matches!(stale, Err(raregen_actors::StoreError::Fenced)));
        // Sent with change, retried (its UTXO kept as its anchor), dirty.
        let sent = recorder
            .send(RecordSent {
                sent: Sent {
                    fence: Fence {
                        id: j.id,
                        attempts: j.attempts,
                    },
                    sent_at: chrono::Utc::now(),
                    change: Some((1, 9_000)),
                },
                txid: format!("{:064x}", j.id),
            })
            .await
            .unwrap()
            .unwrap()
            .expect("the change joins the pool");
        assert_eq!(
            (sent.vout, sent.satoshis, sent.unconfirmed_depth),
            (1, 9_000, 1)
        );
        let k = &claimed.jobs[1];
        let released = recorder
            .send(RecordRetry {
                retry: Retry {
                    fence: Fence {
                        id: k.id,
                        attempts: k.attempts,
                    },
                    error: "rejected".into(),
                    not_before: chrono::Utc::now(),
                    reanchor: false,
                    settles_dirty: false,
                },
                utxo_id: Some(utxos[1]),
                fail_now: false,
            })
            .await
            .unwrap()
            .unwrap();
        assert_eq!(released, None, "a refused job keeps its UTXO as its anchor");
        let d = &claimed.jobs[2];
        let dirty = recorder
            .send(MarkDirty(Fence {
                id: d.id,
                attempts: d.attempts,
            }))
            .await
            .unwrap()
            .unwrap();
        assert!(dirty);
        let counts: (i64, i64, i64) = sqlx::query_as(
            "SELECT count(*) FILTER (WHERE status = 'sent'), count(*) FILTER (WHERE status = 'queued'),
                    (SELECT count(*) FROM utxos WHERE dirty) FROM publish_jobs",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        assert_eq!(counts, (1, 1, 1));
    });
}

#[test]
fn utxo_pool_gives_each_utxo_to_one_job_and_keeps_large_ones_for_splits() {
    in_system(|pool| async move {
        let small = insert_utxos(&pool, 20, 10_000).await;
        // One large UTXO: kept for splits, never handed to a job (no split is due with
        // min_available 0).
        sqlx::query(
            "INSERT INTO utxos (txid, vout, satoshis, script_pubkey, unconfirmed_depth)
             VALUES (repeat('d', 64), 0, 5000000000, '\\x0014'::bytea, 0)",
        )
        .execute(&pool)
        .await
        .unwrap();
        let store = Arc::new(PgStore::new(pool.clone(), "actor-test"));
        let (wallet, _) = raregen::chain::WalletKey::generate(
            raregen::config::Network::Regtest,
            raregen::config::AddressType::P2wpkh,
        );
        let signer = Arc::new(raregen::chain::TxBuilder::new(wallet, 2.0, 80));
        let settings = unreachable_node_settings();
        let node = raregen::chain::node::from_settings(&settings.node).unwrap();
        let tokens = TokenBucket::new(100, Duration::from_secs(1)).start();
        let pool_actor = UtxoPool::new(
            PoolConfig {
                min_available: 0,
                split_outputs: 10,
                split_amount: 20_000,
                reservation_timeout: Duration::from_secs(60),
                max_chain_depth: 25,
            },
            store,
            signer,
            node,
            tokens,
        )
        .start();
        actix::clock::sleep(Duration::from_millis(300)).await; // the first load
        assert_eq!(
            pool_actor.send(PoolStats).await.unwrap(),
            PoolState {
                available: 21,
                reserved: 0,
                splitting: false
            }
        );
        let mut got = Vec::new();
        for job in 0..20 {
            got.push(
                pool_actor
                    .send(Reserve { job })
                    .await
                    .unwrap()
                    .expect("a UTXO"),
            );
        }
        let mut ids: Vec<i64> = got.iter().map(|u| u.id).collect();
        ids.sort();
        assert_eq!(ids, small, "each small UTXO once, never the large one");
        assert!(pool_actor
            .send(Reserve { job: 99 })
            .await
            .unwrap()
            .is_none());
        pool_actor.send(Release(got[0].clone())).await.unwrap();
        pool_actor.send(Forget(got[1].id)).await.unwrap();
        assert_eq!(
            pool_actor
                .send(Reserve { job: 100 })
                .await
                .unwrap()
                .map(|u| u.id),
            Some(got[0].id)
        );
        assert_eq!(
            pool_actor.send(PoolStats).await.unwrap(),
            PoolState {
                available: 1,
                reserved: 19,
                splitting: false
            }
        );
    });
}

/// A store that counts the pool's reloads and makes each take a while (a loaded
/// database), around the real one.
struct SlowLoads {
    inner: PgStore,
    loads: std::sync::atomic::AtomicU32,
}

#[async_trait::async_trait]
impl raregen_actors::PoolStore for SlowLoads {
    async fn load_available(
        &self,
        max_depth: u32,
        limit: u32,
    ) -> Result<Vec<raregen_actors::SpendableUtxo>, raregen_actors::StoreError> {
        self.loads.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        actix::clock::sleep(Duration::from_millis(300)).await;
        self.inner.load_available(max_depth, limit).await
    }
    async fn store_split(
        &self,
        input: &raregen_actors::SpendableUtxo,
        signed: &raregen_actors::SignedTx,
        outputs: u32,
        amount: u64,
    ) -> Result<raregen_actors::StoredSplit, raregen_actors::StoreError> {
        self.inner.store_split(input, signed, outputs, amount).await
    }
    async fn split_accepted(
        &self,
        split: &raregen_actors::StoredSplit,
    ) -> Result<Vec<raregen_actors::SpendableUtxo>, raregen_actors::StoreError> {
        self.inner.split_accepted(split).await
    }
    async fn split_rejected(
        &self,
        split: &raregen_actors::StoredSplit,
        reason: &str,
        input_problem: bool,
    ) -> Result<(), raregen_actors::StoreError> {
        self.inner
            .split_rejected(split, reason, input_problem)
            .await
    }
    async fn split_unknown(
        &self,
        split: &raregen_actors::StoredSplit,
        reason: &str,
    ) -> Result<(), raregen_actors::StoreError> {
        self.inner.split_unknown(split, reason).await
    }
    async fn unfinished_splits(
        &self,
    ) -> Result<Vec<raregen_actors::StoredSplit>, raregen_actors::StoreError> {
        self.inner.unfinished_splits().await
    }
}

/// Broadcasters that find the pool empty ask again every 100 ms, four per broadcast
/// permit: each empty answer may start a reload from the database, but never a second
/// one while the first is under way.
#[test]
fn an_empty_utxo_pool_reloads_once_however_many_ask() {
    in_system(|pool| async move {
        let store = Arc::new(SlowLoads {
            inner: PgStore::new(pool.clone(), "actor-test"),
            loads: std::sync::atomic::AtomicU32::new(0),
        });
        let (wallet, _) = raregen::chain::WalletKey::generate(
            raregen::config::Network::Regtest,
            raregen::config::AddressType::P2wpkh,
        );
        let settings = unreachable_node_settings();
        let pool_actor = UtxoPool::new(
            PoolConfig {
                min_available: 10,
                split_outputs: 10,
                split_amount: 20_000,
                reservation_timeout: Duration::from_secs(60),
                max_chain_depth: 25,
            },
            store.clone(),
            Arc::new(raregen::chain::TxBuilder::new(wallet, 2.0, 80)),
            raregen::chain::node::from_settings(&settings.node).unwrap(),
            TokenBucket::new(100, Duration::from_secs(1)).start(),
        )
        .start();
        actix::clock::sleep(Duration::from_millis(500)).await; // the first load
        let before = store.loads.load(std::sync::atomic::Ordering::SeqCst);
        let asks: Vec<_> = (0..256)
            .map(|job| pool_actor.send(Reserve { job }))
            .collect();
        for ask in asks {
            assert!(ask.await.unwrap().is_none(), "the pool is empty");
        }
        actix::clock::sleep(Duration::from_millis(400)).await;
        let reloads = store.loads.load(std::sync::atomic::Ordering::SeqCst) - before;
        assert_eq!(reloads, 1, "256 empty answers started {reloads} reloads");
    });
}

/// Settings whose node nobody answers (a port nothing listens on).
fn unreachable_node_settings() -> raregen::config::Settings {
    raregen::config::Settings::load_from(
        None,
        vec![(
            "RAREGEN__NODE__URL".to_owned(),
            "http://127.0.0.1:1".to_owned(),
        )],
    )
    .unwrap()
}
