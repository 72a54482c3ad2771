//! Batch: holds the claimed jobs in `batch_seq` order and hands them to broadcasters,
//! one at a time, as they ask. Broadcasters pull, so the work in flight is bounded by
//! their number, and the Collector claims only when this queue runs low, so memory is
//! bounded by about two batches however long the queue in Postgres is. A broadcaster
//! that asks while nothing is waiting is answered when the next batch arrives (no
//! polling: an idle pipeline sends no messages). The per-batch
//! counts (sent, failed, retried) and completion time are written by the same
//! statements that record the jobs' outcomes.

use std::collections::{HashMap, VecDeque};

use actix::prelude::*;

use tokio::sync::oneshot;

use crate::ports::{BatchId, ClaimedBatch, ClaimedJob, JobId};

type Handed = Option<(BatchId, ClaimedJob)>;

#[derive(Default)]
pub struct Batch {
    queue: VecDeque<(BatchId, ClaimedJob)>,
    /// Broadcasters that asked while the queue was empty, first come first served.
    waiters: VecDeque<oneshot::Sender<Handed>>,
    in_flight: usize,
    /// Jobs not yet done per batch (waiting or in flight), and the batch of each job
    /// in flight: a batch is in flight while it has any.
    open: HashMap<BatchId, usize>,
    job_batch: HashMap<JobId, BatchId>,
    batches: u64,
    draining: bool,
}

impl Actor for Batch {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(4096);
    }
}

/// A claimed batch to feed to the broadcasters.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Enqueue(pub ClaimedBatch);

/// The next job for a broadcaster (see [`next_job`]).
#[derive(Message)]
#[rtype(result = "Next")]
pub struct NextJob;

/// The answer to [`NextJob`].
#[derive(MessageResponse)]
pub enum Next {
    Job(BatchId, ClaimedJob),
    /// Nothing waits now: the job comes through this channel when a batch arrives
    /// (`None` if the pipeline drains first). Dropping it before a job is sent gives
    /// the job back; a job sent into it and never read stays held until the process
    /// stops (only a stopping process drops a waiting broadcaster; its lease then
    /// gives the job back).
    Later(oneshot::Receiver<Handed>),
    Draining,
}

/// The next job, waiting for one as long as it takes; `None` once the pipeline drains
/// (or the Batch actor is gone).
pub async fn next_job(batch: &Addr<Batch>) -> Handed {
    match batch.send(NextJob).await.ok()? {
        Next::Job(id, job) => Some((id, job)),
        Next::Later(rx) => rx.await.ok().flatten(),
        Next::Draining => None,
    }
}

/// A broadcaster finished with a job (whatever the outcome).
#[derive(Message)]
#[rtype(result = "()")]
pub struct JobDone(pub JobId);

/// Asks how deep the Batch is: answers a [`BatchDepth`].
#[derive(Message)]
#[rtype(result = "BatchDepth")]
pub struct Depth;

/// The answer to [`Depth`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchDepth {
    /// Jobs waiting for a broadcaster.
    pub waiting: usize,
    /// Jobs handed out and not yet done.
    pub in_flight: usize,
    /// Batches received since start.
    pub batches: u64,
}

/// Shutdown: stop handing out jobs; answers the jobs not yet started.
#[derive(Message)]
#[rtype(result = "Vec<ClaimedJob>")]
pub struct Drain;

impl Handler<Enqueue> for Batch {
    type Result = ();

    fn handle(&mut self, msg: Enqueue, _: &mut Context<Self>) {
        self.batches += 1;
        let id = msg.0.id;
        tracing::info!(batch = id, jobs = msg.0.jobs.len(), "batch claimed");
        if !msg.0.jobs.is_empty() {
            *self.open.entry(id).or_default() += msg.0.jobs.len();
        }
        self.queue.extend(msg.0.jobs.into_iter().map(|j| (id, j)));
        self.serve_waiters();
    }
}

impl Handler<NextJob> for Batch {
    type Result = Next;

    fn handle(&mut self, _: NextJob, _: &mut Context<Self>) -> Next {
        if self.draining {
            return Next::Draining;
        }
        if let Some((batch, job)) = self.queue.pop_front() {
            self.hand_out(batch, job.id);
            return Next::Job(batch, job);
        }
        let (tx, rx) = oneshot::channel();
        self.waiters.push_back(tx);
        Next::Later(rx)
    }
}

impl Handler<JobDone> for Batch {
    type Result = ();

    fn handle(&mut self, msg: JobDone, _: &mut Context<Self>) {
        self.in_flight = self.in_flight.saturating_sub(1);
        if let Some(batch) = self.job_batch.remove(&msg.0) {
            self.done_in(batch, 1);
        }
    }
}

/// Every job this actor holds: waiting for a broadcaster or in flight.
#[derive(Message)]
#[rtype(result = "Vec<JobId>")]
pub struct Held;

impl Handler<Held> for Batch {
    type Result = Vec<JobId>;

