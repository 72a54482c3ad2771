//! Rescuer (a maintenance service): what a process let go of comes back. Jobs held by
//! processes whose lease has lapsed are taken back; jobs claimed but never written
//! ahead, and no longer held by this process's pipeline, go back to the queue; jobs in
//! `sending` for longer than `stuck_after` (or held by a dead process) are adopted —
//! their fencing token bumped, so the former holder can record nothing — and their
//! stored bytes sent again (never signed again).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::broadcaster::Deps;
use crate::maintenance::{Report, Service};
use crate::ports::RescueStore;
use crate::send::resend_same;

/// Stuck jobs adopted per run at most.
pub const RESCUE_BATCH: u32 = 1_000;

pub struct Rescuer {
    pub store: Arc<dyn RescueStore>,
    pub deps: Arc<Deps>,
    pub stuck_after: Duration,
}

#[async_trait]
impl Service for Rescuer {
    fn name(&self) -> &'static str {
        "rescuer"
    }

    async fn run(&self) -> Report {
        let mut report = Report::default();
        match self.store.reclaim_dead().await {
            Ok(0) => {}
            Ok(n) => {
                report.items(n);
                tracing::warn!(jobs = n, "rescuer: took back the claims of dead processes")
            }
            Err(e) => {
                report.error();
                tracing::warn!(error = %e, "rescuer: reclaim failed")
            }
        }
        // What the pipeline holds in memory is not lost, however long it has waited
        // (for a slot under throttling, for a UTXO): asked first, so that a job handed
        // out after this answer is one claimed before it, still held. Without the
        // answer nothing of ours is taken from a broadcaster.
        let held = match self.deps.batch.send(crate::batch::Held).await {
            Ok(held) => held,
            Err(e) => {
                report.error();
                tracing::warn!(error = %e, "rescuer: the Batch actor did not answer; nothing requeued");
                return report;
            }
        };
        match self.store.requeue_lost(self.stuck_after, &held).await {
            Ok(0) => {}
            Ok(n) => {
                report.items(n);
                tracing::warn!(
                    jobs = n,
                    "rescuer: requeued claimed jobs that never stored a transaction"
                )
            }
            Err(e) => {
                report.error();
                tracing::warn!(error = %e, "rescuer: requeue failed")
            }
        }
        // Stuck in `sending` (or taken over): the same bytes again.
        match self
            .store
            .adopt_stuck(self.stuck_after, RESCUE_BATCH, &held)
            .await
        {
            Ok(stuck) => {
                if !stuck.is_empty() {
                    tracing::warn!(
                        jobs = stuck.len(),
                        "rescuer: re-broadcasting stuck transactions"
                    );
                }
                for job in stuck {
                    report.item();
                    resend_same(&self.deps, &job).await;
                }
            }
            Err(e) => {
                report.error();
                tracing::warn!(error = %e, "rescuer: stuck jobs not read")
            }
        }
        report
    }
}
