//! Broadcaster (actors/src/broadcaster.rs, send.rs): a job is reserved a coin, signed,
//! written ahead, broadcast under a token, and its outcome recorded; a stored
//! transaction is sent again as it is, never signed again.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix::prelude::*;
use async_trait::async_trait;
use raregen_actors::batch::{Depth, Enqueue};
use raregen_actors::broadcaster::{Broadcaster, Deps};
use raregen_actors::ports::*;
use raregen_actors::rate_limit::{max_in_window, Stop, TokensLeft};
use raregen_actors::recorder::Recorder;
use raregen_actors::send::resend_same;
use raregen_actors::utxo_pool::{PoolState, PoolStats};
use tokio::time::Instant;

use crate::support::*;

const MS: Duration = Duration::from_millis(1);
const SEC: Duration = Duration::from_secs(1);

/// A store with coins `ids` (10,000 sats each) and the pipeline's inner actors on it.
fn setup(coins: impl IntoIterator<Item = i64>, max: u32, per: Duration, workers: usize) -> Wired {
    let store = MemStore::new();
    store.add_coins(coins.into_iter().map(|id| coin(id, 10_000)));
    wire(store, FakeNode::new(), max, per, workers)
}

/// The same actors, as a value to change one of them in.
fn copy(d: &Deps) -> Deps {
    Deps {
        batch: d.batch.clone(),
        pool: d.pool.clone(),
        tokens: d.tokens.clone(),
        recorder: d.recorder.clone(),
        signer: d.signer.clone(),
        node: d.node.clone(),
        stats: d.stats.clone(),
        broadcasts: d.broadcasts.clone(),
    }
}

/// Starts `n` broadcasters (keep their addresses: an actor without one may stop).
#[must_use]
fn start(deps: &Arc<Deps>, n: usize) -> Vec<Addr<Broadcaster>> {
    (0..n)
        .map(|i| Broadcaster::new(i, deps.clone()).start())
        .collect()
}

/// Claims `jobs` from the store (so that their fences hold) and hands them to the Batch.
async fn claim(w: &Wired, jobs: impl IntoIterator<Item = ClaimedJob>) {
    w.store.state().queued.extend(jobs);
    let batch = w
        .store
        .claim_batch(1_000)
        .await
        .unwrap()
        .expect("jobs queued");
    w.deps.batch.send(Enqueue(batch)).await.unwrap();
}

async fn pool(w: &Wired) -> PoolState {
    w.deps.pool.send(PoolStats).await.unwrap()
}

/// Waits until the pool has loaded `n` coins from the store.
async fn pool_loaded(w: &Wired, n: usize) {
    let until = Instant::now() + 10 * SEC;
    while pool(w).await.available < n {
        assert!(Instant::now() < until, "the pool never loaded {n} coins");
        tokio::time::sleep(2 * MS).await;
    }
}

/// Waits until the Batch holds no job (every job handed out is done).
async fn all_done(w: &Wired) {
    let until = Instant::now() + 10 * SEC;
    loop {
        let d = w.deps.batch.send(Depth).await.unwrap();
        if d.waiting == 0 && d.in_flight == 0 {
            return;
        }
        assert!(Instant::now() < until, "jobs still held: {d:?}");
        tokio::time::sleep(2 * MS).await;
    }
}

/// The coin a [`FakeSigner`] transaction spends, and its replacement count.
fn spends(txid: &str) -> (i64, u32) {
    (
        i64::from_str_radix(&txid[16..32], 16).unwrap(),
        u32::from_str_radix(&txid[32..64], 16).unwrap(),
    )
}

fn sent_fences(store: &MemStore) -> Vec<Fence> {
    store.state().sent.iter().map(|s| s.fence).collect()
}

/// A node that notes, at each broadcast, whether the store already held those very
/// bytes as a write-ahead record.
struct Witness {
    node: FakeNode,
    store: MemStore,
    stored_before: Arc<Mutex<Vec<bool>>>,
}

