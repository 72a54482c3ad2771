//! Esplora's REST API: `POST /tx`, `GET /tx/:txid/status`, `GET /tx/:txid`,
//! `GET /tx/:txid/outspend/:vout`, `GET /blocks/tip/height`.

use async_trait::async_trait;
use raregen_actors::{BroadcastOutcome, Node, NodeError, OutpointState, TxPresence};
use reqwest::StatusCode;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use super::{
    classify_rejection, http_client, parse_esplora_error, retry_after, split_credentials,
    transport_error,
};
use crate::config::NodeSettings;

pub struct EsploraClient {
    http: reqwest::Client,
    /// Ends with `/`, so that joining `tx` keeps any path prefix (`…/api/`).
    base: reqwest::Url,
    user: String,
    password: SecretString,
}

#[derive(Deserialize)]
struct Status {
    confirmed: bool,
    block_height: Option<u32>,
    block_hash: Option<String>,
}

#[derive(Deserialize)]
struct Tx {
    vin: Vec<Vin>,
    vout: Vec<Vout>,
    status: Status,
}

#[derive(Deserialize)]
struct Vin {
    #[serde(default)]
    is_coinbase: bool,
}

#[derive(Deserialize)]
struct Vout {
    scriptpubkey: String,
    value: u64,
}

#[derive(Deserialize)]
struct Outspend {
    spent: bool,
    txid: Option<String>,
}

enum Answer {
    Ok(String),
    NotFound,
}

impl EsploraClient {
    pub fn new(settings: &NodeSettings) -> anyhow::Result<EsploraClient> {
        let (mut base, user, password) =
            split_credentials(&settings.url, &settings.user, &settings.password)?;
        if !base.path().ends_with('/') {
            let path = format!("{}/", base.path());
            base.set_path(&path);
        }
        Ok(EsploraClient {
            http: http_client(settings.timeout)?,
            base,
            user,
            password,
        })
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let url = self.base.join(path).expect("paths are relative");
        let mut r = self.http.request(method, url);
        if !self.user.is_empty() || !self.password.expose_secret().is_empty() {
            r = r.basic_auth(&self.user, Some(self.password.expose_secret()));
        }
        r
    }

    async fn get(&self, path: &str) -> Result<Answer, NodeError> {
        let response = self
            .request(reqwest::Method::GET, path)
            .send()
            .await
            .map_err(|e| NodeError::Unavailable(transport_error(e)))?;
        let status = response.status();
        if status == StatusCode::TOO_MANY_REQUESTS {
            return Err(NodeError::RateLimited {
                retry_after: retry_after(response.headers()),
            });
        }
        let body = response
            .text()
            .await
            .map_err(|e| NodeError::Unavailable(transport_error(e)))?;
        match status {
            s if s.is_success() => Ok(Answer::Ok(body)),
            StatusCode::NOT_FOUND => Ok(Answer::NotFound),
            s if s.is_server_error() => {
                Err(NodeError::Unavailable(format!("HTTP {s}: {}", clip(&body))))
            }
            s => Err(NodeError::Protocol(format!("HTTP {s}: {}", clip(&body)))),
        }
    }

    async fn get_json<T: for<'de> Deserialize<'de>>(
        &self,
        path: &str,
    ) -> Result<Option<T>, NodeError> {
        match self.get(path).await? {
            Answer::NotFound => Ok(None),
            Answer::Ok(body) => serde_json::from_str(&body)
                .map(Some)
                .map_err(|e| NodeError::Protocol(format!("GET {path}: {e}"))),
        }
    }

    async fn tip_height(&self) -> Result<u32, NodeError> {
        match self.get("blocks/tip/height").await? {
            Answer::Ok(body) => body.trim().parse().map_err(|_| {
                NodeError::Protocol(format!("blocks/tip/height answered {}", clip(&body)))
            }),
            Answer::NotFound => Err(NodeError::Protocol("blocks/tip/height not found".into())),
        }
    }

    async fn confirmations(&self, status: &Status) -> Result<u32, NodeError> {
        match (status.confirmed, status.block_height) {
            (true, Some(height)) => Ok(self.tip_height().await?.saturating_sub(height) + 1),
            (true, None) => Ok(1),
            (false, _) => Ok(0),
        }
    }
}

fn clip(s: &str) -> String {
    s.chars().take(200).collect()
}

#[async_trait]
impl Node for EsploraClient {
    async fn broadcast(&self, raw_tx: &[u8]) -> BroadcastOutcome {
        let sent = self
            .request(reqwest::Method::POST, "tx")
            .header("content-type", "text/plain")
            .body(hex::encode(raw_tx))
            .send()
            .await;
        let response = match sent {
            Ok(r) => r,
            Err(e) => {
                return BroadcastOutcome::Unknown {
                    reason: transport_error(e),
                }
            }
        };
        let status = response.status();
        if status == StatusCode::TOO_MANY_REQUESTS {
            return BroadcastOutcome::RateLimited {
                retry_after: retry_after(response.headers()),
            };
        }
        let body = match response.text().await {
            Ok(b) => b,
            Err(e) => {
                return BroadcastOutcome::Unknown {
                    reason: transport_error(e),
                }
            }
        };
        if status.is_success() {
            return BroadcastOutcome::Accepted;
        }
        if status.is_server_error() {
            return BroadcastOutcome::Unknown {
                reason: format!("HTTP {status}: {}", clip(&body)),
            };
        }
        let (code, message) = parse_esplora_error(&body);
        match status {
            StatusCode::BAD_REQUEST => classify_rejection(code, &message),
            _ => BroadcastOutcome::Unknown {
                reason: format!("HTTP {status}: {}", clip(&message)),
            },
        }
    }

    async fn tx_presence(&self, txid: &str) -> Result<TxPresence, NodeError> {
        let Some(status) = self
            .get_json::<Status>(&format!("tx/{txid}/status"))
            .await?
        else {
            return Ok(TxPresence::Unknown);
        };
        if !status.confirmed {
            return Ok(TxPresence::InMempool);
        }
        Ok(TxPresence::Confirmed {
            confirmations: self.confirmations(&status).await?,
            block_height: status.block_height,
            block_hash: status.block_hash,
        })
    }

    async fn outpoint(&self, txid: &str, vout: u32) -> Result<OutpointState, NodeError> {
        let Some(tx) = self.get_json::<Tx>(&format!("tx/{txid}")).await? else {
            return Ok(OutpointState::Gone { spent_by: None });
        };
        let Some(out) = tx.vout.get(vout as usize) else {
            return Ok(OutpointState::Gone { spent_by: None });
        };
        let spend = self
            .get_json::<Outspend>(&format!("tx/{txid}/outspend/{vout}"))
            .await?
            .ok_or_else(|| NodeError::Protocol(format!("no outspend for {txid}:{vout}")))?;
        if spend.spent {
            return Ok(OutpointState::Gone {
                spent_by: spend.txid,
            });
        }
        Ok(OutpointState::Unspent {
            value: out.value,
            script_pubkey: hex::decode(&out.scriptpubkey)
                .map_err(|e| NodeError::Protocol(format!("scriptpubkey: {e}")))?,
            confirmations: self.confirmations(&tx.status).await?,
            coinbase: tx.vin.first().is_some_and(|v| v.is_coinbase),
        })
    }
}
