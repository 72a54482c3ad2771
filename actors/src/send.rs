//! The one way raregen puts a transaction on the wire: a slot from the TokenBucket,
//! the broadcast, the slot given back when the node has answered. A 429 tells the
//! limiter (every broadcaster of the process pauses) and waits for the next slot. The
//! broadcasters, the maintenance services' re-sends, the UtxoPool's splits and the
//! commands that broadcast (`raregen wallet split`, `raregen unstick`, through
//! `SharedLimit`) all go through here, so nothing reaches the node outside the limit.

use std::time::Duration;

use actix::Addr;
use tokio::time::Instant;

use crate::broadcaster::Deps;
use crate::ports::{BroadcastOutcome, Node};
use crate::ports::{Retry, Sent, StoreError, StuckJob};
use crate::rate_limit::{acquire, RateLimited, TokenBucket};
use crate::recorder::{MarkDirty, RecordRetry, RecordSent};
use crate::stats::Stats;
use crate::utxo_pool::{Add, Forget};

/// No slot came within the caller's patience.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("no broadcast slot within {0:?}")]
pub struct NoSlot(pub Duration);

/// Broadcasts `raw_tx` under the limit and answers the node's verdict, never
/// [`BroadcastOutcome::RateLimited`]: a 429 pauses the limiter and the same bytes go
/// out again with the next slot. Waits for a slot as long as it takes.
pub async fn broadcast(
    tokens: &Addr<TokenBucket>,
    node: &dyn Node,
    raw_tx: &[u8],
    stats: Option<&Stats>,
) -> BroadcastOutcome {
    match broadcast_within(tokens, node, raw_tx, stats, None).await {
        Ok(outcome) => outcome,
        Err(NoSlot(_)) => unreachable!("no patience, no timeout"),
    }
}

/// [`broadcast`], giving up (before anything is sent) when no slot comes within
/// `patience`.
pub async fn broadcast_within(
    tokens: &Addr<TokenBucket>,
    node: &dyn Node,
    raw_tx: &[u8],
    stats: Option<&Stats>,
    patience: Option<Duration>,
) -> Result<BroadcastOutcome, NoSlot> {
    loop {
        let grant = match patience {
            None => acquire(tokens).await,
            Some(p) => tokio::time::timeout(p, acquire(tokens))
                .await
                .map_err(|_| NoSlot(p))?,
        };
        let started = Instant::now();
        let outcome = node.broadcast(raw_tx).await;
        // The slot's last `per` starts now that the node has answered.
        drop(grant);
        if let Some(stats) = stats {
            stats.observe_broadcast(&outcome, started.elapsed());
        }
        match outcome {
            BroadcastOutcome::RateLimited { retry_after } => {
                tokens.do_send(RateLimited { retry_after });
            }
            other => return Ok(other),
        }
    }
}

/// A record made by a maintenance service, retried while the Recorder answers "again
/// shortly" (another record of the job is in its group) or the database is away, a
/// bounded number of times: the next run sees the job as it is. `None` when fenced out
/// or still not written.
pub(crate) async fn recorded<T, F, Fut>(what: &str, mut call: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Result<T, StoreError>, actix::MailboxError>>,
{
    let mut wait = Duration::from_millis(50);
    for _ in 0..10 {
        match call().await {
            Ok(Ok(v)) => return Some(v),
            Ok(Err(StoreError::Fenced)) => return None,
            Ok(Err(e)) => tracing::debug!(error = %e, "{what}: retrying in {wait:?}"),
            Err(e) => tracing::debug!(error = %e, "{what}: recorder unavailable; retrying"),
        }
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(Duration::from_secs(1));
    }
    tracing::warn!("{what}: not recorded; the next run sees the job as it is");
    None
}

/// A stored transaction of a job is on the node: the job is `sent` (under its fence),
/// its change joins the pool.
pub async fn record_sent(deps: &Deps, job: &StuckJob) {
    let sent = Sent {
        fence: job.fence,
        sent_at: chrono::Utc::now(),
        change: deps.signer.change_of(&job.raw_tx),
    };
    let change = recorded("record sent", || {
        deps.recorder.send(RecordSent {
            sent: sent.clone(),
            txid: job.txid.clone(),
        })
    })
    .await;
    if let Some(change) = change {
        deps.pool.do_send(Add(change.into_iter().collect()));
    }
}

/// Sends a job's stored bytes again, their earlier outcome being unknown: accepted (or
/// already known) → `sent`; a definitive refusal of these very bytes (fee too low,
/// non-standard, policy: not an input problem) → the job goes back to sign again on its
/// anchor, with a higher fee (the new transaction conflicts with every copy of the
/// refused one that may still be somewhere: at most one of them can be mined);
/// anything else (no answer, an input the node calls missing or spent) leaves the job
/// `sending` and its UTXO dirty for the DirtySettler's next run. Never a new signature
/// on another coin (the one case for that is a spend of the anchor by another
/// transaction, confirmed: see the DirtySettler).
pub async fn resend_same(deps: &Deps, job: &StuckJob) {
    deps.stats.observe_rebroadcast();
    match broadcast(&deps.tokens, &*deps.node, &job.raw_tx, Some(&deps.stats)).await {
        BroadcastOutcome::Accepted => record_sent(deps, job).await,
        BroadcastOutcome::Rejected {
            reason,
            input_problem: false,
        } => {
            tracing::warn!(job = job.fence.id, txid = %job.txid, %reason, "re-send refused; the job signs again on its anchor");
            let retry = Retry {
                fence: job.fence,
                error: format!("rejected by the node when sent again: {reason}"),
                not_before: chrono::Utc::now() + crate::broadcaster::retry_backoff(1),
                reanchor: false,
                settles_dirty: true,
            };
            recorded("record a refusal", || {
                deps.recorder.send(RecordRetry {
                    retry: retry.clone(),
                    utxo_id: job.utxo_id,
                    fail_now: false,
                })
            })
            .await;
            if let Some(id) = job.utxo_id {
                deps.pool.do_send(Forget(id));
            }
            deps.stats.observe_retry();
        }
        other => {
            tracing::warn!(job = job.fence.id, txid = %job.txid, outcome = ?other, "re-send not settled; asking the node again next run");
            recorded("mark dirty", || deps.recorder.send(MarkDirty(job.fence))).await;
            if let Some(id) = job.utxo_id {
                deps.pool.do_send(Forget(id));
            }
        }
    }
}