#[async_trait]
impl Node for Witness {
    async fn broadcast(&self, raw_tx: &[u8]) -> BroadcastOutcome {
        let stored = self
            .store
            .state()
            .sending
            .iter()
            .any(|s| s.raw_tx == raw_tx);
        self.stored_before.lock().unwrap().push(stored);
        self.node.broadcast(raw_tx).await
    }

    async fn tx_presence(&self, txid: &str) -> Result<TxPresence, NodeError> {
        self.node.tx_presence(txid).await
    }

    async fn outpoint(&self, txid: &str, vout: u32) -> Result<OutpointState, NodeError> {
        self.node.outpoint(txid, vout).await
    }
}

fn witnessed(w: &Wired) -> (Arc<Deps>, Arc<Mutex<Vec<bool>>>) {
    let stored_before = Arc::new(Mutex::new(Vec::new()));
    let mut deps = copy(&w.deps);
    deps.node = Arc::new(Witness {
        node: w.node.clone(),
        store: w.store.clone(),
        stored_before: stored_before.clone(),
    });
    (Arc::new(deps), stored_before)
}

#[test]
fn a_job_is_reserved_a_coin_signed_and_written_ahead_before_its_one_broadcast_then_recorded_sent() {
    in_system(|| async {
        let w = setup([1, 2], 100, SEC, 1);
        pool_loaded(&w, 2).await;
        let (deps, stored_before) = witnessed(&w);
        let _b = start(&deps, 1);
        claim(&w, [job(1)]).await;
        eventually("the job recorded sent", || !w.store.state().sent.is_empty()).await;
        all_done(&w).await;

        assert_eq!(
            *stored_before.lock().unwrap(),
            vec![true],
            "one broadcast, of bytes already stored as the job's write-ahead"
        );
        {
            let s = w.store.state();
            assert_eq!(s.sending.len(), 1, "signed and written ahead once");
            let ahead = &s.sending[0];
            assert_eq!(ahead.fence, fence(1, 1));
            assert!([1, 2].contains(&ahead.utxo_id), "a pool coin");
            assert_eq!(
                spends(&ahead.txid),
                (ahead.utxo_id, 0),
                "a first signature, on the coin written ahead"
            );
            assert_eq!(broadcast_bytes(&w.node), vec![ahead.raw_tx.clone()]);
            assert_eq!(
                s.sent.iter().map(|x| x.fence).collect::<Vec<_>>(),
                vec![fence(1, 1)]
            );
            assert!(s.retries.is_empty() && s.dirty.is_empty());
        }
        // The spent coin left the pool's index; the other one is still there.
        assert_eq!(
            pool(&w).await,
            PoolState {
                available: 1,
                reserved: 0,
                splitting: false
            }
        );
    });
}

#[test]
fn no_broadcast_goes_out_while_its_write_ahead_is_not_stored() {
    in_system(|| async {
        let w = setup([1], 100, SEC, 1);
        pool_loaded(&w, 1).await;
        claim(&w, [job(1)]).await;
        // The database is away for the write-ahead: the broadcaster waits for it.
        w.store.state().fail_next = 2;
        let (deps, stored_before) = witnessed(&w);
        let _b = start(&deps, 1);
        eventually("the job recorded sent", || !w.store.state().sent.is_empty()).await;
        assert_eq!(
            w.store.state().fail_next,
            0,
            "the write-ahead failed twice first"
        );
        assert_eq!(*stored_before.lock().unwrap(), vec![true]);
        assert_eq!(w.store.state().sending.len(), 1);
    });
}

