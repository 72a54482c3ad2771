//! ConfirmationWatcher (actors/src/confirmation_watcher.rs, a maintenance service):
//! confirmations recorded; a transaction the node dropped switched to an earlier one of
//! the job it holds, or re-anchored once a stranger's spend of its anchor has
//! `reanchor_confirmations`, or else sent again as the same bytes — in bounded bursts,
//! a job failing only when accepted again and again and never held.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use raregen_actors::confirmation_watcher::{
    ConfirmationWatcher, MAX_UNHELD_RESENDS, SPENDER_LOOKS_PER_RUN,
};
use raregen_actors::maintenance::{Report, Service};
use raregen_actors::ports::*;

use crate::support::*;

const STUCK_AFTER: Duration = Duration::from_secs(30);

fn setup() -> Wired {
    wire(
        MemStore::new(),
        FakeNode::new(),
        1_000,
        Duration::from_secs(1),
        1,
    )
}

fn watcher(w: &Wired, stuck_after: Duration) -> ConfirmationWatcher {
    ConfirmationWatcher::new(Arc::new(w.store.clone()), w.deps.clone(), stuck_after)
}

/// The pool coin every test transaction spends (unspent on the node unless told).
fn anchor() -> (String, u32) {
    (coin(5, 0).txid, 0)
}

/// A sent job's transaction, spending the anchor; `settled`: sent long enough ago.
fn sent_tx(txid: &str, settled: bool) -> Unconfirmed {
    Unconfirmed {
        txid: txid.into(),
        raw_tx: format!("{txid}|bytes").into_bytes(),
        settled,
        input: Some(anchor()),
        split: false,
    }
}

fn confirmed(confirmations: u32) -> TxPresence {
    TxPresence::Confirmed {
        confirmations,
        block_height: Some(800_000),
        block_hash: Some("00ab".into()),
    }
}

#[test]
fn confirmations_are_recorded_and_nothing_else_is_done() {
    in_system(|| async {
        let w = setup();
        w.store.state().unconfirmed.extend([
            sent_tx("a", true),
            sent_tx("b", true),
            sent_tx("c", false),
        ]);
        {
            let mut n = w.node.state();
            n.presence.insert("a".into(), confirmed(1));
            n.presence.insert("b".into(), TxPresence::InMempool);
        }
        let report = watcher(&w, STUCK_AFTER).run().await;
        assert_eq!(
            report,
            Report {
                items: 1,
                errors: 0
            }
        );
        let s = w.store.state();
        assert_eq!(
            s.confirmations,
            vec![Confirmation {
                txid: "a".into(),
                block_height: Some(800_000),
                block_hash: Some("00ab".into()),
            }]
        );
        assert!(s.unheld.is_empty() && s.reanchored.is_empty() && s.switched.is_empty());
        drop(s);
        assert_eq!(
            w.node.broadcasts(),
            0,
            "c was sent too recently to be missed"
        );
    });
}

#[test]
fn a_transaction_the_node_dropped_is_sent_again_as_the_same_bytes() {
    in_system(|| async {
        let w = setup();
        w.store
            .state()
            .unconfirmed
            .extend([sent_tx("a", true), sent_tx("b", false)]);
        let report = watcher(&w, STUCK_AFTER).run().await;
        assert_eq!(
            report,
            Report {
                items: 1,
                errors: 0
            }
        );
        assert_eq!(
            broadcast_bytes(&w.node),
            vec![sent_tx("a", true).raw_tx],
            "a, missing and settled, is sent again; b is not settled yet"
        );
        let s = w.store.state();
        assert!(s.unheld.is_empty() && s.reanchored.is_empty() && s.switched.is_empty());
        assert!(
            s.sending.is_empty() && s.retries.is_empty(),
            "never signed again"
        );
    });
}

