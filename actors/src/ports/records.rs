//! What the store ports hand over and take: jobs as claimed, their write-ahead records
//! and outcomes, coins, splits, confirmations, and the store's error.

use chrono::{DateTime, Utc};

use super::chain::SpendableUtxo;

pub type JobId = i64;
pub type BatchId = i64;

/// A job as a claim hands it out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimedJob {
    pub id: JobId,
    /// Position in its batch, 1..=n.
    pub batch_seq: i32,
    pub payload: Vec<u8>,
    /// The fencing token of this claim (see [`Fence`]).
    pub attempts: i32,
    /// A transaction stored by an earlier attempt (write-ahead). When present it is
    /// re-broadcast as it is: never signed again.
    pub stored_tx: Option<StoredTx>,
    /// The job's anchor, when an earlier attempt signed a transaction that a node then
    /// refused: a new signature must spend it (and no other UTXO).
    pub anchor: Option<Anchor>,
}

/// The outpoint every transaction of a job spends, so that at most one can be mined.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Anchor {
    pub utxo_id: i64,
    /// The anchor as a spendable coin; `None` when the job no longer holds it (it is
    /// dirty, or spent by another transaction, until the Janitor has settled it).
    pub utxo: Option<SpendableUtxo>,
    /// Transactions signed for the job before (the next one pays a higher fee, so that
    /// it can replace them).
    pub signed_before: u32,
    /// The anchor is retired (its lane was never held): the job can sign on nothing.
    pub retired: bool,
}

/// A signed transaction stored before its broadcast.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredTx {
    pub txid: String,
    pub raw_tx: Vec<u8>,
    pub utxo_id: Option<i64>,
}

/// The jobs of one claim, in `batch_seq` order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimedBatch {
    pub id: BatchId,
    pub created_at: DateTime<Utc>,
    pub jobs: Vec<ClaimedJob>,
}

/// Names the claim a state change is made under: the change applies only while the job
/// is still held by this process with this attempt number, so a worker that lost its
/// claim cannot overwrite the newer owner's outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fence {
    pub id: JobId,
    pub attempts: i32,
}

/// Write-ahead record: the signed transaction, stored before it is broadcast.
#[derive(Debug, Clone)]
pub struct Sending {
    pub fence: Fence,
    pub utxo_id: i64,
    pub txid: String,
    pub raw_tx: Vec<u8>,
}

/// The node accepted the job's transaction.
#[derive(Debug, Clone)]
pub struct Sent {
    pub fence: Fence,
    pub sent_at: DateTime<Utc>,
    /// The change output (vout, sats) that joins the pool, if the transaction has one.
    pub change: Option<(u32, u64)>,
}

/// What a batch of write-ahead records did. A job in neither list was fenced (no
/// longer this claim's).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SendingRecorded {
    /// Stored: the job is `sending` with its transaction, its UTXO `spending`.
    pub stored: Vec<JobId>,
    /// Still this claim's, but its UTXO was taken (by another process, or dirty):
    /// nothing changed; sign again with another UTXO.
    pub utxo_taken: Vec<JobId>,
}

/// What a batched state change did: the jobs whose fence held, and the pool UTXOs it
/// made available (change outputs, released inputs).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recorded {
    pub ids: Vec<JobId>,
    pub utxos: Vec<SpendableUtxo>,
    /// Recording `sent`: each job's time from submission to `sent_at`.
    pub latencies: Vec<std::time::Duration>,
    /// Recording retries: how many jobs ran out of attempts and are now `failed`.
    pub failed: usize,
}

/// A job whose stored transaction must be broadcast again (stuck in `sending`, or
/// taken over from a dead process). Adopted: its fence is now this process's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StuckJob {
    pub fence: Fence,
    pub txid: String,
    pub raw_tx: Vec<u8>,
    pub utxo_id: Option<i64>,
}

/// A UTXO whose spend has an unknown outcome, with the job (adopted) that spent it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirtyUtxo {
    pub id: i64,
    pub txid: String,
    pub vout: u32,
    /// Our transaction spending it, if one was stored.
    pub spent_by_txid: Option<String>,
    pub job: Option<StuckJob>,
    /// The split (pool transaction) spending it, if any.
    pub split_id: Option<i64>,
}

/// What one pruning batch removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pruned {
    pub jobs: u64,
    pub batches: u64,
    pub utxos: u64,
    pub splits: u64,
}

/// A sent transaction (a job's or a split's) not yet seen in a block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unconfirmed {
    pub txid: String,
    pub raw_tx: Vec<u8>,
    /// Sent longer ago than the `settled` duration asked for.
    pub settled: bool,
    /// The pool coin it spends (txid, vout), when known.
    pub input: Option<(String, u32)>,
    /// A split of the pool's (not a job's).
    pub split: bool,
}

/// A transaction of ours found in a block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Confirmation {
    pub txid: String,
    pub block_height: Option<u32>,
    pub block_hash: Option<String>,
}

/// A transaction signed for a job before its current one (refused once, kept in the
/// job's history): all spend the job's anchor, so at most one can be mined.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EarlierTx {
    pub txid: String,
    pub raw_tx: Vec<u8>,
}

/// A split stored by the pool, waiting for its outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredSplit {
    pub id: i64,
    pub txid: String,
    pub raw_tx: Vec<u8>,
    pub input_utxo_id: i64,
}

/// A job-side rejection: back to `queued` after `not_before`, or `failed` when the
/// attempts are used up.
#[derive(Debug, Clone)]
pub struct Retry {
    pub fence: Fence,
    pub error: String,
    pub not_before: DateTime<Utc>,
    /// The job leaves its anchor (the Janitor saw it spent by a confirmed transaction
    /// that is none of the job's own): its next write-ahead takes a fresh UTXO.
    /// Otherwise it keeps its anchor, and its next signature spends it again.
    pub reanchor: bool,
    /// The refusal answers a re-send of bytes whose earlier outcome was unknown (the
    /// job's anchor is dirty): the node's definitive answer settles the anchor, and the
    /// job's next signature spends it again (a replacement: it conflicts with every copy
    /// of the refused bytes that may still be somewhere). Without it, a job whose anchor
    /// is dirty is not sent back.
    pub settles_dirty: bool,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The job is no longer held under this claim (another owner or attempt has it).
    #[error("the job's claim was taken over")]
    Fenced,
    /// The database could not be reached or the connection broke: retry later.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    #[error("database error: {0}")]
    Other(String),
}
