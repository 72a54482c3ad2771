//! `utxos` and `pool_transactions`: the pool's coins and its own (split) transactions.

use raregen_actors::{SpendableUtxo, StoredSplit};
use sqlx::{PgConnection, PgPool, Row};

use super::{store_error, StoreError};

/// A coin to add to the pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewUtxo {
    pub txid: String,
    pub vout: u32,
    pub satoshis: u64,
    pub script_pubkey: Vec<u8>,
    pub unconfirmed_depth: u32,
    pub coinbase: bool,
}

/// Coins still in play (not spent, not retired) that pay to another script than
/// `script`, by script: (script, count, sats), the most numerous first.
pub async fn foreign_utxos(pool: &PgPool, script: &[u8]) -> Result<ForeignCoins, StoreError> {
    // The five scripts paid most, with the totals over every script (not only those).
    let rows: Vec<(Vec<u8>, i64, i64, i64, i64, i64)> =
        sqlx::query_as(include_str!("sql/utxos/foreign_utxos.sql"))
            .bind(script)
            .fetch_all(pool)
            .await
            .map_err(store_error)?;
    let (coins, sats, scripts) = rows.first().map_or((0, 0, 0), |r| (r.3, r.4, r.5));
    Ok(ForeignCoins {
        coins,
        sats,
        scripts,
        top: rows.into_iter().map(|r| (r.0, r.1)).collect(),
    })
}

/// Live coins of the pool that pay to another script than the wallet key's.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ForeignCoins {
    /// Coins and their value, over every foreign script.
    pub coins: i64,
    pub sats: i64,
    /// How many distinct scripts they pay to.
    pub scripts: i64,
    /// The scripts paid most (at most five) with their coin counts.
    pub top: Vec<(Vec<u8>, i64)>,
}

/// Adds coins to the pool as available. Returns, in order, whether each was new (an
/// outpoint already in the pool is left as it is).
pub async fn insert_utxos(pool: &PgPool, utxos: &[NewUtxo]) -> Result<Vec<bool>, StoreError> {
    let txids: Vec<&str> = utxos.iter().map(|u| u.txid.as_str()).collect();
    let vouts: Vec<i32> = utxos.iter().map(|u| u.vout as i32).collect();
    let sats: Vec<i64> = utxos.iter().map(|u| u.satoshis as i64).collect();
    let scripts: Vec<&[u8]> = utxos.iter().map(|u| u.script_pubkey.as_slice()).collect();
    let depths: Vec<i32> = utxos.iter().map(|u| u.unconfirmed_depth as i32).collect();
    let coinbase: Vec<bool> = utxos.iter().map(|u| u.coinbase).collect();
    let inserted: Vec<(String, i32)> = sqlx::query_as(include_str!("sql/utxos/insert_utxos.sql"))
        .bind(&txids)
        .bind(&vouts)
        .bind(&sats)
        .bind(&scripts)
        .bind(&depths)
        .bind(&coinbase)
        .fetch_all(pool)
        .await
        .map_err(store_error)?;
    let inserted: std::collections::HashSet<(String, i32)> = inserted.into_iter().collect();
    Ok(utxos
        .iter()
        .map(|u| inserted.contains(&(u.txid.clone(), u.vout as i32)))
        .collect())
}

/// Locks the largest available, clean UTXO whose unconfirmed chain is shorter than
/// `max_depth` (inside the caller's transaction).
pub async fn lock_largest_available(
    conn: &mut PgConnection,
    max_depth: u32,
) -> Result<Option<SpendableUtxo>, StoreError> {
    let row = sqlx::query(include_str!("sql/utxos/lock_largest_available.sql"))
        .bind(max_depth as i32)
        .fetch_optional(conn)
        .await
        .map_err(store_error)?;
    Ok(row.map(|r| SpendableUtxo {
        id: r.get("id"),
        txid: r.get("txid"),
        vout: r.get::<i32, _>("vout") as u32,
        satoshis: r.get::<i64, _>("satoshis") as u64,
        unconfirmed_depth: r.get::<i32, _>("unconfirmed_depth") as u32,
    }))
}

