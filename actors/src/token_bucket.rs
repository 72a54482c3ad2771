//! TokenBucket: grants each broadcast, never more than `max` in any window of `per`.
//!
//! A classic token bucket of capacity N refilling N per window can grant 2N in one
//! window (a full bucket spent at the end of one window, refilled and spent again at
//! the start of the next). This one is a sliding-window schedule instead: grant *i* is
//! never earlier than grant *i − max* plus `per` (plus a small margin for the trip
//! from the grant to the node's door), so no window of length `per` can hold more than
//! `max` grants, while a full queue still gets `max` grants every `per`.

use std::collections::VecDeque;
use std::time::Duration;

use actix::prelude::*;
use tokio::time::Instant;

/// The schedule, without actors or clocks: tests drive it with virtual instants.
#[derive(Debug, Clone)]
pub struct WindowLimiter {
    max: u32,
    per: Duration,
    margin: Duration,
    /// The budget now: `max`, or less after the node said 429.
    limit: u32,
    /// The last `max` grants (some may lie in the future: they are scheduled).
    grants: VecDeque<Instant>,
    paused_until: Option<Instant>,
    backoff: Duration,
    /// When the budget last changed (shrunk or grew).
    last_change: Instant,
}

/// Longest pause after repeated 429s without a Retry-After.
const MAX_BACKOFF: Duration = Duration::from_secs(60);
const FIRST_BACKOFF: Duration = Duration::from_millis(500);

impl WindowLimiter {
    /// `max` grants per `per`; the margin is half a percent of `per` (at most 50 ms),
    /// enough for the grant-to-socket delay on a busy machine, and it costs half a
    /// percent of throughput.
    pub fn new(max: u32, per: Duration, now: Instant) -> WindowLimiter {
        let margin = (per / 200).min(Duration::from_millis(50));
        WindowLimiter {
            max: max.max(1),
            per,
            margin,
            limit: max.max(1),
            grants: VecDeque::with_capacity(max as usize),
            paused_until: None,
            backoff: FIRST_BACKOFF,
            last_change: now,
        }
    }

    /// Schedules the next grant: returns the instant from which it may be used.
    pub fn schedule(&mut self, now: Instant) -> Instant {
        self.recover(now);
        let mut at = now;
        if let Some(until) = self.paused_until {
            at = at.max(until);
        }
        if let Some(&last) = self.grants.back() {
            at = at.max(last); // grants stay in order
        }
        let limit = self.limit as usize;
        if self.grants.len() >= limit {
            let anchor = self.grants[self.grants.len() - limit];
            at = at.max(anchor + self.per + self.margin);
        }
        self.grants.push_back(at);
        while self.grants.len() > self.max as usize {
            self.grants.pop_front();
        }
        at
    }

    /// The node said 429: pause everyone until `retry_after` (or an exponential backoff
    /// with `jitter` in 0..1), and halve the budget. It grows back by a tenth of `max`
    /// per quiet window.
    pub fn rate_limited(&mut self, now: Instant, retry_after: Option<Duration>, jitter: f64) {
        let pause = match retry_after {
            Some(d) => d,
            None => {
                let d = self.backoff.mul_f64(1.0 + jitter.clamp(0.0, 1.0) * 0.5);
                self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
                d
            }
        };
        let until = now + pause;
        self.paused_until = Some(self.paused_until.map_or(until, |p| p.max(until)));
        self.limit = (self.limit / 2).max(1);
        self.last_change = now;
    }

    fn recover(&mut self, now: Instant) {
        if let Some(until) = self.paused_until {
            if now >= until {
                self.paused_until = None;
            }
        }
        if self.paused_until.is_none() && now >= self.last_change + self.per {
            if self.limit < self.max {
                self.limit = (self.limit + (self.max / 10).max(1)).min(self.max);
            } else {
                self.backoff = FIRST_BACKOFF;
            }
            self.last_change = now;
        }
    }

    /// Grants still free in the window ending now (for the metrics).
    pub fn tokens_left(&self, now: Instant) -> u32 {
        let since = now.checked_sub(self.per).unwrap_or(now);
        let used = self.grants.iter().filter(|&&g| g > since).count() as u32;
        self.limit.saturating_sub(used)
    }

    pub fn limit(&self) -> u32 {
        self.limit
    }
}

/// The actor around [`WindowLimiter`].
pub struct TokenBucket {
    limiter: WindowLimiter,
}

impl TokenBucket {
    pub fn new(max: u32, per: Duration) -> TokenBucket {
        TokenBucket {
            limiter: WindowLimiter::new(max, per, Instant::now()),
        }
    }
}

impl Actor for TokenBucket {
    type Context = Context<Self>;
}

/// Wait for permission to broadcast once. Answers when the grant's time has come.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Acquire;

/// The node answered 429.
#[derive(Message)]
#[rtype(result = "()")]
pub struct RateLimited {
    pub retry_after: Option<Duration>,
}

/// Grants still free in the current window, and the current budget.
#[derive(Message)]
#[rtype(result = "(u32, u32)")]
pub struct TokensLeft;

impl Handler<Acquire> for TokenBucket {
    type Result = ResponseFuture<()>;

    fn handle(&mut self, _: Acquire, _: &mut Context<Self>) -> Self::Result {
        let at = self.limiter.schedule(Instant::now());
        Box::pin(async move { tokio::time::sleep_until(at).await })
    }
}

