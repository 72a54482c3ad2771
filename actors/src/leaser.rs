//! Leaser: keeps this process's lease in Postgres alive, on its own timer and its own
//! thread, and tells the TokenBucket how long the lease is known to last and how many
//! processes share the node's rate limit.
//!
//! The lease is what the other processes on the database go by: while it runs they
//! leave our claims alone and count us when they divide the rate limit between them.
//! So it must never lapse while we broadcast. The heartbeat therefore runs apart from
//! every other piece of work (a Janitor round can take minutes), several times per
//! lease, and the TokenBucket stops granting at the lease's end *as we measured it*:
//! from the instant just before the heartbeat was sent, which is before Postgres's
//! `now()` of that statement, so our deadline is never later than the one the others
//! read. A process starved for longer than its lease stops broadcasting by itself;
//! when it renews, it rejoins as a newcomer would (waits until the others have seen it).

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use tokio::time::Instant;

use crate::ports::LeaseStore;
use crate::rate_limit::{LeaseUntil, SharedBy, TokenBucket, SHARE_REFRESH, SHARE_VALID};

#[derive(Debug, Clone)]
pub struct LeaserConfig {
    /// How long a lease lasts without a heartbeat.
    pub lease: Duration,
    /// How long after a process's lease ended it still counts as sharing the node's
    /// budget (its last broadcasts are still in the window): `rate_limit.per` plus the
    /// longest a broadcast can take.
    pub share_grace: Duration,
}

impl LeaserConfig {
    /// Heartbeats per lease: a lease survives several missed or slow heartbeats.
    pub const BEATS_PER_LEASE: u32 = 6;

    fn beat_every(&self) -> Duration {
        (self.lease / Self::BEATS_PER_LEASE).max(Duration::from_millis(50))
    }
}

pub struct Leaser {
    config: LeaserConfig,
    store: Arc<dyn LeaseStore>,
    tokens: Addr<TokenBucket>,
    beating: bool,
    sharing: bool,
    /// The end of the lease as we know it (local clock).
    until: Option<Instant>,
}

impl Leaser {
    pub fn new(
        config: LeaserConfig,
        store: Arc<dyn LeaseStore>,
        tokens: Addr<TokenBucket>,
    ) -> Leaser {
        Leaser {
            config,
            store,
            tokens,
            beating: false,
            sharing: false,
            until: None,
        }
    }

    fn beat(&mut self, ctx: &mut Context<Self>) {
        if self.beating {
            return;
        }
        self.beating = true;
        let store = self.store.clone();
        let lease = self.config.lease;
        // Two beats' worth: a slow database still renews, a dead connection does not
        // hold back the beats after it.
        let patience = self.config.lease / 3;
        ctx.spawn(
            async move {
                let sent = Instant::now();
                crate::fail_point!("leaser-heartbeat");
                // A heartbeat stuck on a dead connection must not hold back the next.
                match tokio::time::timeout(patience, store.heartbeat(lease)).await {
                    Ok(done) => done.map(|()| sent + lease),
                    Err(_) => Err(crate::ports::StoreError::Unavailable(format!(
                        "no answer within {patience:?}"
                    ))),
                }
            }
            .into_actor(self)
            .map(|res, act, _| {
                act.beating = false;
                match res {
                    Ok(until) => {
                        let lapsed = act.until.is_some_and(|u| u <= Instant::now());
                        if lapsed {
                            tracing::warn!(
                                "lease renewed after it had lapsed: rejoining the shared rate limit"
                            );
                        }
                        act.until = Some(until);
                        act.tokens.do_send(LeaseUntil { until, lapsed });
                    }
                    Err(e) => {
                        let left = act
                            .until
                            .map(|u| u.saturating_duration_since(Instant::now()));
                        tracing::warn!(error = %e, lease_left = ?left, "heartbeat failed");
                    }
                }
            }),
        );
    }

    /// Tells the TokenBucket how many processes share the node's rate limit (from
    /// their leases in Postgres), so that together they keep under it.
    fn share(&mut self, ctx: &mut Context<Self>) {
        if self.sharing {
            return;
        }
        self.sharing = true;
        let store = self.store.clone();
        let grace = self.config.share_grace;
        let asked_at = Instant::now();
        ctx.spawn(
            async move {
                // A query stuck on a dead connection must not hold back the next: past
                // SHARE_VALID its answer is no use anyway.
                tokio::time::timeout(SHARE_VALID, store.live_pipelines(grace))
                    .await
                    .unwrap_or_else(|_| {
                        Err(crate::ports::StoreError::Unavailable(format!(
                            "no answer within {SHARE_VALID:?}"
                        )))
                    })
            }
            .into_actor(self)
            .map(move |res, act, _| {
                act.sharing = false;
                match res {
                    Ok(processes) => act.tokens.do_send(SharedBy {
                        processes,
                        asked_at,
                    }),
                    // The TokenBucket stops granting once its count is SHARE_VALID old.
                    Err(e) => tracing::warn!(error = %e, "rate share not refreshed"),
                }
            }),
        );
    }
}

impl Actor for Leaser {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.beat(ctx);
        ctx.run_interval(self.config.beat_every(), |act, ctx| act.beat(ctx));
        self.share(ctx);
        ctx.run_interval(SHARE_REFRESH, |act, ctx| act.share(ctx));
    }
}

/// The end of the lease as this process knows it (for tests and the metrics).
#[derive(Message)]
#[rtype(result = "Option<Instant>")]
pub struct LeaseEnd;

impl Handler<LeaseEnd> for Leaser {
    type Result = Option<Instant>;

    fn handle(&mut self, _: LeaseEnd, _: &mut Context<Self>) -> Option<Instant> {
        self.until
    }
}

/// Stops renewing the lease (a command that broadcast outside `serve` is done).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Stop;

impl Handler<Stop> for Leaser {
    type Result = ();

    fn handle(&mut self, _: Stop, ctx: &mut Context<Self>) {
        ctx.stop();
    }
}
