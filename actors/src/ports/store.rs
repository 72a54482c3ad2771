//! The store ports: what the actors need from Postgres, as small traits.

use std::time::Duration;

use async_trait::async_trait;

use super::chain::{SignedTx, SpendableUtxo};
use super::records::*;

/// The claim, as the Collector sees it.
#[async_trait]
pub trait ClaimStore: Send + Sync + 'static {
    /// Claims up to `max` queued jobs whose time has come (highest priority first, then
    /// oldest) into a new batch, numbered 1..=n. `None` when nothing is queued.
    async fn claim_batch(&self, max: u32) -> Result<Option<ClaimedBatch>, StoreError>;
}

/// The outcomes of claimed jobs, as the Recorder sees them. Every method is one round
/// trip for the whole slice it is given, and each returns the ids whose fence held (the
/// others belong to somebody else now and were left alone).
#[async_trait]
pub trait OutcomeStore: Send + Sync + 'static {
    /// Write-ahead: stores signed transactions, moves their jobs to `sending` and their
    /// UTXOs to `spending`. A job whose UTXO was taken meanwhile is left out. Idempotent:
    /// the same record again is accepted.
    async fn record_sending(&self, jobs: &[Sending]) -> Result<SendingRecorded, StoreError>;
    /// Moves jobs to `sent`, their UTXOs to `spent`, and their change into the pool.
    async fn record_sent(&self, jobs: &[Sent]) -> Result<Recorded, StoreError>;
    /// Sends jobs back to `queued` with a backoff, or to `failed` once `max_attempts`
    /// of the job's transactions were refused (0: at once, the job cannot be built).
    /// Their stored transactions go to the job's history; a job keeps its anchor (the
    /// coin every transaction of it spends) unless `reanchor`, or unless it fails
    /// without ever having signed on it.
    async fn record_retry(&self, jobs: &[Retry], max_attempts: u32)
        -> Result<Recorded, StoreError>;
    /// The outcome of these jobs' broadcasts is unknown: their UTXOs are dirty until the
    /// Janitor has asked the node; the jobs stay `sending`.
    async fn mark_dirty(&self, jobs: &[Fence]) -> Result<Vec<JobId>, StoreError>;
    /// Hands claimed jobs that hold no stored transaction back to the queue (shutdown).
    async fn release_claims(&self, jobs: &[Fence]) -> Result<Vec<JobId>, StoreError>;
}

/// The job queue: the claim and the outcomes (what the pipeline is given).
pub trait JobStore: ClaimStore + OutcomeStore {}
impl<T: ClaimStore + OutcomeStore + ?Sized> JobStore for T {}

/// The UTXO pool's table, as the UtxoPool actor sees it.
#[async_trait]
pub trait PoolStore: Send + Sync + 'static {
    /// Spendable UTXOs: available, clean, shorter chains than `max_depth`; at most `limit`.
    async fn load_available(
        &self,
        max_depth: u32,
        limit: u32,
    ) -> Result<Vec<SpendableUtxo>, StoreError>;
    /// Write-ahead for a split of `input`: stores it, `input` → spending, outputs pending.
    async fn store_split(
        &self,
        input: &SpendableUtxo,
        signed: &SignedTx,
        outputs: u32,
        amount: u64,
    ) -> Result<StoredSplit, StoreError>;
    /// The split was accepted: its outputs become available (and are returned).
    async fn split_accepted(&self, split: &StoredSplit) -> Result<Vec<SpendableUtxo>, StoreError>;
    /// The split was refused: outputs dropped, input back (dirty if `input_problem`).
    async fn split_rejected(
        &self,
        split: &StoredSplit,
        reason: &str,
        input_problem: bool,
    ) -> Result<(), StoreError>;
    /// The split's outcome is unknown: input dirty, split stays to be re-sent.
    async fn split_unknown(&self, split: &StoredSplit, reason: &str) -> Result<(), StoreError>;
    /// Splits stored and not yet settled.
    async fn unfinished_splits(&self) -> Result<Vec<StoredSplit>, StoreError>;
}

