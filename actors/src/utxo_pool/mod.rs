//! UtxoPool: hands out one spendable UTXO per job, takes change back, and splits a
//! large UTXO when the available ones run low.
//!
//! The database row is the truth; this actor keeps an index of spendable UTXOs in
//! memory for speed. A reservation lives only here until the job's write-ahead record
//! turns the row into `spending` — and that statement takes the row only if it is
//! still available and clean, so two processes can never spend one UTXO.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use tokio::time::Instant;

use crate::ports::{JobId, PoolStore};
use crate::ports::{Node, Signer, SpendableUtxo};
use crate::rate_limit::TokenBucket;

mod split;

pub use split::publish_split;

/// A reload of the pool from the database is given up after this long (and the next
/// one may start).
pub const RELOAD_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Clone)]
pub struct PoolConfig {
    pub min_available: u32,
    pub split_outputs: u32,
    pub split_amount: u64,
    pub reservation_timeout: Duration,
    pub max_chain_depth: u32,
}

pub struct UtxoPool {
    config: PoolConfig,
    store: Arc<dyn PoolStore>,
    signer: Arc<dyn Signer>,
    node: Arc<dyn Node>,
    tokens: Addr<TokenBucket>,
    /// UTXOs for jobs.
    available: VecDeque<SpendableUtxo>,
    /// UTXOs large enough to split: kept for splits, never handed to a job (a job
    /// would only push its change one step deeper into the unconfirmed chain).
    large: Vec<SpendableUtxo>,
    known: HashSet<i64>,
    reserved: HashMap<i64, (JobId, Instant)>,
    splitting: bool,
    /// Reservations asked for while the pool was empty (a split is coming).
    starved: u64,
    /// A reload from the database is under way.
    refilling: bool,
    /// Reloads started so far (the one in flight, if any, is the last).
    reloads: u64,
    /// Split inputs kept out of reloads: a reload whose snapshot may predate a split's
    /// write-ahead still lists its input as available, and must not bring it back (the
    /// pool would split it again, and the store refuse it). Each with `None` while its
    /// split runs, then the number of reloads started by the time it ended: a reload
    /// started after that reads the store's word on the coin (spent, or available
    /// again after a failed split) and may bring it back. An entry lives no longer than
    /// the reload in flight when its split ended (none in flight: it goes at once), so
    /// there are at most a few.
    split_inputs: Vec<(i64, Option<u64>)>,
}

impl UtxoPool {
    pub fn new(
        config: PoolConfig,
        store: Arc<dyn PoolStore>,
        signer: Arc<dyn Signer>,
        node: Arc<dyn Node>,
        tokens: Addr<TokenBucket>,
    ) -> UtxoPool {
        UtxoPool {
            config,
            store,
            signer,
            node,
            tokens,
            available: VecDeque::new(),
            large: Vec::new(),
            known: HashSet::new(),
            reserved: HashMap::new(),
            splitting: false,
            starved: 0,
            refilling: false,
            reloads: 0,
            split_inputs: Vec::new(),
        }
    }

    fn add(&mut self, utxo: SpendableUtxo) {
        // Too deep for now (the Janitor's confirmations bring it back), or too small to
        // pay a fee.
        if utxo.unconfirmed_depth >= self.config.max_chain_depth
            || utxo.satoshis <= 2 * self.signer.dust_limit()
        {
            return;
        }
        if self.known.insert(utxo.id) {
            if self.splittable(&utxo) {
                self.large.push(utxo);
            } else {
                self.available.push_back(utxo);
            }
        }
    }

    fn forget(&mut self, id: i64) {
        self.reserved.remove(&id);
        self.known.remove(&id);
    }

    /// Reloads spendable UTXOs from the database (those this index does not hold).
    fn refill(&mut self, ctx: &mut Context<Self>) {
        // One reload at a time, however many broadcasters find the pool empty.
        if self.refilling {
            return;
        }
        self.refilling = true;
        self.reloads += 1;
        let reload = self.reloads;
        let store = self.store.clone();
        let max_depth = self.config.max_chain_depth;
        ctx.spawn(
            // Bounded: a reload whose answer never comes (a connection whose reply is
            // lost) must not keep every later one from starting.
            async move {
                tokio::time::timeout(RELOAD_TIMEOUT, store.load_available(max_depth, 100_000)).await
            }
            .into_actor(self)
            .map(move |res, act, _| {
                act.refilling = false;
                // Kept out of this reload: inputs of splits that ran while it read.
                let kept_out: HashSet<i64> = act
                    .split_inputs
                    .iter()
                    .filter(|(_, ended)| ended.is_none_or(|e| e >= reload))
                    .map(|(id, _)| *id)
                    .collect();
                // Every later reload starts after these splits ended.
                act.split_inputs
                    .retain(|(_, ended)| ended.is_none_or(|e| e > reload));
                let res = res.unwrap_or_else(|_| {
                    Err(crate::ports::StoreError::Unavailable(format!(
                        "no answer within {RELOAD_TIMEOUT:?}"
                    )))
                });
                match res {
                    Ok(utxos) => {
                        for u in utxos {
                            if !act.reserved.contains_key(&u.id) && !kept_out.contains(&u.id) {
                                act.add(u);
                            }
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "cannot load the UTXO pool"),
                }
            }),
        );
    }

    fn tick(&mut self, ctx: &mut Context<Self>) {
        // Reservations whose job never stored a transaction (its broadcaster died).
        let timeout = self.config.reservation_timeout;
        let now = Instant::now();
        let expired: Vec<i64> = self
            .reserved
            .iter()
            .filter(|(_, (_, at))| now.duration_since(*at) > timeout)
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            self.forget(id); // the refill brings it back if the row is still available
        }
        if self.available.len() < self.config.min_available as usize {
            if self.starved > 0 && !self.splitting {
                self.refill(ctx);
            }
            self.split(ctx);
        }
    }
}