    fn handle(&mut self, _: Held, _: &mut Context<Self>) -> Vec<JobId> {
        self.queue
            .iter()
            .map(|(_, j)| j.id)
            .chain(self.job_batch.keys().copied())
            .collect()
    }
}

impl Batch {
    fn hand_out(&mut self, batch: BatchId, job: JobId) {
        self.in_flight += 1;
        self.job_batch.insert(job, batch);
    }

    /// Hands waiting jobs to waiting broadcasters. A broadcaster that is gone (its
    /// answer cannot be delivered) leaves its job at the front of the queue.
    fn serve_waiters(&mut self) {
        while !self.queue.is_empty() {
            let Some(waiter) = self.waiters.pop_front() else {
                return;
            };
            let next = self.queue.pop_front().expect("not empty");
            let (batch, job) = (next.0, next.1.id);
            match waiter.send(Some(next)) {
                Ok(()) => self.hand_out(batch, job),
                Err(back) => self.queue.push_front(back.expect("sent a job")),
            }
        }
    }

    fn done_in(&mut self, batch: BatchId, n: usize) {
        if let Some(left) = self.open.get_mut(&batch) {
            *left = left.saturating_sub(n);
            if *left == 0 {
                self.open.remove(&batch);
            }
        }
    }
}

/// Batches with jobs waiting or in flight.
#[derive(Message)]
#[rtype(result = "usize")]
pub struct BatchesInFlight;

impl Handler<BatchesInFlight> for Batch {
    type Result = usize;

    fn handle(&mut self, _: BatchesInFlight, _: &mut Context<Self>) -> usize {
        self.open.len()
    }
}

impl Handler<Depth> for Batch {
    type Result = MessageResult<Depth>;

    fn handle(&mut self, _: Depth, _: &mut Context<Self>) -> Self::Result {
        MessageResult(BatchDepth {
            waiting: self.queue.len(),
            in_flight: self.in_flight,
            batches: self.batches,
        })
    }
}

impl Handler<Drain> for Batch {
    type Result = MessageResult<Drain>;

    fn handle(&mut self, _: Drain, _: &mut Context<Self>) -> Self::Result {
        self.draining = true;
        for waiter in self.waiters.drain(..) {
            let _ = waiter.send(None);
        }
        let drained: Vec<(BatchId, ClaimedJob)> = self.queue.drain(..).collect();
        for (batch, _) in &drained {
            self.done_in(*batch, 1);
        }
        MessageResult(drained.into_iter().map(|(_, j)| j).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch_of(id: BatchId, ids: &[JobId]) -> ClaimedBatch {
        ClaimedBatch {
            id,
            created_at: chrono::Utc::now(),
            jobs: ids
                .iter()
                .enumerate()
                .map(|(i, &id)| ClaimedJob {
                    id,
                    batch_seq: i as i32 + 1,
                    payload: vec![],
                    attempts: 1,
                    stored_tx: None,
                    anchor: None,
                })
                .collect(),
        }
    }

    /// Asks for a job on an empty queue: the answer comes later.
    async fn later(batch: &Addr<Batch>) -> oneshot::Receiver<Handed> {
        match batch.send(NextJob).await.unwrap() {
            Next::Later(answer) => answer,
            _ => panic!("an empty queue answers later"),
        }
    }

    #[test]
    fn a_broadcaster_waiting_on_an_empty_queue_gets_the_next_batch_without_asking_again() {
        actix::System::new().block_on(async {
            let batch = Batch::default().start();
            let first = later(&batch).await;
            // A broadcaster that stopped waiting gives its turn (and its job) back.
            let gone = later(&batch).await;
            drop(gone);
            let third = later(&batch).await;
            batch.send(Enqueue(batch_of(7, &[1, 2, 3]))).await.unwrap();
            assert_eq!(first.await.unwrap().map(|(b, j)| (b, j.id)), Some((7, 1)));
            assert_eq!(third.await.unwrap().map(|(b, j)| (b, j.id)), Some((7, 2)));
            // Two handed out, job 3 waits for the next ask.
            assert_eq!(
                batch.send(Depth).await.unwrap(),
                BatchDepth {
                    waiting: 1,
                    in_flight: 2,
                    batches: 1
                }
            );
            assert_eq!(next_job(&batch).await.map(|(_, j)| j.id), Some(3));
            assert_eq!(batch.send(Held).await.unwrap().len(), 3);
        });
    }

    #[test]
    fn draining_answers_the_waiting_broadcasters_with_nothing() {
        actix::System::new().block_on(async {
            let batch = Batch::default().start();
            let waiting = later(&batch).await;
            assert!(batch.send(Drain).await.unwrap().is_empty());
            assert_eq!(waiting.await.unwrap().map(|(_, j)| j.id), None);
            batch.send(Enqueue(batch_of(8, &[4]))).await.unwrap();
            assert!(
                next_job(&batch).await.is_none(),
                "a draining batch hands out nothing"
            );
        });
    }
}
