//! In-memory fakes of the ports, for message-level tests of one actor at a time: no
//! Postgres, no node, milliseconds per test.
//!
//! Each fake keeps what it was asked (to assert on) and answers what the test set up.
//! [`MemStore`] implements every store port over one shared state, with the few rules
//! the actors rely on (a claim hands a job out once; a fence holds while the job's
//! attempt matches; a spent coin leaves the pool); it is not a model of Postgres — the
//! store's own rules are tested against the real database in the `raregen` crate.
//! [`FakeNode`] answers broadcasts from a script (then `Accepted`) and records each one
//! with its time; [`FakeSigner`] "signs" deterministically, so a txid names its coin,
//! payload and replacement count.

#![allow(dead_code)] // each test module uses its own part of the fakes

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use actix::prelude::*;
use async_trait::async_trait;
use chrono::Utc;
use raregen_actors::batch::Batch;
use raregen_actors::broadcaster::Deps;
use raregen_actors::ports::*;
use raregen_actors::rate_limit::TokenBucket;
use raregen_actors::recorder::Recorder;
use raregen_actors::stats::Stats;
use raregen_actors::utxo_pool::{PoolConfig, UtxoPool};
use tokio::time::Instant;

/// Runs `f` inside an actix system (actors need one), and returns what it returns.
pub fn in_system<F, Fut, T>(f: F) -> T
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = T>,
{
    actix::System::new().block_on(f())
}

