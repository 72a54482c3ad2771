//! raregen's actor system.
//!
//! The actors (Collector, Batch, TokenBucket, UtxoPool, Broadcaster, Recorder, Leaser,
//! and the maintenance services Rescuer, DirtySettler and ConfirmationWatcher, which
//! together are the Janitor) live here, one per file with their messages beside them. They reach
//! Postgres, the signer and the node only through the small traits in [`ports`]; the
//! `raregen` crate implements those traits (sqlx, rust-bitcoin, reqwest), so nothing
//! in this crate names a database or HTTP library.

pub mod batch;
pub mod broadcaster;
pub mod collector;
pub mod confirmation_watcher;
pub mod dirty_settler;
pub mod leaser;
pub mod maintenance;
pub mod pipeline;
pub mod ports;
pub mod pruner;
pub mod rate_limit;
pub mod recorder;
pub mod rescuer;
pub mod send;
pub mod stats;
pub mod utxo_pool;

/// A named failpoint (the `fail` crate), active only with the `failpoints` feature:
/// tests make the process stop at exact points (`FAILPOINTS=name=sleep(60000)`).
#[macro_export]
macro_rules! fail_point {
    ($name:expr) => {
        #[cfg(feature = "failpoints")]
        fail::fail_point!($name);
    };
}

pub use ports::{
    Anchor, BatchId, ClaimStore, ClaimedBatch, ClaimedJob, Confirmation, DirtyUtxo, Fence,
    JanitorStore, JobId, JobStore, JobsNotifier, LeaseStore, OutcomeStore, PoolStore, PruneStore,
    Pruned, Recorded, RescueStore, Retry, Sending, SendingRecorded, Sent, SettleStore, StoreError,
    StoredSplit, StoredTx, StuckJob, WatchStore,
};
pub use ports::{
    BroadcastOutcome, Node, NodeError, OutpointState, SignError, SignedTx, Signer, SpendableUtxo,
    TxPresence,
};
