//! A property test of the job/UTXO state transitions against a model, on the real
//! store (Postgres): random interleavings of claims, write-aheads (including attempts
//! to sign on another UTXO than the job's anchor), outcomes (accepted, refused,
//! unknown), takeovers (adoption of stuck jobs, of a crashed process's claims), the
//! DirtySettler's settling of dirty anchors (re-sent still dirty, re-sent and refused
//! so that the job signs again on its anchor, or a confirmed foreign spend that
//! re-anchors the job) and crashes. After every step:
//!
//! - at most one of a job's transactions can be mined: every transaction the store let
//!   the job sign spends the same outpoint, but for outpoints retired by a confirmed
//!   foreign spend (which none of them can spend any more);
//! - no UTXO is the anchor of two live jobs, and a UTXO held (`reserved`, `spending`)
//!   is held by the job it anchors (live, or failed: a failed job keeps the coin it
//!   signed on);
//! - a UTXO is signed on by at most one job that is not `failed`;
//! - no job is `sent` on a coin a stranger spent, or on an output of a lane set aside;
//! - the history (`job_transactions`) names the outpoint each transaction spends;
//! - no statement fails (constraint violations, unique indexes) except by fencing.

mod support;

use std::collections::{HashMap, HashSet};
use std::time::Duration;
use support::FreshDb;

use proptest::prelude::*;
use raregen::store::PgStore;
use raregen_actors::{
    ClaimStore, ClaimedJob, Fence, LeaseStore, OutcomeStore, RescueStore, Retry, Sending, Sent,
    SettleStore, StoreError, StoredTx, WatchStore,
};
use sqlx::PgPool;

const JOBS: i64 = 4;
const UTXOS: i64 = 5;

#[derive(Debug, Clone)]
enum Op {
    Claim(usize),
    /// Owner, job slot, UTXO choice (odd: try another UTXO than the anchor).
    WriteAhead(usize, usize, usize),
    Accepted(usize, usize),
    Refused(usize, usize),
    Unknown(usize, usize),
    /// The owner's Rescuer adopts stuck jobs (all but those its Batch actor holds).
    Adopt(usize),
    RequeueLost(usize),
    ReclaimDead(usize),
    /// The owner's DirtySettler settles dirty UTXOs: `true` = spent by a confirmed
    /// foreign transaction (re-anchor), `false` = unspent (adopted, still dirty: the job
    /// re-sends its bytes and the outcome settles it).
    Settle(usize, bool),
    /// A stranger's confirmed spend takes the anchor of the owner's `j`-th sent job,
    /// whose transaction the node does not hold (the ConfirmationWatcher's
    /// `reanchor_sent`): the job and its lane are queued again without anchors.
    StrangerSpendsSent(usize, usize),
    Crash(usize),
}

fn op() -> impl Strategy<Value = Op> {
    let w = 0usize..2;
    prop_oneof![
        3 => w.clone().prop_map(Op::Claim),
        4 => (w.clone(), 0usize..4, 0usize..10).prop_map(|(w, j, u)| Op::WriteAhead(w, j, u)),
        2 => (w.clone(), 0usize..4).prop_map(|(w, j)| Op::Accepted(w, j)),
        3 => (w.clone(), 0usize..4).prop_map(|(w, j)| Op::Refused(w, j)),
        2 => (w.clone(), 0usize..4).prop_map(|(w, j)| Op::Unknown(w, j)),
        1 => w.clone().prop_map(Op::Adopt),
        1 => w.clone().prop_map(Op::RequeueLost),
        1 => w.clone().prop_map(Op::ReclaimDead),
        2 => (w.clone(), any::<bool>()).prop_map(|(w, f)| Op::Settle(w, f)),
        2 => (w.clone(), 0usize..4).prop_map(|(w, j)| Op::StrangerSpendsSent(w, j)),
        1 => w.prop_map(Op::Crash),
    ]
}

