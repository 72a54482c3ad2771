//! Janitor: every `interval`, recovers what is stuck (the lease is the Leaser's, on its
//! own timer, so that a long round never lets it lapse). Jobs held by dead processes are taken back; jobs in `sending` for longer than
//! `stuck_after` are re-broadcast from their stored bytes (never re-signed); dirty UTXOs
//! are settled by asking the node; sent transactions are checked for presence and
//! confirmations. Every state has a timeout owned here.

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use futures::StreamExt;

use crate::broadcaster::Deps;
use crate::chain::{BroadcastOutcome, OutpointState, TxPresence};
use crate::ports::{Confirmation, DirtyUtxo, JanitorStore, PoolStore, StoredSplit};
use crate::recorder::{MarkDirty, RecordRetry, RecordSent};
use crate::utxo_pool::Add;

#[derive(Debug, Clone)]
pub struct JanitorConfig {
    pub interval: Duration,
    pub stuck_after: Duration,
    /// Confirmations a foreign spend of a job's anchor needs before the job re-anchors.
    pub reanchor_confirmations: u32,
}

/// Re-sends of a transaction the node said it accepted and then did not hold, before
/// its job is given up as failed (the node refused it after answering).
pub const MAX_UNHELD_RESENDS: u32 = 5;

/// ... and before it has been missing for this many `janitor.stuck_after`: a node that
/// answers before it verifies (bcoin) may verify a minute later under load, and a job
/// given up on while its transaction is still in the node's queue would be published
/// while recorded `failed`.
pub const UNHELD_GIVE_UP_AFTER: u32 = 10;

type Unheld = std::collections::HashMap<String, (u32, tokio::time::Instant)>;

/// Rounds a dirty UTXO's job may stay unsettled (the node has neither its transaction
/// nor takes the same bytes again) before the job is given up as failed. Never signed
/// again: a first copy whose outcome was unknown may still arrive somewhere.
pub const MAX_UNSETTLED_ROUNDS: u32 = 10;

/// What the Janitor remembers between rounds (lost on a restart: the counts start
/// again, so a give-up comes later, never sooner).
#[derive(Default)]
struct Memory {
    /// Per transaction: re-sends the node accepted without then holding it, and since
    /// when it has been missing.
    unheld: std::sync::Mutex<Unheld>,
    /// Per dirty UTXO and the transaction of ours spending it: rounds it stayed
    /// unsettled (a coin released and spent again starts from zero).
    unsettled: std::sync::Mutex<std::collections::HashMap<(i64, String), u32>>,
}

pub struct Janitor {
    config: JanitorConfig,
    memory: Arc<Memory>,
    store: Arc<dyn JanitorStore>,
    pool_store: Arc<dyn PoolStore>,
    deps: Arc<Deps>,
    running: bool,
    rounds: u64,
}

impl Janitor {
    pub fn new(
        config: JanitorConfig,
        store: Arc<dyn JanitorStore>,
        pool_store: Arc<dyn PoolStore>,
        deps: Arc<Deps>,
    ) -> Janitor {
        Janitor {
            config,
            memory: Arc::default(),
            store,
            pool_store,
            deps,
            running: false,
            rounds: 0,
        }
    }
}

impl Actor for Janitor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.notify(RunNow);
        ctx.run_interval(self.config.interval, |_, ctx| ctx.notify(RunNow));
    }
}

/// Run one round now (also what the interval sends).
#[derive(Message)]
#[rtype(result = "()")]
pub struct RunNow;

/// Rounds completed so far.
#[derive(Message)]
#[rtype(result = "u64")]
pub struct Rounds;

impl Handler<RunNow> for Janitor {
    type Result = ();

    fn handle(&mut self, _: RunNow, ctx: &mut Context<Self>) {
        if self.running {
            return;
        }
        self.running = true;
        let store = self.store.clone();
        let pool_store = self.pool_store.clone();
        let deps = self.deps.clone();
        let config = self.config.clone();
        let memory = self.memory.clone();
        ctx.spawn(
            async move { round(&*store, &*pool_store, &deps, &config, &memory).await }
                .into_actor(self)
                .map(|_, act, _| {
                    act.running = false;
                    act.rounds += 1;
                }),
        );
    }
}

