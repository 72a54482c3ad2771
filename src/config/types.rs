//! The settings' types: one struct per `[section]` of `config/default.toml`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Batch,
    Single,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Batch => "batch",
            Mode::Single => "single",
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub mode: Mode,
    pub database: DatabaseSettings,
    pub api: ApiSettings,
    pub chain: ChainSettings,
    pub node: NodeSettings,
    pub collector: CollectorSettings,
    pub rate_limit: RateLimitSettings,
    pub broadcaster: BroadcasterSettings,
    pub utxo_pool: UtxoPoolSettings,
    pub janitor: JanitorSettings,
    pub retention: RetentionSettings,
    pub metrics: MetricsSettings,
    pub log: LogSettings,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseSettings {
    /// May hold a password: kept secret, shown only through [`DatabaseSettings::redacted_url`].
    pub url: SecretString,
    pub max_connections: u32,
    #[serde(with = "humantime_serde")]
    pub acquire_timeout: Duration,
}

impl DatabaseSettings {
    /// The URL with any password replaced by `***`, for logs and messages.
    pub fn redacted_url(&self) -> String {
        redact_url(self.url.expose_secret())
    }
}

/// `scheme://user:password@host/db` → `scheme://user:***@host/db`.

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiSettings {
    pub listen: SocketAddr,
    pub api_key: SecretString,
    pub max_body_bytes: usize,
}

impl ApiSettings {
    /// The API key, if one is configured (an empty string means none).
    pub fn key(&self) -> Option<&str> {
        let key = self.api_key.expose_secret();
        (!key.is_empty()).then_some(key)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Network {
    Bitcoin,
    Testnet,
    Signet,
    Regtest,
}

impl Network {
    pub fn as_str(self) -> &'static str {
        match self {
            Network::Bitcoin => "bitcoin",
            Network::Testnet => "testnet",
            Network::Signet => "signet",
            Network::Regtest => "regtest",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AddressType {
    P2wpkh,
    P2pkh,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChainSettings {
    pub network: Network,
    pub address_type: AddressType,
    pub fee_rate: f64,
    pub max_payload_bytes: usize,
    pub wallet_key_file: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeKind {
    Bitcoind,
    Esplora,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeSettings {
    pub kind: NodeKind,
    pub url: String,
    pub user: String,
    pub password: SecretString,
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CollectorSettings {
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    pub max_batch: u32,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitSettings {
    pub max: u32,
    #[serde(with = "humantime_serde")]
    pub per: Duration,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BroadcasterSettings {
    pub workers: u32,
    pub max_attempts: u32,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UtxoPoolSettings {
    pub min_available: u32,
    pub split_outputs: u32,
    pub split_amount: u64,
    #[serde(with = "humantime_serde")]
    pub reservation_timeout: Duration,
    pub max_chain_depth: u32,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JanitorSettings {
    /// The Rescuer's interval (dead processes' claims, stuck jobs).
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// The DirtySettler's interval (UTXOs whose spend had an unknown outcome);
    /// `interval` when unset.
    #[serde(deserialize_with = "duration_or_empty")]
    pub settle_interval: Option<Duration>,
    /// The ConfirmationWatcher's interval (sent transactions: confirmed, or re-sent);
    /// `interval` when unset.
    #[serde(deserialize_with = "duration_or_empty")]
    pub confirm_interval: Option<Duration>,
    #[serde(with = "humantime_serde")]
    pub stuck_after: Duration,
    /// Confirmations a foreign spend of a job's anchor needs before the job leaves its
    /// anchor for a fresh UTXO (until then the job waits: the spend may still vanish).
    pub reanchor_confirmations: u32,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionSettings {
    /// How long finished jobs are kept; zero keeps everything.
    #[serde(with = "humantime_serde")]
    pub keep: Duration,
    /// Archive pruned jobs instead of deleting them.
    pub archive: bool,
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// Rows per pruning statement.
    pub batch: u32,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsSettings {
    /// How often the gauges read from the database (queue depth, pool) are refreshed.
    #[serde(with = "humantime_serde")]
    pub refresh: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogSettings {
    pub format: LogFormat,
    pub level: String,
}

/// A duration (`"10s"`), or `""` for "unset".
fn duration_or_empty<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    let raw = String::deserialize(d)?;
    if raw.trim().is_empty() {
        return Ok(None);
    }
    humantime::parse_duration(raw.trim())
        .map(Some)
        .map_err(|e| {
            serde::de::Error::custom(format!("expected a duration such as \"10s\" or \"\": {e}"))
        })
}

/// `scheme://user:password@host/db` → `scheme://user:***@host/db`.
pub fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_owned();
    };
    let rest = &url[scheme_end + 3..];
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    match (authority.rfind('@'), authority.find(':')) {
        (Some(at), Some(colon)) if colon < at => format!(
            "{}{}:***{}",
            &url[..scheme_end + 3],
            &authority[..colon],
            &url[scheme_end + 3 + at..]
        ),
        _ => url.to_owned(),
    }
}
