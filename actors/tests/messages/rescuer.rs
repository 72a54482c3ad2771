//! Rescuer (actors/src/rescuer.rs, a maintenance service): dead processes' claims taken
//! back, lost jobs requeued, stuck `sending` jobs adopted and their same bytes sent
//! again — and never a job the pipeline still holds.

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use raregen_actors::batch::{next_job, Batch, Enqueue, JobDone};
use raregen_actors::broadcaster::Deps;
use raregen_actors::maintenance::{Report, Service};
use raregen_actors::ports::*;
use raregen_actors::rescuer::Rescuer;

use crate::support::*;

const STUCK_AFTER: Duration = Duration::from_secs(30);

fn setup() -> Wired {
    wire(
        MemStore::new(),
        FakeNode::new(),
        100,
        Duration::from_secs(1),
        1,
    )
}

fn rescuer(store: &MemStore, deps: Arc<Deps>) -> Rescuer {
    Rescuer {
        store: Arc::new(store.clone()),
        deps,
        stuck_after: STUCK_AFTER,
    }
}

/// A job stuck in `sending` with its stored bytes.
fn stuck(id: JobId) -> StuckJob {
    StuckJob {
        fence: fence(id, 1),
        txid: format!("{id:064x}"),
        raw_tx: format!("stored bytes of job {id}").into_bytes(),
        utxo_id: Some(100 + id),
    }
}

fn sorted(mut ids: Vec<JobId>) -> Vec<JobId> {
    ids.sort();
    ids
}

#[test]
fn the_rescuer_passes_every_job_the_pipeline_holds_as_held() {
    in_system(|| async {
        let w = setup();
        w.store.queue(1..=3);
        let claimed = w.store.claim_batch(10).await.unwrap().unwrap();
        w.deps.batch.send(Enqueue(claimed)).await.unwrap();
        // Job 1 is in a broadcaster's hands, 2 and 3 wait in the Batch.
        assert_eq!(next_job(&w.deps.batch).await.map(|(_, j)| j.id), Some(1));
        let r = rescuer(&w.store, w.deps.clone());
        assert_eq!(r.run().await, Report::default());
        {
            let s = w.store.state();
            assert_eq!(s.requeue_held.len(), 1);
            assert_eq!(sorted(s.requeue_held[0].clone()), vec![1, 2, 3]);
            assert_eq!(s.adopt_held.len(), 1);
            assert_eq!(sorted(s.adopt_held[0].clone()), vec![1, 2, 3]);
        }
        // Once job 1 is done, it is no longer the pipeline's: asked again each run.
        w.deps.batch.do_send(JobDone(1));
        r.run().await;
        let s = w.store.state();
        assert_eq!(sorted(s.requeue_held[1].clone()), vec![2, 3]);
        assert_eq!(sorted(s.adopt_held[1].clone()), vec![2, 3]);
    });
}

#[test]
fn without_the_batch_actors_answer_nothing_is_requeued_or_adopted() {
    in_system(|| async {
        let w = setup();
        {
            let mut s = w.store.state();
            s.dead_claims = 3;
            s.lost = 2;
            s.stuck.push(stuck(7));
        }
        // A Batch actor that never runs: its address answers nothing.
        let gone = Context::<Batch>::new().address();
        let deps = Deps {
            batch: gone,
            pool: w.deps.pool.clone(),
            tokens: w.deps.tokens.clone(),
            recorder: w.deps.recorder.clone(),
            signer: w.deps.signer.clone(),
            node: w.deps.node.clone(),
            stats: w.deps.stats.clone(),
            broadcasts: w.deps.broadcasts.clone(),
        };
        let report = rescuer(&w.store, Arc::new(deps)).run().await;
        assert_eq!(
            report,
            Report {
                items: 3,
                errors: 1
            },
            "dead claims taken back, then stopped"
        );
        let s = w.store.state();
        assert!(
            s.requeue_held.is_empty(),
            "no requeue without the held jobs"
        );
        assert!(s.adopt_held.is_empty(), "no adoption without the held jobs");
        assert_eq!(s.lost, 2);
        assert_eq!(s.stuck.len(), 1);
        drop(s);
        assert_eq!(w.node.broadcasts(), 0);
    });
}

