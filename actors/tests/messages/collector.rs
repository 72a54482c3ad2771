use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use async_trait::async_trait;
use raregen_actors::batch::{next_job, Batch, Depth};
use raregen_actors::collector::{
    Arrived, Claims, CollectMode, Collector, CollectorConfig, StopClaiming, Wake,
};
use raregen_actors::ports::{ClaimStore, ClaimedBatch, JobsNotifier, StoreError};

use crate::support::*;

fn config(mode: CollectMode, max_batch: u32, low_water: usize) -> CollectorConfig {
    CollectorConfig {
        mode,
        max_batch,
        // Longer than any test: a claim here is never the interval's fallback poll.
        interval: Duration::from_secs(3600),
        low_water,
    }
}

fn start(
    cfg: CollectorConfig,
    store: Arc<dyn ClaimStore>,
    notifier: Option<Arc<dyn JobsNotifier>>,
) -> (Addr<Collector>, Addr<Batch>) {
    let batch = Batch::default().start();
    let collector = Collector::new(cfg, store, notifier, batch.clone()).start();
    (collector, batch)
}

/// A notifier that rings only when the test says so (`LISTEN/NOTIFY` in production).
#[derive(Default)]
struct Bell(tokio::sync::Notify);

#[async_trait]
impl JobsNotifier for Bell {
    async fn wait(&self, timeout: Duration) -> bool {
        tokio::time::timeout(timeout, self.0.notified())
            .await
            .is_ok()
    }
}

/// Claims that wait until the test opens the gate (a slow database), around the
/// MemStore; counts the claims begun.
struct GatedClaims {
    inner: MemStore,
    gate: tokio::sync::Semaphore,
    begun: AtomicUsize,
}

#[async_trait]
impl ClaimStore for GatedClaims {
    async fn claim_batch(&self, max: u32) -> Result<Option<ClaimedBatch>, StoreError> {
        self.begun.fetch_add(1, Ordering::SeqCst);
        self.gate.acquire().await.expect("never closed").forget();
        self.inner.claim_batch(max).await
    }
}

async fn take(batch: &Addr<Batch>, n: usize) {
    for _ in 0..n {
        tokio::time::timeout(Duration::from_secs(5), next_job(batch))
            .await
            .expect("a job was waiting")
            .expect("not draining");
    }
}

#[test]
fn a_batch_collector_claims_full_batches_until_twice_max_batch_wait() {
    in_system(|| async {
        let store = MemStore::new();
        store.queue(1..=1_200);
        let batch = Batch::default().start();
        let _collector = Collector::new(
            CollectorConfig {
                mode: CollectMode::Batch,
                max_batch: 500,
                interval: Duration::from_millis(20),
                low_water: 10,
            },
            Arc::new(store.clone()),
            None,
            batch.clone(),
        )
        .start();
        eventually("a first claim", || !store.state().claims.is_empty()).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        // Nobody takes jobs from the batch: claims stop once twice max_batch wait.
        let claims = store.state().claims.clone();
        assert_eq!(
            claims,
            vec![500, 500],
            "full claims until 2 x max_batch wait"
        );
        let depth = batch.send(Depth).await.unwrap();
        assert_eq!(depth.waiting, 1_000);
        assert_eq!(store.state().queued.len(), 200, "the rest stays queued");
    });
}

/// Low water: one batch, then nothing while enough jobs wait (however many are still
/// queued); the next claim comes as soon as the broadcasters take the Batch below it.
#[test]
fn a_batch_collector_claims_again_as_soon_as_the_batch_runs_below_low_water() {
    in_system(|| async {
        let store = MemStore::new();
        store.queue(1..=100);
        let (collector, batch) = start(
            config(CollectMode::Batch, 10, 5),
            Arc::new(store.clone()),
            None,
        );
        eventually("a first claim", || !store.state().claims.is_empty()).await;
        // A full claim looks again at once; 10 waiting is above low water.
        tokio::time::sleep(Duration::from_millis(80)).await;
        assert_eq!(store.state().claims, vec![10], "no claim above low water");
        assert_eq!(collector.send(Claims).await.unwrap(), 1);
        take(&batch, 6).await; // 4 left, under low water
        eventually("a claim below low water", || {
            store.state().claims.len() == 2
        })
        .await;
        assert_eq!(batch.send(Depth).await.unwrap().waiting, 14);
        assert_eq!(store.state().claims, vec![10, 10]);
        assert_eq!(store.state().queued.len(), 80);
    });
}

