//! The JSON-RPC transport: one call to the node, with its credentials, and what can go
//! wrong with it ([`RpcFailure`]).

use raregen_actors::NodeError;
use reqwest::StatusCode;
use secrecy::ExposeSecret;
use serde_json::{json, Value};

use super::BitcoindClient;
use crate::chain::node::{retry_after, transport_error};

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
    /// The request with the node's credentials, if any.
    pub(super) fn authed(&self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
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
