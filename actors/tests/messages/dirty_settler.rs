//! DirtySettler (actors/src/dirty_settler.rs, a maintenance service): a coin whose
//! spend had an unknown outcome is settled from what the node says — our transaction
//! (or an earlier one of the job) there → `sent`; spent by a stranger confirmed deep
//! enough → re-anchored; nothing known → the same bytes again, never a new signature,
//! and after `MAX_UNSETTLED_ROUNDS` the job fails; a split's → accepted or re-sent;
//! nothing of ours on it → clean or retired.

use std::sync::Arc;
use std::time::Duration;

use raregen_actors::dirty_settler::{DirtySettler, MAX_UNSETTLED_ROUNDS};
use raregen_actors::maintenance::{Report, Service};
use raregen_actors::ports::*;
use raregen_actors::utxo_pool::PoolStats;
use tokio::time::Instant;

use crate::support::*;

/// The pipeline's inner actors on an empty store, started: the UtxoPool has made its
/// own start-up round (which re-sends the unfinished splits it finds) before a test
/// puts anything in the store.
async fn setup() -> Wired {
    let w = wire(
        MemStore::new(),
        FakeNode::new(),
        1_000,
        Duration::from_secs(1),
        1,
    );
    w.deps.pool.send(PoolStats).await.unwrap();
    tokio::time::sleep(Duration::from_millis(5)).await;
    w
}

fn settler(w: &Wired, reanchor_confirmations: u32) -> DirtySettler {
    DirtySettler::new(
        Arc::new(w.store.clone()),
        Arc::new(w.store.clone()),
        w.deps.clone(),
        reanchor_confirmations,
    )
}

/// Job `id`'s stored transaction `txid`, spending coin 5.
fn stuck(id: JobId, txid: &str) -> StuckJob {
    StuckJob {
        fence: fence(id, 1),
        txid: txid.into(),
        raw_tx: format!("{txid}|job-{id}").into_bytes(),
        utxo_id: Some(5),
    }
}

/// Coin 5, dirty, spent by `job`'s transaction (or by nothing of ours).
fn dirty(job: Option<StuckJob>) -> DirtyUtxo {
    let c = coin(5, 10_000);
    DirtyUtxo {
        id: c.id,
        txid: c.txid,
        vout: c.vout,
        spent_by_txid: job.as_ref().map(|j| j.txid.clone()),
        job,
        split_id: None,
    }
}

fn outpoint_of_coin_5() -> (String, u32) {
    (coin(5, 0).txid, 0)
}

fn gone(spent_by: Option<&str>) -> OutpointState {
    OutpointState::Gone {
        spent_by: spent_by.map(str::to_owned),
    }
}

fn confirmed(confirmations: u32) -> TxPresence {
    TxPresence::Confirmed {
        confirmations,
        block_height: Some(800_000),
        block_hash: None,
    }
}

fn sent_fences(store: &MemStore) -> Vec<Fence> {
    store.state().sent.iter().map(|s| s.fence).collect()
}