/// A job as one process holds it in memory.
#[derive(Debug, Clone)]
struct Held {
    job: ClaimedJob,
    fence: Fence,
    /// Claimed (the Batch actor holds it: the Rescuer leaves it alone), or adopted by a
    /// maintenance service (which the Rescuer of the same process does not know about).
    claimed: bool,
}

struct Process {
    store: PgStore,
    held: Vec<Held>,
}

struct World {
    pool: PgPool,
    procs: Vec<Process>,
    utxos: Vec<i64>,
    crashes: usize,
    next_tx: i64,
    /// Model: txid → the UTXO it spends, and each job's signed UTXOs.
    tx_utxo: HashMap<String, i64>,
    signed_on: HashMap<i64, HashSet<i64>>,
    /// UTXOs spent by a confirmed foreign transaction.
    foreign: HashSet<i64>,
}

fn ok<T>(what: &str, r: Result<T, StoreError>) -> Option<T> {
    match r {
        Ok(v) => Some(v),
        Err(StoreError::Fenced) => None,
        Err(e) => panic!("{what}: {e}"),
    }
}

impl World {
    async fn new(pool: PgPool) -> World {
        sqlx::query(
            "TRUNCATE publish_jobs, job_counts, utxos, job_transactions, batches, workers, pool_transactions
             RESTART IDENTITY CASCADE",
        )
        .execute(&pool)
        .await
        .unwrap();
        sqlx::query(
            "INSERT INTO publish_jobs (payload) SELECT convert_to('job-' || g, 'UTF8')
             FROM generate_series(1, $1) AS g",
        )
        .bind(JOBS)
        .execute(&pool)
        .await
        .unwrap();
        let utxos: Vec<i64> = sqlx::query_scalar(
            "INSERT INTO utxos (txid, vout, satoshis, script_pubkey)
             SELECT lpad(to_hex(g), 64, 'f'), 0, 10000, '\\x0014'::bytea
             FROM generate_series(1, $1) AS g RETURNING id",
        )
        .bind(UTXOS)
        .fetch_all(&pool)
        .await
        .unwrap();
        let mut world = World {
            pool,
            procs: Vec::new(),
            utxos,
            crashes: 0,
            next_tx: 1,
            tx_utxo: HashMap::new(),
            signed_on: HashMap::new(),
            foreign: HashSet::new(),
        };
        for w in 0..2 {
            let p = world.process(format!("p{w}")).await;
            world.procs.push(p);
        }
        world
    }

    async fn process(&self, owner: String) -> Process {
        let store = PgStore::new(self.pool.clone(), owner);
        store.heartbeat(Duration::from_secs(3600)).await.unwrap();
        Process {
            store,
            held: Vec::new(),
        }
    }

    fn pick(&self, w: usize, j: usize) -> Option<Held> {
        let held = &self.procs[w].held;
        (!held.is_empty()).then(|| held[j % held.len()].clone())
    }

    fn forget(&mut self, w: usize, id: i64) {
        self.procs[w].held.retain(|h| h.job.id != id);
    }

