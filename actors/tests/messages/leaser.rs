//! Leaser (actors/src/leaser.rs): heartbeats several times per lease, tells a shared
//! TokenBucket until when the lease runs (no lease, no grant) and how many processes
//! share the node's budget; a lease that lapsed (the store away) stops the grants, and
//! its renewal rejoins as a newcomer does.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use async_trait::async_trait;
use raregen_actors::leaser::{LeaseEnd, Leaser, LeaserConfig, Stop};
use raregen_actors::ports::*;
use raregen_actors::rate_limit::{acquire, TokenBucket, TokensLeft};
use tokio::time::Instant;

use crate::support::*;

const MS: Duration = Duration::from_millis(1);

fn config(lease: Duration) -> LeaserConfig {
    LeaserConfig {
        lease,
        share_grace: 100 * MS,
    }
}

/// A shared budget of 10 per 50 ms: it grants only under a lease, once counted.
fn shared_bucket() -> Addr<TokenBucket> {
    TokenBucket::shared(10, 50 * MS).start()
}

/// Whether a broadcast slot comes within `within`.
async fn grants(tokens: &Addr<TokenBucket>, within: Duration) -> bool {
    tokio::time::timeout(within, acquire(tokens)).await.is_ok()
}

async fn lease_end(leaser: &Addr<Leaser>) -> Option<Instant> {
    leaser.send(LeaseEnd).await.unwrap()
}

/// Waits until the lease is known to end later than `after`.
async fn renewed_after(leaser: &Addr<Leaser>, after: Option<Instant>) -> Instant {
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(end) = lease_end(leaser).await.filter(|&e| Some(e) > after) {
            return end;
        }
        assert!(Instant::now() < until, "the lease was never renewed");
        tokio::time::sleep(2 * MS).await;
    }
}

#[test]
fn heartbeats_keep_the_lease_ahead_and_let_a_shared_bucket_grant() {
    in_system(|| async {
        let store = MemStore::new();
        let tokens = shared_bucket();
        assert!(!grants(&tokens, 100 * MS).await, "no lease yet: no grant");
        let lease = 600 * MS;
        let leaser = Leaser::new(config(lease), Arc::new(store.clone()), tokens.clone()).start();
        let first = renewed_after(&leaser, None).await;
        let asked = Instant::now();
        assert!(
            first > asked && first <= asked + lease,
            "the lease ends a lease from its heartbeat"
        );
        // Several beats per lease: renewed long before it ends.
        let second = renewed_after(&leaser, Some(first)).await;
        assert!(Instant::now() < first, "renewed before the lease ran out");
        assert!(second > first);
        assert!(store.state().heartbeats >= 2);
        assert!(
            grants(&tokens, Duration::from_secs(1)).await,
            "under a lease, alone: grants"
        );
        assert_eq!(
            tokens.send(TokensLeft).await.unwrap().budget,
            10,
            "alone: the whole budget"
        );
    });
}

#[test]
fn the_bucket_is_told_how_many_processes_share_the_budget() {
    in_system(|| async {
        let store = MemStore::new();
        store.state().live_pipelines = 2;
        let tokens = shared_bucket();
        assert_eq!(
            tokens.send(TokensLeft).await.unwrap().budget,
            0,
            "no count yet: no share"
        );
        let _leaser =
            Leaser::new(config(600 * MS), Arc::new(store.clone()), tokens.clone()).start();
        let until = Instant::now() + Duration::from_secs(10);
        while tokens.send(TokensLeft).await.unwrap().budget != 5 {
            assert!(Instant::now() < until, "the share was never set");
            tokio::time::sleep(2 * MS).await;
        }
        // Joining another process: it waits until the other has seen it (seconds).
        assert!(
            !grants(&tokens, 150 * MS).await,
            "a newcomer waits before its first grant"
        );
    });
}

#[test]
fn with_the_store_away_the_lease_lapses_and_its_renewal_rejoins_as_a_newcomer() {
    in_system(|| async {
        let store = MemStore::new();
        let tokens = shared_bucket();
        let lease = 300 * MS;
        let leaser = Leaser::new(config(lease), Arc::new(store.clone()), tokens.clone()).start();
        let _ = renewed_after(&leaser, None).await;
        assert!(grants(&tokens, Duration::from_secs(1)).await);

        // The database goes away: no heartbeat lands.
        store.state().fail_next = u32::MAX;
        tokio::time::sleep(2 * MS).await;
        let end = lease_end(&leaser).await.unwrap();
        tokio::time::sleep(end.saturating_duration_since(Instant::now()) + 20 * MS).await;
        assert_eq!(
            lease_end(&leaser).await,
            Some(end),
            "not renewed while the store is away"
        );
        assert!(
            !grants(&tokens, 100 * MS).await,
            "the lease ran out: no grant"
        );

        // Back: renewed, but the others may have stopped counting us meanwhile.
        store.state().fail_next = 0;
        let renewed = renewed_after(&leaser, Some(end)).await;
        assert!(renewed > Instant::now());
        assert!(
            !grants(&tokens, 150 * MS).await,
            "a lapsed lease, renewed, rejoins as a newcomer: it waits first"
        );
    });
}

#[test]
fn stopped_it_renews_no_more_and_the_lease_runs_out_in_the_bucket() {
    in_system(|| async {
        let store = MemStore::new();
        let tokens = shared_bucket();
        let lease = 300 * MS;
        let leaser = Leaser::new(config(lease), Arc::new(store.clone()), tokens.clone()).start();
        let end = renewed_after(&leaser, None).await;
        let end = renewed_after(&leaser, Some(end)).await;
        leaser.send(Stop).await.unwrap();
        let beats = store.state().heartbeats;
        // Until the lease has ended (several beat intervals).
        tokio::time::sleep(end.saturating_duration_since(Instant::now()) + 20 * MS).await;
        assert_eq!(store.state().heartbeats, beats, "no heartbeat after Stop");
        assert!(leaser.send(LeaseEnd).await.is_err(), "the Leaser is gone");
        assert!(
            !grants(&tokens, 100 * MS).await,
            "its lease ended: no grant"
        );
    });
}

/// A lease store whose first heartbeat never answers (a dead connection).
#[derive(Default)]
struct FirstBeatHangs {
    beats: AtomicU32,
}

#[async_trait]
impl LeaseStore for FirstBeatHangs {
    async fn heartbeat(&self, _lease: Duration) -> Result<(), StoreError> {
        if self.beats.fetch_add(1, Ordering::SeqCst) == 0 {
            std::future::pending::<()>().await;
        }
        Ok(())
    }

    async fn stop_worker(&self) -> Result<(), StoreError> {
        Ok(())
    }

    async fn live_pipelines(&self, _ended_within: Duration) -> Result<u32, StoreError> {
        Ok(1)
    }
}

#[test]
fn a_heartbeat_that_never_answers_does_not_hold_back_the_next() {
    in_system(|| async {
        let store = Arc::new(FirstBeatHangs::default());
        let tokens = shared_bucket();
        let leaser = Leaser::new(config(300 * MS), store.clone(), tokens.clone()).start();
        let _ = renewed_after(&leaser, None).await;
        assert!(store.beats.load(Ordering::SeqCst) >= 2);
        assert!(grants(&tokens, Duration::from_secs(1)).await);
    });
}