#[test]
fn a_rejection_sends_the_job_back_and_its_next_signature_spends_the_same_anchor() {
    in_system(|| async {
        let w = setup([1, 2], 100, SEC, 1);
        pool_loaded(&w, 2).await;
        let _b = start(&w.deps, 1);
        w.node.answer([BroadcastOutcome::Rejected {
            reason: "min relay fee not met".into(),
            input_problem: false,
        }]);
        claim(&w, [job(1)]).await;
        eventually("the rejection recorded", || {
            !w.store.state().retries.is_empty()
        })
        .await;
        all_done(&w).await;

        let (first, retry) = {
            let s = w.store.state();
            assert!(s.sent.is_empty() && s.dirty.is_empty());
            (s.sending[0].clone(), s.retries[0].clone())
        };
        assert_eq!(retry.fence, fence(1, 1));
        assert!(!retry.reanchor, "the job keeps its anchor");
        assert!(!retry.settles_dirty);
        assert!(
            retry.error.contains("min relay fee not met"),
            "{}",
            retry.error
        );
        assert!(
            retry.not_before > chrono::Utc::now() + chrono::Duration::seconds(1),
            "a backoff (2 s after a first refusal): {}",
            retry.not_before
        );
        assert_eq!(w.node.broadcasts(), 1);

        // The store hands it out again with its anchor: the coin it signed on.
        let anchor = first.utxo_id;
        claim(
            &w,
            [ClaimedJob {
                attempts: 2,
                anchor: Some(Anchor {
                    utxo_id: anchor,
                    utxo: Some(coin(anchor, 10_000)),
                    signed_before: 1,
                    retired: false,
                }),
                ..job(1)
            }],
        )
        .await;
        eventually("the job recorded sent", || !w.store.state().sent.is_empty()).await;
        let second = w.store.state().sending[1].clone();
        assert_eq!(second.fence, fence(1, 2));
        assert_eq!(second.utxo_id, anchor);
        assert_eq!(
            spends(&second.txid),
            (anchor, 1),
            "signed again on the anchor, as a replacement"
        );
        assert_ne!(second.raw_tx, first.raw_tx);
        assert_eq!(broadcast_bytes(&w.node), vec![first.raw_tx, second.raw_tx]);
        assert_eq!(sent_fences(&w.store), vec![fence(1, 2)]);
        // The other coin was never taken.
        all_done(&w).await;
        assert_eq!(pool(&w).await.available, 1);
        assert_eq!(pool(&w).await.reserved, 0);
    });
}

/// A broadcast whose outcome is not a definitive refusal of the transaction itself:
/// the job's coin is dirty, the job stays `sending` with its bytes, nothing is signed
/// again; the Janitor's re-send is those same bytes.
fn an_unsettled_outcome_is_answered_by_the_same_bytes(outcome: BroadcastOutcome) {
    in_system(|| async {
        let w = setup([1, 2], 100, SEC, 1);
        pool_loaded(&w, 2).await;
        let _b = start(&w.deps, 1);
        w.node.answer([outcome]);
        claim(&w, [job(1)]).await;
        eventually("the coin marked dirty", || {
            !w.store.state().dirty.is_empty()
        })
        .await;
        all_done(&w).await;
        // Time for a second attempt, if there were one.
        tokio::time::sleep(50 * MS).await;

        let ahead = {
            let s = w.store.state();
            assert_eq!(s.dirty, vec![fence(1, 1)]);
            assert!(s.retries.is_empty(), "not sent back to sign again");
            assert!(s.sent.is_empty());
            assert_eq!(s.sending.len(), 1, "signed once");
            s.sending[0].clone()
        };
        assert_eq!(w.node.broadcasts(), 1);
        assert_eq!(
            pool(&w).await,
            PoolState {
                available: 1,
                reserved: 0,
                splitting: false
            },
            "the dirty coin left the index; the other coin was never taken"
        );

        // The Janitor adopts the job (a new fence) and sends its bytes again.
        w.store.state().attempts.insert(1, 2);
        let adopted = StuckJob {
            fence: fence(1, 2),
            txid: ahead.txid.clone(),
            raw_tx: ahead.raw_tx.clone(),
            utxo_id: Some(ahead.utxo_id),
        };
        resend_same(&w.deps, &adopted).await;
        assert_eq!(
            broadcast_bytes(&w.node),
            vec![ahead.raw_tx.clone(), ahead.raw_tx],
            "the same bytes again"
        );
        assert_eq!(w.store.state().sending.len(), 1, "never signed again");
        assert_eq!(sent_fences(&w.store), vec![fence(1, 2)]);
    });
}