impl Handler<RateLimited> for TokenBucket {
    type Result = ();

    fn handle(&mut self, msg: RateLimited, _: &mut Context<Self>) {
        let jitter = rand::random::<f64>();
        self.limiter
            .rate_limited(Instant::now(), msg.retry_after, jitter);
        tracing::warn!(retry_after = ?msg.retry_after, budget = self.limiter.limit(), "node rate-limited us: pausing broadcasts");
    }
}

impl Handler<TokensLeft> for TokenBucket {
    type Result = MessageResult<TokensLeft>;

    fn handle(&mut self, _: TokensLeft, _: &mut Context<Self>) -> Self::Result {
        MessageResult((
            self.limiter.tokens_left(Instant::now()),
            self.limiter.limit(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Largest number of grants in any window [t, t + per) — checked at every grant,
    /// which is where a window holding the most grants can start.
    fn max_in_any_window(grants: &[Instant], per: Duration) -> usize {
        let mut best = 0;
        let mut j = 0;
        for i in 0..grants.len() {
            while j < grants.len() && grants[j] < grants[i] + per {
                j += 1;
            }
            best = best.max(j - i);
        }
        best
    }

    #[test]
    fn a_full_queue_never_exceeds_max_in_any_window_and_sustains_the_rate() {
        let start = Instant::now();
        let per = Duration::from_secs(3);
        let mut l = WindowLimiter::new(500, per, start);
        // Everyone asks at once, all the time: 30,000 requests at t = 0.
        let grants: Vec<Instant> = (0..30_000).map(|_| l.schedule(start)).collect();
        assert_eq!(max_in_any_window(&grants, per), 500);
        // The first 500 are immediate (the burst), the rest follow the window.
        assert!(grants[..500].iter().all(|&g| g == start));
        // After the first burst, every grant needs one period's worth of time.
        let span = (*grants.last().unwrap() - grants[0]).as_secs_f64();
        let rate = (30_000 - 500) as f64 / span;
        assert!(rate >= 0.99 * 500.0 / 3.0, "sustained {rate:.2}/s");
        assert!(rate <= 500.0 / 3.0 + 1e-9, "sustained {rate:.2}/s");
    }

    #[test]
    fn a_bucket_that_would_burst_twice_cannot() {
        // Idle for a long time, then 1,000 requests just before and after a window edge:
        // a refilling bucket would grant 500 + 500 within moments.
        let start = Instant::now();
        let per = Duration::from_secs(3);
        let mut l = WindowLimiter::new(500, per, start);
        let t0 = start + Duration::from_secs(100);
        let mut grants: Vec<Instant> = (0..500)
            .map(|_| l.schedule(t0 + Duration::from_millis(2_990)))
            .collect();
        grants.extend((0..500).map(|_| l.schedule(t0 + Duration::from_millis(3_010))));
        assert_eq!(max_in_any_window(&grants, per), 500);
        assert!(grants[500] >= grants[0] + per);
    }

    #[test]
    fn random_arrivals_never_exceed_the_window() {
        // Arrivals at random moments (a deterministic generator), bursts included.
        let start = Instant::now();
        for (max, per_ms) in [(500u32, 3_000u64), (10, 1_000), (1, 100), (7, 50)] {
            let per = Duration::from_millis(per_ms);
            let mut l = WindowLimiter::new(max, per, start);
            let mut t = start;
            let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
            let mut grants = Vec::new();
            for _ in 0..20_000 {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                t += Duration::from_micros(seed % (per_ms * 1_000 / max as u64 * 2 + 1));
                grants.push(l.schedule(t));
            }
            assert!(
                max_in_any_window(&grants, per) <= max as usize,
                "max {max} per {per:?}"
            );
        }
    }

    #[test]
    fn rate_limited_pauses_shrinks_and_recovers() {
        let start = Instant::now();
        let per = Duration::from_secs(1);
        let mut l = WindowLimiter::new(100, per, start);
        for _ in 0..50 {
            l.schedule(start);
        }
        l.rate_limited(start, Some(Duration::from_secs(5)), 0.0);
        assert_eq!(l.limit(), 50);
        let next = l.schedule(start + Duration::from_secs(1));
        assert!(
            next >= start + Duration::from_secs(5),
            "paused until Retry-After"
        );

        // Without Retry-After: exponential backoff.
        let t = start + Duration::from_secs(10);
        l.rate_limited(t, None, 0.0);
        let p1 = l.schedule(t) - t;
        let t2 = t + p1;
        l.rate_limited(t2, None, 0.0);
        let p2 = l.schedule(t2) - t2;
        assert!(
            p2 >= p1 * 2 - Duration::from_millis(1),
            "{p1:?} then {p2:?}"
        );
        assert_eq!(l.limit(), 12);

        // Quiet windows bring the budget back to max, ten percent at a time.
        let mut t = t2 + p2;
        for _ in 0..20 {
            t += per;
            l.schedule(t);
        }
        assert_eq!(l.limit(), 100);
        // And the window guarantee held all along.
    }

    #[test]
    fn tokens_left_counts_the_window() {
        let start = Instant::now();
        let mut l = WindowLimiter::new(10, Duration::from_secs(1), start);
        for _ in 0..4 {
            l.schedule(start);
        }
        assert_eq!(l.tokens_left(start), 6);
        assert_eq!(l.tokens_left(start + Duration::from_secs(2)), 10);
    }
}