impl Handler<Rounds> for Janitor {
    type Result = u64;

    fn handle(&mut self, _: Rounds, _: &mut Context<Self>) -> u64 {
        self.rounds
    }
}

async fn round(
    store: &dyn JanitorStore,
    pool_store: &dyn PoolStore,
    deps: &Deps,
    config: &JanitorConfig,
    memory: &Memory,
) {
    match store.reclaim_dead().await {
        Ok(0) => {}
        Ok(n) => tracing::warn!(jobs = n, "janitor: took back the claims of dead processes"),
        Err(e) => tracing::warn!(error = %e, "janitor: reclaim failed"),
    }
    // What the pipeline holds in memory is not lost, however long it has waited (for a
    // slot under throttling, for a UTXO): asked first, so that a job handed out after
    // this answer is one claimed before it, still held.
    let held = match deps.batch.send(crate::batch::Held).await {
        Ok(held) => Some(held),
        Err(e) => {
            tracing::warn!(error = %e, "janitor: the Batch actor did not answer; nothing requeued");
            None
        }
    };
    let lost = match &held {
        Some(held) => store.requeue_lost(config.stuck_after, held).await,
        None => Ok(0),
    };
    match lost {
        Ok(0) => {}
        Ok(n) => tracing::warn!(
            jobs = n,
            "janitor: requeued claimed jobs that never stored a transaction"
        ),
        Err(e) => tracing::warn!(error = %e, "janitor: requeue failed"),
    }
    // Stuck in `sending` (or taken over): the same bytes again.
    // Without the Batch actor's answer nothing of ours is taken from a broadcaster.
    let adopted = match &held {
        Some(held) => store.adopt_stuck(config.stuck_after, 1_000, held).await,
        None => Ok(Vec::new()),
    };
    match adopted {
        Ok(stuck) => {
            if !stuck.is_empty() {
                tracing::warn!(
                    jobs = stuck.len(),
                    "janitor: re-broadcasting stuck transactions"
                );
            }
            for job in stuck {
                resend_same(deps, &job).await;
            }
        }
        Err(e) => tracing::warn!(error = %e, "janitor: stuck jobs not read"),
    }
    match store.dirty_utxos(1_000).await {
        Ok(dirty) => {
            let waiting = dirty.len();
            {
                // Forget the UTXOs that are no longer dirty.
                let ids: std::collections::HashSet<(i64, Option<&str>)> = dirty
                    .iter()
                    .map(|d| (d.id, d.spent_by_txid.as_deref()))
                    .collect();
                memory
                    .unsettled
                    .lock()
                    .expect("unsettled")
                    .retain(|(id, txid), _| ids.contains(&(*id, Some(txid.as_str()))));
            }
            for d in dirty {
                if let Err(e) = settle_dirty(store, pool_store, deps, config, memory, d).await {
                    // Most likely the node or the database is away: the rest wait for
                    // the next round (one warning, not one per UTXO).
                    tracing::warn!(error = %e, dirty = waiting, "janitor: dirty UTXOs not settled");
                    break;
                }
            }
        }
        Err(e) => tracing::warn!(error = %e, "janitor: dirty UTXOs not read"),
    }
    if let Err(e) = confirmations(store, deps, config, &memory.unheld).await {
        tracing::warn!(error = %e, "janitor: confirmations not checked");
    }
}

/// The job's transaction is on the node: `sent`, its change into the pool.
async fn record_sent(deps: &Deps, job: &crate::ports::StuckJob) {
    let sent = crate::ports::Sent {
        fence: job.fence,
        sent_at: chrono::Utc::now(),
        change: deps.signer.change_of(&job.raw_tx),
    };
    if let Ok(Ok(change)) = deps.recorder.send(RecordSent(sent, job.txid.clone())).await {
        deps.pool.do_send(Add(change.into_iter().collect()));
    }
}

