//! Preparing a job: a UTXO (or the job's anchor), the signature, and the write-ahead
//! record that stores the signed transaction before anything is broadcast.

use std::time::Duration;

use actix::prelude::*;
use chrono::Utc;

use crate::ports::SignError;
use crate::ports::{ClaimedJob, Fence, Retry, Sending, StoreError, StoredTx};
use crate::recorder::{RecordRetry, RecordSending};
use crate::utxo_pool::{Forget, Release, Reserve};

use super::{retry_backoff, Deps};

/// Retries a store call until it answers (the database may be restarting); `None`
/// when the job's claim was taken over.
pub(super) async fn until_stored<T, F, Fut>(what: &str, mut call: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Result<T, StoreError>, MailboxError>>,
{
    let mut wait = Duration::from_millis(100);
    loop {
        match call().await {
            Ok(Ok(v)) => return Some(v),
            Ok(Err(StoreError::Fenced)) => return None,
            Ok(Err(e)) => tracing::warn!(error = %e, "{what}: retrying in {wait:?}"),
            Err(e) => {
                tracing::warn!(error = %e, "{what}: recorder unavailable; retrying in {wait:?}")
            }
        }
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(Duration::from_secs(5));
    }
}

/// UTXO → build + sign → write-ahead. `None` when the job ended here (failed, or its
/// claim was taken over).
pub(super) async fn sign_and_store(
    deps: &Deps,
    fence: Fence,
    job: &ClaimedJob,
) -> Option<StoredTx> {
    if let Some(anchor) = &job.anchor {
        return sign_on_anchor(deps, fence, job, anchor).await;
    }
    loop {
        let utxo = match deps.pool.send(Reserve { job: job.id }).await {
            Ok(Some(u)) => u,
            _ => {
                // The pool is empty for now: a split or the Janitor will refill it.
                deps.stats.observe_utxo_wait();
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let signed = match deps.signer.publish(&utxo, &job.payload, 0) {
            Ok(s) => s,
            Err(SignError::InsufficientFunds { .. }) => {
                deps.pool.do_send(Forget(utxo.id));
                continue;
            }
            Err(e) => {
                // The job itself cannot be built (e.g. its payload is over the limit).
                deps.pool.do_send(Release(utxo));
                let retry = Retry {
                    fence,
                    error: format!("cannot build the transaction: {e}"),
                    not_before: Utc::now(),
                    reanchor: false,
                    settles_dirty: false,
                };
                until_stored("record a failure", || {
                    deps.recorder.send(RecordRetry {
                        retry: retry.clone(),
                        utxo_id: None,
                        fail_now: true,
                    })
                })
                .await;
                return None;
            }
        };
        match write_ahead(deps, fence, utxo.id, signed).await {
            Some(Ok(stored)) => return Some(stored),
            // The UTXO was taken meanwhile (another process spent it, or it turned
            // dirty): nothing was stored or broadcast; sign again with another.
            Some(Err(())) => {
                deps.pool.do_send(Forget(utxo.id));
                continue;
            }
            // Fenced: the claim is another's now; nothing was broadcast.
            None => {
                deps.pool.do_send(Forget(utxo.id));
                return None;
            }
        }
    }
}

/// Stores the signed transaction before anything is broadcast. `Some(Err(()))`: the
/// UTXO was taken meanwhile (nothing stored); `None`: the claim is another's now.
async fn write_ahead(
    deps: &Deps,
    fence: Fence,
    utxo_id: i64,
    signed: crate::ports::SignedTx,
) -> Option<Result<StoredTx, ()>> {
    let sending = Sending {
        fence,
        utxo_id,
        txid: signed.txid.clone(),
        raw_tx: signed.raw_tx.clone(),
    };
    crate::fail_point!("before-store");
    let stored = until_stored("write-ahead", || {
        deps.recorder.send(RecordSending(sending.clone()))
    })
    .await?;
    Some(if stored {
        Ok(StoredTx {
            txid: signed.txid,
            raw_tx: signed.raw_tx,
            utxo_id: Some(utxo_id),
        })
    } else {
        Err(())
    })
}

/// A job that signed before (a node refused that transaction) signs again on its
/// anchor, the coin all its transactions spend, and on nothing else: whichever of them
/// reaches a block, the others can never follow it. The new one pays a higher fee, so
/// that it may replace an earlier copy a node still holds.
async fn sign_on_anchor(
    deps: &Deps,
    fence: Fence,
    job: &ClaimedJob,
    anchor: &crate::ports::Anchor,
) -> Option<StoredTx> {
    let later = |error: String, fail_now: bool| {
        let retry = Retry {
            fence,
            error,
            not_before: Utc::now() + retry_backoff(anchor.signed_before + 1),
            reanchor: false,
            settles_dirty: false,
        };
        async move {
            until_stored("record a retry", || {
                deps.recorder.send(RecordRetry {
                    retry: retry.clone(),
                    utxo_id: None,
                    fail_now,
                })
            })
            .await;
        }
    };
    if anchor.retired {
        later(
            format!(
                "its anchor (pool UTXO {}) is retired: no transaction of the job can be mined \
                 now, and it signs on no other coin",
                anchor.utxo_id
            ),
            true,
        )
        .await;
        return None;
    }
    let Some(utxo) = anchor.utxo.clone() else {
        // Dirty, or spent by another transaction: the Janitor settles it first.
        tracing::warn!(
            job = job.id,
            anchor = anchor.utxo_id,
            "the job's anchor is not available now; the job waits"
        );
        later(
            "its anchor is not available now (being settled)".into(),
            false,
        )
        .await;
        return None;
    };
    let signed = match deps
        .signer
        .publish(&utxo, &job.payload, anchor.signed_before)
    {
        Ok(s) => s,
        Err(e) => {
            // Unbuildable, or the anchor cannot pay a higher fee: the job ends here.
            later(format!("cannot sign again on its anchor: {e}"), true).await;
            return None;
        }
    };
    match write_ahead(deps, fence, utxo.id, signed).await {
        Some(Ok(stored)) => Some(stored),
        Some(Err(())) => {
            later(
                "its anchor is not available now (being settled)".into(),
                false,
            )
            .await;
            None
        }
        None => None,
    }
}
