//! TokenBucket: grants each broadcast, never more than `max` in any window of `per`,
//! measured at the node's door.
//!
//! A classic token bucket of capacity N refilling N per window can grant 2N in one
//! window (a full bucket spent at the end of one window, refilled and spent again at
//! the start of the next). And a schedule of grant *times* is not enough either: a
//! request granted early can reach the node late (a busy machine, a slow socket) and
//! crowd the next window. So a grant here is a *slot* that stays taken from the moment
//! it is granted until `per` after its broadcast has completed, and at most `max` slots
//! are taken at any moment. A broadcast reaches the node between its grant and its
//! completion, so every broadcast arriving in a window [t, t + per) holds a slot at the
//! instant just before t + per: at most `max` of them. A full queue still gets `max`
//! broadcasts per `per` plus the broadcast's own round trip (a few ms against a local
//! node: 99.8% of the configured rate).

use std::collections::VecDeque;
use std::num::NonZeroU32;
use std::time::Duration;

use tokio::time::Instant;

/// The slot accounting, without actors or clocks: tests drive it with virtual instants.
#[derive(Debug, Clone)]
pub struct WindowLimiter {
    max: u32,
    per: Duration,
    /// The budget now: `max`, or less after the node said 429.
    limit: u32,
    /// This process's part of `max` when several processes share the node's budget
    /// (`max / processes`, set by the Janitor from the leases in Postgres).
    share: u32,
    /// Slots granted whose broadcast has not completed.
    open: u32,
    /// Completion times of the slots still counted (completed less than `per` ago).
    completed: VecDeque<Instant>,
    /// Grants are at least this far apart (half the average interval), so that a full
    /// window is spread over half a window instead of hitting the node all at once: a
    /// node flooded with a whole window's worth answers late, and late answers hold
    /// slots longer.
    spacing: Duration,
    last_grant: Option<Instant>,
    paused_until: Option<Instant>,
    backoff: Duration,
    /// When the budget last changed (shrunk or grew).
    last_change: Instant,
}

/// Longest pause after repeated 429s without a Retry-After.
const MAX_BACKOFF: Duration = Duration::from_secs(60);
const FIRST_BACKOFF: Duration = Duration::from_millis(500);

impl WindowLimiter {
    /// At most `max` broadcasts in any `per`.
    pub fn new(max: NonZeroU32, per: Duration, now: Instant) -> WindowLimiter {
        let max = max.get();
        WindowLimiter {
            max,
            per,
            limit: max,
            share: max,
            open: 0,
            completed: VecDeque::with_capacity(max as usize),
            spacing: per / max / 2,
            last_grant: None,
            paused_until: None,
            backoff: FIRST_BACKOFF,
            last_change: now,
        }
    }

    fn prune(&mut self, now: Instant) {
        while self.completed.front().is_some_and(|&c| c + self.per <= now) {
            self.completed.pop_front();
        }
    }

    /// Takes a slot if one is free now.
    pub fn try_grant(&mut self, now: Instant) -> bool {
        self.recover(now);
        self.prune(now);
        if self.paused_until.is_some_and(|p| now < p) {
            return false;
        }
        if self.last_grant.is_some_and(|l| now < l + self.spacing) {
            return false;
        }
        if self.open as usize + self.completed.len() < self.cap() as usize {
            self.open += 1;
            self.last_grant = Some(now);
            true
        } else {
            false
        }
    }

    /// A granted broadcast completed at `now`: its slot frees `per` later.
    pub fn complete(&mut self, now: Instant) {
        self.open = self.open.saturating_sub(1);
        // Completions arrive in time order; keep the queue sorted all the same.
        let at = self.completed.back().map_or(now, |&last| now.max(last));
        self.completed.push_back(at);
    }

