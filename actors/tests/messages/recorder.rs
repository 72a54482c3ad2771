use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix::prelude::*;
use async_trait::async_trait;
use raregen_actors::ports::{
    Fence, JobId, OutcomeStore, Recorded, Retry, Sending, SendingRecorded, Sent, StoreError,
};
use raregen_actors::recorder::{
    MarkDirty, Pending, RecordRetry, RecordSending, RecordSent, Recorder, WRITE_AHEAD_IN_FLIGHT,
};

use crate::support::*;

/// The jobs `ids` are claimed (attempt 1): their fences hold.
fn claimed(store: &MemStore, ids: impl IntoIterator<Item = JobId>) {
    let mut s = store.state();
    for id in ids {
        s.attempts.insert(id, 1);
    }
}

fn sending(id: JobId, attempts: i32, utxo_id: i64) -> RecordSending {
    RecordSending(Sending {
        fence: fence(id, attempts),
        utxo_id,
        txid: format!("{id:064x}"),
        raw_tx: format!("tx-of-{id}").into_bytes(),
    })
}

/// Job `id` accepted, with `change`. MemStore names a change coin's txid after its
/// job (`change-of-{id}`): the txid the Recorder matches the change by.
fn sent(id: JobId, attempts: i32, change: Option<(u32, u64)>) -> RecordSent {
    RecordSent {
        sent: Sent {
            fence: fence(id, attempts),
            sent_at: chrono::Utc::now(),
            change,
        },
        txid: format!("change-of-{id}"),
    }
}

fn retry(id: JobId, attempts: i32, utxo_id: Option<i64>, fail_now: bool) -> RecordRetry {
    RecordRetry {
        retry: Retry {
            fence: fence(id, attempts),
            error: "rejected by the node: min relay fee not met".into(),
            not_before: chrono::Utc::now(),
            reanchor: false,
            settles_dirty: false,
        },
        utxo_id,
        fail_now,
    }
}

fn unavailable<T: std::fmt::Debug>(answer: &Result<T, StoreError>) -> bool {
    matches!(answer, Err(StoreError::Unavailable(_)))
}

fn fenced<T: std::fmt::Debug>(answer: &Result<T, StoreError>) -> bool {
    matches!(answer, Err(StoreError::Fenced))
}

/// A MemStore that can hold calls of a kind until opened, and records what it was
/// asked beyond what MemStore keeps: each call as it begins, the `max_attempts` of each
/// retry statement, and coins a retry statement releases.
#[derive(Default)]
struct Probe {
    store: MemStore,
    shut: Mutex<HashSet<&'static str>>,
    opened: tokio::sync::Notify,
    begun: Mutex<Vec<(&'static str, usize)>>,
    retry_max: Mutex<Vec<u32>>,
    /// Coins every retry statement reports released (Recorded::utxos).
    releases: Mutex<Vec<i64>>,
}

impl Probe {
    fn new(store: &MemStore) -> Arc<Probe> {
        Arc::new(Probe {
            store: store.clone(),
            ..Probe::default()
        })
    }

    fn shut(&self, kind: &'static str) {
        self.shut.lock().unwrap().insert(kind);
    }

    fn open(&self, kind: &'static str) {
        self.shut.lock().unwrap().remove(kind);
        self.opened.notify_waiters();
    }

    fn begun(&self, kind: &str) -> usize {
        self.begun
            .lock()
            .unwrap()
            .iter()
            .filter(|(k, _)| *k == kind)
            .count()
    }

    async fn pass(&self, kind: &'static str, n: usize) {
        self.begun.lock().unwrap().push((kind, n));
        loop {
            let opened = self.opened.notified();
            if !self.shut.lock().unwrap().contains(kind) {
                return;
            }
            opened.await;
        }
    }
}

#[async_trait]
impl OutcomeStore for Probe {
    async fn record_sending(&self, jobs: &[Sending]) -> Result<SendingRecorded, StoreError> {
        self.pass("sending", jobs.len()).await;
        self.store.record_sending(jobs).await
    }