/// With a notifier, a short claim means the queue was drained: no claim until a
/// notification (or the interval), however low the Batch.
#[test]
fn after_a_short_claim_a_batch_collector_waits_for_a_notification() {
    in_system(|| async {
        let store = MemStore::new();
        store.queue(1..=3);
        let bell = Arc::new(Bell::default());
        let (collector, batch) = start(
            config(CollectMode::Batch, 10, 5),
            Arc::new(store.clone()),
            Some(bell.clone()),
        );
        eventually("a first claim", || store.state().claim_calls == 1).await;
        tokio::time::sleep(Duration::from_millis(100)).await; // five 20 ms ticks
        assert_eq!(
            store.state().claim_calls,
            1,
            "the queue was drained: nothing to ask for until a notification"
        );
        store.queue(4..=7);
        bell.0.notify_one();
        eventually("a claim after the notification", || {
            store.state().claims == [3, 4]
        })
        .await;
        tokio::time::sleep(Duration::from_millis(60)).await;
        assert_eq!(
            store.state().claim_calls,
            2,
            "again drained: no claim after it"
        );
        assert_eq!(batch.send(Depth).await.unwrap().waiting, 7);
        assert_eq!(collector.send(Claims).await.unwrap(), 2);
    });
}

/// Without a notifier nothing announces arrivals: below low water the collector asks
/// the store on every tick (the queue may have filled since).
#[test]
fn without_a_notifier_a_batch_collector_below_low_water_keeps_asking() {
    in_system(|| async {
        let store = MemStore::new();
        let (_collector, _batch) = start(
            config(CollectMode::Batch, 10, 5),
            Arc::new(store.clone()),
            None,
        );
        eventually("several claims of an empty queue", || {
            store.state().claim_calls >= 3
        })
        .await;
        store.queue(1..=2);
        eventually("the new jobs claimed without a notification", || {
            store.state().claims == [2]
        })
        .await;
    });
}

/// Notifications that arrive together share one claim.
#[test]
fn notifications_that_arrive_together_share_one_claim() {
    in_system(|| async {
        let store = MemStore::new();
        let bell = Arc::new(Bell::default());
        let (collector, _batch) = start(
            config(CollectMode::Batch, 10, 5),
            Arc::new(store.clone()),
            Some(bell),
        );
        eventually("the first claim", || store.state().claim_calls == 1).await;
        tokio::time::sleep(Duration::from_millis(40)).await;
        assert_eq!(store.state().claim_calls, 1);
        store.queue(1..=5);
        for _ in 0..5 {
            collector.do_send(Arrived);
        }
        eventually("a claim for the arrivals", || store.state().claims == [5]).await;
        tokio::time::sleep(Duration::from_millis(80)).await;
        assert_eq!(
            store.state().claim_calls,
            2,
            "five notifications, one claim (and none once it came back short)"
        );
    });
}

/// The interval is the idle collector's longest wait: with nothing announced, one claim
/// per interval, not one per tick.
#[test]
fn an_idle_batch_collector_with_a_notifier_polls_once_per_interval() {
    in_system(|| async {
        let store = MemStore::new();
        let bell = Arc::new(Bell::default());
        let (_collector, _batch) = start(
            CollectorConfig {
                interval: Duration::from_millis(100),
                ..config(CollectMode::Batch, 10, 5)
            },
            Arc::new(store.clone()),
            Some(bell),
        );
        eventually("the first claim", || store.state().claim_calls == 1).await;
        // A job whose backoff ended: no notification announces it.
        store.queue(1..=1);
        eventually("the fallback poll finds it", || store.state().claims == [1]).await;
        tokio::time::sleep(Duration::from_millis(150)).await;
        let calls = store.state().claim_calls;
        // ~350 ms in: one claim per 100 ms interval, where every 20 ms tick would be ~17.
        assert!(
            calls <= 5,
            "{calls} claims: polled faster than the interval"
        );
    });
}