#[test]
fn an_earlier_transaction_of_the_job_the_node_holds_becomes_the_jobs() {
    in_system(|| async {
        let w = setup();
        {
            let mut s = w.store.state();
            s.unconfirmed.push(sent_tx("latest", true));
            s.earlier_of_sent.insert(
                "latest".into(),
                vec![
                    earlier_tx("gone", b"gone|bytes"),
                    earlier_tx("earlier", b"earlier|bytes"),
                ],
            );
        }
        w.node
            .state()
            .presence
            .insert("earlier".into(), TxPresence::InMempool);
        let report = watcher(&w, STUCK_AFTER).run().await;
        assert_eq!(report.items, 1);
        assert_eq!(
            w.store.state().switched,
            vec![("latest".to_owned(), "earlier".to_owned())]
        );
        assert_eq!(w.node.broadcasts(), 0, "nothing sent again");
    });
}

#[test]
fn a_strangers_spend_of_the_anchor_re_anchors_only_once_it_has_reanchor_confirmations() {
    in_system(|| async {
        let w = setup();
        w.store.state().unconfirmed.push(sent_tx("a", true));
        {
            let mut n = w.node.state();
            n.outpoints.insert(
                anchor(),
                OutpointState::Gone {
                    spent_by: Some("stranger".into()),
                },
            );
            n.presence.insert("stranger".into(), confirmed(1));
        }
        let watcher = watcher(&w, STUCK_AFTER).reanchor_after(2);
        watcher.run().await;
        assert!(
            w.store.state().reanchored.is_empty(),
            "one confirmation of two"
        );
        assert_eq!(
            broadcast_bytes(&w.node),
            vec![sent_tx("a", true).raw_tx],
            "meanwhile, the same bytes again"
        );

        w.node
            .state()
            .presence
            .insert("stranger".into(), confirmed(2));
        let report = watcher.run().await;
        assert_eq!(report.items, 1);
        assert_eq!(
            w.store.state().reanchored,
            vec![("a".to_owned(), "stranger".to_owned())]
        );
        assert_eq!(w.node.broadcasts(), 1, "set aside: not sent again");
    });
}

#[test]
fn an_anchor_spent_by_the_transaction_itself_is_no_strangers_spend() {
    in_system(|| async {
        let w = setup();
        w.store.state().unconfirmed.push(sent_tx("a", true));
        // The node shows the spend, not (yet) the transaction.
        w.node.state().outpoints.insert(
            anchor(),
            OutpointState::Gone {
                spent_by: Some("a".into()),
            },
        );
        watcher(&w, STUCK_AFTER).run().await;
        assert!(w.store.state().reanchored.is_empty());
        assert_eq!(
            w.node.broadcasts(),
            1,
            "sent again, as any transaction the node lost"
        );
    });
}

/// Reports a whole lane (the transaction and its child) set aside by a re-anchor, as
/// the store does.
struct Lane(MemStore);

#[async_trait]
impl WatchStore for Lane {
    async fn unconfirmed(
        &self,
        limit: u32,
        settled: Duration,
    ) -> Result<Vec<Unconfirmed>, StoreError> {
        self.0.unconfirmed(limit, settled).await
    }

    async fn record_confirmations(&self, confirmed: &[Confirmation]) -> Result<(), StoreError> {
        self.0.record_confirmations(confirmed).await
    }

    async fn fail_unheld(&self, txid: &str, reason: &str) -> Result<u64, StoreError> {
        self.0.fail_unheld(txid, reason).await
    }

    async fn reanchor_sent(
        &self,
        txid: &str,
        spent_by: &str,
        reason: &str,
    ) -> Result<Vec<String>, StoreError> {
        let mut lane = self.0.reanchor_sent(txid, spent_by, reason).await?;
        lane.push("child".into());
        Ok(lane)
    }

    async fn earlier_of_sent(&self, txid: &str) -> Result<Vec<EarlierTx>, StoreError> {
        self.0.earlier_of_sent(txid).await
    }

    async fn switch_sent(
        &self,
        txid: &str,
        earlier: &str,
        change: Option<(u32, u64)>,
    ) -> Result<bool, StoreError> {
        self.0.switch_sent(txid, earlier, change).await
    }
}

