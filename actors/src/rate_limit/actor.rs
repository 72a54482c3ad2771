//! The TokenBucket actor: queues the waiting broadcasters in order and hands each a
//! slot from the [`WindowLimiter`]; holds the share of the budget this process may use
//! (how many processes share it, and the lease it is used under).

use std::collections::VecDeque;
use std::num::NonZeroU32;
use std::time::Duration;

use actix::prelude::*;
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::grant::Grant;
use super::window::WindowLimiter;

/// How often the Janitor tells the TokenBucket how many processes share the budget.
pub const SHARE_REFRESH: Duration = Duration::from_secs(1);

/// How long a count of the processes sharing the budget holds, from when it was asked
/// for: a process that joins waits `SHARE_REFRESH * 2 + per` (and the longest broadcast)
/// before its first grant, counting on the others to have seen it by then. A process
/// whose count is older grants nothing until a fresh one comes (its database query
/// failing or slow must not keep a share that is too large).
pub const SHARE_VALID: Duration = Duration::from_secs(2);

/// The actor around [`WindowLimiter`]: queues the waiting broadcasters in order.
pub struct TokenBucket {
    pub(super) limiter: WindowLimiter,
    per: Duration,
    /// Each waiter is sent its slot: a [`Grant`], which gives the slot back when it is
    /// dropped, wherever that happens (by its holder, or unread in the channel of a
    /// waiter that gave up just then).
    pub(super) waiting: VecDeque<oneshot::Sender<Grant>>,
    timer: Option<SpawnHandle>,
    /// Processes sharing the budget, once known ([`SharedBy`]).
    sharing: Option<u32>,
    /// ... and until when that count holds ([`SHARE_VALID`] after it was asked for).
    share_valid_until: Option<Instant>,
    /// A stale count was logged (once per staleness).
    stale_logged: bool,
    /// A shared budget is used only while this process's lease runs ([`LeaseUntil`]):
    /// the others count us, and leave our claims alone, only until then.
    lease_until: Option<Instant>,
    needs_lease: bool,
    /// Added to the wait of a process that joins (or rejoins) others: the longest a
    /// broadcast they granted before they saw us can take to reach the node.
    join_extra: Duration,
}

impl TokenBucket {
    /// The whole budget, for this process alone (a `max` of 0 counts as 1; the
    /// configuration refuses it).
    pub fn new(max: u32, per: Duration) -> TokenBucket {
        TokenBucket {
            limiter: WindowLimiter::new(
                NonZeroU32::new(max).unwrap_or(NonZeroU32::MIN),
                per,
                Instant::now(),
            ),
            per,
            waiting: VecDeque::new(),
            timer: None,
            sharing: None,
            share_valid_until: None,
            stale_logged: false,
            lease_until: None,
            needs_lease: false,
            join_extra: Duration::ZERO,
        }
    }

    /// A budget shared with the other processes on the same database: no grant until
    /// the first [`SharedBy`] says how many there are; then `max / n` each. A process
    /// that joins others waits until they have all seen it and their windows have
    /// passed (`SHARE_REFRESH` + `per`), so the sum never exceeds `max` in a window.
    pub fn shared(max: u32, per: Duration) -> TokenBucket {
        let mut bucket = TokenBucket::new(max, per);
        bucket.limiter.set_share(0, None);
        bucket.needs_lease = true;
        bucket
    }

    /// A joiner also waits out the others' broadcasts in flight: at most `timeout`.
    pub fn with_broadcast_timeout(mut self, timeout: Duration) -> TokenBucket {
        self.join_extra = timeout;
        self
    }

    fn join_wait(&self) -> Duration {
        SHARE_VALID + self.per + self.join_extra
    }

    /// No lease, no grant (a shared budget only).
    fn lease_lapsed(&self, now: Instant) -> bool {
        self.needs_lease && !matches!(self.lease_until, Some(until) if now < until)
    }

