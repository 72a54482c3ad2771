use std::time::Duration;

use actix::prelude::*;
use raregen_actors::batch::{
    next_job, Batch, BatchDepth, BatchesInFlight, Depth, Drain, Enqueue, Held, JobDone, Next,
    NextJob,
};
use raregen_actors::ports::{BatchId, ClaimedBatch, ClaimedJob, JobId};
use tokio::sync::oneshot;

use crate::support::*;

/// A claimed batch `id` of jobs `ids`, numbered 1..=n as a claim numbers them.
fn claimed(id: BatchId, ids: impl IntoIterator<Item = JobId>) -> ClaimedBatch {
    ClaimedBatch {
        id,
        created_at: chrono::Utc::now(),
        jobs: ids
            .into_iter()
            .enumerate()
            .map(|(i, id)| ClaimedJob {
                batch_seq: i as i32 + 1,
                ..job(id)
            })
            .collect(),
    }
}

/// The next job, which must be waiting: (batch, job id, batch_seq).
async fn take(batch: &Addr<Batch>) -> (BatchId, JobId, i32) {
    let (b, j) = tokio::time::timeout(Duration::from_secs(5), next_job(batch))
        .await
        .expect("a job was waiting")
        .expect("not draining");
    (b, j.id, j.batch_seq)
}

/// Asks on an empty queue: the answer comes later.
async fn later(batch: &Addr<Batch>) -> oneshot::Receiver<Option<(BatchId, ClaimedJob)>> {
    match batch.send(NextJob).await.unwrap() {
        Next::Later(rx) => rx,
        _ => panic!("an empty queue answers later"),
    }
}

async fn depth(batch: &Addr<Batch>) -> BatchDepth {
    batch.send(Depth).await.unwrap()
}

#[test]
fn jobs_go_out_in_batch_seq_order_batch_after_batch() {
    in_system(|| async {
        let batch = Batch::default().start();
        batch.send(Enqueue(claimed(1, [11, 12, 13]))).await.unwrap();
        batch.send(Enqueue(claimed(2, [21, 22]))).await.unwrap();
        let mut out = Vec::new();
        for _ in 0..5 {
            out.push(take(&batch).await);
        }
        assert_eq!(
            out,
            [(1, 11, 1), (1, 12, 2), (1, 13, 3), (2, 21, 1), (2, 22, 2)]
        );
        assert_eq!(
            depth(&batch).await,
            BatchDepth {
                waiting: 0,
                in_flight: 5,
                batches: 2
            }
        );
    });
}

/// Broadcasters that asked on an empty queue are answered in the order they asked, by
/// the batches as they come; one that is not served yet keeps waiting.
#[test]
fn waiting_broadcasters_are_served_first_come_first_served_as_batches_arrive() {
    in_system(|| async {
        let batch = Batch::default().start();
        let first = later(&batch).await;
        let second = later(&batch).await;
        let mut third = later(&batch).await;
        batch.send(Enqueue(claimed(1, [1, 2]))).await.unwrap();
        assert_eq!(first.await.unwrap().map(|(b, j)| (b, j.id)), Some((1, 1)));
        assert_eq!(second.await.unwrap().map(|(b, j)| (b, j.id)), Some((1, 2)));
        assert!(
            matches!(third.try_recv(), Err(oneshot::error::TryRecvError::Empty)),
            "two jobs, two served"
        );
        batch.send(Enqueue(claimed(2, [3]))).await.unwrap();
        assert_eq!(third.await.unwrap().map(|(b, j)| (b, j.id)), Some((2, 3)));
        assert_eq!(
            depth(&batch).await,
            BatchDepth {
                waiting: 0,
                in_flight: 3,
                batches: 2
            }
        );
    });
}

/// A job sent to a broadcaster that stopped waiting stays in the queue (not counted in
/// flight) for the next one that asks.
#[test]
fn a_job_for_a_broadcaster_that_is_gone_stays_waiting() {
    in_system(|| async {
        let batch = Batch::default().start();
        drop(later(&batch).await);
        drop(later(&batch).await);
        batch.send(Enqueue(claimed(1, [1]))).await.unwrap();
        assert_eq!(
            depth(&batch).await,
            BatchDepth {
                waiting: 1,
                in_flight: 0,
                batches: 1
            }
        );
        assert_eq!(take(&batch).await, (1, 1, 1));
    });
}