#[test]
fn an_unknown_outcome_marks_the_coin_dirty_and_never_signs_on_another_coin() {
    an_unsettled_outcome_is_answered_by_the_same_bytes(BroadcastOutcome::Unknown {
        reason: "timeout".into(),
    });
}

#[test]
fn an_input_problem_marks_the_coin_dirty_and_never_signs_on_another_coin() {
    an_unsettled_outcome_is_answered_by_the_same_bytes(BroadcastOutcome::Rejected {
        reason: "bad-txns-inputs-missingorspent".into(),
        input_problem: true,
    });
}

#[test]
fn a_429_pauses_the_limiter_and_the_same_bytes_go_out_again_after_it() {
    in_system(|| async {
        let w = setup([1], 100, SEC, 1);
        pool_loaded(&w, 1).await;
        let _b = start(&w.deps, 1);
        let pause = 150 * MS;
        w.node.answer([BroadcastOutcome::RateLimited {
            retry_after: Some(pause),
        }]);
        claim(&w, [job(1)]).await;
        eventually("the job recorded sent", || !w.store.state().sent.is_empty()).await;

        let b = w.node.state().broadcasts.clone();
        assert_eq!(b.len(), 2);
        assert_eq!(b[0].0, b[1].0, "the same bytes");
        assert!(
            b[1].1 - b[0].1 >= pause,
            "sent again only after Retry-After: {:?}",
            b[1].1 - b[0].1
        );
        {
            let s = w.store.state();
            assert_eq!(s.sending.len(), 1, "signed once");
            assert!(
                s.dirty.is_empty() && s.retries.is_empty(),
                "a 429 is no outcome"
            );
        }
        let tokens = w.deps.tokens.send(TokensLeft).await.unwrap();
        assert_eq!(tokens.budget, 50, "the limiter halved its budget");
    });
}

#[test]
fn a_stored_transaction_is_broadcast_as_it_is_never_signed_again() {
    in_system(|| async {
        let w = setup([1, 2], 100, SEC, 1);
        pool_loaded(&w, 2).await;
        let _b = start(&w.deps, 1);
        let stored = StoredTx {
            txid: "ab".repeat(32),
            raw_tx: b"bytes stored by an earlier attempt".to_vec(),
            utxo_id: Some(7),
        };
        // Even with an anchor to sign on, the stored bytes are what goes out.
        claim(
            &w,
            [ClaimedJob {
                attempts: 3,
                stored_tx: Some(stored.clone()),
                anchor: Some(Anchor {
                    utxo_id: 7,
                    utxo: Some(coin(7, 10_000)),
                    signed_before: 1,
                    retired: false,
                }),
                ..job(1)
            }],
        )
        .await;
        eventually("the job recorded sent", || !w.store.state().sent.is_empty()).await;
        all_done(&w).await;
        assert_eq!(broadcast_bytes(&w.node), vec![stored.raw_tx]);
        assert_eq!(sent_fences(&w.store), vec![fence(1, 3)]);
        {
            let s = w.store.state();
            assert!(s.sending.is_empty(), "no new write-ahead");
            assert!(!s.outcome_calls.iter().any(|(kind, _)| *kind == "sending"));
        }
        assert_eq!(pool(&w).await.available, 2, "no coin reserved");
        assert_eq!(pool(&w).await.reserved, 0);
    });
}