/// The Janitor's re-send of a job's stored bytes, whose earlier outcome is unknown:
/// accepted (or already known) → `sent`; anything else leaves the job `sending` and
/// its UTXO dirty for the next round. A refusal here never sends the job back for a
/// new signature: it speaks of these bytes now, not of a copy that may still arrive
/// elsewhere (the one case for a new signature is a spend of the UTXO by another
/// transaction, in [`settle_dirty`]).
async fn resend_same(deps: &Deps, job: &crate::ports::StuckJob) {
    deps.stats.observe_rebroadcast();
    loop {
        let grant = crate::token_bucket::acquire(&deps.tokens).await;
        let started = tokio::time::Instant::now();
        let outcome = deps.node.broadcast(&job.raw_tx).await;
        drop(grant);
        deps.stats.observe_broadcast(&outcome, started.elapsed());
        match outcome {
            BroadcastOutcome::Accepted => {
                record_sent(deps, job).await;
                return;
            }
            BroadcastOutcome::RateLimited { retry_after } => {
                deps.tokens
                    .do_send(crate::token_bucket::RateLimited { retry_after });
            }
            other => {
                tracing::warn!(job = job.fence.id, txid = %job.txid, outcome = ?other, "janitor: re-send not settled; asking again next round");
                let _ = deps.recorder.send(MarkDirty(job.fence)).await;
                if let Some(id) = job.utxo_id {
                    deps.pool.do_send(crate::utxo_pool::Forget(id));
                }
                return;
            }
        }
    }
}

