use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use async_trait::async_trait;
use raregen_actors::ports::{
    BroadcastOutcome, PoolStore, SignedTx, SpendableUtxo, StoreError, StoredSplit, TxPresence,
};
use raregen_actors::rate_limit::{TokenBucket, TokensLeft};
use raregen_actors::utxo_pool::{
    Add, Forget, PoolConfig, PoolState, PoolStats, Release, Reserve, Spent, UtxoPool,
};

use crate::support::*;

/// The pool on `store` and `node`, its splits under a TokenBucket of 100 per 10 s.
fn start_pool(
    store: Arc<dyn PoolStore>,
    node: &FakeNode,
    config: PoolConfig,
) -> (Addr<UtxoPool>, Addr<TokenBucket>) {
    let tokens = TokenBucket::new(100, Duration::from_secs(10)).start();
    let pool = UtxoPool::new(
        config,
        store,
        Arc::new(FakeSigner),
        Arc::new(node.clone()),
        tokens.clone(),
    )
    .start();
    (pool, tokens)
}

/// `pool_config()` (no auto-split, splits of 4 x 10,000) with `min_available`.
fn low_at(min_available: u32) -> PoolConfig {
    PoolConfig {
        min_available,
        ..pool_config()
    }
}

async fn stats(pool: &Addr<UtxoPool>) -> PoolState {
    pool.send(PoolStats).await.unwrap()
}

async fn reserve(pool: &Addr<UtxoPool>, job: i64) -> Option<i64> {
    pool.send(Reserve { job }).await.unwrap().map(|u| u.id)
}