    /// The count of processes sharing the budget is too old to hold (a shared budget
    /// only).
    fn share_stale(&self, now: Instant) -> bool {
        self.needs_lease && !matches!(self.share_valid_until, Some(until) if now < until)
    }

    /// Grants slots to waiters while there are free ones; otherwise sets a timer.
    pub(super) fn serve(&mut self, ctx: &mut Context<Self>) {
        let now = Instant::now();
        if self.lease_lapsed(now) {
            // Fail closed: the next LeaseUntil serves the waiters.
            return;
        }
        if self.share_stale(now) {
            // Fail closed: the next SharedBy serves the waiters.
            if self.sharing.is_some() && !self.stale_logged && !self.waiting.is_empty() {
                self.stale_logged = true;
                tracing::warn!(
                    "the count of processes sharing the rate limit is stale (the database \
                     did not answer): no broadcast until it is counted again"
                );
            }
            return;
        }
        while !self.waiting.is_empty() {
            // A waiter that gave up (its broadcaster stopped) needs no slot.
            if self.waiting.front().is_some_and(|w| w.is_closed()) {
                self.waiting.pop_front();
                continue;
            }
            if !self.limiter.try_grant(now) {
                break;
            }
            let waiter = self.waiting.pop_front().expect("not empty");
            let grant = Grant {
                bucket: Some(ctx.address()),
                lease_until: self.needs_lease.then_some(self.lease_until).flatten(),
            };
            // A waiter gone meanwhile: the grant comes back and is dropped, which
            // gives the slot back (as any grant's drop does).
            drop(waiter.send(grant));
        }
        if !self.waiting.is_empty() && self.timer.is_none() {
            if let Some(at) = self.limiter.next_free(now) {
                let delay = at.saturating_duration_since(now);
                self.timer = Some(ctx.run_later(delay, |act, ctx| {
                    act.timer = None;
                    act.serve(ctx);
                }));
            }
        }
    }
}

impl Actor for TokenBucket {
    type Context = Context<Self>;
}

/// Started under a [`Supervisor`]: a TokenBucket that stops (a bug, or [`Stop`]) is
/// started again with the same mailbox; meanwhile nothing is granted (a waiter whose
/// answer is lost gets no grant and asks again: fail closed), and after the restart
/// nothing is granted for one `per`.
impl actix::Supervised for TokenBucket {
    fn restarting(&mut self, _: &mut Context<Self>) {
        // Waiters dropped here learn that nothing was granted, and ask again.
        self.waiting.clear();
        self.timer = None;
        self.limiter.restarted(Instant::now());
        tracing::warn!(per = ?self.per, "rate limiter restarted: no broadcast for one window");
    }
}

impl TokenBucket {
    /// Starts the limiter under a supervisor (see [`actix::Supervised`] above).
    pub fn start_supervised(self) -> Addr<TokenBucket> {
        Supervisor::start(move |_| self)
    }
}

/// Stops the limiter (its supervisor starts it again): the hook the tests use to show
/// that a failed limiter stops every broadcast, and that it resumes under the limit.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Stop;

impl Handler<Stop> for TokenBucket {
    type Result = ();

    fn handle(&mut self, _: Stop, ctx: &mut Context<Self>) {
        tracing::warn!("rate limiter stopping");
        ctx.stop();
    }
}

/// The node answered 429.
#[derive(Message)]
#[rtype(result = "()")]
pub struct RateLimited {
    pub retry_after: Option<Duration>,
}

/// Asks how many slots are free: answers a [`Tokens`].
#[derive(Message)]
#[rtype(result = "Tokens")]
pub struct TokensLeft;

/// The answer to [`TokensLeft`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tokens {
    /// Slots free now.
    pub left: u32,
    /// The current budget (this process's share of `max`).
    pub budget: u32,
    /// Broadcasters waiting for a slot.
    pub waiters: usize,
}