/// This process's lease, as the Leaser sees it (and the pipeline, at its stop).
#[async_trait]
pub trait LeaseStore: Send + Sync + 'static {
    /// Registers or refreshes this process's lease.
    async fn heartbeat(&self, lease: Duration) -> Result<(), StoreError>;
    /// Marks this process stopped (its lease ends now).
    async fn stop_worker(&self) -> Result<(), StoreError>;
    /// Processes running a pipeline against this database (this one included): those
    /// whose lease is live or ended less than `ended_within` ago. They share the node's
    /// rate limit.
    async fn live_pipelines(&self, ended_within: Duration) -> Result<u32, StoreError>;
}

/// Recovery of claims whose owner died or lost them, as the Rescuer sees it (and `raregen unstick`).
#[async_trait]
pub trait RescueStore: Send + Sync + 'static {
    /// Takes back the claims of processes whose lease ran out: jobs without a stored
    /// transaction go back to the queue; jobs with one wait for `adopt_stuck`.
    async fn reclaim_dead(&self) -> Result<u64, StoreError>;
    /// Jobs with a stored transaction in `sending` (or put back in `processing_batch`
    /// by the batch worker's manual unstick) for longer than `older_than`, or held by a dead
    /// process: adopted by this process and returned for a re-broadcast of the same bytes.
    /// `held`: jobs this process's pipeline holds in memory (a broadcaster is on them,
    /// however long it waits for a slot): never taken from it.
    async fn adopt_stuck(
        &self,
        older_than: Duration,
        limit: u32,
        held: &[JobId],
    ) -> Result<Vec<StuckJob>, StoreError>;
    /// Jobs of this process claimed longer ago than `older_than` that never stored a
    /// transaction and that the pipeline no longer holds (`held`: every job waiting or
    /// in flight in memory): lost, back to the queue. A job that merely waits (for a
    /// slot, a UTXO, a broadcaster) is held, however long it waits.
    async fn requeue_lost(&self, older_than: Duration, held: &[JobId]) -> Result<u64, StoreError>;
}

/// Retention, as the Pruner sees it.
#[async_trait]
pub trait PruneStore: Send + Sync + 'static {
    /// Retention: deletes (or archives) up to `limit` finished jobs whose `keep` has
    /// passed — `sent` and confirmed more than `keep` ago, `failed` more than `keep`
    /// ago — and the batches, splits and spent UTXOs of the same age that nothing
    /// live refers to. Each kind is one statement: a crash between them loses nothing.
    async fn prune(&self, keep: Duration, archive: bool, limit: u32) -> Result<Pruned, StoreError>;
}

/// Dirty UTXOs (a spend whose outcome is unknown), as the DirtySettler sees them.
#[async_trait]
pub trait SettleStore: Send + Sync + 'static {
    /// Dirty UTXOs (their jobs adopted), at most `limit`.
    async fn dirty_utxos(&self, limit: u32) -> Result<Vec<DirtyUtxo>, StoreError>;
    /// The node says the outpoint is unspent and our transaction unknown: clean again,
    /// unless a live job (processing or sending on it) or a split in flight holds it:
    /// then it stays dirty, and `None`.
    async fn utxo_clean(&self, id: i64) -> Result<Option<SpendableUtxo>, StoreError>;
    /// The outpoint was spent by somebody else: gone for good.
    async fn utxo_retire(&self, id: i64) -> Result<(), StoreError>;
    /// A `sending` job whose transaction never settled (the Janitor gave up on it):
    /// `failed` with `reason`, its stored transaction kept for the record. Its coin,
    /// when the node says it is `unspent`, stays the failed job's anchor (reserved to
    /// it, never another job's: a copy of the job's transaction may still be mined);
    /// otherwise it is retired.
    async fn fail_unsettled(
        &self,
        job: Fence,
        reason: &str,
        unspent: bool,
    ) -> Result<(), StoreError>;
    /// The job's earlier transactions (refused once, kept in its history), oldest first.
    async fn earlier_transactions(&self, job: JobId) -> Result<Vec<EarlierTx>, StoreError>;
    /// One of the job's earlier transactions turned out to be on the node after all: it
    /// becomes the job's transaction again (the one on the row goes to the history), so
    /// that the job is recorded `sent` with the transaction that can be mined. Fenced;
    /// `false` when the fence no longer holds.
    async fn take_up_earlier(&self, job: Fence, txid: &str) -> Result<bool, StoreError>;
}

