//! JSON-RPC as Bitcoin Core speaks it. bcoin answers the same calls, with one quirk:
//! its `sendrawtransaction` answers the txid at once and verifies afterwards, so a
//! transaction it drops is only seen by asking again ([`BitcoindClient::tx_presence`]).
//!
//! This file holds the client and its [`Node`] implementation (what each answer
//! means); `rpc.rs` the JSON-RPC transport, `bcoin.rs` bcoin's REST view of coins,
//! `segwit.rs` the SegWit activation check.

mod bcoin;
mod rpc;
mod segwit;

use async_trait::async_trait;
use raregen_actors::{BroadcastOutcome, Node, NodeError, OutpointState, TxPresence};
use secrecy::SecretString;
use serde_json::{json, Value};

use super::{classify_rejection, http_client, split_credentials};
use crate::config::NodeSettings;
use rpc::RpcFailure;
pub use segwit::{SegwitState, REGTEST_SEGWIT_HEIGHT};

pub struct BitcoindClient {
    http: reqwest::Client,
    url: reqwest::Url,
    user: String,
    password: SecretString,
    /// Whether the node is bcoin (asked once, by its user agent): see [`Node::outpoint`].
    bcoin: tokio::sync::OnceCell<bool>,
}

impl BitcoindClient {
    pub fn new(settings: &NodeSettings) -> anyhow::Result<BitcoindClient> {
        let (url, user, password) =
            split_credentials(&settings.url, &settings.user, &settings.password)?;
        Ok(BitcoindClient {
            http: http_client(settings.timeout)?,
            url,
            user,
            password,
            bcoin: tokio::sync::OnceCell::new(),
        })
    }
}

fn is_not_found(code: i64, message: &str) -> bool {
    // Core: -5 "No such mempool or blockchain transaction", "Transaction not in mempool";
    // bcoin: -1 "Transaction not found.", "Transaction not in mempool."
    let m = message.to_ascii_lowercase();
    code == -5 || m.contains("not found") || m.contains("not in mempool") || m.contains("no such")
}

/// Blocks below the tip [`Node::spender`] looks through at most (a day of Bitcoin's):
/// a foreign spend of a job's anchor is found while it is recent, without reading the
/// whole chain on every run of the DirtySettler.
pub const SPENDER_SCAN_BLOCKS: u64 = 144;

/// BTC amounts come as JSON numbers; satoshis are exact after rounding (< 2^53).
fn btc_to_sats(v: &Value) -> Option<u64> {
    let btc = v.as_f64()?;
    (btc >= 0.0).then(|| (btc * 100_000_000.0).round() as u64)
}

#[async_trait]
impl Node for BitcoindClient {
    async fn broadcast(&self, raw_tx: &[u8]) -> BroadcastOutcome {
        match self
            .call("sendrawtransaction", json!([hex::encode(raw_tx)]))
            .await
        {
            Ok(_) => BroadcastOutcome::Accepted,
            Err(RpcFailure::Rpc { code, message }) => classify_rejection(Some(code), &message),
            Err(RpcFailure::RateLimited(retry_after)) => {
                BroadcastOutcome::RateLimited { retry_after }
            }
            Err(RpcFailure::Transport(reason)) => BroadcastOutcome::Unknown { reason },
            Err(RpcFailure::Http(status, body)) => BroadcastOutcome::Unknown {
                reason: format!("HTTP {status}: {body}"),
            },
        }
    }

    async fn tx_presence(&self, txid: &str) -> Result<TxPresence, NodeError> {
        match self.call("getmempoolentry", json!([txid])).await {
            // bcoin answers `null` for a transaction it does not hold (Core: error -5).
            Ok(v) if !v.is_null() => return Ok(TxPresence::InMempool),
            Ok(_) => {}
            Err(RpcFailure::Rpc { code, message }) if is_not_found(code, &message) => {}
            Err(e) => return Err(e.into()),
        }
        let tx = match self.call("getrawtransaction", json!([txid, true])).await {
            Ok(tx) => tx,
            Err(RpcFailure::Rpc { code, message }) if is_not_found(code, &message) => {
                return Ok(TxPresence::Unknown)
            }
            Err(e) => return Err(e.into()),
        };
        let confirmations = tx.get("confirmations").and_then(Value::as_u64).unwrap_or(0);
        if confirmations == 0 {
            // Left the mempool between the two calls, or known only unconfirmed.
            return Ok(TxPresence::InMempool);
        }
        let block_hash = tx
            .get("blockhash")
            .and_then(Value::as_str)
            .map(str::to_owned);
        let block_height = match tx.get("height").and_then(Value::as_u64) {
            Some(h) => Some(h),
            None => self
                .block_count()
                .await
                .ok()
                .map(|tip| tip + 1 - confirmations.min(tip + 1)),
        };
        Ok(TxPresence::Confirmed {
            confirmations: confirmations as u32,
            block_height: block_height.map(|h| h as u32),
            block_hash,
        })
    }

