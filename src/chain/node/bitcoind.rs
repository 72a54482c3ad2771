//! JSON-RPC as Bitcoin Core speaks it. bcoin answers the same calls, with one quirk:
//! its `sendrawtransaction` answers the txid at once and verifies afterwards, so a
//! transaction it drops is only seen by asking again ([`BitcoindClient::tx_presence`]).

use async_trait::async_trait;
use raregen_actors::{BroadcastOutcome, Node, NodeError, OutpointState, TxPresence};
use reqwest::StatusCode;
use secrecy::{ExposeSecret, SecretString};
use serde_json::{json, Value};

use super::{classify_rejection, http_client, retry_after, split_credentials, transport_error};
use crate::config::NodeSettings;

pub struct BitcoindClient {
    http: reqwest::Client,
    url: reqwest::Url,
    user: String,
    password: SecretString,
    /// Whether the node is bcoin (asked once, by its user agent): see [`Node::outpoint`].
    bcoin: tokio::sync::OnceCell<bool>,
}

/// Why a call failed.
#[derive(Debug)]
pub enum RpcFailure {
    /// No answer (timeout, connection refused or reset, broken body).
    Transport(String),
    /// HTTP 429.
    RateLimited(Option<std::time::Duration>),
    /// An HTTP status without a JSON-RPC error inside.
    Http(StatusCode, String),
    /// The node's JSON-RPC error.
    Rpc { code: i64, message: String },
}

impl From<RpcFailure> for NodeError {
    fn from(f: RpcFailure) -> Self {
        match f {
            RpcFailure::Transport(e) => NodeError::Unavailable(e),
            RpcFailure::RateLimited(retry_after) => NodeError::RateLimited { retry_after },
            RpcFailure::Http(status, body) if status.is_server_error() => {
                NodeError::Unavailable(format!("HTTP {status}: {body}"))
            }
            RpcFailure::Http(status, body) => NodeError::Protocol(format!("HTTP {status}: {body}")),
            RpcFailure::Rpc { code, message } => {
                NodeError::Protocol(format!("RPC error {code}: {message}"))
            }
        }
    }
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

    /// Is the node bcoin? (Its user agent, `/bcoin:2.2.0/`, says so, and its REST
    /// interface answers at the same address.) Asked until answered, then remembered.
    async fn is_bcoin(&self) -> Result<bool, NodeError> {
        self.bcoin
            .get_or_try_init(|| async {
                let agent = match self.call("getnetworkinfo", json!([])).await {
                    Ok(info) => info["subversion"].as_str().unwrap_or("").to_owned(),
                    // A node without the call is no bcoin; no answer: ask again later.
                    Err(RpcFailure::Rpc { .. }) => return Ok(false),
                    Err(RpcFailure::Http(status, _)) if status.is_client_error() => {
                        return Ok(false)
                    }
                    Err(e) => return Err(NodeError::from(e)),
                };
                if !agent.starts_with("/bcoin:") {
                    return Ok(false);
                }
                // bcoin's REST root answers its version: then a 404 from /coin means
                // "no such coin", not "no such route" (a proxy that forwards only
                // JSON-RPC would make every coin look spent).
                let response = self
                    .authed(self.http.get(self.rest_url("")?))
                    .send()
                    .await
                    .map_err(|e| NodeError::Unavailable(transport_error(e)))?;
                let status = response.status();
                let body: Value = response.json().await.unwrap_or(Value::Null);
                if status == StatusCode::OK && body.get("version").is_some() {
                    Ok(true)
                } else {
                    Err(NodeError::Unavailable(format!(
                        "the node is bcoin, but its REST interface does not answer at {} \
                         (HTTP {status}); raregen asks it which coins the mempool spends",
                        self.rest_url("")?
                    )))
                }
            })
            .await
            .copied()
    }

    /// `path` under the node's address (kept whole: `http://host/bcoin` + `coin/…` is
    /// `http://host/bcoin/coin/…`).
    fn rest_url(&self, path: &str) -> Result<reqwest::Url, NodeError> {
        let mut base = self.url.clone();
        if !base.path().ends_with('/') {
            base.set_path(&format!("{}/", base.path()));
        }
        base.join(path)
            .map_err(|e| NodeError::Protocol(format!("node URL + {path}: {e}")))
    }

