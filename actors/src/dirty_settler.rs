//! DirtySettler (a maintenance service): a UTXO is dirty when the outcome of its spend
//! is unknown (a timeout, a 504 after the request was forwarded, an input the node
//! called missing). Each run asks the node what became of a bounded batch of them and
//! settles each: the job's transaction (or one of its earlier ones) is on the node →
//! `sent`; its anchor spent by another transaction, confirmed → the job signs again on
//! a fresh coin; nothing known → the same bytes again, never a new signature on
//! another coin (their definitive refusal sends the job back to sign again on its
//! anchor: a replacement that conflicts with every copy of them); a split's → on the
//! node, or its same bytes again (refused for good: its input back; never answered:
//! given up, its input retired); nothing of ours on it → clean or retired.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;

use crate::broadcaster::Deps;
use crate::maintenance::{MaintenanceError, Report, Service};
use crate::ports::{DirtyUtxo, EarlierTx, PoolStore, SettleStore, StuckJob};
use crate::ports::{OutpointState, TxPresence};
use crate::recorder::RecordRetry;
use crate::send::{record_sent, resend_same};
use crate::utxo_pool::Add;

/// Dirty UTXOs settled per run at most.
pub const SETTLE_BATCH: u32 = 1_000;

/// Runs a dirty UTXO's job may stay unsettled (the node has neither its transaction
/// nor answers the same bytes sent again with a yes or a definitive no) before the job
/// is given up as failed. Never signed on another coin: a first copy whose outcome was
/// unknown may still arrive somewhere.
pub const MAX_UNSETTLED_ROUNDS: u32 = 10;

pub struct DirtySettler {
    pub store: Arc<dyn SettleStore>,
    pub pool_store: Arc<dyn PoolStore>,
    pub deps: Arc<Deps>,
    /// Confirmations a foreign spend of a job's anchor needs before the job re-anchors.
    pub reanchor_confirmations: u32,
    /// Per dirty UTXO and the transaction of ours spending it: runs it stayed unsettled
    /// (a coin released and spent again starts from zero). Lost on a restart: the
    /// counts start again, so a give-up comes later, never sooner.
    unsettled: Mutex<HashMap<(i64, String), u32>>,
}

impl DirtySettler {
    pub fn new(
        store: Arc<dyn SettleStore>,
        pool_store: Arc<dyn PoolStore>,
        deps: Arc<Deps>,
        reanchor_confirmations: u32,
    ) -> DirtySettler {
        DirtySettler {
            store,
            pool_store,
            deps,
            reanchor_confirmations,
            unsettled: Mutex::default(),
        }
    }
}

#[async_trait]
impl Service for DirtySettler {
    fn name(&self) -> &'static str {
        "dirty_settler"
    }

    async fn run(&self) -> Report {
        let mut report = Report::default();
        let dirty = match self.store.dirty_utxos(SETTLE_BATCH).await {
            Ok(dirty) => dirty,
            Err(e) => {
                report.error();
                tracing::warn!(error = %e, "dirty settler: dirty UTXOs not read");
                return report;
            }
        };
        let waiting = dirty.len();
        {
            // Forget the UTXOs that are no longer dirty.
            let ids: HashSet<(i64, Option<&str>)> = dirty
                .iter()
                .map(|d| (d.id, d.spent_by_txid.as_deref()))
                .collect();
            self.unsettled
                .lock()
                .expect("unsettled")
                .retain(|(id, txid), _| ids.contains(&(*id, Some(txid.as_str()))));
        }
        for d in dirty {
            if let Err(e) = self.settle(d).await {
                // Most likely the node or the database is away: the rest wait for the
                // next run (one warning, not one per UTXO).
                report.error();
                tracing::warn!(error = %e, dirty = waiting, "dirty settler: dirty UTXOs not settled");
                break;
            }
            report.item();
        }
        report
    }
}

/// Asks the node what became of a dirty UTXO's spend and settles it.
impl DirtySettler {
    /// Counts one more run in which the spend of UTXO `id` by `txid` stays unsettled.
    fn unsettled_round(&self, id: i64, txid: &str) -> u32 {
        let mut unsettled = self.unsettled.lock().expect("unsettled");
        let n = unsettled.entry((id, txid.to_owned())).or_default();
        *n += 1;
        *n
    }