/// Waits until the pool's index holds `n` coins.
async fn pool_holds(w: &Wired, n: usize) {
    let until = Instant::now() + Duration::from_secs(10);
    while w.deps.pool.send(PoolStats).await.unwrap().available != n {
        assert!(Instant::now() < until, "the pool never held {n} coins");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

#[test]
fn a_coin_the_node_says_is_unspent_with_nothing_of_ours_on_it_is_cleaned_into_the_pool() {
    in_system(|| async {
        let w = setup().await;
        w.store.state().dirty_coins.push(DirtyUtxo {
            spent_by_txid: Some("a transaction the node does not know".into()),
            ..dirty(None)
        });
        let report = settler(&w, 1).run().await;
        assert_eq!(
            report,
            Report {
                items: 1,
                errors: 0
            }
        );
        {
            let s = w.store.state();
            assert_eq!(s.cleaned, vec![5]);
            assert!(s.retired.is_empty());
        }
        pool_holds(&w, 1).await;
        assert_eq!(w.node.broadcasts(), 0);
    });
}

#[test]
fn a_coin_spent_by_a_stranger_with_nothing_of_ours_on_it_is_retired() {
    in_system(|| async {
        let w = setup().await;
        w.store.state().dirty_coins.push(dirty(None));
        w.node
            .state()
            .outpoints
            .insert(outpoint_of_coin_5(), gone(Some("stranger")));
        settler(&w, 1).run().await;
        let s = w.store.state();
        assert_eq!(s.retired, vec![5]);
        assert!(s.cleaned.is_empty());
    });
}

#[test]
fn a_jobs_transaction_the_node_holds_is_recorded_sent_without_a_broadcast() {
    in_system(|| async {
        let w = setup().await;
        let job = stuck(1, "ours");
        w.store.state().dirty_coins.push(dirty(Some(job)));
        w.node
            .state()
            .presence
            .insert("ours".into(), TxPresence::InMempool);
        settler(&w, 1).run().await;
        assert_eq!(
            sent_fences(&w.store),
            vec![fence(1, 2)],
            "under the adopted fence"
        );
        assert_eq!(w.node.broadcasts(), 0);
        let s = w.store.state();
        assert!(s.cleaned.is_empty() && s.retired.is_empty() && s.dirty.is_empty());
    });
}

#[test]
fn an_earlier_transaction_of_the_job_the_node_holds_is_taken_up() {
    in_system(|| async {
        let w = setup().await;
        let job = stuck(1, "latest");
        {
            let mut s = w.store.state();
            s.dirty_coins.push(dirty(Some(job)));
            s.earlier
                .insert(1, vec![earlier_tx("earlier", b"earlier|job-1")]);
        }
        w.node
            .state()
            .presence
            .insert("earlier".into(), TxPresence::InMempool);
        settler(&w, 1).run().await;
        let s = w.store.state();
        assert_eq!(s.taken_up, vec![(fence(1, 2), "earlier".to_owned())]);
        assert_eq!(
            s.sent.iter().map(|x| x.fence).collect::<Vec<_>>(),
            vec![fence(1, 2)]
        );
        drop(s);
        assert_eq!(w.node.broadcasts(), 0, "neither sent again");
    });
}

#[test]
fn a_coin_spent_by_an_earlier_transaction_of_the_job_takes_that_one_up() {
    in_system(|| async {
        let w = setup().await;
        let job = stuck(1, "latest");
        {
            let mut s = w.store.state();
            s.dirty_coins.push(dirty(Some(job)));
            s.earlier
                .insert(1, vec![earlier_tx("earlier", b"earlier|job-1")]);
        }
        // The node shows the spend before it shows the transaction.
        w.node
            .state()
            .outpoints
            .insert(outpoint_of_coin_5(), gone(Some("earlier")));
        settler(&w, 1).run().await;
        let s = w.store.state();
        assert_eq!(s.taken_up, vec![(fence(1, 2), "earlier".to_owned())]);
        assert_eq!(s.sent.len(), 1);
        assert!(
            s.retired.is_empty() && s.retries.is_empty(),
            "not a stranger's spend"
        );
        drop(s);
        assert_eq!(w.node.broadcasts(), 0);
    });
}

#[test]
fn nothing_known_is_answered_by_the_same_bytes_never_a_new_signature() {
    in_system(|| async {
        let w = setup().await;
        let job = stuck(1, "ours");
        w.store.state().dirty_coins.push(dirty(Some(job.clone())));
        let report = settler(&w, 1).run().await;
        assert_eq!(
            report,
            Report {
                items: 1,
                errors: 0
            }
        );
        assert_eq!(broadcast_bytes(&w.node), vec![job.raw_tx]);
        assert_eq!(sent_fences(&w.store), vec![fence(1, 2)]);
        let s = w.store.state();
        assert!(s.sending.is_empty(), "no new write-ahead");
        assert!(
            s.cleaned.is_empty() && s.retired.is_empty(),
            "the coin is the job's"
        );
    });
}

#[test]
fn a_strangers_spend_re_anchors_the_job_only_once_it_has_reanchor_confirmations() {
    in_system(|| async {
        let w = setup().await;
        let job = stuck(1, "ours");
        w.store.state().dirty_coins.push(dirty(Some(job.clone())));
        {
            let mut n = w.node.state();
            n.outpoints
                .insert(outpoint_of_coin_5(), gone(Some("stranger")));
            n.presence.insert("stranger".into(), confirmed(1));
        }
        let s = settler(&w, 2);
        s.run().await;
        {
            let st = w.store.state();
            assert!(
                st.retired.is_empty(),
                "one confirmation of two: the anchor is kept"
            );
            assert!(st.retries.is_empty() && st.sent.is_empty() && st.dirty.is_empty());
        }
        assert_eq!(
            w.node.broadcasts(),
            0,
            "the stranger's spend is not answered by a re-send"
        );

        // One block later.
        w.store.state().dirty_coins.push(dirty(Some(job)));
        w.node
            .state()
            .presence
            .insert("stranger".into(), confirmed(2));
        s.run().await;
        let st = w.store.state();
        assert_eq!(st.retired, vec![5]);
        assert_eq!(st.retries.len(), 1);
        assert_eq!(st.retries[0].fence, fence(1, 2));
        assert!(st.retries[0].reanchor, "signs again on a fresh coin");
        assert!(
            st.retries[0].error.contains("stranger"),
            "{}",
            st.retries[0].error
        );
        assert!(st.sending.is_empty() && st.sent.is_empty());
        drop(st);
        assert_eq!(w.node.broadcasts(), 0);
    });
}

#[test]
fn a_node_that_does_not_name_the_spender_is_asked_who_spent_the_anchor() {
    in_system(|| async {
        let w = setup().await;
        w.store
            .state()
            .dirty_coins
            .push(dirty(Some(stuck(1, "ours"))));
        {
            let mut n = w.node.state();
            n.outpoints.insert(outpoint_of_coin_5(), gone(None));
            n.spenders.insert(outpoint_of_coin_5(), "stranger".into());
            n.presence.insert("stranger".into(), confirmed(1));
        }
        settler(&w, 1).run().await;
        let s = w.store.state();
        assert_eq!(s.retired, vec![5]);
        assert_eq!(s.retries.len(), 1);
        assert!(s.retries[0].reanchor);
    });
}

#[test]
fn a_job_unsettled_for_more_than_max_rounds_fails_and_is_never_signed_again() {
    in_system(|| async {
        let w = setup().await;
        let job = stuck(1, "ours");
        let rounds = MAX_UNSETTLED_ROUNDS as usize;
        w.node
            .answer((0..rounds).map(|_| BroadcastOutcome::Unknown {
                reason: "timeout".into(),
            }));
        let s = settler(&w, 1);
        for round in 1..=rounds {
            w.store.state().dirty_coins.push(dirty(Some(job.clone())));
            s.run().await;
            assert_eq!(
                w.node.broadcasts(),
                round,
                "round {round}: the same bytes again"
            );
            assert!(w.store.state().unsettled.is_empty(), "round {round}");
        }
        w.store.state().dirty_coins.push(dirty(Some(job.clone())));
        s.run().await;
        assert_eq!(w.node.broadcasts(), rounds, "given up: not sent again");
        assert!(broadcast_bytes(&w.node)
            .iter()
            .all(|raw| *raw == job.raw_tx));
        let st = w.store.state();
        assert_eq!(st.unsettled.len(), 1);
        let (f, reason, release) = &st.unsettled[0];
        assert_eq!(*f, fence(1, 2));
        assert!(
            *release,
            "its coin is unspent: kept as the job's, not retired"
        );
        assert!(reason.contains("not signed again"), "{reason}");
        assert!(st.sending.is_empty(), "never a new signature");
        assert_eq!(
            st.dirty.len(),
            rounds,
            "each unanswered re-send left it dirty"
        );
    });
}

fn a_split() -> StoredSplit {
    StoredSplit {
        id: 1,
        txid: "split".into(),
        raw_tx: b"split bytes".to_vec(),
        input_utxo_id: 5,
    }
}

fn dirty_split() -> DirtyUtxo {
    DirtyUtxo {
        spent_by_txid: Some("split".into()),
        split_id: Some(1),
        ..dirty(None)
    }
}

#[test]
fn a_split_the_node_holds_is_accepted_and_its_outputs_join_the_pool() {
    in_system(|| async {
        let w = setup().await;
        {
            let mut s = w.store.state();
            s.splits.push(a_split());
            s.dirty_coins.push(dirty_split());
        }
        w.node
            .state()
            .presence
            .insert("split".into(), TxPresence::InMempool);
        settler(&w, 1).run().await;
        assert_eq!(w.store.state().split_outcomes, vec![(1, "accepted")]);
        assert_eq!(w.node.broadcasts(), 0);
        pool_holds(&w, 4).await;
    });
}

#[test]
fn a_split_not_on_the_node_is_sent_again_as_it_is() {
    in_system(|| async {
        let w = setup().await;
        {
            let mut s = w.store.state();
            s.splits.push(a_split());
            s.dirty_coins.push(dirty_split());
        }
        let settler = settler(&w, 1);
        // The node takes the bytes, and holds them from then on.
        let node = w.node.clone();
        let holds_it_once_sent = async {
            eventually("the split sent again", || node.broadcasts() == 1).await;
            node.state()
                .presence
                .insert("split".into(), TxPresence::InMempool);
        };
        let (report, ()) = futures::join!(settler.run(), holds_it_once_sent);
        assert_eq!(
            report,
            Report {
                items: 1,
                errors: 0
            }
        );
        assert_eq!(broadcast_bytes(&w.node), vec![b"split bytes".to_vec()]);
        assert_eq!(w.store.state().split_outcomes, vec![(1, "accepted")]);
        pool_holds(&w, 4).await;
    });
}

#[test]
fn a_split_refused_for_good_when_sent_again_gives_its_input_back() {
    in_system(|| async {
        let w = setup().await;
        {
            let mut s = w.store.state();
            s.splits.push(a_split());
            s.dirty_coins.push(dirty_split());
        }
        w.node.answer([BroadcastOutcome::Rejected {
            reason: "dust".into(),
            input_problem: false,
        }]);
        settler(&w, 1).run().await;
        assert_eq!(w.node.broadcasts(), 1);
        let s = w.store.state();
        assert_eq!(s.split_outcomes, vec![(1, "rejected")]);
        assert!(s.retired.is_empty());
    });
}

#[test]
fn a_node_away_stops_the_run_and_settles_nothing() {
    in_system(|| async {
        let w = setup().await;
        {
            let mut s = w.store.state();
            s.dirty_coins.push(dirty(Some(stuck(1, "ours"))));
            s.dirty_coins.push(DirtyUtxo {
                id: 6,
                ..dirty(None)
            });
        }
        w.node.state().away_for = 1;
        let report = settler(&w, 1).run().await;
        assert_eq!(
            report,
            Report {
                items: 0,
                errors: 1
            }
        );
        assert_eq!(w.node.broadcasts(), 0);
        let s = w.store.state();
        assert!(s.sent.is_empty() && s.cleaned.is_empty() && s.retired.is_empty());
    });
}
