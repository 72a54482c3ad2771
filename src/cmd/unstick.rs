//! `raregen unstick [--older-than 2m]`: the manual recovery of RareGen's batch worker,
//! made safe.
//!
//! The batch worker reset stuck jobs to `queued`, so they were signed again with
//! another UTXO, and a job whose first transaction had reached the node was published
//! twice. Here a job stuck in `sending` is adopted (fenced like any claim) and its
//! *stored* bytes are broadcast again: the txid cannot change. Accepted (or already
//! known) → `sent`; anything else (refused, unknown, an input problem) → its UTXO is
//! marked dirty for the Janitor, which asks the node what became of it. Never a new
//! signature: the first copy's outcome was unknown, and it may still be mined.
//!
//! Broadcasts go through the shared rate limit ([`SharedLimit`]): beside running
//! daemons, all of them together stay under `rate_limit.max` per `rate_limit.per`.

use std::time::Duration;

use anyhow::Context;
use chrono::Utc;
use raregen_actors::{BroadcastOutcome, Node, OutcomeStore, RescueStore, Sent, Signer};
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
    /// Refused, unknown outcome or an input problem: UTXO marked dirty for the
    /// Janitor, which asks the node (never signed again).
    pub dirty: usize,
    /// Jobs stuck in `sending` whose UTXO was already dirty: left to the Janitor.
    pub left_to_janitor: i64,
}

/// Re-broadcasts the stored transactions of jobs in `sending` for longer than
/// `older_than`, at most `limit` of them.
pub async fn adopt_and_resend(
    settings: &Settings,
    older_than: Duration,
    limit: u32,
) -> anyhow::Result<Unstuck> {
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
    let result = unstick(&limit_share, &signer, node.as_ref(), older_than, limit).await;
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
    limit_share: &SharedLimit,
    signer: &dyn Signer,
    node: &dyn Node,
    older_than: Duration,
    limit: u32,
) -> anyhow::Result<Unstuck> {
    let store: &PgStore = limit_share.store();
    // No pipeline in this process: nothing of ours is held in memory.
    let stuck = store.adopt_stuck(older_than, limit, &[]).await?;
    let mut done = Unstuck {
        adopted: stuck.len(),
        ..Unstuck::default()
    };
    for job in stuck {
        match limit_share.broadcast(node, &job.raw_tx).await? {
            BroadcastOutcome::Accepted => {
                let sent = Sent {
                    fence: job.fence,
                    sent_at: Utc::now(),
                    change: signer.change_of(&job.raw_tx),
                };
                let sent = [sent];
                let recorded = retrying("record sent", || store.record_sent(&sent)).await?;
                if recorded.ids.contains(&job.fence.id) {
                    done.sent += 1;
                    tracing::info!(job = job.fence.id, txid = %job.txid, "re-broadcast: sent");
                }
            }
            other => {
                // A refusal speaks of these bytes now, not of a copy the node (or its
                // peers) may have taken before: never a new signature from here.
                let fences = [job.fence];
                retrying("mark dirty", || store.mark_dirty(&fences)).await?;
                done.dirty += 1;
                tracing::warn!(job = job.fence.id, outcome = ?other, "re-broadcast not settled: UTXO marked dirty for the Janitor");
            }
        }
    }
    Ok(done)
}

/// A store call again while the database says "later" (a deadlock with a daemon's
/// group statement, a restart), up to about 10 s.
async fn retrying<T, F, Fut>(what: &str, mut call: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, raregen_actors::StoreError>>,
{
    let mut wait = Duration::from_millis(50);
    for _ in 0..10 {
        match call().await {
            Err(raregen_actors::StoreError::Unavailable(e)) => {
                tracing::warn!(error = %e, "{what}: retrying in {wait:?}");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(2));
            }
            other => return Ok(other?),
        }
    }
    Ok(call().await?)
}

pub async fn run(settings: Settings, older_than: Duration, limit: u32) -> anyhow::Result<()> {
    let done = adopt_and_resend(&settings, older_than, limit).await?;
    println!(
        "{} stuck job(s) re-broadcast from their stored bytes: {} sent, {} left dirty for the Janitor",
        done.adopted, done.sent, done.dirty
    );
    if done.left_to_janitor > 0 {
        println!(
            "{} job(s) in sending wait on a dirty UTXO: the Janitor settles them by asking the node",
            done.left_to_janitor
        );
    }
    Ok(())
}