    async fn settle(&self, d: DirtyUtxo) -> Result<(), MaintenanceError> {
        let (store, pool_store, deps) = (&*self.store, &*self.pool_store, &*self.deps);
        let node = &deps.node;
        let ours_known = match &d.spent_by_txid {
            Some(txid) => !matches!(node.tx_presence(txid).await?, TxPresence::Unknown),
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
                    tracing::warn!(job = job.fence.id, txid = %earlier.txid, replaced = %job.txid, "dirty settler: an earlier transaction of the job is on the node; the job is sent with it");
                    record_sent(deps, &earlier).await;
                    return Ok(());
                }
                Earlier::Fenced => return Ok(()),
                Earlier::None => {}
            }
            // The outcome was unknown and the node does not have the transaction (yet: an
            // explorer or a node may answer late). Never a new signature on another UTXO
            // for that: both could be mined. The same bytes again, under the rate limit.
            let mut outpoint = node.outpoint(&d.txid, d.vout).await?;
            if matches!(outpoint, OutpointState::Gone { spent_by: None }) {
                // A node that does not say who spent it (bitcoind, bcoin): looked for. A
                // failed look (a method the node does not allow, a block read timing out)
                // counts as not found: this UTXO waits, the others behind it do not.
                let spent_by = match node.spender(&d.txid, d.vout).await {
                    Ok(spent_by) => spent_by,
                    Err(e) => {
                        tracing::warn!(error = %e, utxo = d.id, "dirty settler: the spender of a job's anchor not looked up");
                        None
                    }
                };
                outpoint = OutpointState::Gone { spent_by };
            }
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
                let earlier = store.earlier_transactions(job.fence.id).await?;
                if let Some(EarlierTx { txid, raw_tx }) =
                    earlier.into_iter().find(|e| e.txid == *other)
                {
                    if store.take_up_earlier(job.fence, &txid).await? {
                        tracing::warn!(job = job.fence.id, %txid, replaced = %job.txid, "dirty settler: an earlier transaction of the job is on the node; the job is sent with it");
                        let earlier = StuckJob {
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
                let depth = match node.tx_presence(other).await? {
                    TxPresence::Confirmed { confirmations, .. } => confirmations,
                    _ => 0,
                };
                if depth < self.reanchor_confirmations {
                    tracing::info!(job = job.fence.id, anchor = d.id, spent_by = %other, confirmations = depth, "dirty settler: the job's anchor is spent by another transaction; waiting for it to confirm before signing on another coin");
                    return Ok(());
                }
                store.utxo_retire(d.id).await?;
                let retry = crate::ports::Retry {
                fence: job.fence,
                error: format!(
                    "its anchor was spent by another transaction ({other}, {depth} confirmations): signing again on another coin"
                ),
                not_before: chrono::Utc::now(),
                reanchor: true,
                settles_dirty: false,
            };
                crate::send::recorded("re-anchor", || {
                    deps.recorder.send(RecordRetry {
                        retry: retry.clone(),
                        utxo_id: None,
                        fail_now: false,
                    })
                })
                .await;
                return Ok(());
            }
            let rounds = self.unsettled_round(d.id, &job.txid);
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
                self.unsettled
                    .lock()
                    .expect("unsettled")
                    .remove(&(d.id, job.txid.clone()));
                store.fail_unsettled(job.fence, &reason, unspent).await?;
                tracing::error!(job = job.fence.id, txid = %job.txid, reason, "dirty settler: job failed");
                return Ok(());
            }
            // The UTXO stays dirty while we ask again (so the Rescuer leaves the job to
            // us): the re-send's outcome settles it (accepted: spent and clean; anything
            // else: still dirty, for the next run).
            resend_same(deps, &job).await;
            return Ok(());
        }
        if let Some(split_id) = d.split_id {
            let Some(split) = pool_store
                .unfinished_splits()
                .await?
                .into_iter()
                .find(|s| s.id == split_id)
            else {
                return Ok(());
            };
            if ours_known {
                let outputs = pool_store.split_accepted(&split).await?;
                deps.pool.do_send(Add(outputs));
                return Ok(());
            }
            // Not on the node (yet: a copy whose outcome was unknown may still arrive).
            // Never released on that alone: a job would then spend the coin a late copy
            // of the split spends too. The same bytes again, under the limit: accepted
            // → its outputs join the pool; refused for good → its input goes back; no
            // answer → still dirty, asked again next run.
            let rounds = self.unsettled_round(d.id, &split.txid);
            if rounds > MAX_UNSETTLED_ROUNDS {
                // Given up: its input is retired, never spent by a job (a copy of the
                // split may still be mined; `raregen wallet import` then brings its
                // outputs back).
                let reason = format!(
                    "the node neither holds this split nor answers it sent again after {} rounds: \
                     given up, its input retired",
                    rounds - 1
                );
                tracing::error!(txid = %split.txid, reason, "dirty settler: split given up");
                // Retired first: a crash between the two leaves the input out of the pool.
                store.utxo_retire(d.id).await?;
                pool_store.split_rejected(&split, &reason, false).await?;
                return Ok(());
            }
            deps.stats.observe_rebroadcast();
            let outputs =
                crate::utxo_pool::publish_split(pool_store, &**node, &deps.tokens, &split).await?;
            deps.pool.do_send(Add(outputs));
            return Ok(());
        }
        // Dirty with nothing of ours on it: clean if unspent, retired if gone.
        match node.outpoint(&d.txid, d.vout).await? {
            OutpointState::Unspent { .. } => {
                if let Some(u) = store.utxo_clean(d.id).await? {
                    deps.pool.do_send(Add(vec![u]));
                }
            }
            OutpointState::Gone { .. } => store.utxo_retire(d.id).await?,
        }
        Ok(())
    }
}

enum Earlier {
    None,
    /// Taken up as the job's transaction (with the job's fence).
    Taken(StuckJob),
    /// The job is no longer this process's.
    Fenced,
}

/// Looks for one of the job's earlier transactions on the node.
async fn earlier_on_node(
    store: &dyn SettleStore,
    deps: &Deps,
    job: &StuckJob,
) -> Result<Earlier, MaintenanceError> {
    let earlier = store.earlier_transactions(job.fence.id).await?;
    let Some(EarlierTx { txid, raw_tx }) = first_known(deps, earlier).await? else {
        return Ok(Earlier::None);
    };
    if !store.take_up_earlier(job.fence, &txid).await? {
        return Ok(Earlier::Fenced);
    }
    Ok(Earlier::Taken(StuckJob {
        fence: job.fence,
        txid,
        raw_tx,
        utxo_id: job.utxo_id,
    }))
}

/// The first of `transactions` (txid, raw) the node holds (mempool or chain).
pub(crate) async fn first_known(
    deps: &Deps,
    transactions: Vec<EarlierTx>,
) -> Result<Option<EarlierTx>, MaintenanceError> {
    for tx in transactions {
        let presence = deps.node.tx_presence(&tx.txid).await?;
        if !matches!(presence, TxPresence::Unknown) {
            return Ok(Some(tx));
        }
    }
    Ok(None)
}
