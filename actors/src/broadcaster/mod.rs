//! Broadcaster: one job at a time. UTXO → build + sign → **store the signed transaction
//! (write-ahead)** → token → broadcast → record the outcome. A job that already holds a
//! stored transaction is re-broadcast from those bytes: never signed again.
//!
//! A broadcaster that panics is stopped and restarted by actix's Supervisor with the
//! job it held (kept across the restart), so that job still completes; repeated crashes
//! back off instead of spinning.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::panic::AssertUnwindSafe;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use chrono::Utc;
use futures::FutureExt;
use tokio::time::Instant;

use crate::batch::{next_job, Batch, JobDone};
use crate::ports::{BatchId, ClaimedJob, Fence, Retry, Sent, StoredTx};
use crate::ports::{BroadcastOutcome, Node, Signer};
use crate::rate_limit::TokenBucket;
use crate::recorder::{MarkDirty, RecordRetry, RecordSent, Recorder};
use crate::stats::Stats;
use crate::utxo_pool::{Forget, Release, Spent, UtxoPool};

mod prepare;

use prepare::{sign_and_store, until_stored};

/// What every broadcaster (and the Janitor's re-broadcasts) works with.
pub struct Deps {
    pub batch: Addr<Batch>,
    pub pool: Addr<UtxoPool>,
    pub tokens: Addr<TokenBucket>,
    pub recorder: Addr<Recorder>,
    pub signer: Arc<dyn Signer>,
    pub node: Arc<dyn Node>,
    pub stats: Arc<Stats>,
    /// One permit per concurrent broadcast of the broadcasters (`broadcaster.workers`).
    /// There are more broadcasters than permits: while one broadcasts, another takes
    /// its UTXO, signs and stores (see [`PREPARING_PER_BROADCAST`]).
    pub broadcasts: Arc<tokio::sync::Semaphore>,
}

/// Broadcasters per broadcast permit. A broadcaster spends most of a job waiting: for
/// its write-ahead group's commit, then for the node. With one broadcaster per permit,
/// the group commits wait for jobs that wait for the node, and a core sits idle; with
/// more, jobs are prepared (UTXO, signature, write-ahead) while others are broadcast,
/// and the node still sees at most `broadcaster.workers` broadcasts at once. Two gained
/// a third over one on the pipeline's ceiling, four another tenth (docs/benchmarks.md).
/// The cost: up to this many times `workers` UTXOs reserved and jobs `sending` at once
/// (under throttling a prepared job waits its turn in `sending`; this process never
/// takes it back, being the one that holds it, but another live process's Rescuer may
/// adopt one that waits longer than `janitor.stuck_after`: it re-sends the same bytes,
/// harmless, and this holder is fenced out).
pub const PREPARING_PER_BROADCAST: u32 = 4;

/// The job a broadcaster holds, kept across a restart after a panic.
type Current = Rc<RefCell<Option<(BatchId, ClaimedJob)>>>;

pub struct Broadcaster {
    pub id: usize,
    deps: Arc<Deps>,
    current: Current,
    restarts: VecDeque<Instant>,
}

impl Broadcaster {
    pub fn new(id: usize, deps: Arc<Deps>) -> Broadcaster {
        Broadcaster {
            id,
            deps,
            current: Rc::new(RefCell::new(None)),
            restarts: VecDeque::new(),
        }
    }

    /// Delay before working again: none normally; after three or more crashes within a
    /// minute, 100 ms doubling per crash, at most 30 s.
    fn restart_delay(&mut self) -> Duration {
        let now = Instant::now();
        while self
            .restarts
            .front()
            .is_some_and(|t| now.duration_since(*t) > Duration::from_secs(60))
        {
            self.restarts.pop_front();
        }
        match self.restarts.len() {
            0..=2 => Duration::ZERO,
            n => (Duration::from_millis(100) * 2u32.saturating_pow((n - 3) as u32))
                .min(Duration::from_secs(30)),
        }
    }
}

impl Actor for Broadcaster {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        let delay = self.restart_delay();
        ctx.notify_later(Work, delay);
    }
}

impl actix::Supervised for Broadcaster {
    fn restarting(&mut self, _: &mut Context<Self>) {
        self.restarts.push_back(Instant::now());
        self.deps.stats.observe_restart("broadcaster");
        tracing::warn!(broadcaster = self.id, held = ?self.current.borrow().as_ref().map(|j| j.1.id), "restarting broadcaster");
    }
}

#[derive(Message)]
#[rtype(result = "()")]
struct Work;

enum Step {
    Worked,
    Idle,
}

impl Handler<Work> for Broadcaster {
    type Result = ();

    fn handle(&mut self, _: Work, ctx: &mut Context<Self>) {
        let deps = self.deps.clone();
        let current = self.current.clone();
        let id = self.id;
        let work = async move {
            let held = current.borrow().clone();
            let (batch_id, job) = match held {
                Some(held) => held,
                None => match next_job(&deps.batch).await {
                    Some(next) => {
                        *current.borrow_mut() = Some(next.clone());
                        next
                    }
                    _ => return Step::Idle,
                },
            };
            let job_id = job.id;
            let done = process(&deps, &current, batch_id, job).await;
            *current.borrow_mut() = None;
            if done == Done::Now {
                deps.batch.do_send(JobDone(job_id));
            }
            Step::Worked
        };
        ctx.spawn(AssertUnwindSafe(work).catch_unwind().into_actor(self).map(
            move |res, _, ctx| match res {
                Ok(Step::Worked) => ctx.notify(Work),
                Ok(Step::Idle) => {
                    // Only while draining (or with the Batch actor gone): an empty
                    // queue answers when the next batch arrives.
                    ctx.notify_later(Work, Duration::from_secs(1));
                }
                Err(_) => {
                    tracing::error!(
                        broadcaster = id,
                        "broadcaster panicked; stopping it for a restart"
                    );
                    ctx.stop();
                }
            },
        ));
    }
}

