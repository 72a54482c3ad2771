//! bcoin's quirks: telling bcoin from Core, and its REST view of a coin, which (unlike
//! its `gettxout`) leaves out a coin a mempool transaction spends.

use raregen_actors::NodeError;
use reqwest::StatusCode;
use serde_json::{json, Value};

use super::rpc::RpcFailure;
use super::BitcoindClient;
use crate::chain::node::{retry_after, transport_error};

impl BitcoindClient {
    /// Is the node bcoin? (Its user agent, `/bcoin:2.2.0/`, says so, and its REST
    /// interface answers at the same address.) Asked until answered, then remembered.
    pub(super) async fn is_bcoin(&self) -> Result<bool, NodeError> {
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
    pub(super) async fn bcoin_coin_exists(&self, txid: &str, vout: u32) -> Result<bool, NodeError> {
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
}