    async fn step(&mut self, op: &Op) {
        match *op {
            Op::Claim(w) => {
                if let Some(Some(batch)) = ok("claim", self.procs[w].store.claim_batch(2).await) {
                    for job in batch.jobs {
                        let fence = Fence {
                            id: job.id,
                            attempts: job.attempts,
                        };
                        self.forget(w, job.id);
                        self.procs[w].held.push(Held {
                            job,
                            fence,
                            claimed: true,
                        });
                    }
                }
            }
            Op::WriteAhead(w, j, u) => {
                let Some(h) = self.pick(w, j) else { return };
                if h.job.stored_tx.is_some() {
                    return;
                }
                let utxo = match &h.job.anchor {
                    Some(anchor) if u % 2 == 0 => match &anchor.utxo {
                        Some(coin) => coin.id,
                        None => return,
                    },
                    // Often the newest coin (a change, when one came): lanes form.
                    _ if u >= 7 => *self.utxos.last().expect("utxos"),
                    _ => self.utxos[u % self.utxos.len()],
                };
                let txid = format!("{:064x}", self.next_tx);
                self.next_tx += 1;
                let sending = Sending {
                    fence: h.fence,
                    utxo_id: utxo,
                    txid: txid.clone(),
                    raw_tx: vec![1],
                };
                let done = ok(
                    "write-ahead",
                    self.procs[w].store.record_sending(&[sending]).await,
                );
                if done.is_some_and(|d| d.stored.contains(&h.job.id)) {
                    self.tx_utxo.insert(txid.clone(), utxo);
                    self.signed_on.entry(h.job.id).or_default().insert(utxo);
                    for held in &mut self.procs[w].held {
                        if held.job.id == h.job.id {
                            held.job.stored_tx = Some(StoredTx {
                                txid: txid.clone(),
                                raw_tx: vec![1],
                                utxo_id: Some(utxo),
                            });
                        }
                    }
                }
            }
            Op::Accepted(w, j) => {
                let Some(h) = self.pick(w, j) else { return };
                if h.job.stored_tx.is_none() {
                    return;
                }
                let sent = Sent {
                    fence: h.fence,
                    sent_at: chrono::Utc::now(),
                    change: Some((1, 5_000)),
                };
                if let Some(recorded) = ok("sent", self.procs[w].store.record_sent(&[sent]).await) {
                    // The change joins the pool: later jobs may sign on it (lanes).
                    self.utxos.extend(recorded.utxos.iter().map(|u| u.id));
                }
                self.forget(w, h.job.id);
            }
            Op::Refused(w, j) => {
                let Some(h) = self.pick(w, j) else { return };
                let retry = Retry {
                    fence: h.fence,
                    error: "rejected by the node: min relay fee not met".into(),
                    not_before: chrono::Utc::now(),
                    reanchor: false,
                    // A job a maintenance service adopted is re-sending its stored bytes
                    // (their outcome unknown, the anchor perhaps dirty): their refusal
                    // settles the anchor, and the job signs again on it.
                    settles_dirty: !h.claimed,
                };
                ok("retry", self.procs[w].store.record_retry(&[retry], 3).await);
                self.forget(w, h.job.id);
            }
            Op::Unknown(w, j) => {
                let Some(h) = self.pick(w, j) else { return };
                if h.job.stored_tx.is_none() {
                    return;
                }
                ok("dirty", self.procs[w].store.mark_dirty(&[h.fence]).await);
                self.forget(w, h.job.id);
            }
            Op::Adopt(w) => {
                let held = self.batch_held(w);
                let stuck = ok(
                    "adopt",
                    self.procs[w]
                        .store
                        .adopt_stuck(Duration::ZERO, 100, &held)
                        .await,
                )
                .unwrap_or_default();
                for s in stuck {
                    self.adopted(w, s);
                }
            }
            Op::RequeueLost(w) => {
                let held = self.batch_held(w);
                ok(
                    "requeue",
                    self.procs[w]
                        .store
                        .requeue_lost(Duration::ZERO, &held)
                        .await,
                );
            }
            Op::ReclaimDead(w) => {
                ok("reclaim", self.procs[w].store.reclaim_dead().await);
            }
            Op::Settle(w, foreign) => {
                let dirty = ok("dirty_utxos", self.procs[w].store.dirty_utxos(10).await)
                    .unwrap_or_default();
                for d in dirty {
                    let Some(job) = d.job else {
                        ok("clean", self.procs[w].store.utxo_clean(d.id).await);
                        continue;
                    };
                    if foreign {
                        self.foreign.insert(d.id);
                        ok("retire", self.procs[w].store.utxo_retire(d.id).await);
                        let retry = Retry {
                            fence: job.fence,
                            error: "its anchor was spent by another transaction".into(),
                            not_before: chrono::Utc::now(),
                            reanchor: true,
                            settles_dirty: false,
                        };
                        ok(
                            "reanchor",
                            self.procs[w].store.record_retry(&[retry], 3).await,
                        );
                        self.forget(w, job.fence.id);
                    } else {
                        // The DirtySettler re-sends with the UTXO still dirty: the
                        // outcome settles it.
                        self.adopted(w, job);
                    }
                }
            }
            Op::StrangerSpendsSent(w, j) => {
                let sent: Vec<(String, i64)> = sqlx::query_as(
                    // Lane roots first (a job has signed on one of their outputs).
                    "SELECT p.txid, p.utxo_id FROM publish_jobs p
                     WHERE p.status = 'sent' AND p.confirmed_at IS NULL
                     ORDER BY EXISTS (SELECT 1 FROM utxos x JOIN publish_jobs d ON d.utxo_id = x.id
                                      WHERE x.txid = p.txid) DESC, p.id",
                )
                .fetch_all(&self.pool)
                .await
                .unwrap();
                if sent.is_empty() {
                    return;
                }
                let (txid, anchor) = sent[j % sent.len()].clone();
                let stranger = format!("{:064x}", 0xdead_0000_i64 + self.next_tx);
                self.next_tx += 1;
                let aside = ok(
                    "reanchor_sent",
                    self.procs[w]
                        .store
                        .reanchor_sent(&txid, &stranger, "its anchor was spent by a stranger")
                        .await,
                )
                .unwrap_or_default();
                assert_eq!(aside.first(), Some(&txid), "the root is set aside first");
                // None of the lane's transactions can be mined: the first coin is the
                // stranger's, the lane's outputs never exist.
                self.foreign.insert(anchor);
                let outputs: Vec<i64> =
                    sqlx::query_scalar("SELECT id FROM utxos WHERE txid = ANY($1)")
                        .bind(&aside)
                        .fetch_all(&self.pool)
                        .await
                        .unwrap();
                self.foreign.extend(outputs);
            }
            Op::Crash(w) => {
                ok("stop", self.procs[w].store.stop_worker().await);
                self.crashes += 1;
                let p = self.process(format!("p{w}-{}", self.crashes)).await;
                self.procs[w] = p;
            }
        }
    }