/// Backoff before a job-side rejection is tried again: 2^refusals seconds (the job's
/// refused transactions, this one included), at most 5 min. Claims taken back from a
/// dead process do not lengthen it.
pub fn retry_backoff(refusals: u32) -> chrono::Duration {
    chrono::Duration::seconds(2i64.saturating_pow(refusals.min(20)).min(300))
}

/// When the Batch actor hears that a job is done: now, or from the task that records
/// its outcome once that record is written (until then the job is still held, so that
/// no maintenance service takes a job whose outcome is on its way to the database).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Done {
    Now,
    WhenRecorded,
}

async fn process(deps: &Deps, current: &Current, batch_id: BatchId, job: ClaimedJob) -> Done {
    let fence = Fence {
        id: job.id,
        attempts: job.attempts,
    };
    let stored = match job.stored_tx.clone() {
        Some(stored) => stored,
        None => match sign_and_store(deps, fence, &job).await {
            Some(stored) => {
                if let Some(held) = current.borrow_mut().as_mut() {
                    held.1.stored_tx = Some(stored.clone());
                }
                stored
            }
            None => return Done::Now,
        },
    };
    crate::fail_point!("after-store-before-broadcast");
    // Never closed: a permit always comes (and no permit, no broadcast).
    let _permit = deps
        .broadcasts
        .acquire()
        .await
        .expect("the broadcast semaphore is never closed");
    tracing::debug!(batch = batch_id, job = job.id, txid = %stored.txid, "broadcasting");
    let refused_before = job.anchor.as_ref().map_or(0, |a| a.signed_before);
    send_stored(deps, fence, stored, refused_before).await
}

/// Broadcasts a stored transaction (taking a token each time) and records the outcome.
/// `refused_before`: the job's transactions refused before this one (for the backoff).
pub async fn send_stored(deps: &Deps, fence: Fence, stored: StoredTx, refused_before: u32) -> Done {
    let change = deps.signer.change_of(&stored.raw_tx);
    let outcome =
        crate::send::broadcast(&deps.tokens, &*deps.node, &stored.raw_tx, Some(&deps.stats)).await;
    match outcome {
        BroadcastOutcome::Accepted => {
            crate::fail_point!("after-broadcast-before-record");
            let sent = Sent {
                fence,
                sent_at: Utc::now(),
                change,
            };
            // The broadcaster moves on; the record goes out with the next group. A
            // crash before it is written leaves the job `sending` with its stored
            // bytes, and the Janitor sends them again (the node answers "known").
            let (recorder, pool, stats, batch) = (
                deps.recorder.clone(),
                deps.pool.clone(),
                deps.stats.clone(),
                deps.batch.clone(),
            );
            let (txid, utxo_id) = (stored.txid.clone(), stored.utxo_id);
            actix::spawn(async move {
                let recorded = until_stored("record sent", || {
                    recorder.send(RecordSent {
                        sent: sent.clone(),
                        txid: txid.clone(),
                    })
                })
                .await;
                if let Some(utxo_id) = utxo_id {
                    pool.do_send(Spent {
                        utxo_id,
                        change: recorded.flatten(),
                    });
                }
                stats.observe_sent();
                batch.do_send(JobDone(fence.id));
            });
            Done::WhenRecorded
        }
        BroadcastOutcome::Rejected {
            reason,
            input_problem: false,
        } => {
            let retry = Retry {
                fence,
                error: format!("rejected by the node: {reason}"),
                not_before: Utc::now() + retry_backoff(refused_before + 1),
                reanchor: false,
                settles_dirty: false,
            };
            let released = until_stored("record a rejection", || {
                deps.recorder.send(RecordRetry {
                    retry: retry.clone(),
                    utxo_id: stored.utxo_id,
                    fail_now: false,
                })
            })
            .await;
            match released.flatten() {
                Some(utxo) => deps.pool.do_send(Release(utxo)),
                None => {
                    if let Some(id) = stored.utxo_id {
                        deps.pool.do_send(Forget(id));
                    }
                }
            }
            deps.stats.observe_retry();
            Done::Now
        }
        BroadcastOutcome::Rejected { .. }
        | BroadcastOutcome::Unknown { .. }
        | BroadcastOutcome::RateLimited { .. } => {
            // Input problem or unknown outcome (a 429 is never answered: the
            // limiter waits it out): the UTXO is dirty until the Janitor
            // has asked the node; the job stays `sending` with its stored bytes.
            until_stored("mark dirty", || deps.recorder.send(MarkDirty(fence))).await;
            if let Some(id) = stored.utxo_id {
                deps.pool.do_send(Forget(id));
            }
            Done::Now
        }
    }
}