/// Asks the node what became of a dirty UTXO's spend and settles it.
async fn settle_dirty(
    store: &dyn JanitorStore,
    pool_store: &dyn PoolStore,
    deps: &Deps,
    config: &JanitorConfig,
    memory: &Memory,
    d: DirtyUtxo,
) -> Result<(), String> {
    let node = &deps.node;
    let ours_known = match &d.spent_by_txid {
        Some(txid) => !matches!(
            node.tx_presence(txid).await.map_err(|e| e.to_string())?,
            TxPresence::Unknown
        ),
        None => false,
    };
    if let Some(job) = d.job {
        if ours_known {
            // Our transaction is on the node: the job is sent.
            record_sent(deps, &job).await;
            return Ok(());
        }
        // A transaction the job signed before (refused then, kept in its history) may
        // be the one that reached the node after all: all of them spend the anchor, so
        // it is the one that can be mined, and the job is sent with it.
        match earlier_on_node(store, deps, &job).await? {
            Earlier::Taken(earlier) => {
                tracing::warn!(job = job.fence.id, txid = %earlier.txid, replaced = %job.txid, "janitor: an earlier transaction of the job is on the node; the job is sent with it");
                record_sent(deps, &earlier).await;
                return Ok(());
            }
            Earlier::Fenced => return Ok(()),
            Earlier::None => {}
        }
        // The outcome was unknown and the node does not have the transaction (yet: an
        // explorer or a node may answer late). Never a new signature on another UTXO
        // for that: both could be mined. The same bytes again, under the rate limit.
        let outpoint = node
            .outpoint(&d.txid, d.vout)
            .await
            .map_err(|e| e.to_string())?;
        if let OutpointState::Gone {
            spent_by: Some(other),
        } = &outpoint
        {
            if *other == job.txid {
                // Spent by our own transaction: the node has it.
                record_sent(deps, &job).await;
                return Ok(());
            }
            // Spent by one of the job's earlier transactions (the node shows the spend
            // before it shows the transaction, or an index lags): that one is the job's.
            let earlier = store
                .earlier_transactions(job.fence.id)
                .await
                .map_err(|e| e.to_string())?;
            if let Some((txid, raw_tx)) = earlier.into_iter().find(|(t, _)| t == other) {
                if store
                    .take_up_earlier(job.fence, &txid)
                    .await
                    .map_err(|e| e.to_string())?
                {
                    tracing::warn!(job = job.fence.id, %txid, replaced = %job.txid, "janitor: an earlier transaction of the job is on the node; the job is sent with it");
                    let earlier = crate::ports::StuckJob {
                        txid,
                        raw_tx,
                        ..job
                    };
                    record_sent(deps, &earlier).await;
                }
                return Ok(());
            }
            // Spent by a transaction that is none of the job's own. Only once that spend
            // is confirmed deep enough can none of the job's transactions be mined any
            // more: then, and not before, the job leaves its anchor for a fresh UTXO.
            let depth = match node.tx_presence(other).await.map_err(|e| e.to_string())? {
                TxPresence::Confirmed { confirmations, .. } => confirmations,
                _ => 0,
            };
            if depth < config.reanchor_confirmations {
                tracing::info!(job = job.fence.id, anchor = d.id, spent_by = %other, confirmations = depth, "janitor: the job's anchor is spent by another transaction; waiting for it to confirm before signing on another coin");
                return Ok(());
            }
            store.utxo_retire(d.id).await.map_err(|e| e.to_string())?;
            let retry = crate::ports::Retry {
                fence: job.fence,
                error: format!(
                    "its anchor was spent by another transaction ({other}, {depth} confirmations): signing again on another coin"
                ),
                not_before: chrono::Utc::now(),
                reanchor: true,
            };
            let _ = deps.recorder.send(RecordRetry(retry, None, false)).await;
            return Ok(());
        }
        let rounds = {
            let mut unsettled = memory.unsettled.lock().expect("unsettled");
            let n = unsettled.entry((d.id, job.txid.clone())).or_default();
            *n += 1;
            *n
        };
        if rounds > MAX_UNSETTLED_ROUNDS {
            // Bounded: the job ends, with what we know, and is never signed again.
            let unspent = matches!(outpoint, OutpointState::Unspent { .. });
            let reason = format!(
                "its transaction {} had an unknown outcome and the node neither holds it nor \
                 takes it again after {} rounds ({}); it was not signed again, so if a copy \
                 is mined after all the job is published once",
                job.txid,
                rounds - 1,
                if unspent {
                    "its coin is unspent: kept as the job's anchor, never spent by another job"
                } else {
                    "its coin is spent or never existed: retired"
                }
            );
            memory
                .unsettled
                .lock()
                .expect("unsettled")
                .remove(&(d.id, job.txid.clone()));
            match store.fail_unsettled(job.fence, &reason, unspent).await {
                Ok(Some(utxo)) => deps.pool.do_send(Add(vec![utxo])),
                Ok(None) => {}
                Err(e) => return Err(e.to_string()),
            }
            tracing::error!(job = job.fence.id, txid = %job.txid, reason, "janitor: job failed");
            return Ok(());
        }
        // Clean while we ask again: the re-send's outcome settles the UTXO (accepted:
        // spent; anything else: dirty again, for the next round).
        store.utxo_clean(d.id).await.map_err(|e| e.to_string())?;
        resend_same(deps, &job).await;
        return Ok(());
    }
    if let Some(split_id) = d.split_id {
        let split = StoredSplit {
            id: split_id,
            txid: d.spent_by_txid.clone().unwrap_or_default(),
            raw_tx: Vec::new(),
            input_utxo_id: d.id,
        };
        if ours_known {
            let outputs = pool_store
                .split_accepted(&split)
                .await
                .map_err(|e| e.to_string())?;
            deps.pool.do_send(Add(outputs));
            return Ok(());
        }
        let unspent = matches!(
            node.outpoint(&d.txid, d.vout)
                .await
                .map_err(|e| e.to_string())?,
            OutpointState::Unspent { .. }
        );
        pool_store
            .split_rejected(&split, "the node does not have the split", false)
            .await
            .map_err(|e| e.to_string())?;
        if !unspent {
            store.utxo_retire(d.id).await.map_err(|e| e.to_string())?;
        }
        return Ok(());
    }
    // Dirty with nothing of ours on it: clean if unspent, retired if gone.
    match node
        .outpoint(&d.txid, d.vout)
        .await
        .map_err(|e| e.to_string())?
    {
        OutpointState::Unspent { .. } => {
            if let Some(u) = store.utxo_clean(d.id).await.map_err(|e| e.to_string())? {
                deps.pool.do_send(Add(vec![u]));
            }
        }
        OutpointState::Gone { .. } => store.utxo_retire(d.id).await.map_err(|e| e.to_string())?,
    }
    Ok(())
}