/// Waits (up to 10 s) until `done` holds, polling every few milliseconds.
pub async fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let until = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(Instant::now() < until, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// A claimable job: `payload` is `job-{id}`.
pub fn job(id: JobId) -> ClaimedJob {
    ClaimedJob {
        id,
        batch_seq: 0,
        payload: format!("job-{id}").into_bytes(),
        attempts: 1,
        stored_tx: None,
        anchor: None,
    }
}

/// A pool coin of `sats`.
pub fn coin(id: i64, sats: u64) -> SpendableUtxo {
    SpendableUtxo {
        id,
        txid: format!("{id:064x}"),
        vout: 0,
        satoshis: sats,
        unconfirmed_depth: 0,
    }
}

/// An earlier transaction of a job.
pub fn earlier_tx(txid: &str, raw_tx: &[u8]) -> EarlierTx {
    EarlierTx {
        txid: txid.to_owned(),
        raw_tx: raw_tx.to_vec(),
    }
}

pub fn fence(id: JobId, attempts: i32) -> Fence {
    Fence { id, attempts }
}

/// A store error for a database that is away.
pub fn away() -> StoreError {
    StoreError::Unavailable("connection refused (fake)".into())
}

/// What [`MemStore`] holds and records. Tests read and set it through
/// [`MemStore::state`].
#[derive(Default)]
pub struct StoreState {
    // The queue.
    pub queued: VecDeque<ClaimedJob>,
    pub next_batch: BatchId,
    /// Sizes of the claims that returned jobs, in order; `claim_calls` counts all.
    pub claims: Vec<usize>,
    pub claim_calls: usize,
    /// Current attempt of each claimed job (the fence).
    pub attempts: HashMap<JobId, i32>,
    // Outcomes.
    pub sending: Vec<Sending>,
    pub sent: Vec<Sent>,
    pub retries: Vec<Retry>,
    pub dirty: Vec<Fence>,
    pub released: Vec<Fence>,
    /// Coins a write-ahead finds taken (`utxo_taken`).
    pub taken_coins: HashSet<i64>,
    /// The group sizes of each outcome call (how the Recorder batches).
    pub outcome_calls: Vec<(&'static str, usize)>,
    pub next_coin: i64,
    // The pool.
    pub available: Vec<SpendableUtxo>,
    pub load_calls: usize,
    pub splits: Vec<StoredSplit>,
    pub split_outcomes: Vec<(i64, &'static str)>,
    // Leases.
    pub heartbeats: usize,
    pub stopped: bool,
    pub live_pipelines: u32,
    // Rescue.
    pub dead_claims: u64,
    pub stuck: Vec<StuckJob>,
    pub adopt_held: Vec<Vec<JobId>>,
    pub lost: u64,
    pub requeue_held: Vec<Vec<JobId>>,
    // Retention: one answer per call, then nothing left.
    pub prune_answers: VecDeque<Pruned>,
    pub prune_calls: usize,
    // Dirty coins.
    pub dirty_coins: Vec<DirtyUtxo>,
    pub cleaned: Vec<i64>,
    pub retired: Vec<i64>,
    pub unsettled: Vec<(Fence, String, bool)>,
    pub earlier: HashMap<JobId, Vec<EarlierTx>>,
    pub taken_up: Vec<(Fence, String)>,
    // Sent, waiting for a block.
    pub unconfirmed: Vec<Unconfirmed>,
    pub confirmations: Vec<Confirmation>,
    pub unheld: Vec<(String, String)>,
    pub reanchored: Vec<(String, String)>,
    pub switched: Vec<(String, String)>,
    pub earlier_of_sent: HashMap<String, Vec<EarlierTx>>,
    /// Calls that fail with [`away`] before answering again (any method).
    pub fail_next: u32,
}

/// Every store port, in memory.
#[derive(Clone, Default)]
pub struct MemStore(Arc<Mutex<StoreState>>);

impl MemStore {
    pub fn new() -> MemStore {
        MemStore::default()
    }

    pub fn state(&self) -> MutexGuard<'_, StoreState> {
        self.0.lock().unwrap()
    }

    /// Queues jobs `ids` for claiming.
    pub fn queue(&self, ids: impl IntoIterator<Item = JobId>) {
        let mut s = self.state();
        for id in ids {
            s.queued.push_back(job(id));
        }
    }

    /// Coins the pool loads.
    pub fn add_coins(&self, coins: impl IntoIterator<Item = SpendableUtxo>) {
        self.state().available.extend(coins);
    }

    fn gate(&self) -> Result<MutexGuard<'_, StoreState>, StoreError> {
        let mut s = self.state();
        if s.fail_next > 0 {
            s.fail_next -= 1;
            return Err(away());
        }
        Ok(s)
    }

    fn holds(s: &StoreState, f: &Fence) -> bool {
        s.attempts.get(&f.id) == Some(&f.attempts)
    }
}

#[async_trait]
impl ClaimStore for MemStore {
    async fn claim_batch(&self, max: u32) -> Result<Option<ClaimedBatch>, StoreError> {
        let mut s = self.gate()?;
        s.claim_calls += 1;
        let n = (max as usize).min(s.queued.len());
        if n == 0 {
            return Ok(None);
        }
        s.next_batch += 1;
        let id = s.next_batch;
        let mut jobs: Vec<ClaimedJob> = s.queued.drain(..n).collect();
        for (i, j) in jobs.iter_mut().enumerate() {
            j.batch_seq = i as i32 + 1;
            s.attempts.insert(j.id, j.attempts);
        }
        s.claims.push(n);
        Ok(Some(ClaimedBatch {
            id,
            created_at: Utc::now(),
            jobs,
        }))
    }
}

#[async_trait]
impl OutcomeStore for MemStore {
    async fn record_sending(&self, jobs: &[Sending]) -> Result<SendingRecorded, StoreError> {
        let mut s = self.gate()?;
        s.outcome_calls.push(("sending", jobs.len()));
        let mut out = SendingRecorded::default();
        for j in jobs {
            if !Self::holds(&s, &j.fence) {
                continue;
            }
            if s.taken_coins.contains(&j.utxo_id) {
                out.utxo_taken.push(j.fence.id);
            } else {
                out.stored.push(j.fence.id);
                s.sending.push(j.clone());
            }
        }
        Ok(out)
    }

    async fn record_sent(&self, jobs: &[Sent]) -> Result<Recorded, StoreError> {
        let mut s = self.gate()?;
        s.outcome_calls.push(("sent", jobs.len()));
        let mut out = Recorded::default();
        for j in jobs {
            if !Self::holds(&s, &j.fence) {
                continue;
            }
            out.ids.push(j.fence.id);
            if let Some((vout, sats)) = j.change {
                s.next_coin += 1;
                let id = 1_000_000 + s.next_coin;
                // The change is an output of the job's stored transaction.
                let txid = s
                    .sending
                    .iter()
                    .rev()
                    .find(|w| w.fence.id == j.fence.id)
                    .map_or_else(|| format!("change-of-{}", j.fence.id), |w| w.txid.clone());
                out.utxos.push(SpendableUtxo {
                    id,
                    txid,
                    vout,
                    satoshis: sats,
                    unconfirmed_depth: 1,
                });
            }
            s.sent.push(j.clone());
        }
        Ok(out)
    }

    async fn record_retry(
        &self,
        jobs: &[Retry],
        max_attempts: u32,
    ) -> Result<Recorded, StoreError> {
        let mut s = self.gate()?;
        s.outcome_calls.push(("retry", jobs.len()));
        let mut out = Recorded::default();
        for j in jobs {
            if !Self::holds(&s, &j.fence) {
                continue;
            }
            out.ids.push(j.fence.id);
            if max_attempts == 0 || j.fence.attempts as u32 >= max_attempts {
                out.failed += 1;
            }
            s.retries.push(j.clone());
        }
        Ok(out)
    }

    async fn mark_dirty(&self, jobs: &[Fence]) -> Result<Vec<JobId>, StoreError> {
        let mut s = self.gate()?;
        s.outcome_calls.push(("dirty", jobs.len()));
        let held: Vec<Fence> = jobs
            .iter()
            .filter(|f| Self::holds(&s, f))
            .copied()
            .collect();
        s.dirty.extend(held.iter().copied());
        Ok(held.iter().map(|f| f.id).collect())
    }

    async fn release_claims(&self, jobs: &[Fence]) -> Result<Vec<JobId>, StoreError> {
        let mut s = self.gate()?;
        let held: Vec<Fence> = jobs
            .iter()
            .filter(|f| Self::holds(&s, f))
            .copied()
            .collect();
        s.released.extend(held.iter().copied());
        Ok(held.iter().map(|f| f.id).collect())
    }
}

#[async_trait]
impl PoolStore for MemStore {
    async fn load_available(
        &self,
        max_depth: u32,
        limit: u32,
    ) -> Result<Vec<SpendableUtxo>, StoreError> {
        let mut s = self.gate()?;
        s.load_calls += 1;
        Ok(s.available
            .iter()
            .filter(|u| u.unconfirmed_depth < max_depth)
            .take(limit as usize)
            .cloned()
            .collect())
    }

    async fn store_split(
        &self,
        input: &SpendableUtxo,
        signed: &SignedTx,
        _outputs: u32,
        _amount: u64,
    ) -> Result<StoredSplit, StoreError> {
        let mut s = self.gate()?;
        let split = StoredSplit {
            id: s.splits.len() as i64 + 1,
            txid: signed.txid.clone(),
            raw_tx: signed.raw_tx.clone(),
            input_utxo_id: input.id,
        };
        s.available.retain(|u| u.id != input.id);
        s.splits.push(split.clone());
        Ok(split)
    }

    async fn split_accepted(&self, split: &StoredSplit) -> Result<Vec<SpendableUtxo>, StoreError> {
        let mut s = self.gate()?;
        s.split_outcomes.push((split.id, "accepted"));
        let outs: Vec<SpendableUtxo> = (0..4)
            .map(|i| SpendableUtxo {
                id: 2_000_000 + split.id * 100 + i,
                txid: split.txid.clone(),
                vout: i as u32,
                satoshis: 10_000,
                unconfirmed_depth: 1,
            })
            .collect();
        s.available.extend(outs.iter().cloned());
        Ok(outs)
    }

    async fn split_rejected(
        &self,
        split: &StoredSplit,
        _reason: &str,
        _input_problem: bool,
    ) -> Result<(), StoreError> {
        self.gate()?.split_outcomes.push((split.id, "rejected"));
        Ok(())
    }

    async fn split_unknown(&self, split: &StoredSplit, _reason: &str) -> Result<(), StoreError> {
        self.gate()?.split_outcomes.push((split.id, "unknown"));
        Ok(())
    }

    async fn unfinished_splits(&self) -> Result<Vec<StoredSplit>, StoreError> {
        let s = self.gate()?;
        let done: HashSet<i64> = s.split_outcomes.iter().map(|(id, _)| *id).collect();
        Ok(s.splits
            .iter()
            .filter(|x| !done.contains(&x.id))
            .cloned()
            .collect())
    }
}

#[async_trait]
impl LeaseStore for MemStore {
    async fn heartbeat(&self, _lease: Duration) -> Result<(), StoreError> {
        self.gate()?.heartbeats += 1;
        Ok(())
    }

    async fn stop_worker(&self) -> Result<(), StoreError> {
        self.gate()?.stopped = true;
        Ok(())
    }

    async fn live_pipelines(&self, _ended_within: Duration) -> Result<u32, StoreError> {
        Ok(self.gate()?.live_pipelines.max(1))
    }
}

#[async_trait]
impl RescueStore for MemStore {
    async fn reclaim_dead(&self) -> Result<u64, StoreError> {
        Ok(std::mem::take(&mut self.gate()?.dead_claims))
    }

    async fn adopt_stuck(
        &self,
        _older_than: Duration,
        limit: u32,
        held: &[JobId],
    ) -> Result<Vec<StuckJob>, StoreError> {
        let mut s = self.gate()?;
        s.adopt_held.push(held.to_vec());
        let n = (limit as usize).min(s.stuck.len());
        let mut adopted: Vec<StuckJob> = s.stuck.drain(..n).collect();
        adopted.retain(|j| !held.contains(&j.fence.id));
        for j in &mut adopted {
            j.fence.attempts += 1;
            s.attempts.insert(j.fence.id, j.fence.attempts);
        }
        Ok(adopted)
    }

    async fn requeue_lost(&self, _older_than: Duration, held: &[JobId]) -> Result<u64, StoreError> {
        let mut s = self.gate()?;
        s.requeue_held.push(held.to_vec());
        Ok(std::mem::take(&mut s.lost))
    }
}

#[async_trait]
impl PruneStore for MemStore {
    async fn prune(
        &self,
        _keep: Duration,
        _archive: bool,
        _limit: u32,
    ) -> Result<Pruned, StoreError> {
        let mut s = self.gate()?;
        s.prune_calls += 1;
        Ok(s.prune_answers.pop_front().unwrap_or_default())
    }
}

#[async_trait]
impl SettleStore for MemStore {
    async fn dirty_utxos(&self, limit: u32) -> Result<Vec<DirtyUtxo>, StoreError> {
        let mut s = self.gate()?;
        let n = (limit as usize).min(s.dirty_coins.len());
        let mut out: Vec<DirtyUtxo> = s.dirty_coins.drain(..n).collect();
        for d in &mut out {
            if let Some(j) = &mut d.job {
                j.fence.attempts += 1;
                s.attempts.insert(j.fence.id, j.fence.attempts);
            }
        }
        Ok(out)
    }

    async fn utxo_clean(&self, id: i64) -> Result<Option<SpendableUtxo>, StoreError> {
        self.gate()?.cleaned.push(id);
        Ok(Some(coin(id, 10_000)))
    }

    async fn utxo_retire(&self, id: i64) -> Result<(), StoreError> {
        self.gate()?.retired.push(id);
        Ok(())
    }

    async fn fail_unsettled(
        &self,
        job: Fence,
        reason: &str,
        unspent: bool,
    ) -> Result<(), StoreError> {
        self.gate()?
            .unsettled
            .push((job, reason.to_owned(), unspent));
        Ok(())
    }

    async fn earlier_transactions(&self, job: JobId) -> Result<Vec<EarlierTx>, StoreError> {
        Ok(self.gate()?.earlier.get(&job).cloned().unwrap_or_default())
    }

    async fn take_up_earlier(&self, job: Fence, txid: &str) -> Result<bool, StoreError> {
        let mut s = self.gate()?;
        let holds = Self::holds(&s, &job);
        if holds {
            s.taken_up.push((job, txid.to_owned()));
        }
        Ok(holds)
    }
}

#[async_trait]
impl WatchStore for MemStore {
    async fn unconfirmed(
        &self,
        limit: u32,
        _settled: Duration,
    ) -> Result<Vec<Unconfirmed>, StoreError> {
        let s = self.gate()?;
        let confirmed: HashSet<&str> = s.confirmations.iter().map(|c| c.txid.as_str()).collect();
        Ok(s.unconfirmed
            .iter()
            .filter(|u| !confirmed.contains(u.txid.as_str()))
            .take(limit as usize)
            .cloned()
            .collect())
    }

    async fn record_confirmations(&self, confirmed: &[Confirmation]) -> Result<(), StoreError> {
        self.gate()?.confirmations.extend(confirmed.iter().cloned());
        Ok(())
    }

    async fn fail_unheld(&self, txid: &str, reason: &str) -> Result<u64, StoreError> {
        let mut s = self.gate()?;
        s.unheld.push((txid.to_owned(), reason.to_owned()));
        s.unconfirmed.retain(|u| u.txid != txid);
        Ok(1)
    }

    async fn reanchor_sent(
        &self,
        txid: &str,
        spent_by: &str,
        _reason: &str,
    ) -> Result<Vec<String>, StoreError> {
        let mut s = self.gate()?;
        s.reanchored.push((txid.to_owned(), spent_by.to_owned()));
        s.unconfirmed.retain(|u| u.txid != txid);
        Ok(vec![txid.to_owned()])
    }

    async fn earlier_of_sent(&self, txid: &str) -> Result<Vec<EarlierTx>, StoreError> {
        Ok(self
            .gate()?
            .earlier_of_sent
            .get(txid)
            .cloned()
            .unwrap_or_default())
    }

    async fn switch_sent(
        &self,
        txid: &str,
        earlier: &str,
        _change: Option<(u32, u64)>,
    ) -> Result<bool, StoreError> {
        let mut s = self.gate()?;
        s.switched.push((txid.to_owned(), earlier.to_owned()));
        Ok(true)
    }
}

/// What [`FakeNode`] answers and records.
#[derive(Default)]
pub struct NodeState {
    /// Answers to the next broadcasts, in order; then `Accepted`.
    pub script: VecDeque<BroadcastOutcome>,
    /// Every broadcast: the raw bytes and when it reached the node.
    pub broadcasts: Vec<(Vec<u8>, Instant)>,
    /// Each broadcast takes this long before it answers.
    pub delay: Duration,
    /// What `tx_presence` says per txid (default: unknown).
    pub presence: HashMap<String, TxPresence>,
    /// What `outpoint` says per (txid, vout) (default: unspent, 10,000 sats).
    pub outpoints: HashMap<(String, u32), OutpointState>,
    /// What `spender` says per (txid, vout).
    pub spenders: HashMap<(String, u32), String>,
    /// Queries that fail as if the node were away, before answering again.
    pub away_for: u32,
    pub presence_asks: Vec<String>,
    /// Every `spender` asked (a block scan on a real node).
    pub spender_asks: Vec<(String, u32)>,
}

/// The raw bytes of every broadcast `node` saw, in order.
pub fn broadcast_bytes(node: &FakeNode) -> Vec<Vec<u8>> {
    node.state()
        .broadcasts
        .iter()
        .map(|(raw, _)| raw.clone())
        .collect()
}

/// A node that answers from a script.
#[derive(Clone, Default)]
pub struct FakeNode(Arc<Mutex<NodeState>>);

impl FakeNode {
    pub fn new() -> FakeNode {
        FakeNode::default()
    }

    pub fn state(&self) -> MutexGuard<'_, NodeState> {
        self.0.lock().unwrap()
    }

    /// The next broadcasts answer these, in order.
    pub fn answer(&self, outcomes: impl IntoIterator<Item = BroadcastOutcome>) {
        self.state().script.extend(outcomes);
    }

    pub fn broadcasts(&self) -> usize {
        self.state().broadcasts.len()
    }

    /// The txids broadcast, in order (as [`FakeSigner`] writes them into the bytes).
    pub fn broadcast_txids(&self) -> Vec<String> {
        self.state()
            .broadcasts
            .iter()
            .map(|(raw, _)| FakeSigner::txid_of(raw))
            .collect()
    }

    fn query(&self) -> Result<MutexGuard<'_, NodeState>, NodeError> {
        let mut s = self.state();
        if s.away_for > 0 {
            s.away_for -= 1;
            return Err(NodeError::Unavailable("connection refused (fake)".into()));
        }
        Ok(s)
    }
}

