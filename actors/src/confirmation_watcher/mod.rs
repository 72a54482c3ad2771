//! ConfirmationWatcher (a maintenance service): each run asks the node about a
//! bounded batch of sent, unconfirmed transactions. Confirmed → recorded (their
//! outputs' chains are then confirmed); gone from the node → one of the job's earlier
//! transactions may be the one it holds (the job is switched to it), else the same
//! bytes again; accepted again and again and never held → the job fails with the best
//! reason raregen has; refused again and again → re-sent in bounded bursts, never
//! failed on a refusal that may pass (bounded either way: never a re-send every run).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use tokio::time::Instant;

use crate::broadcaster::Deps;
use crate::maintenance::{MaintenanceError, Report, Service};
use crate::ports::{BroadcastOutcome, OutpointState, TxPresence};
use crate::ports::{Confirmation, WatchStore};

mod anchor;
mod scans;

use anchor::switch_to_earlier;
use scans::SpenderScans;

/// Sent transactions asked about per run at most.
pub const CONFIRM_BATCH: u32 = 500;

/// Re-sends of a transaction the node does not hold that it answered definitively
/// (accepted, and then again not held; or refused) in one burst: then none for
/// `stuck_after` × [`UNHELD_GIVE_UP_AFTER`]; after that, one accepted and never held
/// fails, one refused gets another burst.
pub const MAX_UNHELD_RESENDS: u32 = 5;

/// ... and before it has been missing for this many `janitor.stuck_after`: a node that
/// answers before it verifies (bcoin) may verify a minute later under load, and a job
/// given up on while its transaction is still in the node's queue would be published
/// while recorded `failed`.
pub const UNHELD_GIVE_UP_AFTER: u32 = 10;

/// Block scans for the spender of a sent job's spent anchor per run at most (asking
/// whether the anchor is spent is not counted): the rest wait for the next run.
pub const SPENDER_LOOKS_PER_RUN: u32 = 16;

/// A sent transaction the node does not hold.
#[derive(Debug, Clone)]
struct UnheldTx {
    /// Re-sends the node answered definitively (accepted without then holding it, or
    /// refused).
    resends: u32,
    /// Missing since.
    since: Instant,
    /// The node's words when it last refused a re-send.
    refusal: Option<String>,
}

impl UnheldTx {
    fn new() -> UnheldTx {
        UnheldTx {
            resends: 0,
            since: Instant::now(),
            refusal: None,
        }
    }
}

type Unheld = HashMap<String, UnheldTx>;

pub struct ConfirmationWatcher {
    pub store: Arc<dyn WatchStore>,
    pub deps: Arc<Deps>,
    pub stuck_after: Duration,
    /// Confirmations of a stranger's spend of a sent job's anchor before the job leaves
    /// it (`janitor.reanchor_confirmations`).
    pub reanchor_confirmations: u32,
    /// Lost on a restart: the counts start again, so a give-up comes later, never
    /// sooner.
    unheld: Mutex<Unheld>,
    spender_scans: Mutex<SpenderScans>,
}

impl ConfirmationWatcher {
    pub fn new(
        store: Arc<dyn WatchStore>,
        deps: Arc<Deps>,
        stuck_after: Duration,
    ) -> ConfirmationWatcher {
        ConfirmationWatcher {
            store,
            deps,
            stuck_after,
            reanchor_confirmations: 1,
            unheld: Mutex::default(),
            spender_scans: Mutex::default(),
        }
    }

    /// Sets `reanchor_confirmations` (at least 1).
    pub fn reanchor_after(mut self, confirmations: u32) -> ConfirmationWatcher {
        self.reanchor_confirmations = confirmations.max(1);
        self
    }
}

#[async_trait]
impl Service for ConfirmationWatcher {
    fn name(&self) -> &'static str {
        "confirmation_watcher"
    }

    async fn run(&self) -> Report {
        let mut report = Report::default();
        match self.check().await {
            Ok(n) => report.items(n),
            Err(e) => {
                report.error();
                tracing::warn!(error = %e, "confirmation watcher: confirmations not checked");
            }
        }
        report
    }
}