    async fn spender(&self, txid: &str, vout: u32) -> Result<Option<String>, NodeError> {
        let bcoin = self.is_bcoin().await?;
        if !bcoin {
            // Core ≥ 24 names a mempool spender; an older one has no such method.
            match self
                .call(
                    "gettxspendingprevout",
                    json!([[{ "txid": txid, "vout": vout }]]),
                )
                .await
            {
                Ok(v) => {
                    if let Some(spender) = v[0]["spendingtxid"].as_str() {
                        return Ok(Some(spender.to_owned()));
                    }
                }
                Err(RpcFailure::Rpc { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        // The blocks, newest first, down to the outpoint's own (at most
        // SPENDER_SCAN_BLOCKS): a spend in a block is never below the coin it spends.
        let created = match self.call("getrawtransaction", json!([txid, true])).await {
            Ok(tx) => tx,
            Err(RpcFailure::Rpc { code, message }) if is_not_found(code, &message) => {
                return Ok(None)
            }
            Err(e) => return Err(e.into()),
        };
        let Some(created_in) = created["blockhash"].as_str() else {
            // Unconfirmed: no block spends it.
            return Ok(None);
        };
        let header = self
            .call("getblockheader", json!([created_in, true]))
            .await?;
        let floor = header["height"]
            .as_u64()
            .ok_or_else(|| NodeError::Protocol(format!("getblockheader answered {header}")))?;
        let tip = self.block_count().await?;
        let floor = floor.max(tip.saturating_sub(SPENDER_SCAN_BLOCKS));
        for height in (floor..=tip).rev() {
            let hash = self.call("getblockhash", json!([height])).await?;
            let block = if bcoin {
                self.call("getblock", json!([hash, true, true])).await?
            } else {
                self.call("getblock", json!([hash, 2])).await?
            };
            for tx in block["tx"].as_array().into_iter().flatten() {
                let spends = tx["vin"].as_array().into_iter().flatten().any(|input| {
                    input["txid"].as_str() == Some(txid)
                        && input["vout"].as_u64() == Some(u64::from(vout))
                });
                if spends {
                    return Ok(tx["txid"].as_str().map(str::to_owned));
                }
            }
        }
        Ok(None)
    }

    async fn outpoint(&self, txid: &str, vout: u32) -> Result<OutpointState, NodeError> {
        let v = self.call("gettxout", json!([txid, vout, true])).await?;
        if v.is_null() {
            return Ok(OutpointState::Gone { spent_by: None });
        }
        // Core's gettxout (include_mempool) leaves out a coin its mempool spends; bcoin's
        // asks its mempool only about coins the mempool created, and answers a confirmed
        // coin a mempool transaction spends as unspent. Its REST view does not.
        if self.is_bcoin().await? && !self.bcoin_coin_exists(txid, vout).await? {
            return Ok(OutpointState::Gone { spent_by: None });
        }
        let value = btc_to_sats(&v["value"])
            .ok_or_else(|| NodeError::Protocol(format!("gettxout value {}", v["value"])))?;
        let script_hex = v["scriptPubKey"]["hex"]
            .as_str()
            .ok_or_else(|| NodeError::Protocol("gettxout without scriptPubKey.hex".into()))?;
        let script_pubkey = hex::decode(script_hex)
            .map_err(|e| NodeError::Protocol(format!("scriptPubKey.hex: {e}")))?;
        Ok(OutpointState::Unspent {
            value,
            script_pubkey,
            confirmations: v["confirmations"].as_u64().unwrap_or(0) as u32,
            coinbase: v["coinbase"].as_bool().unwrap_or(false),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn btc_amounts_become_exact_satoshis() {
        assert_eq!(btc_to_sats(&json!(50.0)), Some(5_000_000_000));
        assert_eq!(btc_to_sats(&json!(0.00000546)), Some(546));
        assert_eq!(
            btc_to_sats(&serde_json::from_str("20999999.97690000").unwrap()),
            Some(2_099_999_997_690_000)
        );
        assert_eq!(btc_to_sats(&json!(0.1)), Some(10_000_000));
        assert_eq!(btc_to_sats(&json!(-1)), None);
    }

    #[test]
    fn not_found_answers_of_both_nodes() {
        assert!(is_not_found(-5, "No such mempool or blockchain transaction. Use gettransaction for wallet transactions."));
        assert!(is_not_found(-5, "Transaction not in mempool"));
        assert!(is_not_found(-1, "Transaction not found."));
        assert!(is_not_found(-1, "Transaction not in mempool."));
        assert!(!is_not_found(-28, "Loading block index..."));
    }
}
