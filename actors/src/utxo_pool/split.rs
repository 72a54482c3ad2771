//! The pool's splits: which coins are kept for them, the split of the largest when
//! the pool runs low, and its broadcast under the rate limit.

use std::time::Duration;

use actix::prelude::*;
use tokio::time::Instant;

use super::UtxoPool;
use crate::ports::{BroadcastOutcome, Node, SpendableUtxo, TxPresence};
use crate::ports::{PoolStore, StoredSplit};
use crate::rate_limit::TokenBucket;

impl UtxoPool {
    /// Is this UTXO large enough to keep for splits — able to fund at least half a full
    /// split (with room for the fee) — and shallow enough to split?
    pub(super) fn splittable(&self, utxo: &SpendableUtxo) -> bool {
        let half_split = u64::from((self.config.split_outputs / 2).max(2));
        utxo.satoshis >= (self.config.split_amount + 100) * half_split
            && utxo.unconfirmed_depth + 1 < self.config.max_chain_depth
    }

    /// Splits the largest UTXO kept for splits into `split_outputs` outputs.
    pub(super) fn split(&mut self, ctx: &mut Context<Self>) {
        if self.splitting {
            return;
        }
        let cfg = &self.config;
        // The largest of the large UTXOs, the shallowest among equals.
        let Some(pos) = self
            .large
            .iter()
            .enumerate()
            .max_by_key(|(_, u)| (u.satoshis, std::cmp::Reverse(u.unconfirmed_depth)))
            .map(|(i, _)| i)
        else {
            return;
        };
        let largest = self.large[pos].satoshis;
        // Room for the fee: a generous 100 sats per output.
        let affordable =
            (largest / (cfg.split_amount + 100)).min(u64::from(cfg.split_outputs)) as u32;
        if affordable < 2 {
            return;
        }
        let input = self.large.swap_remove(pos);
        self.known.remove(&input.id);
        let signed = match self.signer.split(&input, affordable, cfg.split_amount) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot build a split");
                self.add(input);
                return;
            }
        };
        self.splitting = true;
        let input_id = input.id;
        self.split_inputs.push((input_id, None));
        let store = self.store.clone();
        let node = self.node.clone();
        let tokens = self.tokens.clone();
        let amount = cfg.split_amount;
        tracing::info!(txid = %signed.txid, outputs = affordable, amount, "auto-split");
        ctx.spawn(
            async move {
                let split = store
                    .store_split(&input, &signed, affordable, amount)
                    .await?;
                publish_split(&*store, &*node, &tokens, &split).await
            }
            .into_actor(self)
            .map(move |res, act, _| {
                act.splitting = false;
                if act.refilling {
                    // The reload in flight may have read the coin before the split's
                    // write-ahead: kept out of it (its end forgets the entry).
                    let started = act.reloads;
                    for (id, ended) in &mut act.split_inputs {
                        if *id == input_id && ended.is_none() {
                            *ended = Some(started);
                        }
                    }
                } else {
                    // No reload in flight: every later one reads the store's word.
                    act.split_inputs
                        .retain(|(id, ended)| !(*id == input_id && ended.is_none()));
                }
                match res {
                    Ok(outputs) => {
                        for u in outputs {
                            act.add(u);
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "auto-split did not complete"),
                }
            }),
        );
    }
}

/// Broadcasts a stored split (taking a token) and records the outcome; returns the
/// outputs that joined the pool.
pub async fn publish_split(
    store: &dyn PoolStore,
    node: &dyn Node,
    tokens: &Addr<TokenBucket>,
    split: &StoredSplit,
) -> Result<Vec<SpendableUtxo>, crate::ports::StoreError> {
    match crate::send::broadcast(tokens, node, &split.raw_tx, None).await {
        BroadcastOutcome::Accepted => {}
        BroadcastOutcome::Rejected {
            reason,
            input_problem,
        } => {
            tracing::warn!(txid = %split.txid, %reason, "the node refused a split");
            store.split_rejected(split, &reason, input_problem).await?;
            return Ok(Vec::new());
        }
        other => {
            // Unknown (a 429 never comes back from the limited broadcast).
            let reason = match other {
                BroadcastOutcome::Unknown { reason } => reason,
                other => format!("{other:?}"),
            };
            tracing::warn!(txid = %split.txid, %reason, "a split's broadcast has an unknown outcome; the DirtySettler will ask the node");
            store.split_unknown(split, &reason).await?;
            return Ok(Vec::new());
        }
    }
    // Some nodes answer "ok" and verify afterwards: its outputs are only spendable once
    // the node really has it.
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(5) {
        match node.tx_presence(&split.txid).await {
            Ok(TxPresence::InMempool | TxPresence::Confirmed { .. }) => {
                return store.split_accepted(split).await
            }
            Ok(TxPresence::Unknown) | Err(_) => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
        }
    }
    tracing::warn!(
        txid = %split.txid,
        "the node accepted a split but does not hold it: it refused it after answering \
         (see the node's log); the Janitor will ask again"
    );
    store
        .split_unknown(split, "accepted by the node but not seen in its mempool")
        .await?;
    Ok(Vec::new())
}