impl Handler<RateLimited> for TokenBucket {
    type Result = ();

    fn handle(&mut self, msg: RateLimited, ctx: &mut Context<Self>) {
        self.limiter
            .rate_limited(Instant::now(), msg.retry_after, rand::random::<f64>());
        tracing::warn!(retry_after = ?msg.retry_after, budget = self.limiter.limit(), "node rate-limited us: pausing broadcasts");
        if let Some(t) = self.timer.take() {
            ctx.cancel_future(t);
        }
        self.serve(ctx);
    }
}

/// This process's lease is known to run until `until` (sent by the Leaser after each
/// heartbeat). `lapsed`: it had ended before this renewal, so the others may have
/// stopped counting us: rejoin as a newcomer does.
#[derive(Message)]
#[rtype(result = "()")]
pub struct LeaseUntil {
    pub until: Instant,
    pub lapsed: bool,
}

impl Handler<LeaseUntil> for TokenBucket {
    type Result = ();

    fn handle(&mut self, msg: LeaseUntil, ctx: &mut Context<Self>) {
        let now = Instant::now();
        if msg.lapsed {
            let share = self.limiter.share();
            self.limiter.set_share(share, Some(now + self.join_wait()));
        }
        self.lease_until = Some(self.lease_until.map_or(msg.until, |u| u.max(msg.until)));
        if let Some(t) = self.timer.take() {
            ctx.cancel_future(t);
        }
        self.serve(ctx);
    }
}

/// `processes` processes (this one included) share the node's budget, as counted by a
/// query sent at `asked_at`: the count holds until [`SHARE_VALID`] after that.
#[derive(Message)]
#[rtype(result = "()")]
pub struct SharedBy {
    pub processes: u32,
    pub asked_at: Instant,
}

impl Handler<SharedBy> for TokenBucket {
    type Result = ();

    fn handle(&mut self, msg: SharedBy, ctx: &mut Context<Self>) {
        let n = msg.processes.max(1);
        let now = Instant::now();
        let was_stale = self.share_stale(now);
        let valid_until = msg.asked_at + SHARE_VALID;
        self.share_valid_until = Some(
            self.share_valid_until
                .map_or(valid_until, |u| u.max(valid_until)),
        );
        if was_stale && !self.share_stale(now) && self.stale_logged {
            self.stale_logged = false;
            tracing::info!("the processes sharing the rate limit are counted again");
        }
        if self.sharing == Some(n) {
            if was_stale {
                self.serve(ctx);
            }
            return;
        }
        // Joining others: they learn of us within SHARE_REFRESH (and shrink at once);
        // what they granted before still counts for `per`.
        let not_before = (self.sharing.is_none() && n > 1).then(|| now + self.join_wait());
        let share = self.limiter.max() / n;
        if share == 0 {
            tracing::warn!(
                processes = n,
                "more processes than rate_limit.max: this one gets no share"
            );
        }
        if self.sharing.is_none() && n == 1 {
            // Alone from the start: nothing an operator needs to hear.
            tracing::debug!(processes = n, share, per = ?self.per, "rate limit not shared");
        } else {
            tracing::info!(processes = n, share, per = ?self.per, waits = ?not_before.map(|t| t - now), "rate limit shared");
        }
        self.sharing = Some(n);
        self.limiter.set_share(share, not_before);
        if let Some(t) = self.timer.take() {
            ctx.cancel_future(t);
        }
        self.serve(ctx);
    }
}

impl Handler<TokensLeft> for TokenBucket {
    type Result = MessageResult<TokensLeft>;

    fn handle(&mut self, _: TokensLeft, _: &mut Context<Self>) -> Self::Result {
        let now = Instant::now();
        MessageResult(Tokens {
            left: self.limiter.tokens_left(now),
            budget: self.limiter.limit(),
            waiters: self.waiting.iter().filter(|w| !w.is_closed()).count(),
        })
    }
}
