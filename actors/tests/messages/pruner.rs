//! Pruner (actors/src/pruner.rs, a maintenance service): finished rows past
//! `retention.keep` removed batch after batch, at most `MAX_BATCHES_PER_RUN` per run,
//! a run stopping at the first batch that comes back short or fails.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use raregen_actors::maintenance::{Report, Service};
use raregen_actors::ports::*;
use raregen_actors::pruner::{Pruner, RetentionConfig, MAX_BATCHES_PER_RUN};

use crate::support::*;

const BATCH: u32 = 100;

fn config() -> RetentionConfig {
    RetentionConfig {
        keep: Duration::from_secs(7 * 24 * 3600),
        archive: true,
        batch: BATCH,
        interval: Duration::from_secs(60),
    }
}

fn pruner(store: Arc<dyn PruneStore>) -> Pruner {
    Pruner {
        store,
        config: config(),
    }
}

fn full_jobs() -> Pruned {
    Pruned {
        jobs: u64::from(BATCH),
        batches: 2,
        utxos: 30,
        splits: 0,
    }
}

/// Answers from a script (then nothing left) and notes what it was asked.
#[derive(Default)]
struct Script {
    answers: Mutex<VecDeque<Result<Pruned, StoreError>>>,
    asked: Mutex<Vec<(Duration, bool, u32)>>,
}

#[async_trait]
impl PruneStore for Script {
    async fn prune(&self, keep: Duration, archive: bool, limit: u32) -> Result<Pruned, StoreError> {
        self.asked.lock().unwrap().push((keep, archive, limit));
        self.answers
            .lock()
            .unwrap()
            .pop_front()
            .unwrap_or(Ok(Pruned::default()))
    }
}

#[test]
fn a_backlog_is_pruned_batch_after_batch_until_one_comes_back_short() {
    in_system(|| async {
        let store = MemStore::new();
        store.state().prune_answers.extend([
            full_jobs(),
            full_jobs(),
            Pruned {
                jobs: 40,
                batches: 1,
                utxos: 10,
                splits: 2,
            },
            // Never asked for this run.
            full_jobs(),
        ]);
        let report = pruner(Arc::new(store.clone())).run().await;
        assert_eq!(
            report,
            Report {
                items: 2 * (100 + 2 + 30) + 40 + 1 + 10 + 2,
                errors: 0
            }
        );
        let s = store.state();
        assert_eq!(s.prune_calls, 3, "stops at the short batch");
        assert_eq!(s.prune_answers.len(), 1);
    });
}

#[test]
fn a_full_batch_of_any_kind_keeps_the_run_going() {
    in_system(|| async {
        let store = MemStore::new();
        let full = u64::from(BATCH);
        store.state().prune_answers.extend([
            Pruned {
                utxos: full,
                ..Pruned::default()
            },
            Pruned {
                splits: full,
                ..Pruned::default()
            },
            Pruned {
                batches: full,
                ..Pruned::default()
            },
        ]);
        let report = pruner(Arc::new(store.clone())).run().await;
        assert_eq!(report.items, 3 * full);
        assert_eq!(
            store.state().prune_calls,
            4,
            "three full batches, then an empty one"
        );
    });
}

#[test]
fn a_run_is_bounded_and_the_next_one_goes_on() {
    in_system(|| async {
        let store = MemStore::new();
        store
            .state()
            .prune_answers
            .extend((0..25).map(|_| full_jobs()));
        let p = pruner(Arc::new(store.clone()));
        let per_batch = 100 + 2 + 30;
        let max = u64::from(MAX_BATCHES_PER_RUN);
        assert_eq!(p.run().await.items, max * per_batch);
        assert_eq!(store.state().prune_calls, 10);
        assert_eq!(p.run().await.items, max * per_batch);
        assert_eq!(store.state().prune_calls, 20);
        assert_eq!(
            p.run().await.items,
            5 * per_batch,
            "the backlog's last five"
        );
        assert_eq!(
            store.state().prune_calls,
            26,
            "five full batches, then an empty one"
        );
    });
}

#[test]
fn the_run_asks_with_the_configured_keep_archive_and_batch() {
    in_system(|| async {
        let store = Arc::new(Script::default());
        store.answers.lock().unwrap().push_back(Ok(full_jobs()));
        pruner(store.clone()).run().await;
        let keep = config().keep;
        assert_eq!(
            *store.asked.lock().unwrap(),
            vec![(keep, true, BATCH), (keep, true, BATCH)]
        );
    });
}

#[test]
fn a_store_error_stops_the_run_keeping_what_was_pruned_and_the_next_run_goes_on() {
    in_system(|| async {
        let store = Arc::new(Script::default());
        store
            .answers
            .lock()
            .unwrap()
            .extend([Ok(full_jobs()), Err(away()), Ok(full_jobs())]);
        let p = pruner(store.clone());
        assert_eq!(
            p.run().await,
            Report {
                items: 132,
                errors: 1
            }
        );
        assert_eq!(store.asked.lock().unwrap().len(), 2, "stopped at the error");
        assert_eq!(
            p.run().await,
            Report {
                items: 132,
                errors: 0
            }
        );
        assert_eq!(store.asked.lock().unwrap().len(), 4);
    });
}