#[test]
fn a_lane_set_aside_by_a_re_anchor_is_not_sent_again() {
    in_system(|| async {
        let w = setup();
        w.store.state().unconfirmed.extend([
            sent_tx("parent", true),
            Unconfirmed {
                input: Some(("parent".into(), 1)),
                ..sent_tx("child", true)
            },
        ]);
        {
            let mut n = w.node.state();
            n.outpoints.insert(
                anchor(),
                OutpointState::Gone {
                    spent_by: Some("stranger".into()),
                },
            );
            n.presence.insert("stranger".into(), confirmed(1));
        }
        let watcher =
            ConfirmationWatcher::new(Arc::new(Lane(w.store.clone())), w.deps.clone(), STUCK_AFTER);
        let report = watcher.run().await;
        assert_eq!(report.items, 2, "the lane's two transactions");
        assert_eq!(
            w.store.state().reanchored,
            vec![("parent".to_owned(), "stranger".to_owned())],
            "re-anchored once, from its root"
        );
        assert_eq!(
            w.node.broadcasts(),
            0,
            "neither the parent nor its child sent again"
        );
    });
}

/// Runs `watcher` until `txid`'s re-sends are used up: `MAX_UNHELD_RESENDS` runs, each
/// sending its bytes again (the node answering as scripted).
async fn use_up_the_resends(w: &Wired, watcher: &ConfirmationWatcher, raw: &[u8]) {
    for run in 1..=MAX_UNHELD_RESENDS as usize {
        watcher.run().await;
        assert_eq!(w.node.broadcasts(), run, "run {run}");
    }
    assert!(broadcast_bytes(&w.node).iter().all(|b| b == raw));
    // The burst is over: for a while, no re-send and no verdict.
    watcher.run().await;
    assert_eq!(w.node.broadcasts(), MAX_UNHELD_RESENDS as usize);
    assert!(w.store.state().unheld.is_empty());
}

/// Long enough for `UNHELD_GIVE_UP_AFTER` × the short `stuck_after` below.
const SHORT_STUCK_AFTER: Duration = Duration::from_millis(30);
const GIVE_UP_WAIT: Duration = Duration::from_millis(320);

#[test]
fn accepted_again_and_again_and_never_held_the_job_fails_after_a_bounded_burst() {
    in_system(|| async {
        let w = setup();
        let tx = sent_tx("a", true);
        w.store.state().unconfirmed.push(tx.clone());
        let watcher = watcher(&w, SHORT_STUCK_AFTER);
        use_up_the_resends(&w, &watcher, &tx.raw_tx).await;

        tokio::time::sleep(GIVE_UP_WAIT).await;
        watcher.run().await;
        let s = w.store.state();
        assert!(!s.unheld.is_empty(), "failed");
        for (txid, reason) in &s.unheld {
            assert_eq!(txid, "a");
            assert!(reason.contains("never held"), "{reason}");
        }
        drop(s);
        assert_eq!(
            w.node.broadcasts(),
            MAX_UNHELD_RESENDS as usize,
            "not sent again"
        );
    });
}

#[test]
fn refused_again_and_again_the_job_is_not_failed_and_gets_another_burst_later() {
    in_system(|| async {
        let w = setup();
        let tx = sent_tx("a", true);
        w.store.state().unconfirmed.push(tx.clone());
        w.node
            .answer((0..MAX_UNHELD_RESENDS).map(|_| BroadcastOutcome::Rejected {
                reason: "mempool min fee not met".into(),
                input_problem: false,
            }));
        let watcher = watcher(&w, SHORT_STUCK_AFTER);
        use_up_the_resends(&w, &watcher, &tx.raw_tx).await;

        tokio::time::sleep(GIVE_UP_WAIT).await;
        // A refusal may pass later: a new wait, then a new burst.
        watcher.run().await;
        assert!(
            w.store.state().unheld.is_empty(),
            "never failed on a refusal"
        );
        assert_eq!(w.node.broadcasts(), MAX_UNHELD_RESENDS as usize);
        watcher.run().await;
        assert_eq!(
            w.node.broadcasts(),
            MAX_UNHELD_RESENDS as usize + 1,
            "a new burst"
        );
        assert!(w.store.state().unheld.is_empty());
    });
}