/// Checks sent transactions: confirmed ones are recorded (their outputs' chains are
/// then confirmed); ones the node no longer has are sent again from their stored bytes.
/// Answers how many it acted on.
impl ConfirmationWatcher {
    async fn check(&self) -> Result<u64, MaintenanceError> {
        let (store, deps, unheld) = (&*self.store, &*self.deps, &self.unheld);
        let sent = store.unconfirmed(CONFIRM_BATCH, self.stuck_after).await?;
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
        let mut acted = 0u64;
        let mut resend = Vec::new();
        let mut still_unheld = HashMap::new();
        let previously = std::mem::take(&mut *unheld.lock().expect("unheld"));
        // Transactions of a lane set aside this run (a parent's anchor was spent by a
        // stranger): their jobs are queued again, and their bytes never sent again.
        let mut set_aside = std::collections::HashSet::new();
        // A coin made by one of these transactions that is not confirmed cannot have a
        // confirmed spender: its spend is not looked for (a lane whose parent the node
        // lost would otherwise cost a look through the recent blocks per descendant).
        let not_confirmed: std::collections::HashSet<String> = answers
            .iter()
            .filter(|(_, p)| !matches!(p, Ok(TxPresence::Confirmed { .. })))
            .map(|(u, _)| u.txid.clone())
            .collect();
        // Taken for the run (a guard is not held across the node's answers), put back
        // at its end.
        let mut spender_looks =
            std::mem::take(&mut *self.spender_scans.lock().expect("scans")).next_run();
        for (u, presence) in answers {
            let crate::ports::Unconfirmed {
                txid,
                raw_tx,
                settled,
                input,
                split,
            } = u;
            if set_aside.contains(&txid) {
                continue;
            }
            match presence {
                Ok(TxPresence::Unknown) if settled => {
                    if !split {
                        match switch_to_earlier(store, deps, &txid).await {
                            Ok(true) => {
                                acted += 1;
                                continue;
                            }
                            Ok(false) => {}
                            Err(e) => {
                                tracing::warn!(error = %e, %txid, "confirmation watcher: earlier transactions not checked")
                            }
                        }
                        let look = input
                            .as_ref()
                            .filter(|(parent, _)| !not_confirmed.contains(parent));
                        match self
                            .leave_a_spent_anchor(&txid, look, &mut spender_looks)
                            .await
                        {
                            Ok(aside) if !aside.is_empty() => {
                                acted += aside.len() as u64;
                                set_aside.extend(aside);
                                continue;
                            }
                            Ok(_) => {}
                            Err(e) => {
                                tracing::warn!(error = %e, %txid, "confirmation watcher: the spend of a sent job's anchor not checked")
                            }
                        }
                    }
                    let held = previously.get(&txid).cloned().unwrap_or_else(UnheldTx::new);
                    if held.resends >= MAX_UNHELD_RESENDS
                        && held.since.elapsed() < self.stuck_after * UNHELD_GIVE_UP_AFTER
                    {
                        // Re-sent enough: no more re-sends; wait out the node's queue.
                        still_unheld.insert(txid, held);
                        continue;
                    }
                    if held.resends >= MAX_UNHELD_RESENDS && held.refusal.is_some() {
                        // Refused when sent again (e.g. the mempool's minimum fee rose and
                        // the node evicted it): a refusal that may pass, and a copy may
                        // still be mined elsewhere, so the job is not failed; another
                        // burst of re-sends after another wait (a bounded cost: at most
                        // MAX_UNHELD_RESENDS per `stuck_after` × UNHELD_GIVE_UP_AFTER).
                        tracing::warn!(%txid, refusal = held.refusal.as_deref().unwrap_or_default(), "confirmation watcher: the node no longer holds a sent transaction and refuses it when sent again; trying again later");
                        still_unheld.insert(
                            txid,
                            UnheldTx {
                                refusal: held.refusal,
                                ..UnheldTx::new()
                            },
                        );
                        continue;
                    }
                    if held.resends >= MAX_UNHELD_RESENDS {
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
                            still_unheld.insert(txid, held);
                            continue;
                        }
                        // Accepted again and again, never held (the node refuses it after
                        // answering: bcoin verifies after it answers): not an endless loop;
                        // the job fails with the best reason we have, and its coin leaves
                        // the pool (retired: the node refuses the coin itself).
                        let reason = format!(
                            "the node accepted this transaction {} times but never held it: it \
                             refused it after answering (see the node's log; e.g. a wallet key \
                             that does not own the pool's coins, or a consensus rule the node \
                             enforces)",
                            held.resends + 1
                        );
                        // Twice: the second run catches a descendant recorded while the
                        // first ran.
                        for _ in 0..2 {
                            match store.fail_unheld(&txid, &reason).await {
                                Ok(0) => {}
                                Ok(n) => {
                                    acted += n;
                                    tracing::error!(%txid, jobs = n, reason, "confirmation watcher: jobs failed")
                                }
                                Err(e) => {
                                    tracing::warn!(error = %e, %txid, "confirmation watcher: could not fail an unheld job")
                                }
                            }
                        }
                        continue;
                    }
                    // The node said yes and no longer has it (it restarted, or dropped
                    // it): the same bytes again, under the rate limit, once this run's
                    // confirmations are recorded.
                    resend.push((txid, raw_tx, held));
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
                    if let Some(held) = previously.get(&txid) {
                        still_unheld.insert(txid, held.clone());
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    *unheld.lock().expect("unheld") = previously;
                    *self.spender_scans.lock().expect("scans") = spender_looks.finish();
                    return Err(e.into());
                }
            }
        }
        if !confirmed.is_empty() {
            if let Err(e) = store.record_confirmations(&confirmed).await {
                *unheld.lock().expect("unheld") = previously;
                *self.spender_scans.lock().expect("scans") = spender_looks.finish();
                return Err(e.into());
            }
        }
        // Re-sends last, each waiting for a slot at most `stuck_after`: a node that keeps
        // answering 429 holds up neither the confirmations nor the next run.
        let mut no_slot = false;
        for (txid, raw_tx, mut held) in resend {
            if no_slot {
                still_unheld.insert(txid, held);
                continue;
            }
            deps.stats.observe_rebroadcast();
            let outcome = match crate::send::broadcast_within(
                &deps.tokens,
                &*deps.node,
                &raw_tx,
                Some(&deps.stats),
                Some(self.stuck_after),
            )
            .await
            {
                Ok(outcome) => outcome,
                Err(e) => {
                    tracing::warn!(error = %e, "confirmation watcher: no slot for re-sends; the rest wait for the next run");
                    no_slot = true;
                    still_unheld.insert(txid, held);
                    continue;
                }
            };
            acted += 1;
            // A definitive answer counts towards giving up (accepted, and the next run
            // sees whether the node holds it; or refused); no answer says nothing.
            match &outcome {
                BroadcastOutcome::Accepted => {
                    held.resends += 1;
                    held.refusal = None;
                }
                BroadcastOutcome::Rejected { reason, .. } => {
                    held.resends += 1;
                    held.refusal = Some(reason.clone());
                }
                _ => {}
            }
            if held.resends > 0 {
                still_unheld.insert(txid.clone(), held);
            }
            tracing::warn!(%txid, ?outcome, "confirmation watcher: re-sent a transaction the node no longer had");
        }
        *unheld.lock().expect("unheld") = still_unheld;
        *self.spender_scans.lock().expect("scans") = spender_looks.finish();
        Ok(acted + confirmed.len() as u64)
    }
}
