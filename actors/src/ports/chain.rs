//! The chain ports: the node (or explorer) the actors broadcast to and ask, and the
//! signer that turns a pool UTXO and a payload into a signed transaction.

use std::time::Duration;

use async_trait::async_trait;

/// What became of one broadcast.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BroadcastOutcome {
    /// The node has the transaction (including "already in mempool / already known /
    /// outputs already in utxo set").
    Accepted,
    /// A definitive refusal, with the node's own words. `input_problem` is set when the
    /// reason is about the input (missing or spent, a mempool conflict): the UTXO must be
    /// checked before it is used again.
    Rejected { reason: String, input_problem: bool },
    /// Nobody knows whether the node has it (timeout, connection error, 5xx).
    Unknown { reason: String },
    /// HTTP 429: the node asks us to slow down; nothing was accepted.
    RateLimited { retry_after: Option<Duration> },
}

/// Where a transaction stands, as the node sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TxPresence {
    /// The node does not know it (never seen, or dropped).
    Unknown,
    InMempool,
    Confirmed {
        confirmations: u32,
        block_height: Option<u32>,
        block_hash: Option<String>,
    },
}

/// An outpoint, as the node sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutpointState {
    Unspent {
        value: u64,
        script_pubkey: Vec<u8>,
        /// 0 while the creating transaction is in the mempool.
        confirmations: u32,
        coinbase: bool,
    },
    /// Spent (by `spent_by` when the node says which transaction), or never existed.
    Gone { spent_by: Option<String> },
}

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum NodeError {
    /// The node could not be reached or did not answer in time: ask again later.
    #[error("node unavailable: {0}")]
    Unavailable(String),
    #[error("node asks to slow down (HTTP 429)")]
    RateLimited { retry_after: Option<Duration> },
    /// The node answered something we cannot use.
    #[error("node error: {0}")]
    Protocol(String),
}

/// A node or explorer. Implementations keep their connections alive between calls.
#[async_trait]
pub trait Node: Send + Sync + 'static {
    /// Sends the raw transaction. Never fails: every failure is an outcome.
    async fn broadcast(&self, raw_tx: &[u8]) -> BroadcastOutcome;
    /// Is this transaction (txid in the usual display hex) in the mempool or a block?
    async fn tx_presence(&self, txid: &str) -> Result<TxPresence, NodeError>;
    /// Is this outpoint unspent, and with what value and script?
    async fn outpoint(&self, txid: &str, vout: u32) -> Result<OutpointState, NodeError>;
    /// The transaction that spends this outpoint, for a node whose [`Node::outpoint`]
    /// says "gone" without naming it: looked for in the mempool and in the blocks since
    /// the outpoint's own (a bounded number). `None`: not found (or not looked for).
    async fn spender(&self, _txid: &str, _vout: u32) -> Result<Option<String>, NodeError> {
        Ok(None)
    }
}

/// A pool UTXO handed to the signer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpendableUtxo {
    pub id: i64,
    pub txid: String,
    pub vout: u32,
    pub satoshis: u64,
    pub unconfirmed_depth: u32,
}

/// A signed transaction, ready to store and broadcast.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedTx {
    pub txid: String,
    pub raw_tx: Vec<u8>,
    pub fee: u64,
    pub vsize: u64,
    /// The change output back to the pool, if any: (vout, satoshis).
    pub change: Option<(u32, u64)>,
}

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum SignError {
    #[error("payload is {len} bytes; the limit is {max}")]
    PayloadTooLarge { len: usize, max: usize },
    #[error("the UTXO holds {have} sats; this transaction needs {need}")]
    InsufficientFunds { have: u64, need: u64 },
    #[error("invalid input: {0}")]
    Invalid(String),
}

/// Builds and signs transactions spending pool UTXOs. Pure computation: no I/O.
pub trait Signer: Send + Sync + 'static {
    /// One input (`utxo`); out: `OP_RETURN <payload>` and change to the pool.
    /// `replacing`: how many transactions of the job were signed before (on the same
    /// anchor); each replacement pays a higher fee rate than the one before it, by at
    /// least the incremental relay fee (1 sat/vB), as BIP125 replacement requires.
    fn publish(
        &self,
        utxo: &SpendableUtxo,
        payload: &[u8],
        replacing: u32,
    ) -> Result<SignedTx, SignError>;
    /// One input (`utxo`); out: `outputs` pool outputs of `amount` sats, and change.
    fn split(&self, utxo: &SpendableUtxo, outputs: u32, amount: u64)
        -> Result<SignedTx, SignError>;
    /// The smallest output the node relays.
    fn dust_limit(&self) -> u64;
    /// The output of `raw_tx` paying the pool, as (vout, sats): a stored transaction's
    /// change, for the pool once it is accepted.
    fn change_of(&self, raw_tx: &[u8]) -> Option<(u32, u64)>;
}
