//! `raregen wallet split --outputs N --amount SATS`: splits the largest available UTXO
//! into N pool outputs (write-ahead: stored before it is broadcast), then checks that
//! the node kept the transaction.

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use raregen_actors::{BroadcastOutcome, OutpointState, SignError, TxPresence};

use super::Wallet;
use crate::shared_limit::SharedLimit;
use crate::store::utxos;

/// How long to wait for a node that answered "ok" to show the transaction (bcoin
/// verifies after it answers; a busy one takes seconds to get there).
const PRESENCE_WAIT: Duration = Duration::from_secs(30);

/// What a split made.
#[derive(Debug, Clone)]
pub struct SplitDone {
    pub txid: String,
    pub outputs: u32,
    pub amount: u64,
    pub fee: u64,
    pub change: Option<u64>,
    pub depth: u32,
}

impl Wallet {
    /// Splits the largest available UTXO into `outputs` outputs of `amount` sats
    /// (write-ahead: stored before it is broadcast). Splits left unfinished by an
    /// earlier run are re-broadcast from their stored bytes first.
    pub async fn split(&self, outputs: u32, amount: u64) -> anyhow::Result<SplitDone> {
        let share = match self.shared_limit {
            true => Some(SharedLimit::join(&self.settings, self.pool.clone()).await?),
            false => None,
        };
        let done = self.split_under(share.as_ref(), outputs, amount).await;
        if let Some(share) = share {
            share.leave().await;
        }
        done
    }

    async fn split_under(
        &self,
        share: Option<&SharedLimit>,
        outputs: u32,
        amount: u64,
    ) -> anyhow::Result<SplitDone> {
        for unfinished in utxos::unfinished_splits(&self.pool).await? {
            tracing::info!(txid = %unfinished.txid, "re-broadcasting an unfinished split");
            self.publish_split(share, &unfinished).await?;
        }
        let mut tx = self.pool.begin().await?;
        let input = utxos::lock_largest_available(&mut tx, self.settings.utxo_pool.max_chain_depth)
            .await?
            .context("no available UTXO in the pool: fund `raregen wallet address` and run `raregen wallet import`")?;
        let signed = self
            .builder
            .build_split(&input, outputs, amount)
            .map_err(|e| match e {
                SignError::InsufficientFunds { have, need } => anyhow::anyhow!(
                    "the largest available UTXO ({}:{}, {have} sats) cannot pay {outputs} × {amount} sats \
                     plus the fee ({need} sats in all)",
                    input.txid,
                    input.vout
                ),
                other => anyhow::anyhow!(other),
            })?;
        let id = utxos::store_split(
            &mut tx,
            &input,
            &signed,
            outputs,
            amount,
            self.script().as_bytes(),
        )
        .await?;
        tx.commit().await?;
        let split = raregen_actors::StoredSplit {
            id,
            txid: signed.txid.clone(),
            raw_tx: signed.raw_tx,
            input_utxo_id: input.id,
        };
        self.publish_split(share, &split).await?;
        Ok(SplitDone {
            txid: signed.txid,
            outputs,
            amount,
            fee: signed.fee,
            change: signed.change.map(|c| c.1),
            depth: input.unconfirmed_depth + 1,
        })
    }

    /// Broadcasts a stored split and records what became of it.
    async fn publish_split(
        &self,
        share: Option<&SharedLimit>,
        split: &raregen_actors::StoredSplit,
    ) -> anyhow::Result<()> {
        let outcome = match share {
            Some(share) => share.broadcast(self.node.as_ref(), &split.raw_tx).await?,
            None => self.node.broadcast(&split.raw_tx).await,
        };
        match outcome {
            BroadcastOutcome::Accepted => {}
            BroadcastOutcome::Rejected {
                reason,
                input_problem,
            } => {
                utxos::split_rejected(&self.pool, split, &reason, input_problem).await?;
                bail!("the node refused split {}: {reason}", split.txid);
            }
            BroadcastOutcome::Unknown { reason } => {
                utxos::split_unknown(&self.pool, split, &reason).await?;
                bail!(
                    "the outcome of split {} is unknown ({reason}); it is stored and will be \
                     re-broadcast by the next `raregen wallet split` or by the daemon",
                    split.txid
                );
            }
            BroadcastOutcome::RateLimited { retry_after } => {
                bail!(
                    "the node is rate-limiting (retry after {}); split {} is stored, run again to re-broadcast it",
                    retry_after.map_or("a while".into(), |d| humantime::format_duration(d).to_string()),
                    split.txid
                );
            }
        }
        // Some nodes (bcoin, explorers) answer "ok" and verify afterwards: look.
        let started = Instant::now();
        loop {
            match self.node.tx_presence(&split.txid).await {
                Ok(TxPresence::InMempool | TxPresence::Confirmed { .. }) => {
                    utxos::split_accepted(&self.pool, split).await?;
                    return Ok(());
                }
                Ok(TxPresence::Unknown) if started.elapsed() < PRESENCE_WAIT => {}
                Ok(TxPresence::Unknown) => break,
                Err(e) => {
                    utxos::split_unknown(&self.pool, split, &e.to_string()).await?;
                    bail!("cannot check split {} on the node: {e}", split.txid);
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // Accepted, then dropped. If our input is still unspent, the split is dead.
        let input: (String, i32) = sqlx::query_as("SELECT txid, vout FROM utxos WHERE id = $1")
            .bind(split.input_utxo_id)
            .fetch_one(&self.pool)
            .await?;
        match self.node.outpoint(&input.0, input.1 as u32).await? {
            OutpointState::Unspent { .. } => {
                let reason =
                    "the node accepted the transaction, then dropped it (see the node's log)";
                utxos::split_rejected(&self.pool, split, reason, false).await?;
                bail!("split {}: {reason}", split.txid);
            }
            OutpointState::Gone { .. } => {
                let reason = "the node dropped the transaction and its input is spent elsewhere";
                utxos::split_unknown(&self.pool, split, reason).await?;
                bail!("split {}: {reason}", split.txid);
            }
        }
    }
}