#[test]
fn a_single_collector_claims_one_job_at_a_time_until_none_is_left() {
    in_system(|| async {
        let store = MemStore::new();
        store.queue(1..=5);
        let (collector, batch) = start(
            config(CollectMode::Single, 10, 5),
            Arc::new(store.clone()),
            None,
        );
        eventually("five claims", || store.state().claims.len() == 5).await;
        assert_eq!(store.state().claims, vec![1; 5], "one job per claim");
        assert_eq!(batch.send(Depth).await.unwrap().waiting, 5);
        assert!(collector.send(Claims).await.unwrap() >= 5);
        // Woken (a notification): it looks again.
        store.queue(6..=7);
        collector.do_send(Wake);
        eventually("the new jobs claimed", || store.state().claims.len() == 7).await;
        assert_eq!(batch.send(Depth).await.unwrap().waiting, 7);
    });
}

/// "Claims one job at a time until none is left": once a claim finds the queue empty,
/// a single-mode collector waits for a notification or its interval.
#[test]
fn an_idle_single_collector_stops_asking_once_the_queue_is_empty() {
    in_system(|| async {
        let store = MemStore::new();
        store.queue(1..=3);
        let bell = Arc::new(Bell::default());
        let (_collector, _batch) = start(
            config(CollectMode::Single, 10, 5),
            Arc::new(store.clone()),
            Some(bell),
        );
        eventually("three claims", || store.state().claims.len() == 3).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        let calls = store.state().claim_calls;
        assert!(
            calls <= 5,
            "{calls} claims in 100 ms of an empty queue (3 jobs, then one empty claim)"
        );
    });
}

#[test]
fn a_single_collector_stops_at_twice_max_batch_waiting() {
    in_system(|| async {
        let store = MemStore::new();
        store.queue(1..=10);
        let (collector, batch) = start(
            config(CollectMode::Single, 2, 1),
            Arc::new(store.clone()),
            None,
        );
        eventually("four claims", || store.state().claims.len() == 4).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(store.state().claims.len(), 4, "no room past 2 x max_batch");
        assert_eq!(store.state().queued.len(), 6);
        take(&batch, 2).await;
        collector.do_send(Wake);
        eventually("room again", || store.state().claims.len() == 6).await;
        assert_eq!(batch.send(Depth).await.unwrap().waiting, 4);
    });
}

/// StopClaiming answers only once the claim under way has reached the Batch (so a
/// Drain after it sees every job claimed), and no claim follows it.
#[test]
fn stop_claiming_waits_for_the_claim_in_flight_and_no_claim_follows() {
    in_system(|| async {
        let store = Arc::new(GatedClaims {
            inner: MemStore::new(),
            gate: tokio::sync::Semaphore::new(0),
            begun: AtomicUsize::new(0),
        });
        store.inner.queue(1..=100);
        let (collector, batch) = start(config(CollectMode::Batch, 10, 5), store.clone(), None);
        eventually("a claim under way", || {
            store.begun.load(Ordering::SeqCst) == 1
        })
        .await;
        let stop = actix::spawn(collector.send(StopClaiming));
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!stop.is_finished(), "answered with a claim still in flight");
        store.gate.add_permits(1);
        stop.await.unwrap().unwrap();
        assert_eq!(
            batch.send(Depth).await.unwrap().waiting,
            10,
            "the claim in flight reached the Batch before StopClaiming answered"
        );
        store.gate.add_permits(100); // a later claim would not wait
        take(&batch, 10).await; // empty: a running collector would claim at once
        tokio::time::sleep(Duration::from_millis(60)).await;
        assert_eq!(
            store.begun.load(Ordering::SeqCst),
            1,
            "no claim after the stop"
        );
        assert_eq!(collector.send(Claims).await.unwrap(), 1);
        assert_eq!(store.inner.state().queued.len(), 90);
    });
}

/// A claim that fails (the database is away) pauses claiming for a second, then the
/// collector claims again by itself.
#[test]
fn a_failed_claim_pauses_claiming_then_resumes() {
    in_system(|| async {
        let store = MemStore::new();
        store.queue(1..=5);
        store.state().fail_next = 1;
        let (_collector, batch) = start(
            config(CollectMode::Batch, 10, 5),
            Arc::new(store.clone()),
            None,
        );
        eventually("the failed claim", || store.state().fail_next == 0).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(
            store.state().claim_calls,
            0,
            "no claim during the pause, though the Batch is empty"
        );
        eventually("claiming resumed", || store.state().claims == [5]).await;
        assert_eq!(batch.send(Depth).await.unwrap().waiting, 5);
    });
}
