//! A slot from the TokenBucket: [`acquire`] (the way every broadcast takes one), the
//! [`Grant`] that holds it and gives it back when dropped, and the messages that ask
//! for one.

use std::time::Duration;

use actix::prelude::*;
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::actor::TokenBucket;

/// A slot for one broadcast. Dropping it (after the broadcast completed, or when its
/// holder panicked) starts its last `per`.
pub struct Grant {
    pub(super) bucket: Option<Addr<TokenBucket>>,
    /// The lease the grant was made under (shared budgets): the broadcast must start
    /// before it ends.
    pub(super) lease_until: Option<Instant>,
}

impl Grant {
    /// Nothing granted (the limiter stopped or restarted first).
    fn none() -> Grant {
        Grant {
            bucket: None,
            lease_until: None,
        }
    }

    /// False when the limiter stopped before granting: no broadcast may follow.
    pub fn is_granted(&self) -> bool {
        self.bucket.is_some()
    }

    /// Granted, and the lease it was granted under still runs.
    pub fn usable_now(&self) -> bool {
        self.is_granted() && self.lease_until.is_none_or_now_before()
    }
}

trait LeaseCheck {
    fn is_none_or_now_before(&self) -> bool;
}

impl LeaseCheck for Option<Instant> {
    fn is_none_or_now_before(&self) -> bool {
        !matches!(self, Some(until) if Instant::now() >= *until)
    }
}

/// Waits for a slot: the way every broadcast takes one (the bare [`Acquire`] message is
/// for tests: it does not check the grant's lease). Fails closed: while the limiter does not
/// answer (stopped, restarting, its mailbox full) nothing is granted and the caller
/// waits, so no broadcast ever goes out without a slot.
///
/// The caller waits on a channel of its own ([`AcquireInto`]): a caller that gives up
/// (its future dropped: a timeout, a stopped broadcaster) is seen as gone at once, is
/// no longer counted among the waiters, and takes no slot.
pub async fn acquire(tokens: &Addr<TokenBucket>) -> Grant {
    let mut wait = Duration::from_millis(100);
    loop {
        let (tx, rx) = oneshot::channel();
        let answer = match tokens.send(AcquireInto(tx)).await {
            // Dropped unanswered: the limiter stopped or restarted before granting.
            Ok(()) => Ok(rx.await.unwrap_or_else(|_| Grant::none())),
            Err(e) => Err(e),
        };
        match answer {
            Ok(grant) if grant.usable_now() => return grant,
            Ok(grant) if grant.is_granted() => {
                // The lease ended between the grant and now (a starved process): the
                // slot is given back unused, and we wait for the renewed lease.
                drop(grant);
                tracing::warn!("lease ended before the granted broadcast; waiting for it");
            }
            Ok(_) => tracing::warn!("rate limiter stopped before granting; not broadcasting"),
            Err(e) => tracing::warn!(error = %e, "rate limiter unavailable; not broadcasting"),
        }
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(Duration::from_secs(5));
    }
}

impl Drop for Grant {
    fn drop(&mut self) {
        if let Some(bucket) = self.bucket.take() {
            bucket.do_send(Complete);
        }
    }
}

/// Wait for a slot to broadcast once; answers when one is free. For tests: it skips
/// [`acquire`]'s check that the lease still runs. A waiter stays counted
/// until it is answered, even when its asker gave up (actix keeps the answer's channel
/// open): [`acquire`], through [`AcquireInto`], is the way that notices.
#[derive(Message)]
#[rtype(result = "Grant")]
pub struct Acquire;

/// Queue for a slot, answered on the given channel: a waiter whose receiver is dropped
/// is gone (see [`acquire`]).
#[derive(Message)]
#[rtype(result = "()")]
pub struct AcquireInto(pub oneshot::Sender<Grant>);

/// A granted broadcast completed (sent by [`Grant`]'s drop).
#[derive(Message)]
#[rtype(result = "()")]
struct Complete;

/// `token-bucket-acquire=N*off->1*return->off` (the `failpoints` feature): the limiter
/// stops at the N+1-th request (the tests' way to show that it fails closed).
fn failpoint_stops(ctx: &mut Context<TokenBucket>) -> bool {
    #[cfg(feature = "failpoints")]
    {
        let fail = (|| {
            fail::fail_point!("token-bucket-acquire", |_| true);
            false
        })();
        if fail {
            tracing::warn!("failpoint token-bucket-acquire: rate limiter stopping");
            ctx.stop();
            return true;
        }
    }
    let _ = ctx;
    false
}

impl Handler<Acquire> for TokenBucket {
    type Result = ResponseFuture<Grant>;

    fn handle(&mut self, _: Acquire, ctx: &mut Context<Self>) -> Self::Result {
        let (tx, rx) = oneshot::channel();
        if !failpoint_stops(ctx) {
            self.waiting.push_back(tx);
            self.serve(ctx);
        }
        // Unanswered (the limiter stopped or restarted): nothing granted.
        Box::pin(async move { rx.await.unwrap_or_else(|_| Grant::none()) })
    }
}

impl Handler<AcquireInto> for TokenBucket {
    type Result = ();

    fn handle(&mut self, msg: AcquireInto, ctx: &mut Context<Self>) {
        if !failpoint_stops(ctx) {
            self.waiting.push_back(msg.0);
            self.serve(ctx);
        }
    }
}

impl Handler<Complete> for TokenBucket {
    type Result = ();

    fn handle(&mut self, _: Complete, ctx: &mut Context<Self>) {
        self.limiter.complete(Instant::now());
        self.serve(ctx);
    }
}