/// JobDone ends a job; a batch is in flight while any of its jobs waits or is in
/// flight, and only then.
#[test]
fn a_batch_is_in_flight_until_its_last_job_is_done() {
    in_system(|| async {
        let batch = Batch::default().start();
        batch.send(Enqueue(claimed(1, [1, 2]))).await.unwrap();
        batch.send(Enqueue(claimed(2, [3]))).await.unwrap();
        batch.send(Enqueue(claimed(3, []))).await.unwrap();
        assert_eq!(
            batch.send(BatchesInFlight).await.unwrap(),
            2,
            "an empty claim is never in flight"
        );
        assert_eq!(depth(&batch).await.batches, 3, "but it counts as received");
        for _ in 0..3 {
            take(&batch).await;
        }
        batch.send(JobDone(1)).await.unwrap();
        assert_eq!(depth(&batch).await.in_flight, 2);
        assert_eq!(
            batch.send(BatchesInFlight).await.unwrap(),
            2,
            "batch 1 still has job 2 in flight"
        );
        batch.send(JobDone(3)).await.unwrap();
        assert_eq!(batch.send(BatchesInFlight).await.unwrap(), 1);
        batch.send(JobDone(2)).await.unwrap();
        assert_eq!(batch.send(BatchesInFlight).await.unwrap(), 0);
        assert_eq!(
            depth(&batch).await,
            BatchDepth {
                waiting: 0,
                in_flight: 0,
                batches: 3
            }
        );
    });
}

/// Held (what the Rescuer must never take): every job waiting or in flight, none done.
#[test]
fn held_names_every_job_waiting_or_in_flight_and_none_done() {
    in_system(|| async {
        let batch = Batch::default().start();
        batch.send(Enqueue(claimed(1, [1, 2, 3]))).await.unwrap();
        batch.send(Enqueue(claimed(2, [4]))).await.unwrap();
        take(&batch).await;
        take(&batch).await;
        batch.send(JobDone(1)).await.unwrap();
        let mut held = batch.send(Held).await.unwrap();
        held.sort();
        assert_eq!(held, [2, 3, 4]);
    });
}

/// Drain (shutdown): the jobs not started come back in order, the ones in flight stay
/// in flight (and held) until done, waiting broadcasters are told there is nothing, and
/// nothing is handed out any more; a claim that lands later is kept for the next Drain.
#[test]
fn drain_hands_back_the_unstarted_jobs_and_keeps_the_ones_in_flight() {
    in_system(|| async {
        let batch = Batch::default().start();
        batch
            .send(Enqueue(claimed(1, [1, 2, 3, 4, 5])))
            .await
            .unwrap();
        take(&batch).await;
        take(&batch).await;
        let rest = batch.send(Drain).await.unwrap();
        assert_eq!(rest.iter().map(|j| j.id).collect::<Vec<_>>(), [3, 4, 5]);
        assert_eq!(
            rest.iter().map(|j| j.batch_seq).collect::<Vec<_>>(),
            [3, 4, 5]
        );
        assert_eq!(
            depth(&batch).await,
            BatchDepth {
                waiting: 0,
                in_flight: 2,
                batches: 1
            }
        );
        let mut held = batch.send(Held).await.unwrap();
        held.sort();
        assert_eq!(held, [1, 2], "the jobs in flight are still held");
        assert_eq!(batch.send(BatchesInFlight).await.unwrap(), 1);
        assert!(
            next_job(&batch).await.is_none(),
            "a draining Batch hands out nothing"
        );
        batch.send(JobDone(1)).await.unwrap();
        batch.send(JobDone(2)).await.unwrap();
        assert_eq!(batch.send(BatchesInFlight).await.unwrap(), 0);

        batch.send(Enqueue(claimed(2, [6, 7]))).await.unwrap();
        assert!(next_job(&batch).await.is_none());
        let late = batch.send(Drain).await.unwrap();
        assert_eq!(
            late.iter().map(|j| j.id).collect::<Vec<_>>(),
            [6, 7],
            "a late claim is handed back by the next Drain, not lost"
        );
        assert_eq!(batch.send(BatchesInFlight).await.unwrap(), 0);
    });
}

#[test]
fn drain_answers_every_waiting_broadcaster_with_nothing() {
    in_system(|| async {
        let batch = Batch::default().start();
        let a = later(&batch).await;
        let b = later(&batch).await;
        assert!(batch.send(Drain).await.unwrap().is_empty());
        assert!(a.await.unwrap().is_none());
        assert!(b.await.unwrap().is_none());
        assert!(matches!(batch.send(NextJob).await.unwrap(), Next::Draining));
    });
}