#[async_trait]
impl Node for FakeNode {
    async fn broadcast(&self, raw_tx: &[u8]) -> BroadcastOutcome {
        let delay = {
            let mut s = self.state();
            s.broadcasts.push((raw_tx.to_vec(), Instant::now()));
            s.delay
        };
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        self.state()
            .script
            .pop_front()
            .unwrap_or(BroadcastOutcome::Accepted)
    }

    async fn tx_presence(&self, txid: &str) -> Result<TxPresence, NodeError> {
        let mut s = self.query()?;
        s.presence_asks.push(txid.to_owned());
        Ok(s.presence.get(txid).cloned().unwrap_or(TxPresence::Unknown))
    }

    async fn outpoint(&self, txid: &str, vout: u32) -> Result<OutpointState, NodeError> {
        let s = self.query()?;
        Ok(s.outpoints
            .get(&(txid.to_owned(), vout))
            .cloned()
            .unwrap_or(OutpointState::Unspent {
                value: 10_000,
                script_pubkey: vec![0x51],
                confirmations: 1,
                coinbase: false,
            }))
    }

    async fn spender(&self, txid: &str, vout: u32) -> Result<Option<String>, NodeError> {
        let mut s = self.query()?;
        s.spender_asks.push((txid.to_owned(), vout));
        Ok(s.spenders.get(&(txid.to_owned(), vout)).cloned())
    }
}

