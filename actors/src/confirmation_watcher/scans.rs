//! The block scans for spent anchors' spenders, shared out over the watcher's runs.

use std::collections::HashMap;

use super::SPENDER_LOOKS_PER_RUN;

/// The block scans for spent anchors' spenders, shared out over the runs: each run
/// scans at most [`SPENDER_LOOKS_PER_RUN`], and a transaction whose scan found nothing
/// waits its turn (one scan per `every` runs, `every` sized so that all that need a
/// scan get one before anyone gets a second), so that the same fruitless ones never
/// take the whole budget.
#[derive(Debug, Default)]
pub(super) struct SpenderScans {
    run: u64,
    /// The run of each transaction's last fruitless scan (only those still waiting).
    last: HashMap<String, u64>,
    /// Transactions that needed a scan in the last run (scanned or waiting).
    wanted_last_run: usize,
}

impl SpenderScans {
    /// The next run's share of the scans.
    pub(super) fn next_run(mut self) -> ScanBudget {
        self.run += 1;
        let every = self
            .wanted_last_run
            .div_ceil(SPENDER_LOOKS_PER_RUN as usize)
            .max(1) as u64;
        ScanBudget {
            scans: self,
            left: SPENDER_LOOKS_PER_RUN,
            every,
            wanted: HashMap::new(),
        }
    }
}

/// One run's share of the scans.
pub(super) struct ScanBudget {
    scans: SpenderScans,
    left: u32,
    every: u64,
    wanted: HashMap<String, u64>,
}

impl ScanBudget {
    /// May `txid`'s spender be scanned for now? (Counts it as wanting a scan.)
    pub(super) fn take(&mut self, txid: &str) -> bool {
        let run = self.scans.run;
        let last = self.scans.last.get(txid).copied();
        self.wanted.insert(txid.to_owned(), last.unwrap_or(0));
        if last.is_some_and(|r| run - r < self.every) || self.left == 0 {
            return false;
        }
        self.left -= 1;
        self.wanted.insert(txid.to_owned(), run);
        true
    }

    /// The run ends: what waits is remembered, the rest forgotten.
    pub(super) fn finish(mut self) -> SpenderScans {
        self.scans.wanted_last_run = self.wanted.len();
        self.scans.last = self.wanted.into_iter().filter(|(_, r)| *r > 0).collect();
        self.scans
    }
}