#[test]
fn never_held_but_not_provably_unminable_is_left_as_it_is() {
    // A split, or a transaction whose coin the node says is spent: neither failed nor
    // sent again forever.
    for (name, tx, spent) in [
        (
            "a split",
            Unconfirmed {
                split: true,
                ..sent_tx("a", true)
            },
            false,
        ),
        ("its coin spent", sent_tx("a", true), true),
    ] {
        in_system(|| async {
            let w = setup();
            w.store.state().unconfirmed.push(tx.clone());
            if spent {
                // Spent, by nobody the node names (and nobody found).
                w.node
                    .state()
                    .outpoints
                    .insert(anchor(), OutpointState::Gone { spent_by: None });
            }
            let watcher = watcher(&w, SHORT_STUCK_AFTER);
            use_up_the_resends(&w, &watcher, &tx.raw_tx).await;
            tokio::time::sleep(GIVE_UP_WAIT).await;
            watcher.run().await;
            watcher.run().await;
            assert!(w.store.state().unheld.is_empty(), "{name}: not failed");
            assert!(w.store.state().reanchored.is_empty(), "{name}");
            assert_eq!(
                w.node.broadcasts(),
                MAX_UNHELD_RESENDS as usize,
                "{name}: not sent again"
            );
        });
    }
}

#[test]
fn a_node_away_records_nothing_and_sends_nothing() {
    in_system(|| async {
        let w = setup();
        w.store
            .state()
            .unconfirmed
            .extend([sent_tx("a", true), sent_tx("b", true)]);
        {
            let mut n = w.node.state();
            n.presence.insert("a".into(), confirmed(3));
            n.presence.insert("b".into(), confirmed(3));
            // The first question fails.
            n.away_for = 1;
        }
        let report = watcher(&w, STUCK_AFTER).run().await;
        assert_eq!(
            report,
            Report {
                items: 0,
                errors: 1
            }
        );
        assert!(w.store.state().confirmations.is_empty());
        assert_eq!(w.node.broadcasts(), 0);
    });
}

/// The block scans for a spent anchor's spender are bounded per run, and shared out:
/// transactions whose spender no scan finds do not take the whole budget run after
/// run. Forty dropped transactions whose anchors are spent by nobody the node names;
/// the last one's spender is a confirmed stranger: it is found, and its job
/// re-anchored, within the runs it takes to scan each once.
#[test]
fn the_spender_scans_go_round_every_transaction_that_needs_one() {
    in_system(|| async {
        let w = setup();
        let n: usize = 40;
        {
            let mut s = w.store.state();
            let mut node = w.node.state();
            for i in 0..n {
                let parent = format!("{i:064x}");
                s.unconfirmed.push(Unconfirmed {
                    input: Some((parent.clone(), 0)),
                    ..sent_tx(&format!("dropped-{i}"), true)
                });
                node.outpoints
                    .insert((parent, 0), OutpointState::Gone { spent_by: None });
            }
            node.spenders
                .insert((format!("{:064x}", n - 1), 0), "stranger".into());
            node.presence.insert("stranger".into(), confirmed(1));
        }
        let watcher = watcher(&w, STUCK_AFTER);
        let runs = n.div_ceil(SPENDER_LOOKS_PER_RUN as usize) + 1;
        for run in 1..=runs {
            let before = w.node.state().spender_asks.len();
            watcher.run().await;
            let scans = w.node.state().spender_asks.len() - before;
            assert!(
                scans <= SPENDER_LOOKS_PER_RUN as usize,
                "run {run}: {scans} block scans"
            );
            if !w.store.state().reanchored.is_empty() {
                break;
            }
        }
        assert_eq!(
            w.store.state().reanchored,
            vec![(format!("dropped-{}", n - 1), "stranger".to_owned())],
            "the last transaction's spender was never looked for within {runs} runs"
        );
    });
}