#[test]
fn never_more_than_max_broadcasts_in_any_window_of_per() {
    in_system(|| async {
        let (max, per) = (2, 100 * MS);
        let w = setup(1..=6, max, per, 4);
        w.node.state().delay = 5 * MS;
        pool_loaded(&w, 6).await;
        let _b = start(&w.deps, 4);
        claim(&w, (1..=6).map(job)).await;
        eventually("every job recorded sent", || {
            w.store.state().sent.len() == 6
        })
        .await;
        let times: Vec<Instant> = w.node.state().broadcasts.iter().map(|(_, t)| *t).collect();
        assert_eq!(times.len(), 6, "one broadcast per job");
        let most = max_in_window(&times, per);
        assert!(
            most <= max as usize,
            "{most} broadcasts in one window of {per:?}"
        );
    });
}

#[test]
fn without_a_token_a_written_ahead_job_waits_and_is_not_broadcast() {
    in_system(|| async {
        // One broadcast per 10 s: the first job takes the only token.
        let w = setup(1..=3, 1, 10 * SEC, 3);
        pool_loaded(&w, 3).await;
        let _b = start(&w.deps, 3);
        claim(&w, (1..=3).map(job)).await;
        eventually("all three written ahead", || {
            w.store.state().sending.len() == 3
        })
        .await;
        let until = Instant::now() + 10 * SEC;
        while w.deps.tokens.send(TokensLeft).await.unwrap().waiters < 2 {
            assert!(
                Instant::now() < until,
                "two broadcasters never waited for a token"
            );
            tokio::time::sleep(2 * MS).await;
        }
        tokio::time::sleep(100 * MS).await;
        assert_eq!(w.node.broadcasts(), 1, "one token, one broadcast");
        assert_eq!(w.deps.tokens.send(TokensLeft).await.unwrap().waiters, 2);
    });
}

#[test]
fn a_stopped_token_bucket_means_no_broadcast_at_all() {
    in_system(|| async {
        let w = setup([1], 100, SEC, 1);
        pool_loaded(&w, 1).await;
        w.deps.tokens.send(Stop).await.unwrap();
        let _b = start(&w.deps, 1);
        claim(&w, [job(1)]).await;
        eventually("the job written ahead", || {
            w.store.state().sending.len() == 1
        })
        .await;
        tokio::time::sleep(300 * MS).await;
        assert_eq!(w.node.broadcasts(), 0, "no limiter, no broadcast");
        let s = w.store.state();
        assert!(s.sent.is_empty() && s.dirty.is_empty() && s.retries.is_empty());
    });
}

/// A node whose first broadcast panics (after the bytes reached it).
struct PanicsOnce {
    node: FakeNode,
    panicked: AtomicBool,
}

#[async_trait]
impl Node for PanicsOnce {
    async fn broadcast(&self, raw_tx: &[u8]) -> BroadcastOutcome {
        let outcome = self.node.broadcast(raw_tx).await;
        if !self.panicked.swap(true, Ordering::SeqCst) {
            panic!("a bug in the node client (test)");
        }
        outcome
    }

    async fn tx_presence(&self, txid: &str) -> Result<TxPresence, NodeError> {
        self.node.tx_presence(txid).await
    }

    async fn outpoint(&self, txid: &str, vout: u32) -> Result<OutpointState, NodeError> {
        self.node.outpoint(txid, vout).await
    }
}

#[test]
fn a_broadcaster_that_panics_is_restarted_with_its_job_and_sends_the_same_bytes() {
    in_system(|| async {
        let w = setup([1, 2], 100, SEC, 1);
        pool_loaded(&w, 2).await;
        let mut deps = copy(&w.deps);
        deps.node = Arc::new(PanicsOnce {
            node: w.node.clone(),
            panicked: AtomicBool::new(false),
        });
        let deps = Arc::new(deps);
        // Supervised, as the pipeline starts them (which keeps their addresses: the
        // supervisor restarts an actor that someone can still reach).
        let _b = actix::Supervisor::start(move |_| Broadcaster::new(0, deps));
        claim(&w, [job(1)]).await;
        eventually("the job recorded sent", || !w.store.state().sent.is_empty()).await;
        all_done(&w).await;
        let raw = w.store.state().sending[0].raw_tx.clone();
        assert_eq!(
            broadcast_bytes(&w.node),
            vec![raw.clone(), raw],
            "the same bytes again"
        );
        assert_eq!(w.store.state().sending.len(), 1, "never signed again");
        assert_eq!(sent_fences(&w.store), vec![fence(1, 1)]);
    });
}