enum Earlier {
    None,
    /// Taken up as the job's transaction (with the job's fence).
    Taken(crate::ports::StuckJob),
    /// The job is no longer this process's.
    Fenced,
}

/// Looks for one of the job's earlier transactions on the node.
async fn earlier_on_node(
    store: &dyn JanitorStore,
    deps: &Deps,
    job: &crate::ports::StuckJob,
) -> Result<Earlier, String> {
    let earlier = store
        .earlier_transactions(job.fence.id)
        .await
        .map_err(|e| e.to_string())?;
    let Some((txid, raw_tx)) = first_known(deps, earlier).await? else {
        return Ok(Earlier::None);
    };
    if !store
        .take_up_earlier(job.fence, &txid)
        .await
        .map_err(|e| e.to_string())?
    {
        return Ok(Earlier::Fenced);
    }
    Ok(Earlier::Taken(crate::ports::StuckJob {
        fence: job.fence,
        txid,
        raw_tx,
        utxo_id: job.utxo_id,
    }))
}

/// The first of `transactions` (txid, raw) the node holds (mempool or chain).
async fn first_known(
    deps: &Deps,
    transactions: Vec<(String, Vec<u8>)>,
) -> Result<Option<(String, Vec<u8>)>, String> {
    for (txid, raw_tx) in transactions {
        let presence = deps
            .node
            .tx_presence(&txid)
            .await
            .map_err(|e| e.to_string())?;
        if !matches!(presence, TxPresence::Unknown) {
            return Ok(Some((txid, raw_tx)));
        }
    }
    Ok(None)
}

/// A sent job's transaction is not on the node: one of its earlier transactions may
/// be (a node that answers before it verifies took the replacement, then dropped it
/// for the copy it already held). All spend the job's anchor: the one the node holds
/// is the job's. True when the job was switched to it.
async fn switch_to_earlier(
    store: &dyn JanitorStore,
    deps: &Deps,
    txid: &str,
) -> Result<bool, String> {
    let earlier = store
        .earlier_of_sent(txid)
        .await
        .map_err(|e| e.to_string())?;
    let Some((earlier, raw_tx)) = first_known(deps, earlier).await? else {
        return Ok(false);
    };
    let change = deps.signer.change_of(&raw_tx);
    let switched = store
        .switch_sent(txid, &earlier, change)
        .await
        .map_err(|e| e.to_string())?;
    if switched {
        tracing::warn!(%txid, %earlier, "janitor: the node holds an earlier transaction of the job instead of its last one; the job is recorded with it");
    }
    Ok(switched)
}