    async fn record_sent(&self, jobs: &[Sent]) -> Result<Recorded, StoreError> {
        self.pass("sent", jobs.len()).await;
        self.store.record_sent(jobs).await
    }

    async fn record_retry(
        &self,
        jobs: &[Retry],
        max_attempts: u32,
    ) -> Result<Recorded, StoreError> {
        self.pass("retry", jobs.len()).await;
        self.retry_max.lock().unwrap().push(max_attempts);
        let mut recorded = self.store.record_retry(jobs, max_attempts).await?;
        recorded.utxos.extend(
            self.releases
                .lock()
                .unwrap()
                .iter()
                .map(|&id| coin(id, 10_000)),
        );
        Ok(recorded)
    }

    async fn mark_dirty(&self, jobs: &[Fence]) -> Result<Vec<JobId>, StoreError> {
        self.pass("dirty", jobs.len()).await;
        self.store.mark_dirty(jobs).await
    }

    async fn release_claims(&self, jobs: &[Fence]) -> Result<Vec<JobId>, StoreError> {
        self.store.release_claims(jobs).await
    }
}

fn recorder_on(store: &MemStore) -> Addr<Recorder> {
    Recorder::new(Arc::new(store.clone()), 5).start()
}

#[test]
fn write_aheads_that_arrive_together_are_one_statement() {
    in_system(|| async {
        let store = MemStore::new();
        claimed(&store, 1..=10);
        let recorder = recorder_on(&store);
        let asks: Vec<_> = (1..=10)
            .map(|id| recorder.send(sending(id, 1, 100 + id)))
            .collect();
        for ask in asks {
            assert!(matches!(ask.await.unwrap(), Ok(true)));
        }
        let s = store.state();
        assert_eq!(s.outcome_calls, [("sending", 10)]);
        let mut stored: Vec<(JobId, i64)> =
            s.sending.iter().map(|r| (r.fence.id, r.utxo_id)).collect();
        stored.sort();
        assert_eq!(
            stored,
            (1..=10).map(|id| (id, 100 + id)).collect::<Vec<_>>()
        );
    });
}

/// Each write-ahead of a group learns its own outcome: stored, its coin taken (sign
/// again with another), or fenced (the claim is another's now).
#[test]
fn each_write_ahead_learns_its_own_outcome() {
    in_system(|| async {
        let store = MemStore::new();
        claimed(&store, 1..=3);
        store.state().attempts.insert(3, 2); // claimed again since
        store.state().taken_coins.insert(102);
        let recorder = recorder_on(&store);
        let stored = recorder.send(sending(1, 1, 101));
        let taken = recorder.send(sending(2, 1, 102));
        let stale = recorder.send(sending(3, 1, 103));
        assert!(matches!(stored.await.unwrap(), Ok(true)));
        assert!(matches!(taken.await.unwrap(), Ok(false)));
        assert!(fenced(&stale.await.unwrap()));
        let s = store.state();
        assert_eq!(s.outcome_calls, [("sending", 3)], "one statement");
        assert_eq!(s.sending.len(), 1);
    });
}

/// A group holds at most 256 records: more at once go in several statements, and every
/// one is written.
#[test]
fn a_group_holds_at_most_256_records() {
    in_system(|| async {
        let store = MemStore::new();
        claimed(&store, 1..=600);
        let recorder = recorder_on(&store);
        // One address per broadcaster, as many as there are records: all arrive at once.
        let asks: Vec<_> = (1..=600)
            .map(|id| recorder.clone().send(sending(id, 1, id)))
            .collect();
        for ask in asks {
            assert!(matches!(ask.await.unwrap(), Ok(true)));
        }
        let s = store.state();
        let sizes: Vec<usize> = s.outcome_calls.iter().map(|c| c.1).collect();
        assert!(sizes.iter().all(|&n| n <= 256), "{sizes:?}");
        assert_eq!(sizes.iter().sum::<usize>(), 600);
        assert!(sizes.len() >= 3);
        assert_eq!(s.sending.len(), 600);
    });
}

/// Two records of one job in a group (a stale copy from a claim taken back and made
/// again, beside the live one): the first is written, the other answered "again
/// shortly" — never given the other's answer.
#[test]
fn two_records_of_one_job_in_a_group_never_share_an_answer() {
    in_system(|| async {
        let store = MemStore::new();
        store.state().attempts.insert(7, 2); // the live claim is attempt 2
        let recorder = recorder_on(&store);
        let stale = recorder.send(sending(7, 1, 70));
        let live = recorder.send(sending(7, 2, 71));
        assert!(fenced(&stale.await.unwrap()), "the stale copy is fenced");
        assert!(
            unavailable(&live.await.unwrap()),
            "the live copy waits for the next group"
        );
        assert!(matches!(
            recorder.send(sending(7, 2, 71)).await.unwrap(),
            Ok(true)
        ));
        {
            let s = store.state();
            assert_eq!(s.outcome_calls, [("sending", 1), ("sending", 1)]);
            assert_eq!(s.sending.len(), 1);
            assert_eq!(s.sending[0].utxo_id, 71);
        }
        // The same for outcomes.
        let first = recorder.send(sent(7, 2, None));
        let again = recorder.send(sent(7, 2, None));
        assert!(matches!(first.await.unwrap(), Ok(None)));
        assert!(unavailable(&again.await.unwrap()));
        assert_eq!(store.state().sent.len(), 1);
    });
}

/// Outcomes gathered together are written kind after kind, one statement each: sent,
/// retries (under `max_attempts`), failures (0: at once), dirty.
#[test]
fn outcomes_of_each_kind_are_one_statement_each() {
    in_system(|| async {
        let store = MemStore::new();
        claimed(&store, 1..=8);
        let probe = Probe::new(&store);
        let recorder = Recorder::new(probe.clone(), 5).start();
        let sent_asks: Vec<_> = (1..=3).map(|id| recorder.send(sent(id, 1, None))).collect();
        let retries: Vec<_> = [4, 5]
            .into_iter()
            .map(|id| recorder.send(retry(id, 1, None, false)))
            .collect();
        let failure = recorder.send(retry(6, 1, None, true));
        let dirty: Vec<_> = [7, 8]
            .into_iter()
            .map(|id| recorder.send(MarkDirty(fence(id, 1))))
            .collect();
        for a in sent_asks {
            assert!(matches!(a.await.unwrap(), Ok(None)));
        }
        for a in retries {
            assert!(matches!(a.await.unwrap(), Ok(None)));
        }
        assert!(matches!(failure.await.unwrap(), Ok(None)));
        for a in dirty {
            assert!(matches!(a.await.unwrap(), Ok(true)));
        }
        assert_eq!(
            store.state().outcome_calls,
            [("sent", 3), ("retry", 2), ("retry", 1), ("dirty", 2)]
        );
        assert_eq!(*probe.retry_max.lock().unwrap(), [5, 0]);
        let s = store.state();
        assert_eq!(s.sent.len(), 3);
        assert_eq!(s.retries.len(), 3);
        assert_eq!(s.dirty, [fence(7, 1), fence(8, 1)]);
    });
}

/// Each accepted job is answered its own change (matched by txid), none when it has
/// none, and a fenced one is refused; a fenced retry is refused, a fenced MarkDirty
/// answers that nothing was marked.
#[test]
fn outcomes_answer_each_job_its_own_change_and_fenced_ones_are_refused() {
    in_system(|| async {
        let store = MemStore::new();
        claimed(&store, 1..=6);
        store.state().attempts.insert(3, 2);
        let recorder = recorder_on(&store);
        let with_change = recorder.send(sent(1, 1, Some((1, 9_000))));
        let without = recorder.send(sent(2, 1, None));
        let stale = recorder.send(sent(3, 1, Some((1, 8_000))));
        let change = with_change
            .await
            .unwrap()
            .unwrap()
            .expect("the change joins the pool");
        assert_eq!(
            (change.txid.as_str(), change.vout, change.satoshis),
            ("change-of-1", 1, 9_000)
        );
        assert!(
            matches!(without.await.unwrap(), Ok(None)),
            "not another job's change"
        );
        assert!(fenced(&stale.await.unwrap()));

        store.state().attempts.insert(4, 3);
        assert!(fenced(
            &recorder.send(retry(4, 1, None, false)).await.unwrap()
        ));
        assert!(matches!(
            recorder.send(MarkDirty(fence(5, 1))).await.unwrap(),
            Ok(true)
        ));
        assert!(matches!(
            recorder.send(MarkDirty(fence(6, 9))).await.unwrap(),
            Ok(false)
        ));
        let s = store.state();
        assert_eq!(s.sent.len(), 2);
        assert!(s.retries.is_empty());
        assert_eq!(s.dirty, [fence(5, 1)]);
    });
}

/// A retry is answered the job's coin when the statement released it (to go back to
/// the pool), and nothing when it kept it (its anchor) or the job held none.
#[test]
fn a_retry_answers_the_coin_it_released() {
    in_system(|| async {
        let store = MemStore::new();
        claimed(&store, 1..=3);
        let probe = Probe::new(&store);
        probe.releases.lock().unwrap().push(7);
        let recorder = Recorder::new(probe.clone(), 5).start();
        let released = recorder.send(retry(1, 1, Some(7), true));
        let kept = recorder.send(retry(2, 1, Some(8), true));
        let none = recorder.send(retry(3, 1, None, true));
        assert_eq!(released.await.unwrap().unwrap().map(|u| u.id), Some(7));
        assert_eq!(kept.await.unwrap().unwrap(), None);
        assert_eq!(none.await.unwrap().unwrap(), None);
    });
}

/// Two lanes: a write-ahead is answered while an outcome group is still being written.
#[test]
fn a_write_ahead_never_waits_behind_outcomes() {
    in_system(|| async {
        let store = MemStore::new();
        claimed(&store, 1..=2);
        let probe = Probe::new(&store);
        probe.shut("sent");
        let recorder = Recorder::new(probe.clone(), 5).start();
        let outcome = recorder.send(sent(1, 1, None));
        eventually("the outcome group begun", || probe.begun("sent") == 1).await;
        let ahead = tokio::time::timeout(Duration::from_secs(2), recorder.send(sending(2, 1, 2)))
            .await
            .expect("the write-ahead waited behind the outcome");
        assert!(matches!(ahead.unwrap(), Ok(true)));
        assert!(
            store.state().sent.is_empty(),
            "the outcome is still being written"
        );
        probe.open("sent");
        assert!(matches!(outcome.await.unwrap(), Ok(None)));
    });
}

/// Outcomes are written one group at a time; what arrives meanwhile gathers into the
/// next group (counted by Pending), written once the first is done.
#[test]
fn outcome_groups_go_one_at_a_time_and_the_next_grows_meanwhile() {
    in_system(|| async {
        let store = MemStore::new();
        claimed(&store, 1..=6);
        let probe = Probe::new(&store);
        probe.shut("sent");
        let recorder = Recorder::new(probe.clone(), 5).start();
        assert_eq!(recorder.send(Pending).await.unwrap(), 0);
        let first = recorder.send(sent(1, 1, None));
        eventually("the first group begun", || probe.begun("sent") == 1).await;
        let rest: Vec<_> = (2..=6).map(|id| recorder.send(sent(id, 1, None))).collect();
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(probe.begun("sent"), 1, "a second group beside the first");
        assert_eq!(
            recorder.send(Pending).await.unwrap(),
            5,
            "five gathering, the one being written not counted"
        );
        probe.open("sent");
        assert!(matches!(first.await.unwrap(), Ok(None)));
        for a in rest {
            assert!(matches!(a.await.unwrap(), Ok(None)));
        }
        assert_eq!(store.state().outcome_calls, [("sent", 1), ("sent", 5)]);
        assert_eq!(recorder.send(Pending).await.unwrap(), 0);
    });
}

/// Up to WRITE_AHEAD_IN_FLIGHT write-ahead groups at once; another waits (counted by
/// Pending) until one is done.
#[test]
fn up_to_three_write_ahead_groups_are_written_at_once() {
    in_system(|| async {
        let store = MemStore::new();
        claimed(&store, 1..=4);
        let probe = Probe::new(&store);
        probe.shut("sending");
        let recorder = Recorder::new(probe.clone(), 5).start();
        let mut asks = Vec::new();
        for id in 1..=WRITE_AHEAD_IN_FLIGHT as i64 {
            asks.push(recorder.send(sending(id, 1, id)));
            eventually("a group begun", || probe.begun("sending") == id as usize).await;
        }
        asks.push(recorder.send(sending(4, 1, 4)));
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(
            probe.begun("sending"),
            WRITE_AHEAD_IN_FLIGHT,
            "more write-ahead groups at once than allowed"
        );
        assert_eq!(recorder.send(Pending).await.unwrap(), 1);
        probe.open("sending");
        for a in asks {
            assert!(matches!(a.await.unwrap(), Ok(true)));
        }
        assert_eq!(probe.begun("sending"), 4);
        assert_eq!(store.state().sending.len(), 4);
    });
}

/// A store that is away fails the statement it was asked: every record in it is
/// answered the error (the caller retries; the Recorder writes nothing behind its
/// back), and the next group is written.
#[test]
fn an_away_store_fails_the_group_it_was_asked_and_the_next_is_written() {
    in_system(|| async {
        let store = MemStore::new();
        claimed(&store, 1..=3);
        store.state().fail_next = 1;
        let recorder = recorder_on(&store);
        let asks: Vec<_> = (1..=3)
            .map(|id| recorder.send(sending(id, 1, id)))
            .collect();
        for a in asks {
            assert!(unavailable(&a.await.unwrap()));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(
            store.state().sending.is_empty(),
            "written after being answered as failed"
        );
        let asks: Vec<_> = (1..=3)
            .map(|id| recorder.send(sending(id, 1, id)))
            .collect();
        for a in asks {
            assert!(matches!(a.await.unwrap(), Ok(true)));
        }
        assert_eq!(store.state().sending.len(), 3);
    });
}

/// Outcomes: each kind is its own statement, so a store away for one statement fails
/// that kind only; the group's other kinds are written.
#[test]
fn an_away_store_fails_only_the_kind_it_was_asked() {
    in_system(|| async {
        let store = MemStore::new();
        claimed(&store, 1..=3);
        store.state().fail_next = 1;
        let recorder = recorder_on(&store);
        let s = recorder.send(sent(1, 1, Some((1, 9_000))));
        let r = recorder.send(retry(2, 1, None, false));
        let d = recorder.send(MarkDirty(fence(3, 1)));
        assert!(
            unavailable(&s.await.unwrap()),
            "sent: the statement that failed"
        );
        assert!(matches!(r.await.unwrap(), Ok(None)));
        assert!(matches!(d.await.unwrap(), Ok(true)));
        let st = store.state();
        assert!(st.sent.is_empty());
        assert_eq!(st.retries.len(), 1);
        assert_eq!(st.dirty, [fence(3, 1)]);
        assert_eq!(st.outcome_calls, [("retry", 1), ("dirty", 1)]);
    });
}
