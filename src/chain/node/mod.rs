//! Node clients behind the actors' [`Node`] trait: `bitcoind` (JSON-RPC as Bitcoin Core
//! speaks it; bcoin answers the same calls) and `esplora` (REST).

mod bitcoind;
mod classify;
mod esplora;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use raregen_actors::Node;
use reqwest::header::{HeaderMap, RETRY_AFTER};
use secrecy::{ExposeSecret, SecretString};

pub use bitcoind::{BitcoindClient, SegwitState, REGTEST_SEGWIT_HEIGHT, SPENDER_SCAN_BLOCKS};
pub use classify::{classify_rejection, parse_esplora_error};
pub use esplora::EsploraClient;

use crate::config::{NodeKind, NodeSettings};

/// The client `node.kind` names, ready to share between actors.
pub fn from_settings(settings: &NodeSettings) -> anyhow::Result<Arc<dyn Node>> {
    Ok(match settings.kind {
        NodeKind::Bitcoind => Arc::new(BitcoindClient::new(settings)?),
        NodeKind::Esplora => Arc::new(EsploraClient::new(settings)?),
    })
}

/// One HTTP client per node: keep-alive connections are reused across calls.
fn http_client(timeout: Duration) -> anyhow::Result<reqwest::Client> {
    reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout.min(Duration::from_secs(5)))
        // Below the 5 s after which Node.js servers (bcoin) close an idle keep-alive
        // connection: a request on a connection the server is closing fails before it
        // is sent ("error sending request"), and a broadcast would end Unknown for it.
        .pool_idle_timeout(Duration::from_secs(4))
        .pool_max_idle_per_host(256)
        .tcp_nodelay(true)
        .user_agent(concat!("raregen/", env!("CARGO_PKG_VERSION")))
        .build()
        .context("building the HTTP client")
}

/// Splits credentials out of a URL (`http://user:pass@host`) so that the URL can be
/// logged and shown in errors; configured credentials win over those in the URL.
fn split_credentials(
    url: &str,
    user: &str,
    password: &SecretString,
) -> anyhow::Result<(reqwest::Url, String, SecretString)> {
    let mut parsed = reqwest::Url::parse(url).map_err(|e| {
        anyhow::anyhow!(
            "node.url {} is not a URL: {e}",
            crate::config::redact_url(url)
        )
    })?;
    let url_user = parsed.username().to_owned();
    let url_password = parsed.password().map(str::to_owned);
    let _ = parsed.set_username("");
    let _ = parsed.set_password(None);
    let user = if user.is_empty() {
        url_user
    } else {
        user.to_owned()
    };
    let password = if password.expose_secret().is_empty() {
        SecretString::from(url_password.unwrap_or_default())
    } else {
        password.clone()
    };
    Ok((parsed, user, password))
}

/// `Retry-After` in seconds (an HTTP date is treated as absent: we back off instead),
/// at most [`MAX_RETRY_AFTER`]: a node's number must not pause us for good (or overflow
/// the limiter's clock).
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    headers
        .get(RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse::<u64>()
        .ok()
        .map(|s| Duration::from_secs(s).min(MAX_RETRY_AFTER))
}

/// The longest pause a node's `Retry-After` can ask for.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(600);

/// A transport error as text, without the URL (which could carry credentials).
fn transport_error(e: reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "connection failed"
    } else if e.is_body() || e.is_decode() {
        "broken response"
    } else {
        "request failed"
    };
    let e = e.without_url();
    format!("{kind}: {e}")
}
