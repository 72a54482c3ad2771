//! The maintenance services' statements, one file per service (each implements the
//! port its service uses), and what they share.

use std::time::Duration;

use raregen_actors::SpendableUtxo;
use sqlx::Row;

/// The first CTE of a statement over a lane: `chain(txid, depth)`, the transaction
/// `$1` and every unconfirmed job transaction that spends an output of one in it,
/// down the lane.
macro_rules! lane {
    () => {
        "WITH RECURSIVE chain(txid, depth) AS (
                 SELECT $1::text, 0
                 UNION
                 SELECT j.txid, c.depth + 1
                 FROM chain c
                 JOIN utxos x ON x.txid = c.txid
                 JOIN publish_jobs j ON j.utxo_id = x.id AND j.txid IS NOT NULL
                      AND j.confirmed_at IS NULL
                 WHERE c.depth < 10000
             ), "
    };
}

mod lease;
mod prune;
mod rescue;
mod settle;
mod watch;

/// How long a failed job keeps the anchor it signed on, whatever `retention.keep`: Bitcoin
/// Core's mempool expiry (`-mempoolexpiry`, 336 hours). A refused copy of the job's
/// transaction may wait that long in some node's mempool and then be mined; its coin
/// must not fund another job before.
pub const ANCHOR_KEEP: Duration = Duration::from_secs(14 * 24 * 3600);

/// The UTXO a statement returned (with its `state`), if it is available to the pool.
pub(super) fn available_utxo(row: Option<sqlx::postgres::PgRow>) -> Option<SpendableUtxo> {
    row.filter(|r| r.get::<String, _>("state") == "available")
        .map(|r| utxo_from(&r))
}

pub(crate) fn utxo_from(r: &sqlx::postgres::PgRow) -> SpendableUtxo {
    SpendableUtxo {
        id: r.get("id"),
        txid: r.get("txid"),
        vout: r.get::<i32, _>("vout") as u32,
        satoshis: r.get::<i64, _>("satoshis") as u64,
        unconfirmed_depth: r.get::<i32, _>("unconfirmed_depth") as u32,
    }
}

/// The claims of a process are live while its lease runs and it has not stopped.
/// `(txid, raw_tx)` rows of `job_transactions`, as the ports name them.
pub(super) fn earlier_txs(rows: Vec<(String, Vec<u8>)>) -> Vec<raregen_actors::ports::EarlierTx> {
    rows.into_iter()
        .map(|(txid, raw_tx)| raregen_actors::ports::EarlierTx { txid, raw_tx })
        .collect()
}

pub(super) const LIVE_OWNER: &str = "EXISTS (SELECT 1 FROM workers w
                                  WHERE w.id = j.owner AND w.lease_until > now() AND w.stopped_at IS NULL)";