/// Signs deterministically: the raw bytes are `txid|payload`, and the txid names the
/// coin, the payload and the replacement count, so two signatures of one job on one
/// coin differ only when a replacement was asked for.
#[derive(Clone, Copy, Default)]
pub struct FakeSigner;

impl FakeSigner {
    pub const FEE: u64 = 200;

    pub fn txid_for(utxo: &SpendableUtxo, payload: &[u8], replacing: u32) -> String {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in utxo
            .txid
            .bytes()
            .chain(utxo.vout.to_le_bytes())
            .chain(payload.iter().copied())
        {
            h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
        format!("{h:016x}{:016x}{:032x}", utxo.id, replacing)
    }

    /// The txid written into bytes this signer made.
    pub fn txid_of(raw: &[u8]) -> String {
        String::from_utf8_lossy(&raw[..64.min(raw.len())]).into_owned()
    }
}

impl Signer for FakeSigner {
    fn publish(
        &self,
        utxo: &SpendableUtxo,
        payload: &[u8],
        replacing: u32,
    ) -> Result<SignedTx, SignError> {
        let fee = Self::FEE + u64::from(replacing) * 100;
        if utxo.satoshis < fee + self.dust_limit() {
            return Err(SignError::InsufficientFunds {
                have: utxo.satoshis,
                need: fee + self.dust_limit(),
            });
        }
        let txid = Self::txid_for(utxo, payload, replacing);
        let mut raw = txid.clone().into_bytes();
        raw.push(b'|');
        raw.extend_from_slice(payload);
        Ok(SignedTx {
            txid,
            raw_tx: raw,
            fee,
            vsize: 100,
            change: Some((1, utxo.satoshis - fee)),
        })
    }