    /// bcoin's own view of a coin (its REST `GET /coin/:hash/:index`, which, unlike its
    /// `gettxout`, leaves out a coin a mempool transaction spends): `false` when gone.
    async fn bcoin_coin_exists(&self, txid: &str, vout: u32) -> Result<bool, NodeError> {
        let url = self.rest_url(&format!("coin/{txid}/{vout}"))?;
        let response = self
            .authed(self.http.get(url))
            .send()
            .await
            .map_err(|e| NodeError::Unavailable(transport_error(e)))?;
        match response.status() {
            StatusCode::OK => Ok(true),
            StatusCode::NOT_FOUND => Ok(false),
            StatusCode::TOO_MANY_REQUESTS => Err(NodeError::RateLimited {
                retry_after: retry_after(response.headers()),
            }),
            status if status.is_server_error() => {
                Err(NodeError::Unavailable(format!("GET /coin: HTTP {status}")))
            }
            status => Err(NodeError::Protocol(format!("GET /coin: HTTP {status}"))),
        }
    }

    /// The request with the node's credentials, if any.
    fn authed(&self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        if self.user.is_empty() && self.password.expose_secret().is_empty() {
            return request;
        }
        request.basic_auth(&self.user, Some(self.password.expose_secret()))
    }

    /// One JSON-RPC call; `Ok` holds the `result`.
    pub async fn call(&self, method: &str, params: Value) -> Result<Value, RpcFailure> {
        let request = self
            .http
            .post(self.url.clone())
            .json(&json!({"jsonrpc": "1.0", "id": "raregen", "method": method, "params": params}));
        let response = self
            .authed(request)
            .send()
            .await
            .map_err(|e| RpcFailure::Transport(transport_error(e)))?;
        let status = response.status();
        if status == StatusCode::TOO_MANY_REQUESTS {
            return Err(RpcFailure::RateLimited(retry_after(response.headers())));
        }
        let body = response
            .bytes()
            .await
            .map_err(|e| RpcFailure::Transport(transport_error(e)))?;
        // Core answers RPC errors with HTTP 500 (or 404) and a JSON body; bcoin with 200.
        match serde_json::from_slice::<Value>(&body) {
            Ok(v) if v.get("error").is_some_and(|e| !e.is_null()) => {
                let e = &v["error"];
                Err(RpcFailure::Rpc {
                    code: e.get("code").and_then(Value::as_i64).unwrap_or(0),
                    message: e
                        .get("message")
                        .and_then(Value::as_str)
                        .unwrap_or("(no message)")
                        .to_owned(),
                })
            }
            Ok(mut v) if status.is_success() => Ok(v["result"].take()),
            _ => {
                let text = String::from_utf8_lossy(&body);
                let text: String = text.chars().take(200).collect();
                Err(RpcFailure::Http(status, text))
            }
        }
    }

    /// The chain's height.
    pub async fn block_count(&self) -> Result<u64, NodeError> {
        let v = self.call("getblockcount", json!([])).await?;
        v.as_u64()
            .ok_or_else(|| NodeError::Protocol(format!("getblockcount answered {v}")))
    }
}

/// Whether SegWit is active on the node, from `getblockchaininfo`, with the height.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegwitState {
    pub active: bool,
    /// The deployment's status as the node words it (`defined`, `started`, …).
    pub status: String,
    pub height: u64,
}

/// Height from which SegWit is active on a regtest chain whose deployment goes through
/// BIP9 (bcoin): three windows of 144 blocks (defined, started, locked in).
pub const REGTEST_SEGWIT_HEIGHT: u64 = 432;

impl BitcoindClient {
    /// SegWit's deployment state, where the node reports one: bcoin and old Cores in
    /// `bip9_softforks.segwit.status`, Core 0.19–22 in `softforks.segwit.active`.
    /// `None` when the node says nothing about it (Core 23 on: always active there).
    pub async fn segwit(&self) -> Result<Option<SegwitState>, NodeError> {
        let info = self.call("getblockchaininfo", json!([])).await?;
        let height = info["blocks"].as_u64().unwrap_or(0);
        if let Some(status) = info["bip9_softforks"]["segwit"]["status"].as_str() {
            return Ok(Some(SegwitState {
                active: status == "active",
                status: status.to_owned(),
                height,
            }));
        }
        if let Some(active) = info["softforks"]["segwit"]["active"].as_bool() {
            return Ok(Some(SegwitState {
                active,
                status: if active { "active" } else { "inactive" }.to_owned(),
                height,
            }));
        }
        Ok(None)
    }
}

impl SegwitState {
    /// One line for an operator: what is wrong and what to do.
    pub fn advice(&self) -> String {
        let more = REGTEST_SEGWIT_HEIGHT.saturating_sub(self.height);
        format!(
            "SegWit is not active on the node yet (deployment {} at height {}), so it refuses \
             every P2WPKH spend (no-witness-yet) and nothing can be published: on regtest it \
             activates at height {REGTEST_SEGWIT_HEIGHT}, so mine at least {more} more block(s) \
             (`raregen wallet mine --blocks {more}`), or use chain.address_type = \"p2pkh\"",
            self.status, self.height
        )
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