#[test]
fn dead_claims_and_lost_jobs_are_taken_back_and_counted() {
    in_system(|| async {
        let w = setup();
        {
            let mut s = w.store.state();
            s.dead_claims = 3;
            s.lost = 2;
        }
        let report = rescuer(&w.store, w.deps.clone()).run().await;
        assert_eq!(
            report,
            Report {
                items: 5,
                errors: 0
            }
        );
        let s = w.store.state();
        assert_eq!((s.dead_claims, s.lost), (0, 0));
        assert_eq!(s.requeue_held.len(), 1);
    });
}

#[test]
fn a_stuck_job_is_adopted_and_its_same_bytes_sent_again_never_signed() {
    in_system(|| async {
        let w = setup();
        w.store.state().stuck.push(stuck(7));
        let report = rescuer(&w.store, w.deps.clone()).run().await;
        assert_eq!(
            report,
            Report {
                items: 1,
                errors: 0
            }
        );
        assert_eq!(broadcast_bytes(&w.node), vec![stuck(7).raw_tx]);
        let s = w.store.state();
        assert_eq!(
            s.sent.iter().map(|x| x.fence).collect::<Vec<_>>(),
            vec![fence(7, 2)],
            "recorded sent under the adopted fence"
        );
        assert!(s.sending.is_empty(), "no new write-ahead: not signed again");
        assert!(s.retries.is_empty() && s.dirty.is_empty());
    });
}

#[test]
fn a_re_send_refused_for_good_sends_the_job_back_to_sign_again_on_its_anchor() {
    in_system(|| async {
        let w = setup();
        w.store.state().stuck.push(stuck(7));
        w.node.answer([BroadcastOutcome::Rejected {
            reason: "mempool min fee not met".into(),
            input_problem: false,
        }]);
        rescuer(&w.store, w.deps.clone()).run().await;
        let s = w.store.state();
        assert_eq!(s.retries.len(), 1);
        let retry = &s.retries[0];
        assert_eq!(retry.fence, fence(7, 2));
        assert!(retry.settles_dirty, "the refusal settles the dirty anchor");
        assert!(!retry.reanchor, "the job keeps its anchor");
        assert!(
            retry.error.contains("mempool min fee not met"),
            "{}",
            retry.error
        );
        assert!(s.sent.is_empty() && s.dirty.is_empty() && s.sending.is_empty());
    });
}

#[test]
fn a_re_send_without_a_definitive_answer_leaves_the_job_dirty() {
    for outcome in [
        BroadcastOutcome::Unknown {
            reason: "502".into(),
        },
        BroadcastOutcome::Rejected {
            reason: "missing inputs".into(),
            input_problem: true,
        },
    ] {
        in_system(|| async {
            let w = setup();
            w.store.state().stuck.push(stuck(7));
            w.node.answer([outcome.clone()]);
            rescuer(&w.store, w.deps.clone()).run().await;
            assert_eq!(broadcast_bytes(&w.node), vec![stuck(7).raw_tx]);
            let s = w.store.state();
            assert_eq!(s.dirty, vec![fence(7, 2)], "after {outcome:?}");
            assert!(s.sent.is_empty() && s.retries.is_empty() && s.sending.is_empty());
        });
    }
}

#[test]
fn a_step_whose_store_call_fails_does_not_stop_the_others() {
    in_system(|| async {
        let w = setup();
        {
            let mut s = w.store.state();
            s.dead_claims = 3;
            s.lost = 2;
            s.stuck.push(stuck(7));
            // The first call (taking back dead claims) fails.
            s.fail_next = 1;
        }
        let report = rescuer(&w.store, w.deps.clone()).run().await;
        assert_eq!(
            report,
            Report {
                items: 3,
                errors: 1
            },
            "2 requeued, 1 re-sent"
        );
        assert_eq!(w.store.state().dead_claims, 3, "left for the next run");
        assert_eq!(w.node.broadcasts(), 1);
    });
}