    fn split(
        &self,
        utxo: &SpendableUtxo,
        outputs: u32,
        amount: u64,
    ) -> Result<SignedTx, SignError> {
        let need = u64::from(outputs) * amount + Self::FEE;
        if utxo.satoshis < need {
            return Err(SignError::InsufficientFunds {
                have: utxo.satoshis,
                need,
            });
        }
        let txid = Self::txid_for(utxo, b"split", outputs);
        Ok(SignedTx {
            raw_tx: txid.clone().into_bytes(),
            txid,
            fee: Self::FEE,
            vsize: 100 + 34 * u64::from(outputs),
            change: Some((outputs, utxo.satoshis - need)),
        })
    }

    fn dust_limit(&self) -> u64 {
        546
    }

    fn change_of(&self, _raw_tx: &[u8]) -> Option<(u32, u64)> {
        Some((1, 1_000))
    }
}

/// The actors a Broadcaster (or a maintenance service's re-send) works with, wired to
/// the fakes: a TokenBucket of `max` per `per`, a pool holding what `store` has, a
/// Recorder on `store`.
pub struct Wired {
    pub deps: Arc<Deps>,
    pub store: MemStore,
    pub node: FakeNode,
}

pub fn pool_config() -> PoolConfig {
    PoolConfig {
        min_available: 0,
        split_outputs: 4,
        split_amount: 10_000,
        reservation_timeout: Duration::from_secs(60),
        max_chain_depth: 25,
    }
}

/// Starts the pipeline's inner actors on the fakes (call inside [`in_system`]).
pub fn wire(store: MemStore, node: FakeNode, max: u32, per: Duration, workers: usize) -> Wired {
    let tokens = TokenBucket::new(max, per).start();
    let signer: Arc<dyn Signer> = Arc::new(FakeSigner);
    let pool = UtxoPool::new(
        pool_config(),
        Arc::new(store.clone()),
        signer.clone(),
        Arc::new(node.clone()),
        tokens.clone(),
    )
    .start();
    let recorder = Recorder::new(Arc::new(store.clone()), 5).start();
    let deps = Arc::new(Deps {
        batch: Batch::default().start(),
        pool,
        tokens,
        recorder,
        signer,
        node: Arc::new(node.clone()),
        stats: Arc::new(Stats::default()),
        broadcasts: Arc::new(tokio::sync::Semaphore::new(workers)),
    });
    Wired { deps, store, node }
}
