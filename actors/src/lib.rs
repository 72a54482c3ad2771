//! raregen's actor system.
//!
//! The actors (Collector, Batch, TokenBucket, UtxoPool, Broadcaster, Janitor,
//! Supervisor) live here, one per file with their messages beside them. They reach
//! Postgres, the signer and the node only through the small traits in [`ports`]; the
//! `raregen` crate implements those traits (sqlx, rust-bitcoin, reqwest), so nothing
//! in this crate names a database or HTTP library.

pub mod chain;
pub mod ports;

pub use chain::{
    BroadcastOutcome, Node, NodeError, OutpointState, SignError, SignedTx, Signer, SpendableUtxo,
    TxPresence,
};
pub use ports::{
    BatchId, ClaimedBatch, ClaimedJob, Fence, JobId, JobStore, Retry, Sending, Sent, StoreError,
    StoredTx,
};