/// The outcome store, noting the `max_attempts` each retry was recorded with (0: the
/// job fails at once).
struct NotesAttempts {
    store: MemStore,
    retried: Arc<Mutex<Vec<(JobId, u32)>>>,
}

#[async_trait]
impl OutcomeStore for NotesAttempts {
    async fn record_sending(&self, jobs: &[Sending]) -> Result<SendingRecorded, StoreError> {
        self.store.record_sending(jobs).await
    }

    async fn record_sent(&self, jobs: &[Sent]) -> Result<Recorded, StoreError> {
        self.store.record_sent(jobs).await
    }

    async fn record_retry(
        &self,
        jobs: &[Retry],
        max_attempts: u32,
    ) -> Result<Recorded, StoreError> {
        let done = self.store.record_retry(jobs, max_attempts).await?;
        let mut retried = self.retried.lock().unwrap();
        retried.extend(done.ids.iter().map(|&id| (id, max_attempts)));
        Ok(done)
    }

    async fn mark_dirty(&self, jobs: &[Fence]) -> Result<Vec<JobId>, StoreError> {
        self.store.mark_dirty(jobs).await
    }

    async fn release_claims(&self, jobs: &[Fence]) -> Result<Vec<JobId>, StoreError> {
        self.store.release_claims(jobs).await
    }
}

#[test]
fn a_job_whose_anchor_is_retired_or_unavailable_is_never_signed_on_another_coin() {
    in_system(|| async {
        let w = setup([1, 2], 100, SEC, 1);
        pool_loaded(&w, 2).await;
        let retried = Arc::new(Mutex::new(Vec::new()));
        let mut deps = copy(&w.deps);
        deps.recorder = Recorder::new(
            Arc::new(NotesAttempts {
                store: w.store.clone(),
                retried: retried.clone(),
            }),
            5,
        )
        .start();
        let deps = Arc::new(deps);
        let _b = start(&deps, 1);
        let anchored =
            |id: JobId, coin_id: i64, utxo: Option<SpendableUtxo>, retired: bool| ClaimedJob {
                attempts: 2,
                anchor: Some(Anchor {
                    utxo_id: coin_id,
                    utxo,
                    signed_before: 1,
                    retired,
                }),
                ..job(id)
            };
        // 13 is taken (dirty) when the write-ahead tries to take it.
        w.store.state().taken_coins.insert(13);
        claim(
            &w,
            [
                anchored(1, 11, None, true),
                anchored(2, 12, None, false),
                anchored(3, 13, Some(coin(13, 10_000)), false),
            ],
        )
        .await;
        eventually("three retries", || w.store.state().retries.len() == 3).await;
        all_done(&w).await;

        let mut retried = retried.lock().unwrap().clone();
        retried.sort();
        assert_eq!(
            retried,
            vec![(1, 0), (2, 5), (3, 5)],
            "a retired anchor fails the job at once; an unavailable one waits"
        );
        {
            let s = w.store.state();
            let error = |id| {
                s.retries
                    .iter()
                    .find(|r| r.fence.id == id)
                    .unwrap()
                    .error
                    .clone()
            };
            assert!(error(1).contains("retired"), "{}", error(1));
            assert!(error(2).contains("not available"), "{}", error(2));
            assert!(error(3).contains("not available"), "{}", error(3));
            assert!(s.retries.iter().all(|r| !r.reanchor));
            assert!(s.sending.is_empty() && s.sent.is_empty());
        }
        assert_eq!(w.node.broadcasts(), 0);
        assert_eq!(
            pool(&w).await,
            PoolState {
                available: 2,
                reserved: 0,
                splitting: false
            },
            "no pool coin taken instead"
        );
    });
}
