//! The UTXO pool's port: spendable coins, and the splits that make more of them.

use async_trait::async_trait;
use raregen_actors::{PoolStore, SignedTx, SpendableUtxo, StoreError, StoredSplit};

use super::maintenance::utxo_from;
use super::utxos;
use super::{store_error, PgStore};

#[async_trait]
impl PoolStore for PgStore {
    async fn load_available(
        &self,
        max_depth: u32,
        limit: u32,
    ) -> Result<Vec<SpendableUtxo>, StoreError> {
        let rows = sqlx::query(include_str!("sql/pool/load_available.sql"))
            .bind(max_depth as i32)
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await
            .map_err(store_error)?;
        Ok(rows.iter().map(utxo_from).collect())
    }

    async fn store_split(
        &self,
        input: &SpendableUtxo,
        signed: &SignedTx,
        outputs: u32,
        amount: u64,
    ) -> Result<StoredSplit, StoreError> {
        let script: Vec<u8> = sqlx::query_scalar("SELECT script_pubkey FROM utxos WHERE id = $1")
            .bind(input.id)
            .fetch_one(&self.pool)
            .await
            .map_err(store_error)?;
        let mut tx = self.pool.begin().await.map_err(store_error)?;
        let taken: Option<i64> = sqlx::query_scalar(
            "SELECT id FROM utxos WHERE id = $1 AND state = 'available' AND NOT dirty FOR UPDATE",
        )
        .bind(input.id)
        .fetch_optional(&mut *tx)
        .await
        .map_err(store_error)?;
        if taken.is_none() {
            return Err(StoreError::Other(format!(
                "the coin to split ({}:{}) is not available now: spent, reserved, or waiting \
                 for the Janitor to ask the node about an earlier spend",
                input.txid, input.vout
            )));
        }
        let id = utxos::store_split(&mut tx, input, signed, outputs, amount, &script).await?;
        tx.commit().await.map_err(store_error)?;
        Ok(StoredSplit {
            id,
            txid: signed.txid.clone(),
            raw_tx: signed.raw_tx.clone(),
            input_utxo_id: input.id,
        })
    }

    async fn split_accepted(&self, split: &StoredSplit) -> Result<Vec<SpendableUtxo>, StoreError> {
        utxos::split_accepted(&self.pool, split).await?;
        let rows = sqlx::query(include_str!("sql/pool/split_accepted.sql"))
            .bind(&split.txid)
            .fetch_all(&self.pool)
            .await
            .map_err(store_error)?;
        Ok(rows.iter().map(utxo_from).collect())
    }

    async fn split_rejected(
        &self,
        split: &StoredSplit,
        reason: &str,
        input_problem: bool,
    ) -> Result<(), StoreError> {
        utxos::split_rejected(&self.pool, split, reason, input_problem).await
    }

    async fn split_unknown(&self, split: &StoredSplit, reason: &str) -> Result<(), StoreError> {
        utxos::split_unknown(&self.pool, split, reason).await
    }

    async fn unfinished_splits(&self) -> Result<Vec<StoredSplit>, StoreError> {
        utxos::unfinished_splits(&self.pool).await
    }
}
