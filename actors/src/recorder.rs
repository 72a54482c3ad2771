//! Recorder: group commit for the broadcasters' state changes. Each broadcaster asks
//! for one job's change; the Recorder gathers what arrives within a couple of
//! milliseconds (or 256 changes) and writes each kind in one statement.
//!
//! Two lanes, so that a write-ahead never queues behind an outcome:
//! - **write-ahead** (`sending`), the one record a broadcaster waits for before its
//!   broadcast: up to [`WRITE_AHEAD_IN_FLIGHT`] groups at once. Safe side by side:
//!   each locks its own jobs (`FOR UPDATE`, fenced) and takes UTXOs the pool reserved
//!   for those jobs alone; a stale copy of a job in another group waits for the row
//!   lock and then fails its fence.
//! - **outcomes** (`sent`, retries, failures, dirty UTXOs): one group at a time, since
//!   they count into the same batch rows; groups grow while one is being written.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use tokio::sync::oneshot;

use crate::ports::SpendableUtxo;
use crate::ports::{Fence, OutcomeStore, Retry, Sending, Sent, StoreError};
use crate::stats::names;

/// Longest wait before a partial group is written.
const GATHER: Duration = Duration::from_millis(2);
/// A group this large is written at once.
const GROUP: usize = 256;
/// Write-ahead groups written at the same time (each on its own connection).
pub const WRITE_AHEAD_IN_FLIGHT: usize = 3;

type Reply<T> = oneshot::Sender<Result<T, StoreError>>;

#[derive(Default)]
struct Outcomes {
    sent: Vec<(Sent, String, Reply<Option<SpendableUtxo>>)>,
    retry: Vec<(Retry, Option<i64>, Reply<Option<SpendableUtxo>>)>,
    /// Jobs that fail at once, whatever their attempts (they cannot be built).
    fail: Vec<(Retry, Option<i64>, Reply<Option<SpendableUtxo>>)>,
    dirty: Vec<(Fence, Reply<bool>)>,
}

impl Outcomes {
    fn len(&self) -> usize {
        self.sent.len() + self.retry.len() + self.fail.len() + self.dirty.len()
    }
}

pub struct Recorder {
    store: Arc<dyn OutcomeStore>,
    max_attempts: u32,
    /// Write-ahead records gathering, and the groups of them being written.
    ahead: Vec<(Sending, Reply<bool>)>,
    ahead_scheduled: bool,
    ahead_in_flight: usize,
    /// Outcomes gathering; `busy` while a group of them is being written (the next one
    /// gathers until it is done, so groups grow under load).
    outcomes: Outcomes,
    outcomes_scheduled: bool,
    busy: bool,
}

impl Recorder {
    pub fn new(store: Arc<dyn OutcomeStore>, max_attempts: u32) -> Recorder {
        Recorder {
            store,
            max_attempts,
            ahead: Vec::new(),
            ahead_scheduled: false,
            ahead_in_flight: 0,
            outcomes: Outcomes::default(),
            outcomes_scheduled: false,
            busy: false,
        }
    }

    fn pending(&self) -> usize {
        self.ahead.len() + self.outcomes.len()
    }

    fn schedule_ahead(&mut self, ctx: &mut Context<Self>) {
        if self.ahead.len() >= GROUP {
            self.flush_ahead(ctx);
        } else if !self.ahead_scheduled {
            self.ahead_scheduled = true;
            ctx.run_later(GATHER, |act, ctx| {
                act.ahead_scheduled = false;
                act.flush_ahead(ctx);
            });
        }
    }

    fn schedule_outcomes(&mut self, ctx: &mut Context<Self>) {
        if self.outcomes.len() >= GROUP {
            self.flush_outcomes(ctx);
        } else if !self.outcomes_scheduled {
            self.outcomes_scheduled = true;
            ctx.run_later(GATHER, |act, ctx| {
                act.outcomes_scheduled = false;
                act.flush_outcomes(ctx);
            });
        }
    }

    /// Starts write-ahead groups while a slot is free; a group finishing starts the
    /// next with what gathered meanwhile.
    fn flush_ahead(&mut self, ctx: &mut Context<Self>) {
        while self.ahead_in_flight < WRITE_AHEAD_IN_FLIGHT && !self.ahead.is_empty() {
            let take = self.ahead.len().min(GROUP);
            let group: Vec<_> = self.ahead.drain(..take).collect();
            self.ahead_in_flight += 1;
            let work = write_ahead(self.store.clone(), group);
            ctx.spawn(work.into_actor(self).map(|_, act, ctx| {
                act.ahead_in_flight -= 1;
                act.flush_ahead(ctx);
            }));
        }
    }

