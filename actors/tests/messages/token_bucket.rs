use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use actix::prelude::*;
use raregen_actors::rate_limit::{
    acquire, max_in_window, Acquire, Grant, LeaseUntil, RateLimited, SharedBy, Stop, TokenBucket,
    Tokens, TokensLeft, SHARE_VALID,
};
use tokio::time::{timeout, Instant};

use crate::support::*;

async fn tokens(bucket: &Addr<TokenBucket>) -> Tokens {
    bucket.send(TokensLeft).await.unwrap()
}

/// A lease and a fresh count of `processes` (valid for `SHARE_VALID`): what the Leaser
/// tells a shared bucket.
fn lease_and_count(bucket: &Addr<TokenBucket>, processes: u32) {
    let now = Instant::now();
    bucket.do_send(LeaseUntil {
        until: now + Duration::from_secs(60),
        lapsed: false,
    });
    bucket.do_send(SharedBy {
        processes,
        asked_at: now,
    });
}

/// `Acquire` answered within `within`?
async fn granted_within(bucket: &Addr<TokenBucket>, within: Duration) -> Option<Grant> {
    timeout(within, bucket.send(Acquire))
        .await
        .ok()
        .map(|g| g.unwrap())
}

/// The grants of 9 broadcasters (each completing at once), from the instants they were
/// granted: never more than `max` in any window of `per`.
#[test]
fn never_more_than_max_grants_in_any_window_of_per() {
    in_system(|| async {
        let (max, per) = (3, Duration::from_millis(60));
        let bucket = TokenBucket::new(max, per).start();
        let grants = Rc::new(RefCell::new(Vec::new()));
        let tasks: Vec<_> = (0..9)
            .map(|_| {
                let (bucket, grants) = (bucket.clone(), grants.clone());
                actix::spawn(async move {
                    let grant = acquire(&bucket).await;
                    grants.borrow_mut().push(Instant::now());
                    drop(grant); // the broadcast completes at once
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        let grants = grants.borrow();
        assert_eq!(grants.len(), 9);
        let most = max_in_window(&grants, per);
        assert!(
            most <= max as usize,
            "{most} grants in one window: {grants:?}"
        );
        assert_eq!(most, max as usize, "a full queue uses the whole budget");
    });
}

/// A grant is a slot held from the grant until `per` after the broadcast completed: a
/// slow broadcast keeps its slot, and the next grant comes `per` after it completes,
/// not `per` after it was granted.
#[test]
fn a_slot_stays_taken_until_per_after_its_broadcast_completes() {
    in_system(|| async {
        let per = Duration::from_millis(50);
        let bucket = TokenBucket::new(1, per).start();
        let slow = acquire(&bucket).await;
        let next = actix::spawn({
            let bucket = bucket.clone();
            async move {
                let g = acquire(&bucket).await;
                (Instant::now(), g)
            }
        });
        tokio::time::sleep(per * 2).await; // the broadcast takes two windows
        assert_eq!(
            tokens(&bucket).await.waiters,
            1,
            "nothing granted meanwhile"
        );
        let completed = Instant::now();
        drop(slow);
        let (at, _g) = next.await.unwrap();
        assert!(
            at >= completed + per,
            "granted {:?} after the slow broadcast completed (per {per:?})",
            at - completed
        );
    });
}

#[test]
fn waiters_are_granted_in_the_order_they_asked() {
    in_system(|| async {
        let bucket = TokenBucket::new(10, Duration::from_millis(100)).start();
        let order = Rc::new(RefCell::new(Vec::new()));
        let tasks: Vec<_> = (0..5)
            .map(|i| {
                let asked = bucket.send(Acquire);
                let order = order.clone();
                actix::spawn(async move {
                    let grant = asked.await.unwrap();
                    assert!(grant.is_granted());
                    order.borrow_mut().push(i);
                    grant // held: no slot frees during the test
                })
            })
            .collect();
        let mut held = Vec::new();
        for t in tasks {
            held.push(t.await.unwrap());
        }
        assert_eq!(*order.borrow(), [0, 1, 2, 3, 4]);
    });
}

/// The node's 429: every grant pauses for Retry-After, and the budget halves.
#[test]
fn rate_limited_pauses_every_grant_for_retry_after_and_halves_the_budget() {
    in_system(|| async {
        let bucket = TokenBucket::new(10, Duration::from_millis(200)).start();
        assert_eq!(tokens(&bucket).await.budget, 10);
        let pause = Duration::from_millis(150);
        let told = Instant::now();
        bucket.do_send(RateLimited {
            retry_after: Some(pause),
        });
        assert_eq!(tokens(&bucket).await.budget, 5);
        let grant = acquire(&bucket).await;
        assert!(
            told.elapsed() >= pause,
            "granted {:?} after a 429 asking for {pause:?}",
            told.elapsed()
        );
        drop(grant);
    });
}

#[test]
fn tokens_left_counts_open_and_recently_completed_slots_and_the_waiters() {
    in_system(|| async {
        let per = Duration::from_millis(40);
        let bucket = TokenBucket::new(3, per).start();
        assert_eq!(
            tokens(&bucket).await,
            Tokens {
                left: 3,
                budget: 3,
                waiters: 0
            }
        );
        let mut held = Vec::new();
        for _ in 0..3 {
            held.push(acquire(&bucket).await);
        }
        assert_eq!(tokens(&bucket).await.left, 0);
        let w1 = bucket.send(Acquire);
        let w2 = bucket.send(Acquire);
        assert_eq!(
            tokens(&bucket).await,
            Tokens {
                left: 0,
                budget: 3,
                waiters: 2
            }
        );
        drop(held.pop());
        let t = tokens(&bucket).await;
        assert_eq!(
            (t.left, t.waiters),
            (0, 2),
            "a completed slot counts for `per` after its completion"
        );
        let g1 = w1.await.unwrap();
        assert!(g1.is_granted());
        assert_eq!(tokens(&bucket).await.waiters, 1);
        drop(held);
        drop(g1);
        let g2 = w2.await.unwrap();
        drop(g2);
        // Every slot completed; `per` later all are free again.
        tokio::time::sleep(per + Duration::from_millis(20)).await;
        assert_eq!(
            tokens(&bucket).await,
            Tokens {
                left: 3,
                budget: 3,
                waiters: 0
            }
        );
    });
}

/// "A waiter that gave up (its broadcaster stopped) needs no slot": `acquire` waits on
/// a channel of its own, so a caller that gives up is gone at once: no longer counted,
/// and the slot it would have had goes to the next waiter.
#[test]
fn a_waiter_that_gave_up_is_not_counted_and_takes_no_slot() {
    in_system(|| async {
        let bucket = TokenBucket::new(1, Duration::from_millis(60)).start();
        let held = acquire(&bucket).await;
        assert!(
            timeout(Duration::from_millis(20), acquire(&bucket))
                .await
                .is_err(),
            "the only slot is taken"
        );
        assert_eq!(
            tokens(&bucket).await.waiters,
            0,
            "the waiter that gave up is still counted"
        );
        // The slot given back goes to the next waiter, not to the one that left.
        let next = bucket.clone();
        let waiter = tokio::spawn(async move { acquire(&next).await });
        eventually_counted(&bucket, 1).await;
        drop(held);
        let grant = timeout(Duration::from_secs(1), waiter)
            .await
            .expect("the next waiter is granted")
            .unwrap();
        assert!(grant.is_granted());
        assert_eq!(tokens(&bucket).await.waiters, 0);
    });
}

/// Waits until `n` waiters are counted.
async fn eventually_counted(bucket: &Addr<TokenBucket>, n: usize) {
    for _ in 0..500 {
        if tokens(bucket).await.waiters == n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    panic!("{n} waiters never counted");
}

/// A shared budget: no grant before the first count of the processes sharing it, nor
/// before this process's lease is known; then grants under the lease.
#[test]
fn a_shared_bucket_grants_nothing_until_counted_and_leased() {
    in_system(|| async {
        let bucket = TokenBucket::shared(10, Duration::from_millis(50)).start();
        let waiter = bucket.send(Acquire);
        tokio::time::sleep(Duration::from_millis(30)).await;
        assert_eq!(
            tokens(&bucket).await,
            Tokens {
                left: 0,
                budget: 0,
                waiters: 1
            },
            "no share before the first count"
        );
        bucket.do_send(SharedBy {
            processes: 1,
            asked_at: Instant::now(),
        });
        tokio::time::sleep(Duration::from_millis(30)).await;
        let t = tokens(&bucket).await;
        assert_eq!((t.budget, t.waiters), (10, 1), "counted, but no lease yet");
        let until = Instant::now() + Duration::from_secs(60);
        bucket.do_send(LeaseUntil {
            until,
            lapsed: false,
        });
        let grant = timeout(Duration::from_secs(1), waiter)
            .await
            .expect("the lease serves the waiter")
            .unwrap();
        assert!(grant.is_granted() && grant.usable_now());
    });
}

/// `max / n` each; a process whose first count finds others waits until they have
/// seen it (and their windows passed) before its first grant; one alone does not.
#[test]
fn a_shared_budget_is_max_over_the_processes_and_a_joiner_waits() {
    in_system(|| async {
        let alone = TokenBucket::shared(10, Duration::from_millis(50)).start();
        lease_and_count(&alone, 1);
        assert!(
            granted_within(&alone, Duration::from_millis(500))
                .await
                .is_some_and(|g| g.is_granted()),
            "a process alone grants at once"
        );
        for (processes, budget) in [(3, 3), (2, 5), (1, 10), (20, 0)] {
            alone.do_send(SharedBy {
                processes,
                asked_at: Instant::now(),
            });
            assert_eq!(tokens(&alone).await.budget, budget, "{processes} processes");
        }

        let joiner = TokenBucket::shared(10, Duration::from_millis(50)).start();
        lease_and_count(&joiner, 2);
        assert_eq!(tokens(&joiner).await.budget, 5);
        assert!(
            granted_within(&joiner, Duration::from_millis(100))
                .await
                .is_none(),
            "a joiner waits SHARE_VALID + per before its first grant"
        );
    });
}

/// A count of the processes sharing the budget holds for `SHARE_VALID` from when it
/// was asked for: a stale one grants nothing (the database may be away and the share
/// too large); a fresh one serves the waiters.
#[test]
fn a_stale_count_grants_nothing_until_a_fresh_one_comes() {
    in_system(|| async {
        let bucket = TokenBucket::shared(10, Duration::from_millis(20)).start();
        let now = Instant::now();
        bucket.do_send(LeaseUntil {
            until: now + Duration::from_secs(60),
            lapsed: false,
        });
        // Asked for longer ago than SHARE_VALID: stale on arrival.
        bucket.do_send(SharedBy {
            processes: 1,
            asked_at: now - SHARE_VALID - Duration::from_millis(1),
        });
        assert!(
            granted_within(&bucket, Duration::from_millis(100))
                .await
                .is_none(),
            "granted on a stale count"
        );
        // Valid for another 80 ms.
        bucket.do_send(SharedBy {
            processes: 1,
            asked_at: Instant::now() - SHARE_VALID + Duration::from_millis(80),
        });
        let grant = granted_within(&bucket, Duration::from_millis(60))
            .await
            .expect("a fresh count grants");
        assert!(grant.is_granted());
        drop(grant);
        tokio::time::sleep(Duration::from_millis(100)).await; // the count went stale
        let waiter = bucket.send(Acquire);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(tokens(&bucket).await.waiters >= 1, "nothing granted on it");
        bucket.do_send(SharedBy {
            processes: 1,
            asked_at: Instant::now(),
        });
        let grant = timeout(Duration::from_secs(1), waiter)
            .await
            .expect("a fresh count serves the waiter")
            .unwrap();
        assert!(grant.is_granted());
    });
}

/// Fail closed on the lease: no grant once it has ended; a renewal that follows a lapse
/// rejoins as a newcomer (waits for the others to count us again), a timely one grants
/// at once.
#[test]
fn no_grant_after_the_lease_ends_and_a_lapsed_renewal_waits_to_rejoin() {
    in_system(|| async {
        let per = Duration::from_millis(20);
        let bucket = TokenBucket::shared(10, per).start();
        let now = Instant::now();
        let until = now + Duration::from_millis(60);
        bucket.do_send(LeaseUntil {
            until,
            lapsed: false,
        });
        bucket.do_send(SharedBy {
            processes: 1,
            asked_at: now,
        });
        let grant = acquire(&bucket).await;
        assert!(grant.usable_now());
        tokio::time::sleep_until(until + Duration::from_millis(10)).await;
        assert!(
            !grant.usable_now(),
            "a grant is usable only under the lease it was made under"
        );
        drop(grant);
        assert!(
            granted_within(&bucket, Duration::from_millis(50))
                .await
                .is_none(),
            "granted after the lease ended"
        );
        // A renewal that finds the lease ended.
        bucket.do_send(LeaseUntil {
            until: Instant::now() + Duration::from_secs(60),
            lapsed: true,
        });
        assert!(
            granted_within(&bucket, Duration::from_millis(100))
                .await
                .is_none(),
            "a lapsed process rejoins after SHARE_VALID + per, not at once"
        );

        // The same, renewed in time: grants at once.
        let timely = TokenBucket::shared(10, per).start();
        let now = Instant::now();
        let until = now + Duration::from_millis(40);
        timely.do_send(LeaseUntil {
            until,
            lapsed: false,
        });
        timely.do_send(SharedBy {
            processes: 1,
            asked_at: now,
        });
        timely.do_send(LeaseUntil {
            until: until + Duration::from_secs(60),
            lapsed: false,
        });
        tokio::time::sleep_until(until + Duration::from_millis(10)).await;
        assert!(
            granted_within(&timely, Duration::from_millis(500))
                .await
                .is_some_and(|g| g.usable_now()),
            "a renewed lease grants"
        );
    });
}

/// A limiter that stops grants nothing: its waiters are told no, and `acquire` keeps
/// waiting rather than broadcast without a slot.
#[test]
fn a_stopped_bucket_fails_closed() {
    in_system(|| async {
        let bucket = TokenBucket::new(1, Duration::from_millis(20)).start();
        let held = acquire(&bucket).await;
        let waiter = bucket.send(Acquire);
        bucket.send(Stop).await.unwrap();
        let answer = waiter.await;
        assert!(
            !answer.is_ok_and(|g| g.is_granted()),
            "a waiter of a stopped limiter was granted"
        );
        drop(held);
        assert!(
            timeout(Duration::from_millis(150), acquire(&bucket))
                .await
                .is_err(),
            "acquire returned a grant from a stopped limiter"
        );
    });
}

/// Under a supervisor a stopped limiter starts again on the same address: its waiters
/// were told no, and nothing is granted for one `per` after the restart (it cannot know
/// what was in flight), though a slot is free; then it grants again.
#[test]
fn a_supervised_bucket_restarts_and_grants_nothing_for_one_per() {
    in_system(|| async {
        let per = Duration::from_millis(80);
        // Two slots, grants 20 ms apart: one taken, the next free 20 ms later.
        let bucket = TokenBucket::new(2, per).start_supervised();
        let held = acquire(&bucket).await;
        let waiters: Vec<_> = (0..3).map(|_| bucket.send(Acquire)).collect();
        let stopped = Instant::now();
        bucket.send(Stop).await.unwrap();
        for w in waiters {
            assert!(
                !w.await.unwrap().is_granted(),
                "a waiter queued before the stop was granted"
            );
        }
        let grant = acquire(&bucket).await;
        assert!(
            stopped.elapsed() >= per,
            "granted {:?} after the restart (per {per:?})",
            stopped.elapsed()
        );
        assert!(grant.usable_now());
        assert_eq!(tokens(&bucket).await.budget, 2);
        drop(held); // a grant from before the restart completes on the same address
        drop(grant);
    });
}

/// A limiter that stops grants nothing (fail closed: its waiters are told no, and
/// `acquire` keeps waiting); its supervisor starts it again, and it grants nothing for
/// one `per` (it cannot know what was in flight), then resumes under the limit.
#[test]
fn a_stopped_token_bucket_grants_nothing_then_resumes_under_the_limit() {
    actix::System::new().block_on(async {
        let per = Duration::from_millis(400);
        let bucket = TokenBucket::new(5, per).start_supervised();
        let mut grants = Vec::new();
        for _ in 0..3 {
            drop(acquire(&bucket).await);
            grants.push(std::time::Instant::now());
        }
        // Waiters queued when it stops are told no (an empty grant), not granted.
        let queued: Vec<_> = (0..10).map(|_| bucket.send(Acquire)).collect();
        let stopped = std::time::Instant::now();
        bucket.send(Stop).await.unwrap();
        let mut refused = 0;
        for w in queued {
            match w.await {
                Ok(grant) if grant.is_granted() => grants.push(std::time::Instant::now()),
                _ => refused += 1,
            }
        }
        assert!(
            refused >= 8,
            "only {refused} of 10 waiters refused by the stop"
        );
        // Restarted: nothing for one `per`, then grants again, under the limit.
        let after: Vec<_> = futures::future::join_all((0..12).map(|_| {
            let bucket = bucket.clone();
            async move {
                drop(acquire(&bucket).await);
                std::time::Instant::now()
            }
        }))
        .await;
        let first = *after.iter().min().unwrap();
        assert!(
            first >= stopped + per,
            "granted {:?} after the restart, before one window ({per:?})",
            first - stopped
        );
        grants.extend(after);
        grants.sort();
        assert!(max_in_window(&grants, per) <= 5, "{grants:?}");
    });
}