/// Sent transactions and their confirmations, as the ConfirmationWatcher sees them.
#[async_trait]
pub trait WatchStore: Send + Sync + 'static {
    /// Sent transactions (jobs and splits) with no confirmation yet, parents first.
    async fn unconfirmed(
        &self,
        limit: u32,
        settled: Duration,
    ) -> Result<Vec<Unconfirmed>, StoreError>;
    /// Records confirmations: jobs' and splits' `confirmed_at`, outputs' depth 0.
    async fn record_confirmations(&self, confirmed: &[Confirmation]) -> Result<(), StoreError>;
    /// A sent job whose transaction the node accepted and then never held (and whose
    /// coin the node says is unspent): `failed` with `reason`, and with it every job
    /// whose transaction spends its outputs, down the lane (none of them can be
    /// mined); their outputs and the first coin leave the pool (retired). Returns the
    /// jobs failed.
    async fn fail_unheld(&self, txid: &str, reason: &str) -> Result<u64, StoreError>;
    /// A `sent` job whose transaction `txid` the node does not hold, and whose anchor a
    /// confirmed transaction `spent_by` that is none of the job's own spent: none of the
    /// job's transactions can ever be mined, nor any that spends their outputs. The job
    /// and every job down its lane (sent or sending on its outputs, or waiting with one
    /// of them as its anchor) go back to the queue without an anchor, under a new
    /// fencing token; their transactions are kept in their history; the lane's outputs
    /// leave the pool; the first coin is recorded spent by `spent_by`. A job adopted
    /// from the batch worker in flight fails instead (the spend may be the batch worker's own
    /// transaction of it). Returns the txids set aside (the lane's, root first).
    async fn reanchor_sent(
        &self,
        txid: &str,
        spent_by: &str,
        reason: &str,
    ) -> Result<Vec<String>, StoreError>;
    /// The earlier transactions of the `sent` job whose transaction is `txid`.
    async fn earlier_of_sent(&self, txid: &str) -> Result<Vec<EarlierTx>, StoreError>;
    /// A `sent` job's transaction `txid` is not on the node and its earlier transaction
    /// `earlier` is (a node that answered before it verified dropped the replacement
    /// for the copy it already held): the job is recorded with `earlier`, whose change
    /// (`change`: vout, sats) replaces the other's. A job that signed more than once
    /// has its change kept out of the pool (`pending`) until its transaction confirms,
    /// so no other job ever builds on a change that may vanish. `false` when no
    /// `sent` job has `txid`.
    async fn switch_sent(
        &self,
        txid: &str,
        earlier: &str,
        change: Option<(u32, u64)>,
    ) -> Result<bool, StoreError>;
}

/// Everything the maintenance services need: what the pipeline is given, and hands each
/// service as the one port it uses.
pub trait JanitorStore: LeaseStore + RescueStore + PruneStore + SettleStore + WatchStore {}
impl<T: LeaseStore + RescueStore + PruneStore + SettleStore + WatchStore + ?Sized> JanitorStore
    for T
{
}

/// Wakes the single-mode Collector when jobs are inserted (Postgres `LISTEN/NOTIFY`).
#[async_trait]
pub trait JobsNotifier: Send + Sync + 'static {
    /// Returns when a notification arrives (`true`), or after `timeout` (`false`).
    async fn wait(&self, timeout: Duration) -> bool;
}
