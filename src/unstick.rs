//! `raregen unstick [--older-than 2m]`: the seed's manual recovery made safe.
//!
//! The seed reset stuck jobs to `queued`, so they were signed again with another UTXO,
//! and a job whose first transaction had reached the node was published twice. Here a
//! job stuck in `sending` is adopted (fenced like any claim) and its *stored* bytes
//! are broadcast again: the txid cannot change. The node's answer settles it as the
//! pipeline would: accepted (or already known) → `sent`; rejected for a job problem →
//! back to the queue; unknown or an input problem → its UTXO is marked dirty for the
//! Janitor, which asks the node what became of it.
//!
//! Broadcasts go through the shared rate limit ([`SharedLimit`]): beside running
//! daemons, all of them together stay under `rate_limit.max` per `rate_limit.per`.

use std::time::Duration;

use anyhow::Context;
use chrono::Utc;
use raregen_actors::{BroadcastOutcome, JanitorStore, JobStore, Node, Retry, Sent, Signer};
use serde::Serialize;

use crate::chain::{node, TxBuilder, WalletKey};
use crate::config::Settings;
use crate::shared_limit::SharedLimit;
use crate::store::{self, PgStore};

/// What a run did.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct Unstuck {
    /// Jobs taken over and broadcast again.
    pub adopted: usize,
    /// Of those, accepted by the node (or already known to it): now `sent`.
    pub sent: usize,
    /// Rejected for a reason of the job's own: back in the queue (or `failed`).
    pub requeued: usize,
    /// Unknown outcome or an input problem: UTXO marked dirty for the Janitor.
    pub dirty: usize,
    /// Jobs stuck in `sending` whose UTXO was already dirty: left to the Janitor.
    pub left_to_janitor: i64,
}

/// Re-broadcasts the stored transactions of jobs in `sending` for longer than
/// `older_than`, at most `limit` of them.
pub async fn run(settings: &Settings, older_than: Duration, limit: u32) -> anyhow::Result<Unstuck> {
    let wallet = WalletKey::from_settings(settings)
        .context("unstick needs the wallet key to recognise change outputs")?;
    let signer = TxBuilder::new(
        wallet,
        settings.chain.fee_rate,
        settings.chain.max_payload_bytes,
    );
    let node = node::from_settings(&settings.node)?;
    let pool = store::connect(&settings.database).await?;
    // A live lease (so that a running daemon's Janitor leaves our adopted jobs alone)
    // and a share of the node's budget.
    let limit_share = SharedLimit::join(settings, pool.clone()).await?;
    let result = unstick(
        settings,
        &limit_share,
        &signer,
        node.as_ref(),
        older_than,
        limit,
    )
    .await;
    limit_share.leave().await;
    let mut done = result?;
    done.left_to_janitor = sqlx::query_scalar(
        "SELECT count(*) FROM publish_jobs j JOIN utxos x ON x.id = j.utxo_id
         WHERE j.status = 'sending' AND x.dirty",
    )
    .fetch_one(&pool)
    .await?;
    Ok(done)
}

async fn unstick(
    settings: &Settings,
    limit_share: &SharedLimit,
    signer: &dyn Signer,
    node: &dyn Node,
    older_than: Duration,
    limit: u32,
) -> anyhow::Result<Unstuck> {
    let store: &PgStore = limit_share.store();
    let stuck = store.adopt_stuck(older_than, limit).await?;
    let mut done = Unstuck {
        adopted: stuck.len(),
        ..Unstuck::default()
    };
    for job in stuck {
        match limit_share.broadcast(node, &job.raw_tx).await {
            BroadcastOutcome::Accepted => {
                let sent = Sent {
                    fence: job.fence,
                    sent_at: Utc::now(),
                    change: signer.change_of(&job.raw_tx),
                };
                let recorded = store.record_sent(&[sent]).await?;
                if recorded.ids.contains(&job.fence.id) {
                    done.sent += 1;
                    tracing::info!(job = job.fence.id, txid = %job.txid, "re-broadcast: sent");
                }
            }
            BroadcastOutcome::Rejected {
                reason,
                input_problem: false,
            } => {
                let retry = Retry {
                    fence: job.fence,
                    error: format!("rejected by the node: {reason}"),
                    not_before: Utc::now(),
                };
                store
                    .record_retry(&[retry], settings.broadcaster.max_attempts)
                    .await?;
                done.requeued += 1;
                tracing::warn!(job = job.fence.id, %reason, "re-broadcast rejected: job requeued");
            }
            other => {
                store.mark_dirty(&[job.fence]).await?;
                done.dirty += 1;
                tracing::warn!(job = job.fence.id, outcome = ?other, "re-broadcast not settled: UTXO marked dirty for the Janitor");
            }
        }
    }
    Ok(done)
}

pub async fn main(settings: Settings, older_than: Duration, limit: u32) -> anyhow::Result<()> {
    let done = run(&settings, older_than, limit).await?;
    println!(
        "{} stuck job(s) re-broadcast from their stored bytes: {} sent, {} requeued, {} left dirty for the Janitor",
        done.adopted, done.sent, done.requeued, done.dirty
    );
    if done.left_to_janitor > 0 {
        println!(
            "{} job(s) in sending wait on a dirty UTXO: the Janitor settles them by asking the node",
            done.left_to_janitor
        );
    }
    Ok(())
}