    /// When a slot may next be free (for a timer), if none is free now.
    pub fn next_free(&self, now: Instant) -> Option<Instant> {
        let recent = self
            .completed
            .iter()
            .filter(|&&c| c + self.per > now)
            .count();
        let slots_full = self.open as usize + recent >= self.cap() as usize;
        let mut at = if slots_full {
            self.completed
                .iter()
                .map(|&c| c + self.per)
                .find(|&free| free > now)
        } else {
            None
        };
        if let Some(spaced) = self
            .last_grant
            .map(|l| l + self.spacing)
            .filter(|&t| t > now)
        {
            at = Some(at.map_or(spaced, |a| a.max(spaced)));
        }
        if let Some(p) = self.paused_until.filter(|&p| p > now) {
            at = Some(at.map_or(p, |a| a.max(p)));
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
        if self.paused_until.is_some_and(|p| now >= p) {
            self.paused_until = None;
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

    /// Slots free now (for the metrics).
    pub fn tokens_left(&mut self, now: Instant) -> u32 {
        self.prune(now);
        self.cap()
            .saturating_sub(self.open + self.completed.len() as u32)
    }

    /// The budget per window now: the share, less after a 429.
    pub fn limit(&self) -> u32 {
        self.cap()
    }

    fn cap(&self) -> u32 {
        self.limit.min(self.share)
    }

    /// This process may use `share` of the budget (0: none), from `not_before` on.
    /// A smaller share takes effect at once (no grant while the slots taken exceed
    /// it); grants are spaced for the new share.
    pub fn set_share(&mut self, share: u32, not_before: Option<Instant>) {
        self.share = share.min(self.max);
        self.spacing = self.per / self.share.max(1) / 2;
        if let Some(t) = not_before {
            self.paused_until = Some(self.paused_until.map_or(t, |p| p.max(t)));
        }
    }

    pub fn share(&self) -> u32 {
        self.share
    }

    pub fn max(&self) -> u32 {
        self.max
    }

    /// The limiter starts again after a failure: nothing is granted for one `per`.
    /// The slots still open stay taken (under a supervisor the grants outlive the
    /// restart and each still completes, freeing its slot `per` after its broadcast).
    pub fn restarted(&mut self, now: Instant) {
        let until = now + self.per;
        self.paused_until = Some(self.paused_until.map_or(until, |p| p.max(until)));
    }
}

/// Measuring a run: the largest number of `times` in any window [t, t + `per`).
pub fn max_in_window<T: Copy + Ord + std::ops::Add<Duration, Output = T>>(
    times: &[T],
    per: Duration,
) -> usize {
    let mut times = times.to_vec();
    times.sort();
    let mut best = 0;
    let mut j = 0;
    for i in 0..times.len() {
        while j < times.len() && times[j] < times[i] + per {
            j += 1;
        }
        best = best.max(j - i);
    }
    best
}

/// Measuring a run: events per second over the whole windows of `per` after the first.
pub fn sustained_rate<T>(times: &[T], per: Duration) -> f64
where
    T: Copy + Ord + std::ops::Add<Duration, Output = T> + std::ops::Sub<T, Output = Duration>,
{
    let (Some(&first), Some(&last)) = (times.iter().min(), times.iter().max()) else {
        return 0.0;
    };
    let from = first + per;
    if last <= from {
        return 0.0;
    }
    let windows = ((last - from).as_secs_f64() / per.as_secs_f64())
        .floor()
        .max(1.0);
    let to = from + per.mul_f64(windows);
    let n = times.iter().filter(|&&t| t >= from && t < to).count();
    n as f64 / (windows * per.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nz(n: u32) -> NonZeroU32 {
        NonZeroU32::new(n).expect("a budget")
    }
    use crate::rate_limit::SHARE_REFRESH;

    /// A deterministic pseudo-random sequence.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self, below: u64) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0 % below.max(1)
        }
    }

    /// Simulates `workers` broadcasters with a full queue: each takes a slot, its
    /// request reaches the node after a random delay and completes after another, then
    /// it asks again. Returns the arrival times at the node and the end of the run.
    fn simulate(
        max: u32,
        per: Duration,
        workers: usize,
        count: usize,
        max_latency_ms: u64,
        seed: u64,
    ) -> Vec<Instant> {
        let start = Instant::now();
        let mut l = WindowLimiter::new(nz(max), per, start);
        let mut rng = Rng(seed);
        let mut now = start;
        // (completion time, arrival time) of broadcasts in flight.
        let mut in_flight: Vec<Instant> = Vec::new();
        let mut arrivals = Vec::new();
        let mut idle = workers;
        while arrivals.len() < count {
            // Grant every idle worker that can go now.
            while idle > 0 && l.try_grant(now) {
                idle -= 1;
                let to_door = Duration::from_micros(rng.next(max_latency_ms * 1_000));
                let back = Duration::from_micros(rng.next(max_latency_ms * 1_000));
                arrivals.push(now + to_door);
                in_flight.push(now + to_door + back);
            }
            // Advance to the next event: a completion, or a slot freeing.
            in_flight.sort();
            let next_completion = in_flight.first().copied();
            let next_free = if idle > 0 { l.next_free(now) } else { None };
            let next = match (next_completion, next_free) {
                (Some(c), Some(f)) => c.min(f),
                (Some(c), None) => c,
                (None, Some(f)) => f,
                (None, None) => break,
            };
            now = now.max(next);
            while in_flight.first().is_some_and(|&c| c <= now) {
                in_flight.remove(0);
                l.complete(now);
                idle += 1;
            }
        }
        arrivals
    }

    #[test]
    fn never_more_than_max_at_the_door_whatever_the_latency() {
        for (max, per_ms, workers, latency_ms) in [
            (500u32, 3_000u64, 64usize, 5u64),
            (500, 3_000, 64, 300),
            (500, 3_000, 1_000, 50),
            (10, 1_000, 4, 900),
            (1, 100, 3, 40),
            (7, 50, 20, 30),
        ] {
            let per = Duration::from_millis(per_ms);
            let arrivals = simulate(
                max,
                per,
                workers,
                20_000,
                latency_ms,
                0x9e37_79b9_7f4a_7c15 + max as u64,
            );
            let most = max_in_window(&arrivals, per);
            assert!(
                most <= max as usize,
                "{most} > {max} per {per:?} (latency up to {latency_ms} ms)"
            );
        }
    }

    #[test]
    fn a_full_queue_sustains_at_least_99_percent_against_a_local_node() {
        // 64 broadcasters, a node answering within 5 ms: 500 per 3 s.
        let per = Duration::from_secs(3);
        let arrivals = simulate(500, per, 64, 30_000, 5, 42);
        let rate = sustained_rate(&arrivals, per);
        assert!(rate >= 0.99 * 500.0 / 3.0, "sustained {rate:.2}/s");
        assert!(rate <= 500.0 / 3.0 + 1e-6, "sustained {rate:.2}/s");
    }

    #[test]
    fn a_bucket_that_would_burst_twice_cannot() {
        // 1,000 requests waiting: a refilling bucket would let 500 through, then 500
        // more right after the window's edge. Here 500 go (spread over half a window),
        // and the next wait until `per` after those completed.
        let start = Instant::now();
        let per = Duration::from_secs(3);
        let mut l = WindowLimiter::new(nz(500), per, start);
        let mut now = start;
        let mut grants = Vec::new();
        while grants.len() < 500 {
            if l.try_grant(now) {
                grants.push(now);
            } else {
                now = l.next_free(now).expect("a grant is coming");
            }
        }
        assert!(grants[499] - grants[0] <= per / 2 + Duration::from_millis(10));
        let done = grants[499] + Duration::from_millis(1);
        for _ in 0..500 {
            l.complete(done);
        }
        let edge = grants[0] + per + Duration::from_millis(10);
        assert!(!l.try_grant(edge), "the window is still full");
        assert_eq!(l.next_free(edge), Some(done + per));
        assert!(l.try_grant(done + per));
    }

    #[test]
    fn rate_limited_pauses_shrinks_and_recovers() {
        let start = Instant::now();
        let per = Duration::from_secs(1);
        let mut l = WindowLimiter::new(nz(100), per, start);
        assert!(l.try_grant(start));
        l.complete(start);
        l.rate_limited(start, Some(Duration::from_secs(5)), 0.0);
        assert_eq!(l.limit(), 50);
        assert!(
            !l.try_grant(start + Duration::from_secs(4)),
            "paused until Retry-After"
        );
        assert_eq!(
            l.next_free(start + Duration::from_secs(4)),
            Some(start + Duration::from_secs(5))
        );

        // Without Retry-After: exponential backoff, the budget halving each time.
        let t = start + Duration::from_secs(10);
        l.rate_limited(t, None, 0.0);
        let p1 = l.next_free(t).unwrap() - t;
        let t2 = t + p1;
        l.rate_limited(t2, None, 0.0);
        let p2 = l.next_free(t2).unwrap() - t2;
        assert!(
            p2 >= p1 * 2 - Duration::from_millis(1),
            "{p1:?} then {p2:?}"
        );
        assert_eq!(l.limit(), 12);

        // Quiet windows bring the budget back to max, ten percent at a time.
        let mut t = t2 + p2;
        for _ in 0..20 {
            t += per;
            if l.try_grant(t) {
                l.complete(t);
            }
        }
        assert_eq!(l.limit(), 100);
    }

    #[test]
    fn tokens_left_counts_open_and_recent_slots() {
        let start = Instant::now();
        let mut l = WindowLimiter::new(nz(10), Duration::from_secs(1), start);
        // Grants are spaced by half the average interval: 50 ms here.
        let step = Duration::from_millis(50);
        for i in 0..4 {
            assert!(l.try_grant(start + step * i));
        }
        assert!(
            !l.try_grant(start + step * 3 + Duration::from_millis(10)),
            "spacing"
        );
        let t = start + step * 4;
        assert_eq!(l.tokens_left(t), 6);
        l.complete(t);
        assert_eq!(l.tokens_left(t + Duration::from_millis(500)), 6);
        assert_eq!(l.tokens_left(t + Duration::from_secs(2)), 7);
    }

    #[test]
    fn a_share_caps_the_grants_and_a_newcomer_waits() {
        let start = Instant::now();
        let per = Duration::from_secs(1);
        let mut l = WindowLimiter::new(nz(10), per, start);
        // No share yet (a shared bucket before the Janitor's first count): nothing.
        l.set_share(0, None);
        assert!(!l.try_grant(start));
        assert_eq!(l.tokens_left(start), 0);
        // Two processes: 5 each, spaced for 5 per second.
        l.set_share(5, None);
        let mut t = start;
        let mut granted = Vec::new();
        while t < start + per {
            if l.try_grant(t) {
                l.complete(t);
                granted.push(t);
            }
            t += Duration::from_millis(1);
        }
        assert_eq!(granted.len(), 5, "{granted:?}");
        assert!(
            granted[1] - granted[0] >= per / 5 / 2,
            "spacing follows the share"
        );
        // Joining others: not before the given instant, then the whole share.
        let mut l = WindowLimiter::new(nz(10), per, start);
        let join = start + Duration::from_secs(3);
        l.set_share(10, Some(join));
        assert!(!l.try_grant(start + Duration::from_secs(2)));
        assert_eq!(l.next_free(start), Some(join));
        assert!(l.try_grant(join));
        // Shrinking below the slots already taken: no grant until they are under it.
        let mut l = WindowLimiter::new(nz(10), per, start);
        let step = Duration::from_millis(50);
        for i in 0..4 {
            assert!(l.try_grant(start + step * i));
            l.complete(start + step * i);
        }
        l.set_share(3, None);
        let t = start + step * 4;
        assert!(!l.try_grant(t), "4 slots taken, share 3");
        assert_eq!(l.tokens_left(t), 0);
        assert!(l.try_grant(start + per + step * 2), "two slots freed");
    }

    /// Two processes following the protocol (the newcomer waits, the other shrinks when
    /// it learns of it) never exceed `max` together in any window.
    #[test]
    fn two_processes_sharing_never_exceed_max_together() {
        let start = Instant::now();
        let per = Duration::from_secs(3);
        let max = 500;
        let mut a = WindowLimiter::new(nz(max), per, start);
        let mut b = WindowLimiter::new(nz(max), per, start);
        b.set_share(0, None);
        let mut times = Vec::new();
        let joins = start + Duration::from_millis(4_500);
        let a_learns = joins + SHARE_REFRESH;
        let leaves = start + Duration::from_secs(20);
        let mut t = start;
        let step = Duration::from_millis(1);
        let (mut b_joined, mut a_learned, mut b_left) = (false, false, false);
        while t < start + Duration::from_secs(30) {
            if !b_joined && t >= joins {
                b.set_share(max / 2, Some(t + SHARE_REFRESH * 2 + per));
                b_joined = true;
            }
            if !a_learned && t >= a_learns {
                a.set_share(max / 2, None);
                a_learned = true;
            }
            // B stops; A learns `per` after its lease ended.
            if !b_left && t >= leaves + per {
                a.set_share(max, None);
                b_left = true;
            }
            for (l, active) in [(&mut a, true), (&mut b, t < leaves)] {
                if active && l.try_grant(t) {
                    // 5 ms at the node.
                    l.complete(t + Duration::from_millis(5));
                    times.push(t);
                }
            }
            t += step;
        }
        times.sort();
        assert!(max_in_window(&times, per) <= max as usize);
        assert!(times.len() > 4_000, "{} grants", times.len());
    }
}
