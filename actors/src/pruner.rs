//! Pruner (a maintenance service), as River's JobCleaner and Oban's Pruner: finished
//! jobs older than `retention.keep` — `sent` and confirmed that long ago, `failed`
//! that long ago — are deleted (or moved to `publish_jobs_archive`), with the batches,
//! splits and spent UTXOs of the same age that nothing live names. Bounded: at most
//! `MAX_BATCHES_PER_RUN` batches of `batch` rows per run; each batch is one statement
//! per kind, so a crash mid-run loses nothing and the next run goes on.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::maintenance::{Report, Service};
use crate::ports::{PruneStore, Pruned};
use crate::stats::names;

/// Batches per run at most (a backlog is worked off over several runs).
pub const MAX_BATCHES_PER_RUN: u32 = 10;

#[derive(Debug, Clone)]
pub struct RetentionConfig {
    /// How long a finished job is kept (from its confirmation, or its failure).
    pub keep: Duration,
    /// Move pruned jobs to `publish_jobs_archive` instead of deleting them.
    pub archive: bool,
    /// Rows per statement.
    pub batch: u32,
    pub interval: Duration,
}

pub struct Pruner {
    pub store: Arc<dyn PruneStore>,
    pub config: RetentionConfig,
}

#[async_trait]
impl Service for Pruner {
    fn name(&self) -> &'static str {
        "pruner"
    }

    async fn run(&self) -> Report {
        let mut report = Report::default();
        let mut total = Pruned::default();
        for _ in 0..MAX_BATCHES_PER_RUN {
            crate::fail_point!("pruner-between-batches");
            match self
                .store
                .prune(self.config.keep, self.config.archive, self.config.batch)
                .await
            {
                Ok(p) => {
                    for (what, n) in [
                        ("jobs", p.jobs),
                        ("batches", p.batches),
                        ("utxos", p.utxos),
                        ("splits", p.splits),
                    ] {
                        metrics::counter!(names::PRUNED, "what" => what).increment(n);
                    }
                    total.jobs += p.jobs;
                    total.batches += p.batches;
                    total.utxos += p.utxos;
                    total.splits += p.splits;
                    let limit = u64::from(self.config.batch);
                    if p.jobs < limit && p.batches < limit && p.utxos < limit && p.splits < limit {
                        break;
                    }
                }
                Err(e) => {
                    report.error();
                    tracing::warn!(error = %e, "pruner: run stopped; the next one goes on");
                    break;
                }
            }
        }
        report.items(total.jobs + total.batches + total.utxos + total.splits);
        if report.items > 0 {
            tracing::info!(
                jobs = total.jobs,
                batches = total.batches,
                utxos = total.utxos,
                splits = total.splits,
                archived = self.config.archive,
                keep = ?self.config.keep,
                "pruner: removed finished rows past retention.keep"
            );
        }
        report
    }
}