    /// The jobs process `w`'s Batch actor holds (claimed, not adopted): what its
    /// Rescuer leaves alone.
    fn batch_held(&self, w: usize) -> Vec<i64> {
        self.procs[w]
            .held
            .iter()
            .filter(|h| h.claimed)
            .map(|h| h.job.id)
            .collect()
    }

    /// A job adopted with its stored bytes: this process holds it now.
    fn adopted(&mut self, w: usize, s: raregen_actors::StuckJob) {
        self.forget(w, s.fence.id);
        self.procs[w].held.push(Held {
            job: ClaimedJob {
                id: s.fence.id,
                batch_seq: 1,
                payload: Vec::new(),
                attempts: s.fence.attempts,
                stored_tx: Some(StoredTx {
                    txid: s.txid,
                    raw_tx: s.raw_tx,
                    utxo_id: s.utxo_id,
                }),
                anchor: None,
            },
            fence: s.fence,
            claimed: false,
        });
    }

    async fn check(&self, ops: &[Op]) {
        // The per-status counters (deltas written by triggers in every statement, folded
        // now and then) are exact.
        if ops.len().is_multiple_of(3) {
            raregen::store::compact_job_counts(&self.pool)
                .await
                .unwrap();
        }
        let counted: Vec<(String, i64)> = sqlx::query_as(raregen::store::JOB_COUNTS_SQL)
            .fetch_all(&self.pool)
            .await
            .unwrap();
        let actual: Vec<(String, i64)> = sqlx::query_as(
            "SELECT status, count(*) FROM publish_jobs GROUP BY status ORDER BY status",
        )
        .fetch_all(&self.pool)
        .await
        .unwrap();
        assert_eq!(counted, actual, "job_counts drifted after {ops:?}");
        // At most one minable outpoint per job.
        for (job, utxos) in &self.signed_on {
            let live: Vec<_> = utxos.iter().filter(|u| !self.foreign.contains(u)).collect();
            assert!(
                live.len() <= 1,
                "job {job} signed on {live:?}, none spent by another: two could be mined; after {ops:?}"
            );
        }
        // No job is left `sent` with a transaction that can never be mined (it spends a
        // coin a stranger took, or an output of a lane set aside): it would be lost.
        let sent_on: Vec<(i64, i64)> = sqlx::query_as(
            "SELECT id, utxo_id FROM publish_jobs WHERE status = 'sent' AND utxo_id IS NOT NULL",
        )
        .fetch_all(&self.pool)
        .await
        .unwrap();
        for (job, utxo) in sent_on {
            assert!(
                !self.foreign.contains(&utxo),
                "job {job} is sent on UTXO {utxo}, which a stranger spent or never exists; after {ops:?}"
            );
        }
        // A UTXO is signed on by at most one job that is not failed.
        let failed: HashSet<i64> =
            sqlx::query_scalar("SELECT id FROM publish_jobs WHERE status = 'failed'")
                .fetch_all(&self.pool)
                .await
                .unwrap()
                .into_iter()
                .collect();
        let mut by_utxo: HashMap<i64, Vec<i64>> = HashMap::new();
        for (job, utxos) in &self.signed_on {
            if failed.contains(job) {
                continue;
            }
            for u in utxos {
                by_utxo.entry(*u).or_default().push(*job);
            }
        }
        for (u, jobs) in by_utxo {
            assert!(
                jobs.len() <= 1 || self.foreign.contains(&u),
                "UTXO {u} signed on by jobs {jobs:?}; after {ops:?}"
            );
        }
        let twice: Vec<i64> = sqlx::query_scalar(
            "SELECT anchor_utxo_id FROM publish_jobs
             WHERE status IN ('queued', 'processing_batch', 'sending') AND anchor_utxo_id IS NOT NULL
             GROUP BY 1 HAVING count(*) > 1",
        )
        .fetch_all(&self.pool)
        .await
        .unwrap();
        assert!(
            twice.is_empty(),
            "anchors of two live jobs: {twice:?}; after {ops:?}"
        );
        let strays: Vec<(i64, String, Option<i64>)> = sqlx::query_as(
            "SELECT x.id, x.state, x.reserved_by FROM utxos x
             WHERE x.state IN ('reserved', 'spending')
               AND NOT EXISTS (SELECT 1 FROM publish_jobs j
                               WHERE j.id = x.reserved_by AND j.anchor_utxo_id = x.id
                                 AND j.status IN ('queued', 'processing_batch', 'sending', 'failed'))",
        )
        .fetch_all(&self.pool)
        .await
        .unwrap();
        assert!(
            strays.is_empty(),
            "held UTXOs no live job anchors: {strays:?}; after {ops:?}"
        );
        let history: Vec<(String, i64)> =
            sqlx::query_as("SELECT txid, anchor_utxo_id FROM job_transactions")
                .fetch_all(&self.pool)
                .await
                .unwrap();
        for (txid, anchor) in history {
            assert_eq!(
                self.tx_utxo.get(&txid),
                Some(&anchor),
                "history of {txid}; after {ops:?}"
            );
        }
        let sending: Vec<(i64, Option<i64>, Option<i64>)> = sqlx::query_as(
            "SELECT id, utxo_id, anchor_utxo_id FROM publish_jobs WHERE status = 'sending'",
        )
        .fetch_all(&self.pool)
        .await
        .unwrap();
        for (id, utxo, anchor) in sending {
            assert_eq!(
                utxo, anchor,
                "job {id} sends on another UTXO than its anchor"
            );
        }
    }
}

#[test]
fn any_interleaving_keeps_one_minable_transaction_per_job() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let db = rt.block_on(FreshDb::new());
    let pool = db.pool.clone();
    let config = ProptestConfig {
        cases: 96,
        ..ProptestConfig::default()
    };
    proptest!(config, |(ops in proptest::collection::vec(op(), 1..60))| {
        rt.block_on(async {
            let mut world = World::new(pool.clone()).await;
            for (i, op) in ops.iter().enumerate() {
                world.step(op).await;
                world.check(&ops[..=i]).await;
            }
        });
    });
    drop(pool);
    rt.block_on(db.drop_db());
}