impl Actor for UtxoPool {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(1024);
        self.refill(ctx);
        // Splits left unfinished by an earlier run: re-send their stored bytes.
        let store = self.store.clone();
        let node = self.node.clone();
        let tokens = self.tokens.clone();
        ctx.spawn(
            async move {
                let mut outputs = Vec::new();
                for split in store.unfinished_splits().await.unwrap_or_default() {
                    tracing::info!(txid = %split.txid, "re-broadcasting an unfinished split");
                    if let Ok(mut o) = publish_split(&*store, &*node, &tokens, &split).await {
                        outputs.append(&mut o);
                    }
                }
                outputs
            }
            .into_actor(self)
            .map(|outputs, act, _| {
                for u in outputs {
                    act.add(u);
                }
            }),
        );
        ctx.run_interval(Duration::from_millis(250), |act, ctx| act.tick(ctx));
    }
}

/// One UTXO for `job`, or `None` when the pool is empty for now.
#[derive(Message)]
#[rtype(result = "Option<SpendableUtxo>")]
pub struct Reserve {
    pub job: JobId,
}

/// The job did not use it: back to the pool.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Release(pub SpendableUtxo);

/// The job's transaction was accepted: the reservation ends; the change joins.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Spent {
    pub utxo_id: i64,
    pub change: Option<SpendableUtxo>,
}

/// The reservation ends and the UTXO leaves the index (dirty, taken by another process,
/// or too small to pay a fee).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Forget(pub i64);

/// UTXOs made spendable elsewhere (the Janitor).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Add(pub Vec<SpendableUtxo>);

/// What the pool's index holds now.
#[derive(Message)]
#[rtype(result = "PoolState")]
pub struct PoolStats;

/// The answer to [`PoolStats`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolState {
    /// UTXOs ready to reserve (large ones kept for splits included).
    pub available: usize,
    pub reserved: usize,
    /// A split is stored and waiting for the node's answer (or for a slot).
    pub splitting: bool,
}

impl Handler<Reserve> for UtxoPool {
    type Result = Option<SpendableUtxo>;

    fn handle(&mut self, msg: Reserve, ctx: &mut Context<Self>) -> Self::Result {
        let Some(utxo) = self.available.pop_front() else {
            self.starved += 1;
            self.tick(ctx);
            return None;
        };
        self.starved = 0;
        self.reserved.insert(utxo.id, (msg.job, Instant::now()));
        if self.available.len() < self.config.min_available as usize {
            self.split(ctx);
        }
        Some(utxo)
    }
}

impl Handler<Release> for UtxoPool {
    type Result = ();

    fn handle(&mut self, msg: Release, _: &mut Context<Self>) {
        self.reserved.remove(&msg.0.id);
        self.known.remove(&msg.0.id);
        self.add(msg.0);
    }
}

impl Handler<Spent> for UtxoPool {
    type Result = ();

    fn handle(&mut self, msg: Spent, _: &mut Context<Self>) {
        self.forget(msg.utxo_id);
        if let Some(change) = msg.change {
            self.add(change);
        }
    }
}

impl Handler<Forget> for UtxoPool {
    type Result = ();

    fn handle(&mut self, msg: Forget, _: &mut Context<Self>) {
        self.forget(msg.0);
    }
}

impl Handler<Add> for UtxoPool {
    type Result = ();

    fn handle(&mut self, msg: Add, _: &mut Context<Self>) {
        for u in msg.0 {
            if !self.reserved.contains_key(&u.id) {
                self.add(u);
            }
        }
    }
}

impl Handler<PoolStats> for UtxoPool {
    type Result = MessageResult<PoolStats>;

    fn handle(&mut self, _: PoolStats, _: &mut Context<Self>) -> Self::Result {
        MessageResult(PoolState {
            available: self.available.len() + self.large.len(),
            reserved: self.reserved.len(),
            splitting: self.splitting,
        })
    }
}