    fn flush_outcomes(&mut self, ctx: &mut Context<Self>) {
        if self.busy || self.outcomes.len() == 0 {
            return;
        }
        self.busy = true;
        let groups = std::mem::take(&mut self.outcomes);
        let work = write_outcomes(self.store.clone(), self.max_attempts, groups);
        ctx.spawn(work.into_actor(self).map(|_, act, ctx| {
            act.busy = false;
            act.flush_outcomes(ctx);
        }));
    }
}

/// Writes one group of write-ahead records in one statement.
///
/// One record per job in a statement: the answers are matched by job id, and a stale
/// copy of a job (from a claim taken back and made again) beside the live one would be
/// given the live one's answer — a write-ahead it never made. The later record is
/// answered "again shortly" and joins the next group (the same holds for each kind of
/// outcome below).
fn write_ahead(
    store: Arc<dyn OutcomeStore>,
    group: Vec<(Sending, Reply<bool>)>,
) -> impl std::future::Future<Output = ()> + 'static {
    let group = one_per_job(group, |(s, _)| s.fence.id, |(_, r)| again(r));
    async move {
        let (items, replies): (Vec<_>, Vec<_>) = group.into_iter().unzip();
        match store.record_sending(&items).await {
            Ok(done) => {
                for (item, reply) in items.iter().zip(replies) {
                    let id = item.fence.id;
                    let answer = if done.stored.contains(&id) {
                        Ok(true)
                    } else if done.utxo_taken.contains(&id) {
                        Ok(false)
                    } else {
                        Err(StoreError::Fenced)
                    };
                    let _ = reply.send(answer);
                }
            }
            Err(e) => reply_all(replies, e),
        }
    }
}

/// Writes one group of outcomes, kind after kind.
fn write_outcomes(
    store: Arc<dyn OutcomeStore>,
    max_attempts: u32,
    mut groups: Outcomes,
) -> impl std::future::Future<Output = ()> + 'static {
    groups.sent = one_per_job(groups.sent, |(s, _, _)| s.fence.id, |(_, _, r)| again(r));
    groups.retry = one_per_job(groups.retry, |(s, _, _)| s.fence.id, |(_, _, r)| again(r));
    groups.fail = one_per_job(groups.fail, |(s, _, _)| s.fence.id, |(_, _, r)| again(r));
    groups.dirty = one_per_job(groups.dirty, |(f, _)| f.id, |(_, r)| again(r));
    async move {
        if !groups.sent.is_empty() {
            let mut items = Vec::new();
            let mut waiting = Vec::new();
            for (sent, txid, reply) in groups.sent {
                waiting.push((sent.fence.id, txid, reply));
                items.push(sent);
            }
            match store.record_sent(&items).await {
                Ok(recorded) => {
                    for l in &recorded.latencies {
                        metrics::histogram!(names::JOB_LATENCY).record(l.as_secs_f64());
                    }
                    let mut change: HashMap<&str, SpendableUtxo> = recorded
                        .utxos
                        .iter()
                        .map(|u| (u.txid.as_str(), u.clone()))
                        .collect();
                    for (id, txid, reply) in waiting {
                        let answer = if recorded.ids.contains(&id) {
                            Ok(change.remove(txid.as_str()))
                        } else {
                            Err(StoreError::Fenced)
                        };
                        let _ = reply.send(answer);
                    }
                }
                Err(e) => reply_all(waiting.into_iter().map(|w| w.2).collect(), e),
            }
        }
        for (group, max_attempts) in [(groups.retry, max_attempts), (groups.fail, 0)] {
            if group.is_empty() {
                continue;
            }
            let mut items = Vec::new();
            let mut waiting = Vec::new();
            for (retry, utxo, reply) in group {
                waiting.push((retry.fence.id, utxo, reply));
                items.push(retry);
            }
            match store.record_retry(&items, max_attempts).await {
                Ok(recorded) => {
                    metrics::counter!(names::JOBS_FAILED).increment(recorded.failed as u64);
                    for (id, utxo, reply) in waiting {
                        let released =
                            utxo.and_then(|u| recorded.utxos.iter().find(|r| r.id == u).cloned());
                        let answer = if recorded.ids.contains(&id) {
                            Ok(released)
                        } else {
                            Err(StoreError::Fenced)
                        };
                        let _ = reply.send(answer);
                    }
                }
                Err(e) => reply_all(waiting.into_iter().map(|w| w.2).collect(), e),
            }
        }
        if !groups.dirty.is_empty() {
            let (items, replies): (Vec<_>, Vec<_>) = groups.dirty.into_iter().unzip();
            match store.mark_dirty(&items).await {
                Ok(done) => {
                    for (item, reply) in items.iter().zip(replies) {
                        let _ = reply.send(Ok(done.contains(&item.id)));
                    }
                }
                Err(e) => reply_all(replies, e),
            }
        }
    }
}

