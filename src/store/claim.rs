//! The claim: queued jobs into a batch, in one statement.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use raregen_actors::ports::{
    Anchor, ClaimStore, ClaimedBatch, ClaimedJob, SpendableUtxo, StoreError, StoredTx,
};
use sqlx::Row;

use super::{store_error, PgStore};

/// The claim: one statement picks the oldest due jobs of the highest priority with
/// `SKIP LOCKED` (so concurrent claimers never wait for or share a job), creates the
/// batch row, numbers the jobs 1..n and moves them to `processing_batch`.
///
/// Its commit does not wait for the WAL flush (`synchronous_commit = off` for this
/// transaction only). That is safe: if a crash loses the claim, its jobs are simply
/// `queued` again, and nothing can have been broadcast under it, because a broadcast
/// waits for the write-ahead `record_sending`, a synchronous commit, and flushing that
/// commit flushes every WAL record before it, the claim's included.
const CLAIM_SQL: &str = include_str!("sql/claim/claim.sql");

/// The anchors of re-claimed jobs that signed before (rare: only after a refusal), as
/// coins, with how many transactions each job signed before.
const ANCHORS_SQL: &str = include_str!("sql/claim/anchors.sql");

#[async_trait]
impl ClaimStore for PgStore {
    async fn claim_batch(&self, max: u32) -> Result<Option<ClaimedBatch>, StoreError> {
        let rows = sqlx::query(CLAIM_SQL)
            .bind(i64::from(max))
            .bind(&self.owner)
            .fetch_all(&self.pool)
            .await
            .map_err(store_error)?;
        let Some(first) = rows.first() else {
            return Ok(None);
        };
        let id: i64 = first.get("batch_id");
        let created_at: DateTime<Utc> = first.get("batch_created_at");
        let mut jobs: Vec<ClaimedJob> = rows
            .iter()
            .map(|r| {
                let txid: Option<String> = r.get("txid");
                let raw_tx: Option<Vec<u8>> = r.get("raw_tx");
                ClaimedJob {
                    id: r.get("id"),
                    batch_seq: r.get("batch_seq"),
                    payload: r.get("payload"),
                    attempts: r.get("attempts"),
                    stored_tx: txid.zip(raw_tx).map(|(txid, raw_tx)| StoredTx {
                        txid,
                        raw_tx,
                        utxo_id: r.get("utxo_id"),
                    }),
                    anchor: r
                        .get::<Option<i64>, _>("anchor_utxo_id")
                        .map(|utxo_id| Anchor {
                            utxo_id,
                            utxo: None,
                            signed_before: 0,
                            retired: false,
                        }),
                }
            })
            .collect();
        // A job that will sign again (it has an anchor and no stored transaction) is
        // handed its anchor as a coin, if it still holds it.
        let anchors: Vec<i64> = jobs
            .iter()
            .filter(|j| j.stored_tx.is_none())
            .filter_map(|j| j.anchor.as_ref().map(|a| a.utxo_id))
            .collect();
        if !anchors.is_empty() {
            let rows = sqlx::query(ANCHORS_SQL)
                .bind(&anchors)
                .fetch_all(&self.pool)
                .await
                .map_err(store_error)?;
            for r in rows {
                let holder: Option<i64> = r.get("reserved_by");
                let id: i64 = r.get("id");
                if r.get::<&str, _>("state") == "retired" {
                    // Gone for good (the lane it was made in was never held): no
                    // transaction of the job can be mined now, and it may sign on no
                    // other coin.
                    for j in jobs.iter_mut().filter(|j| j.stored_tx.is_none()) {
                        if let Some(a) = j.anchor.as_mut().filter(|a| a.utxo_id == id) {
                            a.retired = true;
                        }
                    }
                    continue;
                }
                if r.get::<&str, _>("state") != "reserved" || r.get::<bool, _>("dirty") {
                    continue;
                }
                if let Some(anchor) = jobs
                    .iter_mut()
                    .filter(|j| Some(j.id) == holder)
                    .find_map(|j| j.anchor.as_mut().filter(|a| a.utxo_id == id))
                {
                    anchor.signed_before = r.get::<i32, _>("signed").max(0) as u32;
                    anchor.utxo = Some(SpendableUtxo {
                        id,
                        txid: r.get("txid"),
                        vout: r.get::<i32, _>("vout") as u32,
                        satoshis: r.get::<i64, _>("satoshis") as u64,
                        unconfirmed_depth: r.get::<i32, _>("unconfirmed_depth") as u32,
                    });
                }
            }
        }
        jobs.sort_by_key(|j| j.batch_seq);
        Ok(Some(ClaimedBatch {
            id,
            created_at,
            jobs,
        }))
    }
}
