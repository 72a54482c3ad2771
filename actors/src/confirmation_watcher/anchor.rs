//! A sent transaction the node dropped: its anchor spent by a confirmed stranger (the
//! job and its lane set aside, to sign on another coin), or one of the job's earlier
//! transactions held instead (the job switched to it).

use crate::broadcaster::Deps;
use crate::dirty_settler::first_known;
use crate::maintenance::MaintenanceError;
use crate::ports::{EarlierTx, OutpointState, TxPresence, WatchStore};

use super::scans::ScanBudget;
use super::ConfirmationWatcher;

impl ConfirmationWatcher {
    /// A sent job's transaction `txid` is not on the node: if its anchor (`input`) was
    /// spent by a transaction that is none of the job's own, confirmed at least
    /// `reanchor_confirmations` deep, none of the job's transactions can ever be mined
    /// (nor any down its lane): they are set aside and their jobs queued again, to sign
    /// on fresh coins. Answers the txids set aside (none when the anchor is unspent,
    /// spent by the job's own transaction, or by a spend not yet confirmed enough: the
    /// same bytes are sent again meanwhile, as for any transaction the node lost).
    pub(super) async fn leave_a_spent_anchor(
        &self,
        txid: &str,
        input: Option<&(String, u32)>,
        // This run's block scans: only a scan is charged (the outpoint question is
        // cheap), so transactions whose input is unspent never use up the budget.
        scans: &mut ScanBudget,
    ) -> Result<Vec<String>, MaintenanceError> {
        let (store, node) = (&*self.store, &*self.deps.node);
        let Some((in_txid, in_vout)) = input else {
            return Ok(Vec::new());
        };
        let mut spent_by = match node.outpoint(in_txid, *in_vout).await? {
            OutpointState::Unspent { .. } => return Ok(Vec::new()),
            OutpointState::Gone { spent_by } => spent_by,
        };
        if spent_by.is_none() {
            // A node that does not say who spent it (bitcoind, bcoin): looked for in
            // the recent blocks.
            if !scans.take(txid) {
                return Ok(Vec::new());
            }
            spent_by = node.spender(in_txid, *in_vout).await?;
        }
        let Some(other) = spent_by else {
            return Ok(Vec::new());
        };
        if other == txid {
            return Ok(Vec::new());
        }
        let earlier = store.earlier_of_sent(txid).await?;
        if earlier.iter().any(|e| e.txid == other) {
            // One of the job's own: the node shows its spend before the transaction.
            return Ok(Vec::new());
        }
        let depth = match node.tx_presence(&other).await? {
            TxPresence::Confirmed { confirmations, .. } => confirmations,
            _ => 0,
        };
        if depth < self.reanchor_confirmations {
            tracing::info!(%txid, spent_by = %other, confirmations = depth, "confirmation watcher: a sent job's anchor is spent by another transaction; waiting for it to confirm before signing on another coin");
            return Ok(Vec::new());
        }
        let reason = format!(
            "its transaction {txid} was accepted, then not held, and its anchor was spent by \
             another transaction ({other}, {depth} confirmations): signing again on another coin"
        );
        let aside = store.reanchor_sent(txid, &other, &reason).await?;
        if !aside.is_empty() {
            tracing::warn!(%txid, spent_by = %other, transactions = aside.len(), "confirmation watcher: a sent job's anchor was spent by a confirmed stranger; the job and its lane are queued again");
        }
        Ok(aside)
    }
}

/// A sent job's transaction is not on the node: one of its earlier transactions may
/// be (a node that answers before it verifies took the replacement, then dropped it
/// for the copy it already held). All spend the job's anchor: the one the node holds
/// is the job's. True when the job was switched to it.
pub(super) async fn switch_to_earlier(
    store: &dyn WatchStore,
    deps: &Deps,
    txid: &str,
) -> Result<bool, MaintenanceError> {
    let earlier = store.earlier_of_sent(txid).await?;
    let Some(EarlierTx {
        txid: earlier,
        raw_tx,
    }) = first_known(deps, earlier).await?
    else {
        return Ok(false);
    };
    let change = deps.signer.change_of(&raw_tx);
    let switched = store.switch_sent(txid, &earlier, change).await?;
    if switched {
        tracing::warn!(%txid, %earlier, "confirmation watcher: the node holds an earlier transaction of the job instead of its last one; the job is recorded with it");
    }
    Ok(switched)
}