/// Keeps the first record of each job; `defer` answers the others.
fn one_per_job<T>(
    items: Vec<T>,
    id: impl Fn(&T) -> crate::ports::JobId,
    defer: impl Fn(T),
) -> Vec<T> {
    let mut seen = std::collections::HashSet::with_capacity(items.len());
    let mut kept = Vec::with_capacity(items.len());
    for item in items {
        if seen.insert(id(&item)) {
            kept.push(item);
        } else {
            defer(item);
        }
    }
    kept
}

/// "Again shortly": the caller retries, and the record joins the next group.
fn again<T>(reply: Reply<T>) {
    let _ = reply.send(Err(StoreError::Unavailable(
        "another record of the same job is in this group; written with the next".into(),
    )));
}

fn reply_all<T>(replies: Vec<Reply<T>>, e: StoreError) {
    for reply in replies {
        let _ = reply.send(Err(e.clone()));
    }
}

fn answer<T: 'static>(
    rx: oneshot::Receiver<Result<T, StoreError>>,
) -> ResponseFuture<Result<T, StoreError>> {
    Box::pin(async move {
        rx.await
            .unwrap_or_else(|_| Err(StoreError::Unavailable("the recorder stopped".into())))
    })
}

impl Actor for Recorder {
    type Context = Context<Self>;

    fn stopping(&mut self, ctx: &mut Context<Self>) -> Running {
        self.flush_ahead(ctx);
        self.flush_outcomes(ctx);
        Running::Stop
    }
}

/// Records waiting for their group (the gathering one; not the one being written).
#[derive(Message)]
#[rtype(result = "usize")]
pub struct Pending;

impl Handler<Pending> for Recorder {
    type Result = usize;

    fn handle(&mut self, _: Pending, _: &mut Context<Self>) -> usize {
        self.pending()
    }
}

/// Write-ahead record of one job. `Ok(false)`: its UTXO was taken (sign again with
/// another); `Err(Fenced)`: the claim is no longer this one's.
#[derive(Message)]
#[rtype(result = "Result<bool, StoreError>")]
pub struct RecordSending(pub Sending);

/// The job was accepted. Answers the change UTXO.
#[derive(Message)]
#[rtype(result = "Result<Option<SpendableUtxo>, StoreError>")]
pub struct RecordSent {
    pub sent: Sent,
    /// The accepted transaction's id.
    pub txid: String,
}

/// A job-side rejection. Answers the job's UTXO if it was released.
#[derive(Message)]
#[rtype(result = "Result<Option<SpendableUtxo>, StoreError>")]
pub struct RecordRetry {
    pub retry: Retry,
    /// The job's UTXO, when it holds one.
    pub utxo_id: Option<i64>,
    /// The job fails whatever its attempts (it cannot be built at all).
    pub fail_now: bool,
}

/// Unknown outcome: the job's UTXO becomes dirty.
#[derive(Message)]
#[rtype(result = "Result<bool, StoreError>")]
pub struct MarkDirty(pub Fence);

impl Handler<RecordSending> for Recorder {
    type Result = ResponseFuture<Result<bool, StoreError>>;

    fn handle(&mut self, msg: RecordSending, ctx: &mut Context<Self>) -> Self::Result {
        let (tx, rx) = oneshot::channel();
        self.ahead.push((msg.0, tx));
        self.schedule_ahead(ctx);
        answer(rx)
    }
}

impl Handler<RecordSent> for Recorder {
    type Result = ResponseFuture<Result<Option<SpendableUtxo>, StoreError>>;

    fn handle(&mut self, msg: RecordSent, ctx: &mut Context<Self>) -> Self::Result {
        let (tx, rx) = oneshot::channel();
        self.outcomes.sent.push((msg.sent, msg.txid, tx));
        self.schedule_outcomes(ctx);
        answer(rx)
    }
}

impl Handler<RecordRetry> for Recorder {
    type Result = ResponseFuture<Result<Option<SpendableUtxo>, StoreError>>;

    fn handle(&mut self, msg: RecordRetry, ctx: &mut Context<Self>) -> Self::Result {
        let (tx, rx) = oneshot::channel();
        let entry = (msg.retry, msg.utxo_id, tx);
        if msg.fail_now {
            self.outcomes.fail.push(entry);
        } else {
            self.outcomes.retry.push(entry);
        }
        self.schedule_outcomes(ctx);
        answer(rx)
    }
}

impl Handler<MarkDirty> for Recorder {
    type Result = ResponseFuture<Result<bool, StoreError>>;

    fn handle(&mut self, msg: MarkDirty, ctx: &mut Context<Self>) -> Self::Result {
        let (tx, rx) = oneshot::channel();
        self.outcomes.dirty.push((msg.0, tx));
        self.schedule_outcomes(ctx);
        answer(rx)
    }
}