/// Write-ahead for a split: stores the signed transaction, marks its input `spending`
/// and adds its outputs as `pending` (depth parent + 1), all in the caller's
/// transaction. Returns the pool transaction's id.
pub async fn store_split(
    conn: &mut PgConnection,
    input: &SpendableUtxo,
    signed: &raregen_actors::SignedTx,
    outputs: u32,
    amount: u64,
    script_pubkey: &[u8],
) -> Result<i64, StoreError> {
    let id: i64 = sqlx::query_scalar(include_str!("sql/utxos/split_record.sql"))
        .bind(&signed.txid)
        .bind(&signed.raw_tx)
        .bind(input.id)
        .bind(outputs as i32)
        .bind(amount as i64)
        .bind(signed.fee as i64)
        .fetch_one(&mut *conn)
        .await
        .map_err(store_error)?;
    sqlx::query(include_str!("sql/utxos/split_input.sql"))
        .bind(input.id)
        .bind(&signed.txid)
        .execute(&mut *conn)
        .await
        .map_err(store_error)?;
    let mut vouts: Vec<i32> = (0..outputs as i32).collect();
    let mut values: Vec<i64> = vec![amount as i64; outputs as usize];
    if let Some((vout, change)) = signed.change {
        vouts.push(vout as i32);
        values.push(change as i64);
    }
    sqlx::query(include_str!("sql/utxos/split_outputs.sql"))
        .bind(&signed.txid)
        .bind(&vouts)
        .bind(script_pubkey)
        .bind(input.unconfirmed_depth as i32 + 1)
        .bind(&values)
        .execute(&mut *conn)
        .await
        .map_err(store_error)?;
    Ok(id)
}

/// The node has the split: its outputs join the pool, its input is spent.
pub async fn split_accepted(pool: &PgPool, split: &StoredSplit) -> Result<(), StoreError> {
    let mut tx = pool.begin().await.map_err(store_error)?;
    sqlx::query("UPDATE pool_transactions SET status = 'sent', sent_at = now(), last_error = NULL WHERE id = $1")
        .bind(split.id)
        .execute(&mut *tx)
        .await
        .map_err(store_error)?;
    sqlx::query("UPDATE utxos SET state = 'available', updated_at = now() WHERE txid = $1 AND state = 'pending'")
        .bind(&split.txid)
        .execute(&mut *tx)
        .await
        .map_err(store_error)?;
    sqlx::query(include_str!("sql/utxos/split_accepted.sql"))
        .bind(split.input_utxo_id)
        .bind(&split.txid)
        .execute(&mut *tx)
        .await
        .map_err(store_error)?;
    tx.commit().await.map_err(store_error)
}

/// The node refused the split for good: its outputs never existed; its input goes back
/// to the pool, or is marked dirty when the refusal was about the input.
pub async fn split_rejected(
    pool: &PgPool,
    split: &StoredSplit,
    reason: &str,
    input_problem: bool,
) -> Result<(), StoreError> {
    let mut tx = pool.begin().await.map_err(store_error)?;
    sqlx::query("UPDATE pool_transactions SET status = 'failed', last_error = $2 WHERE id = $1")
        .bind(split.id)
        .bind(reason)
        .execute(&mut *tx)
        .await
        .map_err(store_error)?;
    sqlx::query("DELETE FROM utxos WHERE txid = $1 AND state = 'pending'")
        .bind(&split.txid)
        .execute(&mut *tx)
        .await
        .map_err(store_error)?;
    sqlx::query(include_str!("sql/utxos/split_rejected.sql"))
        .bind(split.input_utxo_id)
        .bind(&split.txid)
        .bind(input_problem)
        .execute(&mut *tx)
        .await
        .map_err(store_error)?;
    tx.commit().await.map_err(store_error)
}

/// The outcome is not known: the input is dirty until the node has been asked; the
/// split stays `sending`, to be re-broadcast from its stored bytes.
pub async fn split_unknown(
    pool: &PgPool,
    split: &StoredSplit,
    reason: &str,
) -> Result<(), StoreError> {
    let mut tx = pool.begin().await.map_err(store_error)?;
    sqlx::query("UPDATE pool_transactions SET last_error = $2 WHERE id = $1")
        .bind(split.id)
        .bind(reason)
        .execute(&mut *tx)
        .await
        .map_err(store_error)?;
    sqlx::query("UPDATE utxos SET dirty = TRUE, updated_at = now() WHERE id = $1")
        .bind(split.input_utxo_id)
        .execute(&mut *tx)
        .await
        .map_err(store_error)?;
    tx.commit().await.map_err(store_error)
}

/// Splits stored but not yet known to be accepted or refused.
pub async fn unfinished_splits(pool: &PgPool) -> Result<Vec<StoredSplit>, StoreError> {
    let rows = sqlx::query(include_str!("sql/utxos/unfinished_splits.sql"))
        .fetch_all(pool)
        .await
        .map_err(store_error)?;
    Ok(rows
        .into_iter()
        .map(|r| StoredSplit {
            id: r.get("id"),
            txid: r.get("txid"),
            raw_tx: r.get("raw_tx"),
            input_utxo_id: r.get("input_utxo_id"),
        })
        .collect())
}