/// Polls the pool's stats until `done` holds (up to 10 s).
async fn stats_until(pool: &Addr<UtxoPool>, what: &str, done: impl Fn(&PoolState) -> bool) {
    let until = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let s = stats(pool).await;
        if done(&s) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < until,
            "timed out waiting for: {what} (pool: {s:?})"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// A coin at unconfirmed depth `depth`.
fn deep(id: i64, sats: u64, depth: u32) -> SpendableUtxo {
    SpendableUtxo {
        unconfirmed_depth: depth,
        ..coin(id, sats)
    }
}

/// The txid FakeSigner gives the split of `input` into `outputs` outputs; the node is
/// told it holds it (a split's outputs join only once the node holds it).
fn node_holds_split(node: &FakeNode, input: &SpendableUtxo, outputs: u32) -> String {
    let txid = FakeSigner::txid_for(input, b"split", outputs);
    node.state()
        .presence
        .insert(txid.clone(), TxPresence::InMempool);
    txid
}

/// The ids of the outputs MemStore's `split_accepted` makes for split `id`.
fn outputs_of_split(id: i64) -> Vec<i64> {
    (0..4).map(|i| 2_000_000 + id * 100 + i).collect()
}

#[test]
fn the_pool_loads_the_stores_coins_and_hands_each_to_one_job() {
    in_system(|| async {
        let store = MemStore::new();
        store.add_coins((1..=5).map(|id| coin(id, 10_000)));
        let (pool, _) = start_pool(Arc::new(store.clone()), &FakeNode::new(), pool_config());
        stats_until(&pool, "the first load", |s| s.available == 5).await;
        let mut got = Vec::new();
        for job in 1..=5 {
            got.push(reserve(&pool, job).await.expect("a coin"));
        }
        assert_eq!(got, [1, 2, 3, 4, 5], "each coin once, in the order loaded");
        assert_eq!(reserve(&pool, 6).await, None, "the pool is empty");
        assert_eq!(
            stats(&pool).await,
            PoolState {
                available: 0,
                reserved: 5,
                splitting: false
            }
        );
        assert_eq!(store.state().load_calls, 1);
    });
}

/// A reload from the store (the pool found empty) never brings back a coin that is
/// reserved: the store still lists it as available until its write-ahead.
#[test]
fn a_reload_never_hands_out_a_reserved_coin_again() {
    in_system(|| async {
        let store = MemStore::new();
        store.add_coins([coin(1, 10_000), coin(2, 10_000)]);
        let (pool, _) = start_pool(Arc::new(store.clone()), &FakeNode::new(), low_at(1));
        stats_until(&pool, "the first load", |s| s.available == 2).await;
        assert_eq!(reserve(&pool, 1).await, Some(1));
        assert_eq!(reserve(&pool, 2).await, Some(2));
        assert_eq!(reserve(&pool, 3).await, None);
        eventually("a reload", || store.state().load_calls >= 2).await;
        assert_eq!(reserve(&pool, 3).await, None, "both coins are reserved");
        assert_eq!(
            stats(&pool).await,
            PoolState {
                available: 0,
                reserved: 2,
                splitting: false
            }
        );
        pool.send(Release(coin(1, 10_000))).await.unwrap();
        assert_eq!(
            reserve(&pool, 3).await,
            Some(1),
            "released: back to the pool"
        );
    });
}

/// Release puts a coin back; Forget and Spent end the reservation and drop the coin
/// from the index (Spent takes its change in).
#[test]
fn release_puts_a_coin_back_and_forget_and_spent_take_it_out() {
    in_system(|| async {
        let store = MemStore::new();
        store.add_coins((1..=3).map(|id| coin(id, 10_000)));
        let (pool, _) = start_pool(Arc::new(store.clone()), &FakeNode::new(), pool_config());
        stats_until(&pool, "the first load", |s| s.available == 3).await;
        for job in 1..=3 {
            reserve(&pool, job).await.expect("a coin");
        }
        pool.send(Release(coin(1, 10_000))).await.unwrap();
        pool.send(Forget(2)).await.unwrap();
        pool.send(Spent {
            utxo_id: 3,
            change: Some(deep(10, 9_800, 1)),
        })
        .await
        .unwrap();
        assert_eq!(
            stats(&pool).await,
            PoolState {
                available: 2,
                reserved: 0,
                splitting: false
            }
        );
        assert_eq!(reserve(&pool, 4).await, Some(1));
        assert_eq!(
            reserve(&pool, 5).await,
            Some(10),
            "the change joined the pool"
        );
        assert_eq!(
            reserve(&pool, 6).await,
            None,
            "forgotten and spent coins are gone"
        );
    });
}

/// A coin too small to pay a fee (at most twice the dust limit) or too deep in the
/// unconfirmed chain never joins; a large one (half a split or more) is kept for splits
/// and never handed to a job; Add never duplicates a coin nor re-adds a reserved one.
#[test]
fn small_deep_and_large_coins_and_add() {
    in_system(|| async {
        let store = MemStore::new();
        let (pool, _) = start_pool(Arc::new(store.clone()), &FakeNode::new(), pool_config());
        stats_until(&pool, "the first load", |_| store.state().load_calls == 1).await;
        pool.send(Add(vec![
            coin(1, 2 * 546),     // too small
            coin(2, 2 * 546 + 1), // just enough
            deep(3, 10_000, 25),  // at max_chain_depth
            deep(4, 10_000, 24),  // one less
            coin(5, 20_200),      // half a split of 4 x 10,000 (+100 each): large
            coin(5, 20_200),      // again
        ]))
        .await
        .unwrap();
        assert_eq!(stats(&pool).await.available, 3, "coins 2, 4 and 5");
        assert_eq!(reserve(&pool, 1).await, Some(2));
        assert_eq!(reserve(&pool, 2).await, Some(4));
        assert_eq!(
            reserve(&pool, 3).await,
            None,
            "the large coin is kept for splits"
        );
        pool.send(Add(vec![coin(2, 2 * 546 + 1)])).await.unwrap();
        assert_eq!(
            stats(&pool).await.available,
            1,
            "a reserved coin is not re-added"
        );
        // Change too deep to spend now does not join either.
        pool.send(Spent {
            utxo_id: 4,
            change: Some(deep(6, 9_000, 25)),
        })
        .await
        .unwrap();
        assert_eq!(
            stats(&pool).await,
            PoolState {
                available: 1,
                reserved: 1,
                splitting: false
            }
        );
    });
}

/// A reservation whose job never stored a transaction ends after
/// `reservation_timeout`; the coin leaves the index, and a reload (the pool found
/// empty) brings it back from the store, which still has it available.
#[test]
fn an_expired_reservation_ends_and_a_reload_brings_the_coin_back() {
    in_system(|| async {
        let store = MemStore::new();
        store.add_coins([coin(1, 10_000)]);
        let config = PoolConfig {
            reservation_timeout: Duration::from_millis(5),
            ..low_at(1)
        };
        let (pool, _) = start_pool(Arc::new(store.clone()), &FakeNode::new(), config);
        stats_until(&pool, "the first load", |s| s.available == 1).await;
        assert_eq!(reserve(&pool, 1).await, Some(1));
        tokio::time::sleep(Duration::from_millis(20)).await;
        let mut again = None;
        for _ in 0..500 {
            again = reserve(&pool, 2).await;
            if again.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        assert_eq!(again, Some(1), "the coin came back for another job");
        assert_eq!(stats(&pool).await.reserved, 1);
    });
}

/// A PoolStore whose loads take 50 ms, counting them and the most at once.
struct SlowLoads {
    inner: MemStore,
    loads: AtomicUsize,
    running: AtomicUsize,
    most_at_once: AtomicUsize,
}

#[async_trait]
impl PoolStore for SlowLoads {
    async fn load_available(
        &self,
        max_depth: u32,
        limit: u32,
    ) -> Result<Vec<SpendableUtxo>, StoreError> {
        self.loads.fetch_add(1, Ordering::SeqCst);
        let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
        self.most_at_once.fetch_max(now, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(50)).await;
        self.running.fetch_sub(1, Ordering::SeqCst);
        self.inner.load_available(max_depth, limit).await
    }
    async fn store_split(
        &self,
        input: &SpendableUtxo,
        signed: &SignedTx,
        outputs: u32,
        amount: u64,
    ) -> Result<StoredSplit, StoreError> {
        self.inner.store_split(input, signed, outputs, amount).await
    }
    async fn split_accepted(&self, split: &StoredSplit) -> Result<Vec<SpendableUtxo>, StoreError> {
        self.inner.split_accepted(split).await
    }
    async fn split_rejected(
        &self,
        split: &StoredSplit,
        reason: &str,
        input_problem: bool,
    ) -> Result<(), StoreError> {
        self.inner
            .split_rejected(split, reason, input_problem)
            .await
    }
    async fn split_unknown(&self, split: &StoredSplit, reason: &str) -> Result<(), StoreError> {
        self.inner.split_unknown(split, reason).await
    }
    async fn unfinished_splits(&self) -> Result<Vec<StoredSplit>, StoreError> {
        self.inner.unfinished_splits().await
    }
}

/// However many broadcasters find the pool empty, one reload runs at a time.
#[test]
fn one_reload_at_a_time_however_many_find_the_pool_empty() {
    in_system(|| async {
        let store = Arc::new(SlowLoads {
            inner: MemStore::new(),
            loads: AtomicUsize::new(0),
            running: AtomicUsize::new(0),
            most_at_once: AtomicUsize::new(0),
        });
        let (pool, _) = start_pool(store.clone(), &FakeNode::new(), low_at(10));
        let burst = || {
            let asks: Vec<_> = (0..100).map(|job| pool.send(Reserve { job })).collect();
            async move {
                for ask in asks {
                    assert!(ask.await.unwrap().is_none(), "the pool is empty");
                }
            }
        };
        burst().await; // during the first load
        eventually("the first load", || {
            store.loads.load(Ordering::SeqCst) == 1 && store.running.load(Ordering::SeqCst) == 0
        })
        .await;
        tokio::time::sleep(Duration::from_millis(5)).await;
        burst().await;
        eventually("a reload", || store.loads.load(Ordering::SeqCst) >= 2).await;
        burst().await; // during the reload
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(
            store.most_at_once.load(Ordering::SeqCst),
            1,
            "two loads at once"
        );
        let loads = store.loads.load(Ordering::SeqCst);
        assert!(loads <= 3, "{loads} loads for 300 empty answers");
    });
}

/// Running low (fewer than `min_available` after a reservation): the largest coin kept
/// for splits is split into `split_outputs` outputs, written ahead, broadcast under the
/// rate limit, and its outputs join the pool once the node holds it.
#[test]
fn a_pool_running_low_splits_its_largest_coin_and_the_outputs_join() {
    in_system(|| async {
        let store = MemStore::new();
        let node = FakeNode::new();
        let (small, large, larger) = (coin(1, 10_000), coin(8, 45_000), coin(9, 100_000));
        store.add_coins([small.clone(), coin(2, 10_000), large, larger.clone()]);
        let txid = node_holds_split(&node, &larger, 4);
        let (pool, tokens) = start_pool(Arc::new(store.clone()), &node, low_at(2));
        stats_until(&pool, "the first load", |s| s.available == 4).await;
        assert!(store.state().splits.is_empty(), "not low yet");
        assert_eq!(reserve(&pool, 1).await, Some(1)); // one small coin left: low
        stats_until(&pool, "the split's outputs", |s| {
            !s.splitting && s.available == 1 + 1 + 4
        })
        .await;
        {
            let s = store.state();
            assert_eq!(s.splits.len(), 1);
            assert_eq!(s.splits[0].input_utxo_id, 9, "the largest coin");
            assert_eq!(
                s.splits[0].txid, txid,
                "split into split_outputs (4) outputs"
            );
            assert_eq!(s.split_outcomes, [(1, "accepted")]);
        }
        assert_eq!(node.broadcast_txids(), [txid]);
        assert_eq!(
            tokens.send(TokensLeft).await.unwrap().left,
            99,
            "the split's broadcast took a slot"
        );
        let mut got = Vec::new();
        for job in 2..=6 {
            got.push(reserve(&pool, job).await.expect("a coin"));
        }
        let mut expected = vec![2];
        expected.extend(outputs_of_split(1));
        assert_eq!(got, expected, "the outputs are handed to jobs");
    });
}

/// A coin that cannot fund a whole split is split into as many outputs as it can pay.
#[test]
fn a_coin_too_small_for_a_whole_split_is_split_into_what_it_can_pay() {
    in_system(|| async {
        let store = MemStore::new();
        let node = FakeNode::new();
        // Half a split (4 x 10,100 / 2) and a bit: pays 2 outputs, not 4.
        let input = coin(9, 25_000);
        store.add_coins([coin(1, 10_000), input.clone()]);
        let txid = node_holds_split(&node, &input, 2);
        let (pool, _) = start_pool(Arc::new(store.clone()), &node, low_at(1));
        stats_until(&pool, "the first load", |s| s.available == 2).await;
        assert_eq!(
            reserve(&pool, 1).await,
            Some(1),
            "never the coin kept for splits"
        );
        eventually("the split accepted", || {
            store.state().split_outcomes == [(1, "accepted")]
        })
        .await;
        assert_eq!(store.state().splits[0].txid, txid, "two outputs");
    });
}

/// One split at a time: while one waits for the node, running low again (or empty)
/// starts none; the next follows once it has ended.
#[test]
fn only_one_split_at_a_time() {
    in_system(|| async {
        let store = MemStore::new();
        let node = FakeNode::new();
        node.state().delay = Duration::from_millis(100);
        let (a, b) = (coin(8, 50_000), coin(9, 60_000));
        store.add_coins([coin(1, 10_000), coin(2, 10_000), a.clone(), b.clone()]);
        node_holds_split(&node, &a, 4);
        node_holds_split(&node, &b, 4);
        let (pool, _) = start_pool(Arc::new(store.clone()), &node, low_at(2));
        stats_until(&pool, "the first load", |s| s.available == 4).await;
        assert_eq!(reserve(&pool, 1).await, Some(1)); // low: a split starts
        stats_until(&pool, "a split in flight", |s| s.splitting).await;
        assert_eq!(reserve(&pool, 2).await, Some(2));
        for job in 3..20 {
            assert_eq!(reserve(&pool, job).await, None);
        }
        assert_eq!(
            store.state().splits.len(),
            1,
            "a second split while one is in flight"
        );
        assert_eq!(
            store.state().splits[0].input_utxo_id,
            9,
            "the largest first"
        );
        stats_until(&pool, "the first split's outputs", |s| {
            !s.splitting && s.available == 5
        })
        .await;
        // Low again (fewer than 2 left): the next split.
        for job in 20..23 {
            reserve(&pool, job).await.expect("an output of the split");
        }
        eventually("the second split", || store.state().splits.len() == 2).await;
        assert_eq!(store.state().splits[1].input_utxo_id, 8);
    });
}

/// The coin a split spends leaves the index for good: a reload from the store that
/// runs beside the split (the pool found empty: the same tick starts both) must not
/// bring it back, or the pool splits it a second time.
#[test]
fn a_reload_beside_a_split_does_not_bring_back_the_coin_being_split() {
    in_system(|| async {
        let store = MemStore::new();
        let node = FakeNode::new();
        node.state().delay = Duration::from_millis(50);
        let input = coin(9, 100_000);
        store.add_coins([input.clone()]);
        node_holds_split(&node, &input, 4);
        let (pool, _) = start_pool(Arc::new(store.clone()), &node, low_at(1));
        stats_until(&pool, "the first load", |s| s.available == 1).await;
        assert_eq!(reserve(&pool, 1).await, None); // empty: reload + split
        stats_until(&pool, "a split in flight", |s| s.splitting).await;
        eventually("the reload", || store.state().load_calls >= 2).await;
        assert_eq!(
            stats(&pool).await.available,
            0,
            "the coin being split is back in the index"
        );
    });
}

/// A split the node refuses, or whose outcome is unknown, adds nothing to the pool
/// (the store records which; the DirtySettler settles an unknown one), and ends.
#[test]
fn a_refused_or_unknown_split_adds_nothing() {
    for (answer, outcome) in [
        (
            BroadcastOutcome::Rejected {
                reason: "min relay fee not met".into(),
                input_problem: false,
            },
            "rejected",
        ),
        (
            BroadcastOutcome::Unknown {
                reason: "timeout".into(),
            },
            "unknown",
        ),
    ] {
        in_system(|| async {
            let store = MemStore::new();
            let node = FakeNode::new();
            node.answer([answer]);
            let input = coin(9, 100_000);
            store.add_coins([coin(1, 10_000), input.clone()]);
            node_holds_split(&node, &input, 4);
            let (pool, _) = start_pool(Arc::new(store.clone()), &node, low_at(1));
            stats_until(&pool, "the first load", |s| s.available == 2).await;
            assert_eq!(reserve(&pool, 1).await, Some(1)); // low: the split
            eventually("the split's outcome", || {
                !store.state().split_outcomes.is_empty()
            })
            .await;
            assert_eq!(store.state().split_outcomes, [(1, outcome)]);
            stats_until(&pool, "the split ended", |s| !s.splitting).await;
            assert_eq!(
                stats(&pool).await,
                PoolState {
                    available: 0,
                    reserved: 1,
                    splitting: false
                },
                "{outcome}: nothing joins"
            );
            assert_eq!(node.broadcasts(), 1);
        });
    }
}

/// Splits stored by an earlier run and never settled are sent again at start, with
/// their stored bytes (never signed again); accepted, their outputs join.
#[test]
fn unfinished_splits_are_sent_again_at_start_with_their_stored_bytes() {
    in_system(|| async {
        let store = MemStore::new();
        let node = FakeNode::new();
        let txid = format!("{:064x}", 0xabcdu32);
        let raw = format!("{txid}|the stored split").into_bytes();
        store.state().splits.push(StoredSplit {
            id: 1,
            txid: txid.clone(),
            raw_tx: raw.clone(),
            input_utxo_id: 5,
        });
        node.state()
            .presence
            .insert(txid.clone(), TxPresence::InMempool);
        let (pool, _) = start_pool(Arc::new(store.clone()), &node, pool_config());
        stats_until(&pool, "the split's outputs", |s| s.available == 4).await;
        assert_eq!(store.state().split_outcomes, [(1, "accepted")]);
        let sent: Vec<Vec<u8>> = node
            .state()
            .broadcasts
            .iter()
            .map(|b| b.0.clone())
            .collect();
        assert_eq!(sent, [raw], "the stored bytes, once");
        assert_eq!(reserve(&pool, 1).await, Some(outputs_of_split(1)[0]));
    });
}

/// A split that fails before anything was written (the store away at its write-ahead)
/// leaves its coin available in the store: the next reload brings it back, and the pool
/// splits it then. (Kept out of reloads for good, the pool's only large coin was lost
/// to this process: no split ever again.)
#[test]
fn a_split_that_failed_gives_its_coin_back_to_the_next_reload() {
    in_system(|| async {
        let store = MemStore::new();
        let node = FakeNode::new();
        let input = coin(9, 100_000);
        store.add_coins([input.clone()]);
        node_holds_split(&node, &input, 4);
        let (pool, _) = start_pool(Arc::new(store.clone()), &node, low_at(1));
        stats_until(&pool, "the first load", |s| s.available == 1).await;
        // The reload and the split's write-ahead, started by the same tick, both fail.
        store.state().fail_next = 2;
        assert_eq!(reserve(&pool, 1).await, None);
        eventually("the failed split", || store.state().fail_next == 0).await;
        stats_until(&pool, "the split given up", |s| !s.splitting).await;
        assert!(store.state().splits.is_empty());
        // Starved again: a reload, then the split of the coin it brought back.
        for job in 2..200 {
            if !store.state().splits.is_empty() {
                break;
            }
            let _ = reserve(&pool, job).await;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let splits = store.state().splits.clone();
        assert_eq!(
            splits.iter().map(|s| s.input_utxo_id).collect::<Vec<_>>(),
            vec![input.id],
            "the coin of the failed split never came back"
        );
    });
}
