//! Sent transactions until their block: the unconfirmed list, confirmations, and the lanes of a transaction the node dropped (failed, re-anchored, or switched to an earlier copy).

use std::time::Duration;

use async_trait::async_trait;
use raregen_actors::ports::{Confirmation, EarlierTx, StoreError, Unconfirmed, WatchStore};
use sqlx::Row;

use super::super::{store_error, PgStore};
use super::earlier_txs;

#[async_trait]
impl WatchStore for PgStore {
    async fn unconfirmed(
        &self,
        limit: u32,
        settled: Duration,
    ) -> Result<Vec<Unconfirmed>, StoreError> {
        // Parents before children: the pool's splits first (in the order they were
        // made), then the jobs in the order they were sent (a lane's next job spends
        // the change of the one before). A node that lost its mempool then gets each
        // transaction after the one it spends, not as an orphan.
        let rows = sqlx::query(include_str!("sql/watch/unconfirmed.sql"))
            .bind(i64::from(limit))
            .bind(settled.as_secs_f64())
            .fetch_all(&self.pool)
            .await
            .map_err(store_error)?;
        Ok(rows
            .iter()
            .map(|r| {
                let input_txid: Option<String> = r.get("input_txid");
                let input_vout: Option<i32> = r.get("input_vout");
                Unconfirmed {
                    txid: r.get("txid"),
                    raw_tx: r.get("raw_tx"),
                    settled: r.get("settled"),
                    input: input_txid.zip(input_vout.map(|v| v as u32)),
                    split: r.get("split"),
                }
            })
            .collect())
    }

    async fn record_confirmations(&self, confirmed: &[Confirmation]) -> Result<(), StoreError> {
        let txids: Vec<&str> = confirmed.iter().map(|c| c.txid.as_str()).collect();
        let heights: Vec<Option<i32>> = confirmed
            .iter()
            .map(|c| c.block_height.map(|h| h as i32))
            .collect();
        let hashes: Vec<Option<&str>> = confirmed.iter().map(|c| c.block_hash.as_deref()).collect();
        sqlx::query(include_str!("sql/watch/record_confirmations.sql"))
            .bind(&txids)
            .bind(&heights)
            .bind(&hashes)
            .execute(&self.pool)
            .await
            .map_err(store_error)?;
        Ok(())
    }

    async fn fail_unheld(&self, txid: &str, reason: &str) -> Result<u64, StoreError> {
        // The transaction and every one that spends its outputs, down the lane: none of
        // them can ever be mined. All fail; their outputs leave the pool; so does the
        // coin the first one spent (unspent, the Janitor checked): a node that takes a
        // spend of it and never holds one is refusing the coin itself (another key's, a
        // wrong amount); `raregen wallet import` brings it back if it was not.
        let failed: i64 =
            sqlx::query_scalar(concat!(lane!(), include_str!("sql/watch/fail_unheld.sql")))
                .bind(txid)
                .bind(reason)
                .fetch_one(&self.pool)
                .await
                .map_err(store_error)?;
        Ok(failed as u64)
    }

    async fn reanchor_sent(
        &self,
        txid: &str,
        spent_by: &str,
        reason: &str,
    ) -> Result<Vec<String>, StoreError> {
        // The lane may grow while the statement runs (a child's `sent` adds its change, a
        // write-ahead takes a lane output); one statement's snapshot would miss what
        // lands meanwhile. So first lock every job and coin of the lane, again on a fresh
        // snapshot until nothing new turns up: once they are all held, nothing can join
        // the lane (joining writes a row we hold), and the statement below, on its own
        // fresh snapshot in the same transaction, sees the whole lane.
        let mut tx = self.pool.begin().await.map_err(store_error)?;
        let mut held = -1i64;
        for _ in 0..LANE_LOCK_ROUNDS {
            let now: i64 = sqlx::query_scalar(LOCK_LANE_SQL)
                .bind(txid)
                .fetch_one(&mut *tx)
                .await
                .map_err(store_error)?;
            if now == 0 {
                // The root is not a sent job (any more): nothing to do.
                return Ok(Vec::new());
            }
            if now == held {
                break;
            }
            held = now;
        }
        let set_aside = sqlx::query_scalar(REANCHOR_SENT_SQL)
            .bind(txid)
            .bind(spent_by)
            .bind(reason)
            .fetch_all(&mut *tx)
            .await
            .map_err(store_error)?;
        tx.commit().await.map_err(store_error)?;
        Ok(set_aside)
    }

    async fn earlier_of_sent(&self, txid: &str) -> Result<Vec<EarlierTx>, StoreError> {
        let rows: Vec<(String, Vec<u8>)> =
            sqlx::query_as(include_str!("sql/watch/earlier_of_sent.sql"))
                .bind(txid)
                .fetch_all(&self.pool)
                .await
                .map_err(store_error)?;
        Ok(earlier_txs(rows))
    }

    async fn switch_sent(
        &self,
        txid: &str,
        earlier: &str,
        change: Option<(u32, u64)>,
    ) -> Result<bool, StoreError> {
        let switched: Option<i64> = sqlx::query_scalar(include_str!("sql/watch/switch_sent.sql"))
            .bind(txid)
            .bind(earlier)
            .bind(change.map(|c| c.0 as i32))
            .bind(change.map(|c| c.1 as i64))
            .fetch_optional(&self.pool)
            .await
            .map_err(store_error)?;
        Ok(switched.is_some())
    }
}

/// Rounds of [`LOCK_LANE_SQL`] at most (a lane grows by a write or two per round while
/// its rows are being locked; it stops growing once they all are).
const LANE_LOCK_ROUNDS: usize = 20;

/// Locks the root sent job, every job of its lane (and those waiting on a lane output)
/// and every output of the lane; answers how many rows it holds (0: no such root).
const LOCK_LANE_SQL: &str = concat!(lane!(), include_str!("sql/watch/lock_lane.sql"));

/// A sent job's anchor was spent by a confirmed transaction that is none of its own:
/// the job's transaction (`$1`) and every one down its lane can never be mined. Their
/// jobs go back to the queue without an anchor and under a new fencing token (a
/// broadcaster still on one records nothing); jobs waiting with a lane output as their
/// anchor lose it (that coin can never exist). Binds: txid, the foreign spender, why.
const REANCHOR_SENT_SQL: &str = concat!(lane!(), include_str!("sql/watch/reanchor_sent.sql"));
