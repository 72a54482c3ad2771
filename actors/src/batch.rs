//! Batch: holds the claimed jobs in `batch_seq` order and hands them to broadcasters,
//! one at a time, as they ask. Broadcasters pull, so the work in flight is bounded by
//! their number, and the Collector claims only when this queue runs low, so memory is
//! bounded by about two batches however long the queue in Postgres is. The per-batch
//! counts (sent, failed, retried) and completion time are written by the same
//! statements that record the jobs' outcomes.

use std::collections::{HashMap, VecDeque};

use actix::prelude::*;

use crate::ports::{BatchId, ClaimedBatch, ClaimedJob, JobId};

#[derive(Default)]
pub struct Batch {
    queue: VecDeque<(BatchId, ClaimedJob)>,
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

/// The next job for a broadcaster, or `None` when there is none.
#[derive(Message)]
#[rtype(result = "Option<(BatchId, ClaimedJob)>")]
pub struct NextJob;

/// A broadcaster finished with a job (whatever the outcome).
#[derive(Message)]
#[rtype(result = "()")]
pub struct JobDone(pub JobId);

/// (jobs waiting, jobs in flight, batches received).
#[derive(Message)]
#[rtype(result = "(usize, usize, u64)")]
pub struct Depth;

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
    }
}

impl Handler<NextJob> for Batch {
    type Result = Option<(BatchId, ClaimedJob)>;

    fn handle(&mut self, _: NextJob, _: &mut Context<Self>) -> Self::Result {
        if self.draining {
            return None;
        }
        let next = self.queue.pop_front();
        if let Some((batch, job)) = &next {
            self.in_flight += 1;
            self.job_batch.insert(job.id, *batch);
        }
        next
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
        MessageResult((self.queue.len(), self.in_flight, self.batches))
    }
}

impl Handler<Drain> for Batch {
    type Result = MessageResult<Drain>;

    fn handle(&mut self, _: Drain, _: &mut Context<Self>) -> Self::Result {
        self.draining = true;
        let drained: Vec<(BatchId, ClaimedJob)> = self.queue.drain(..).collect();
        for (batch, _) in &drained {
            self.done_in(*batch, 1);
        }
        MessageResult(drained.into_iter().map(|(_, j)| j).collect())
    }
}