/// Checks sent transactions: confirmed ones are recorded (their outputs' chains are
/// then confirmed); ones the node no longer has are sent again from their stored bytes.
async fn confirmations(
    store: &dyn JanitorStore,
    deps: &Deps,
    config: &JanitorConfig,
    unheld: &std::sync::Mutex<Unheld>,
) -> Result<(), String> {
    let sent = store
        .unconfirmed(500, config.stuck_after)
        .await
        .map_err(|e| e.to_string())?;
    // Ask about several at a time (a node's answer takes a round trip); act on the
    // answers in the store's order, parents before children.
    let answers: Vec<_> = futures::stream::iter(sent)
        .map(|u| async move {
            let presence = deps.node.tx_presence(&u.txid).await;
            (u, presence)
        })
        .buffered(8)
        .collect()
        .await;
    let mut confirmed = Vec::new();
    let mut still_unheld = std::collections::HashMap::new();
    let previously = std::mem::take(&mut *unheld.lock().expect("unheld"));
    for (u, presence) in answers {
        let crate::ports::Unconfirmed {
            txid,
            raw_tx,
            settled,
            input,
            split,
        } = u;
        match presence {
            Ok(TxPresence::Unknown) if settled => {
                if !split {
                    match switch_to_earlier(store, deps, &txid).await {
                        Ok(true) => continue,
                        Ok(false) => {}
                        Err(e) => {
                            tracing::warn!(error = %e, %txid, "janitor: earlier transactions not checked")
                        }
                    }
                }
                let (resends, since) = previously
                    .get(&txid)
                    .copied()
                    .unwrap_or((0, tokio::time::Instant::now()));
                if resends >= MAX_UNHELD_RESENDS
                    && since.elapsed() < config.stuck_after * UNHELD_GIVE_UP_AFTER
                {
                    // Re-sent enough: no more re-sends; wait out the node's queue.
                    still_unheld.insert(txid, (resends, since));
                    continue;
                }
                if resends >= MAX_UNHELD_RESENDS {
                    // Give up only on what cannot be mined any more: its coin unspent on
                    // the node proves the transaction is neither in a block nor in the
                    // node's mempool. Spent (by it, in a block the node cannot show
                    // without a transaction index, or by a conflict): left as it is.
                    let unspent = match &input {
                        Some((in_txid, in_vout)) => matches!(
                            deps.node.outpoint(in_txid, *in_vout).await,
                            Ok(OutpointState::Unspent { .. })
                        ),
                        None => false,
                    };
                    if !unspent || split {
                        // Not re-sent again (a split the node never holds is left for
                        // an operator: `raregen wallet balance` shows it pending).
                        still_unheld.insert(txid, (resends, since));
                        continue;
                    }
                    // Accepted again and again, never held: the node refuses it after
                    // answering (bcoin verifies after it answers). Not an endless loop:
                    // the job fails with the best reason we have.
                    let reason = format!(
                        "the node accepted this transaction {} times but never held it: it \
                         refused it after answering (see the node's log; e.g. a wallet key \
                         that does not own the pool's coins, or a consensus rule the node \
                         enforces)",
                        resends + 1
                    );
                    // Twice: the second run catches a descendant recorded while the
                    // first ran.
                    for _ in 0..2 {
                        match store.fail_unheld(&txid, &reason).await {
                            Ok(0) => {}
                            Ok(n) => {
                                tracing::error!(%txid, jobs = n, reason, "janitor: jobs failed")
                            }
                            Err(e) => {
                                tracing::warn!(error = %e, %txid, "janitor: could not fail an unheld job")
                            }
                        }
                    }
                    continue;
                }
                // The node said yes and no longer has it (it restarted, or dropped it):
                // the same bytes again, under the rate limit.
                deps.stats.observe_rebroadcast();
                let grant = crate::token_bucket::acquire(&deps.tokens).await;
                let outcome = deps.node.broadcast(&raw_tx).await;
                drop(grant);
                // Only "accepted" again counts towards giving up: a refusal or no answer
                // says nothing about whether the node would hold it.
                let counted = resends + u32::from(outcome == BroadcastOutcome::Accepted);
                if counted > 0 {
                    still_unheld.insert(txid.clone(), (counted, since));
                }
                if let BroadcastOutcome::RateLimited { retry_after } = outcome {
                    // Everyone pauses; this one is asked about again next round.
                    deps.tokens
                        .do_send(crate::token_bucket::RateLimited { retry_after });
                }
                tracing::warn!(%txid, ?outcome, "janitor: re-sent a transaction the node no longer had");
            }
            Ok(TxPresence::Confirmed {
                block_height,
                block_hash,
                ..
            }) => confirmed.push(Confirmation {
                txid,
                block_height,
                block_hash,
            }),
            Ok(TxPresence::Unknown) => {
                if let Some(&n) = previously.get(&txid) {
                    still_unheld.insert(txid, n);
                }
            }
            Ok(_) => {}
            Err(e) => {
                *unheld.lock().expect("unheld") = previously;
                return Err(e.to_string());
            }
        }
    }
    *unheld.lock().expect("unheld") = still_unheld;
    if !confirmed.is_empty() {
        store
            .record_confirmations(&confirmed)
            .await
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}
