//! Janitor: every `interval`, recovers what is stuck (the lease is the Leaser's, on its
//! own timer, so that a long round never lets it lapse). Jobs held by dead processes are taken back; jobs in `sending` for longer than
//! `stuck_after` are re-broadcast from their stored bytes (never re-signed); dirty UTXOs
//! are settled by asking the node; sent transactions are checked for presence and
//! confirmations. Every state has a timeout owned here.

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use futures::StreamExt;

use crate::broadcaster::{send_stored, Deps};
use crate::chain::{OutpointState, TxPresence};
use crate::ports::{Confirmation, DirtyUtxo, JanitorStore, PoolStore, StoredSplit};
use crate::recorder::{RecordRetry, RecordSent};
use crate::utxo_pool::Add;

#[derive(Debug, Clone)]
pub struct JanitorConfig {
    pub interval: Duration,
    pub stuck_after: Duration,
}

/// Re-sends of a transaction the node said it accepted and then did not hold, before
/// its job is given up as failed (the node refused it after answering).
pub const MAX_UNHELD_RESENDS: u32 = 5;

/// Per transaction: how many times it was re-sent because the node did not hold it.
type Unheld = std::sync::Mutex<std::collections::HashMap<String, u32>>;

pub struct Janitor {
    config: JanitorConfig,
    unheld: Arc<Unheld>,
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
            unheld: Arc::default(),
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
        let unheld = self.unheld.clone();
        ctx.spawn(
            async move { round(&*store, &*pool_store, &deps, &config, &unheld).await }
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
    unheld: &Unheld,
) {
    match store.reclaim_dead().await {
        Ok(0) => {}
        Ok(n) => tracing::warn!(jobs = n, "janitor: took back the claims of dead processes"),
        Err(e) => tracing::warn!(error = %e, "janitor: reclaim failed"),
    }
    match store.requeue_lost(config.stuck_after).await {
        Ok(0) => {}
        Ok(n) => tracing::warn!(
            jobs = n,
            "janitor: requeued claimed jobs that never stored a transaction"
        ),
        Err(e) => tracing::warn!(error = %e, "janitor: requeue failed"),
    }
    // Stuck in `sending` (or taken over): the same bytes again.
    match store.adopt_stuck(config.stuck_after, 1_000).await {
        Ok(stuck) => {
            if !stuck.is_empty() {
                tracing::warn!(
                    jobs = stuck.len(),
                    "janitor: re-broadcasting stuck transactions"
                );
            }
            for job in stuck {
                deps.stats.observe_rebroadcast();
                let stored = crate::ports::StoredTx {
                    txid: job.txid,
                    raw_tx: job.raw_tx,
                    utxo_id: job.utxo_id,
                };
                send_stored(deps, job.fence, stored).await;
            }
        }
        Err(e) => tracing::warn!(error = %e, "janitor: stuck jobs not read"),
    }
    match store.dirty_utxos(1_000).await {
        Ok(dirty) => {
            let waiting = dirty.len();
            for d in dirty {
                if let Err(e) = settle_dirty(store, pool_store, deps, d).await {
                    // Most likely the node or the database is away: the rest wait for
                    // the next round (one warning, not one per UTXO).
                    tracing::warn!(error = %e, dirty = waiting, "janitor: dirty UTXOs not settled");
                    break;
                }
            }
        }
        Err(e) => tracing::warn!(error = %e, "janitor: dirty UTXOs not read"),
    }
    if let Err(e) = confirmations(store, deps, config, unheld).await {
        tracing::warn!(error = %e, "janitor: confirmations not checked");
    }
}

/// Asks the node what became of a dirty UTXO's spend and settles it.
async fn settle_dirty(
    store: &dyn JanitorStore,
    pool_store: &dyn PoolStore,
    deps: &Deps,
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
            let sent = crate::ports::Sent {
                fence: job.fence,
                sent_at: chrono::Utc::now(),
                change: deps.signer.change_of(&job.raw_tx),
            };
            if let Ok(Ok(change)) = deps.recorder.send(RecordSent(sent, job.txid.clone())).await {
                deps.pool.do_send(Add(change.into_iter().collect()));
            }
            return Ok(());
        }
        // The outcome was unknown and the node does not have the transaction (yet: an
        // explorer or a node may answer late). Never a new signature on another UTXO
        // for that: both could be mined. The same bytes again, under the rate limit.
        match node
            .outpoint(&d.txid, d.vout)
            .await
            .map_err(|e| e.to_string())?
        {
            OutpointState::Gone {
                spent_by: Some(other),
            } if other != job.txid => {
                // Proven spent by another transaction: the UTXO is gone, and this
                // job's transaction can never be mined; the job gets another.
                store.utxo_retire(d.id).await.map_err(|e| e.to_string())?;
                let retry = crate::ports::Retry {
                    fence: job.fence,
                    error: format!("its UTXO was spent by another transaction ({other})"),
                    not_before: chrono::Utc::now(),
                };
                let _ = deps.recorder.send(RecordRetry(retry, None, false)).await;
            }
            _ => {
                // Clean while we ask again: the re-send's outcome settles the UTXO
                // (accepted: spent; refused: released; unknown again: dirty again).
                store.utxo_clean(d.id).await.map_err(|e| e.to_string())?;
                deps.stats.observe_rebroadcast();
                let stored = crate::ports::StoredTx {
                    txid: job.txid,
                    raw_tx: job.raw_tx,
                    utxo_id: job.utxo_id,
                };
                send_stored(deps, job.fence, stored).await;
            }
        }
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

/// Checks sent transactions: confirmed ones are recorded (their outputs' chains are
/// then confirmed); ones the node no longer has are sent again from their stored bytes.
async fn confirmations(
    store: &dyn JanitorStore,
    deps: &Deps,
    config: &JanitorConfig,
    unheld: &Unheld,
) -> Result<(), String> {
    let sent = store
        .unconfirmed(500, config.stuck_after)
        .await
        .map_err(|e| e.to_string())?;
    // Ask about several at a time (a node's answer takes a round trip); act on the
    // answers in the store's order, parents before children.
    let answers: Vec<_> = futures::stream::iter(sent)
        .map(|(txid, raw_tx, settled)| async move {
            let presence = deps.node.tx_presence(&txid).await;
            (txid, raw_tx, settled, presence)
        })
        .buffered(8)
        .collect()
        .await;
    let mut confirmed = Vec::new();
    let mut still_unheld = std::collections::HashMap::new();
    let previously = std::mem::take(&mut *unheld.lock().expect("unheld"));
    for (txid, raw_tx, settled, presence) in answers {
        match presence {
            Ok(TxPresence::Unknown) if settled => {
                let resends = previously.get(&txid).copied().unwrap_or(0);
                if resends >= MAX_UNHELD_RESENDS {
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
                    match store.fail_unheld(&txid, &reason).await {
                        Ok(0) => {}
                        Ok(_) => tracing::error!(%txid, reason, "janitor: job failed"),
                        Err(e) => {
                            tracing::warn!(error = %e, %txid, "janitor: could not fail an unheld job")
                        }
                    }
                    continue;
                }
                still_unheld.insert(txid.clone(), resends + 1);
                // The node said yes and no longer has it (it restarted, or dropped it):
                // the same bytes again, under the rate limit.
                deps.stats.observe_rebroadcast();
                let grant = crate::token_bucket::acquire(&deps.tokens).await;
                let outcome = deps.node.broadcast(&raw_tx).await;
                drop(grant);
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
