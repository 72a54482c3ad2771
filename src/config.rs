//! Layered configuration: the compiled-in `config/default.toml`, then the file named by
//! `--config` / `RAREGEN_CONFIG`, then `RAREGEN__<SECTION>__<KEY>` environment variables,
//! then `DATABASE_URL`. Every layer is checked against the defaults' keys, so a typo stops
//! start-up with the key's name instead of being ignored.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use toml::{Table, Value};

/// The defaults, compiled in so the binary runs from any directory.
pub const DEFAULT_TOML: &str = include_str!("../config/default.toml");

/// Prefix of the environment variables that override single keys.
pub const ENV_PREFIX: &str = "RAREGEN__";
/// Environment variable naming the config file (same as `--config`).
pub const ENV_CONFIG_FILE: &str = "RAREGEN_CONFIG";
/// Environment variable holding the wallet key (WIF).
pub const ENV_WALLET_KEY: &str = "RAREGEN_WALLET_KEY";

/// Keys whose values are secret: errors about them never echo the value.
const SECRET_KEYS: &[&str] = &["api.api_key", "node.password", "database.url"];

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}{via}: {source}")]
    Read {
        path: PathBuf,
        /// Where the path came from when not `--config`, e.g. ` (named by RAREGEN_CONFIG)`.
        via: &'static str,
        source: std::io::Error,
    },
    #[error("config file {path} is not valid TOML: {message}")]
    Syntax { path: PathBuf, message: String },
    #[error("unknown config key `{key}` in {origin}{hint}")]
    UnknownKey {
        key: String,
        origin: String,
        hint: &'static str,
    },
    #[error("config key `{key}` (from {origin}): {message}")]
    BadValue {
        key: String,
        origin: String,
        message: String,
    },
    #[error("wallet key: {0}")]
    WalletKey(String),
}

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

/// Where each key's value came from, for error messages.
type Origins = BTreeMap<String, String>;

impl Settings {
    /// Loads the layers from the process environment.
    pub fn load(file: Option<&Path>) -> Result<Settings, ConfigError> {
        let env_file = std::env::var_os(ENV_CONFIG_FILE).map(PathBuf::from);
        let from_env = file.is_none() && env_file.is_some();
        let file = file.map(Path::to_path_buf).or(env_file);
        Self::load_from(file.as_deref(), std::env::vars()).map_err(|e| match e {
            ConfigError::Read { path, source, .. } if from_env => ConfigError::Read {
                path,
                via: " (named by RAREGEN_CONFIG)",
                source,
            },
            other => other,
        })
    }

    /// Loads the layers with the environment given (tests pass their own).
    pub fn load_from(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Settings, ConfigError> {
        let defaults: Table = DEFAULT_TOML
            .parse()
            .expect("config/default.toml is valid TOML");
        let mut merged = defaults.clone();
        let mut origins = Origins::new();

        if let Some(path) = file {
            let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: path.to_owned(),
                via: "",
                source,
            })?;
            let layer: Table = text
                .parse()
                .map_err(|e: toml::de::Error| ConfigError::Syntax {
                    path: path.to_owned(),
                    message: e.message().to_owned(),
                })?;
            let origin = path.display().to_string();
            overlay(&defaults, &mut merged, &layer, "", &origin, &mut origins)?;
        }

        let mut env: Vec<(String, String)> = env.into_iter().collect();
        env.sort();
        for (var, raw) in &env {
            if let Some(rest) = var.strip_prefix(ENV_PREFIX) {
                let path: Vec<String> = rest.split("__").map(str::to_ascii_lowercase).collect();
                set_from_env(&defaults, &mut merged, &path, var, raw, &mut origins)?;
            } else if var == "DATABASE_URL" {
                let db = merged.get_mut("database").and_then(Value::as_table_mut);
                db.expect("defaults have [database]")
                    .insert("url".into(), Value::String(raw.clone()));
                origins.insert("database.url".into(), "DATABASE_URL".into());
            }
        }

        let settings: Settings =
            serde_path_to_error::deserialize(Value::Table(merged)).map_err(|e| {
                let key = e.path().to_string();
                let message = if SECRET_KEYS.contains(&key.as_str()) {
                    "invalid value (not shown: the key is secret)".to_owned()
                } else {
                    // The bare message: the error's Display adds "in `key`" and newlines.
                    plain_serde_message(e.into_inner().message())
                };
                bad_value(&origins, key, message)
            })?;
        settings.validate(&origins)?;
        Ok(settings)
    }

    fn validate(&self, origins: &Origins) -> Result<(), ConfigError> {
        let check = |ok: bool, key: &str, message: &str| {
            if ok {
                Ok(())
            } else {
                Err(bad_value(origins, key.to_owned(), message.to_owned()))
            }
        };
        let url = self.database.url.expose_secret();
        check(
            url.starts_with("postgres://") || url.starts_with("postgresql://"),
            "database.url",
            "must be a postgres:// URL",
        )?;
        check(
            self.database.max_connections >= 2,
            "database.max_connections",
            "must be at least 2",
        )?;
        check(
            self.chain.fee_rate.is_finite() && self.chain.fee_rate >= 1.0,
            "chain.fee_rate",
            "must be a number of sat/vB, at least 1.0 (the minimum relay fee)",
        )?;
        check(
            (1..=100_000).contains(&self.chain.max_payload_bytes),
            "chain.max_payload_bytes",
            "must be between 1 and 100000",
        )?;
        check(
            self.node.url.starts_with("http://") || self.node.url.starts_with("https://"),
            "node.url",
            "must be an http:// or https:// URL",
        )?;
        check(
            !self.node.timeout.is_zero(),
            "node.timeout",
            "must be longer than 0s",
        )?;
        check(
            !self.collector.interval.is_zero(),
            "collector.interval",
            "must be longer than 0s",
        )?;
        check(
            (1..=10_000).contains(&self.collector.max_batch),
            "collector.max_batch",
            "must be between 1 and 10000",
        )?;
        check(
            self.rate_limit.max >= 1,
            "rate_limit.max",
            "must be at least 1",
        )?;
        check(
            !self.rate_limit.per.is_zero(),
            "rate_limit.per",
            "must be longer than 0s",
        )?;
        check(
            (1..=4096).contains(&self.broadcaster.workers),
            "broadcaster.workers",
            "must be between 1 and 4096",
        )?;
        check(
            self.broadcaster.max_attempts >= 1,
            "broadcaster.max_attempts",
            "must be at least 1",
        )?;
        check(
            (2..=2_000).contains(&self.utxo_pool.split_outputs),
            "utxo_pool.split_outputs",
            "must be between 2 and 2000",
        )?;
        check(
            self.utxo_pool.split_amount >= 546,
            "utxo_pool.split_amount",
            "must be at least 546 sats (the dust limit)",
        )?;
        check(
            self.utxo_pool.max_chain_depth >= 1,
            "utxo_pool.max_chain_depth",
            "must be at least 1",
        )?;
        check(
            !self.janitor.interval.is_zero(),
            "janitor.interval",
            "must be longer than 0s",
        )?;
        check(
            self.janitor.settle_interval != Some(Duration::ZERO),
            "janitor.settle_interval",
            "must be longer than 0s",
        )?;
        check(
            self.janitor.confirm_interval != Some(Duration::ZERO),
            "janitor.confirm_interval",
            "must be longer than 0s",
        )?;
        check(
            !self.retention.interval.is_zero(),
            "retention.interval",
            "must be longer than 0s",
        )?;
        check(
            (1..=1_000_000).contains(&self.retention.batch),
            "retention.batch",
            "must be from 1 to 1000000",
        )?;
        check(
            !self.janitor.stuck_after.is_zero(),
            "janitor.stuck_after",
            "must be longer than 0s",
        )?;
        check(
            self.janitor.reanchor_confirmations >= 1,
            "janitor.reanchor_confirmations",
            "must be at least 1 (a spend in the mempool can still vanish)",
        )?;
        check(
            u64::from(self.janitor.reanchor_confirmations)
                <= crate::chain::node::SPENDER_SCAN_BLOCKS,
            "janitor.reanchor_confirmations",
            "must be at most 144 (the blocks raregen looks through for the spender of a coin)",
        )?;
        check(
            !self.metrics.refresh.is_zero(),
            "metrics.refresh",
            "must be longer than 0s",
        )?;
        tracing_subscriber::EnvFilter::try_new(&self.log.level).map_err(|e| {
            bad_value(
                origins,
                "log.level".into(),
                format!("not a log filter: {e}"),
            )
        })?;
        Ok(())
    }

    /// The wallet key (WIF), from `RAREGEN_WALLET_KEY` or else `chain.wallet_key_file`.
    /// `Ok(None)` when neither is set. The value is only ever held as a secret.
    pub fn wallet_key(&self) -> Result<Option<SecretString>, ConfigError> {
        if let Ok(key) = std::env::var(ENV_WALLET_KEY) {
            let key = key.trim();
            if key.is_empty() {
                return Err(ConfigError::WalletKey(format!(
                    "{ENV_WALLET_KEY} is set but empty"
                )));
            }
            return Ok(Some(SecretString::from(key.to_owned())));
        }
        let path = &self.chain.wallet_key_file;
        if path.as_os_str().is_empty() {
            return Ok(None);
        }
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigError::WalletKey(format!(
                "cannot read chain.wallet_key_file {}: {e}",
                path.display()
            ))
        })?;
        let key = text.trim();
        if key.is_empty() {
            return Err(ConfigError::WalletKey(format!(
                "chain.wallet_key_file {} is empty",
                path.display()
            )));
        }
        Ok(Some(SecretString::from(key.to_owned())))
    }
}

/// A serde message in words a user knows: `invalid type: string "x", expected i16`
/// becomes `expected an integer from -32768 to 32767, got "x"`, with no Rust type names
/// (for the config loader and the HTTP API). Other messages are returned as they are.
pub(crate) fn plain_serde_message(message: &str) -> String {
    let Some((head, expected)) = message.rsplit_once(", expected ") else {
        return message.to_owned();
    };
    let expected = plain_expected(expected);
    let got = head
        .strip_prefix("invalid type: ")
        .or_else(|| head.strip_prefix("invalid value: "));
    match got {
        Some(got) => format!("expected {expected}, got {}", plain_unexpected(got)),
        None => format!("{head}, expected {expected}"),
    }
}

/// What serde's visitors expect, in JSON/TOML words.
fn plain_expected(expected: &str) -> String {
    let words = match expected {
        "i8" => "an integer from -128 to 127",
        "i16" => "an integer from -32768 to 32767",
        "i32" => "an integer from -2147483648 to 2147483647",
        "i64" | "i128" | "isize" => "an integer",
        "u8" => "an integer from 0 to 255",
        "u16" => "an integer from 0 to 65535",
        "u32" => "an integer from 0 to 4294967295",
        "u64" | "u128" | "usize" => "an integer of at least 0",
        "f32" | "f64" => "a number",
        "a borrowed string" | "a string" | "string" => "a string",
        "a sequence" => "an array",
        "a map" => "an object",
        "a boolean" => "true or false",
        "a duration" => "a duration such as \"500ms\", \"3s\" or \"2m\"",
        other if other.starts_with("struct ") => "an object",
        other => other,
    };
    words.to_owned()
}

/// serde's description of the value it got (`integer `5``, `string "x"`, `map`), as the
/// value itself or its JSON/TOML kind; long strings are cut.
fn plain_unexpected(got: &str) -> String {
    for kind in ["integer ", "floating point ", "boolean ", "character "] {
        if let Some(value) = got.strip_prefix(kind) {
            return value.trim_matches('`').to_owned();
        }
    }
    if let Some(quoted) = got.strip_prefix("string ") {
        const MAX: usize = 80;
        if quoted.chars().count() > MAX {
            let cut: String = quoted.chars().take(MAX).collect();
            return format!("{cut}…\"");
        }
        return quoted.to_owned();
    }
    match got {
        "map" => "an object",
        "sequence" => "an array",
        "unit value" | "Option value" => "null",
        other => other,
    }
    .to_owned()
}

fn bad_value(origins: &Origins, key: String, message: String) -> ConfigError {
    let origin = origins
        .get(&key)
        .cloned()
        .unwrap_or_else(|| "the defaults".to_owned());
    ConfigError::BadValue {
        key,
        origin,
        message,
    }
}

fn hint_for(key: &str) -> &'static str {
    if key.contains("wallet_key") && key != "chain.wallet_key_file" {
        " (the wallet key is read only from RAREGEN_WALLET_KEY or the file named by chain.wallet_key_file)"
    } else {
        ""
    }
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

/// Merges `layer` into `merged`, refusing keys the defaults do not have.
fn overlay(
    defaults: &Table,
    merged: &mut Table,
    layer: &Table,
    prefix: &str,
    origin: &str,
    origins: &mut Origins,
) -> Result<(), ConfigError> {
    for (name, value) in layer {
        let key = if prefix.is_empty() {
            name.clone()
        } else {
            format!("{prefix}.{name}")
        };
        let unknown = || ConfigError::UnknownKey {
            hint: hint_for(&key),
            key: key.clone(),
            origin: origin.to_owned(),
        };
        let default = defaults.get(name).ok_or_else(unknown)?;
        match (default, value) {
            (Value::Table(d), Value::Table(v)) => {
                let target = merged
                    .get_mut(name)
                    .and_then(Value::as_table_mut)
                    .expect("merged mirrors the defaults");
                overlay(d, target, v, &key, origin, origins)?;
            }
            (Value::Table(_), _) => {
                return Err(ConfigError::BadValue {
                    key,
                    origin: origin.to_owned(),
                    message: "is a section: set the keys inside it".into(),
                })
            }
            (_, Value::Table(_)) => {
                return Err(ConfigError::BadValue {
                    key,
                    origin: origin.to_owned(),
                    message: "is a single value, not a section".into(),
                })
            }
            _ => {
                merged.insert(name.clone(), value.clone());
                origins.insert(key, origin.to_owned());
            }
        }
    }
    Ok(())
}

/// Sets one key from an environment variable, typed like its default.
fn set_from_env(
    defaults: &Table,
    merged: &mut Table,
    path: &[String],
    var: &str,
    raw: &str,
    origins: &mut Origins,
) -> Result<(), ConfigError> {
    let key = path.join(".");
    let unknown = || ConfigError::UnknownKey {
        hint: hint_for(&key),
        key: key.clone(),
        origin: format!("environment variable {var}"),
    };
    if path.iter().any(String::is_empty) {
        return Err(unknown());
    }
    let (last, sections) = path.split_last().ok_or_else(unknown)?;
    let mut default_table = defaults;
    let mut target = merged;
    for section in sections {
        default_table = default_table
            .get(section)
            .and_then(Value::as_table)
            .ok_or_else(unknown)?;
        target = target
            .get_mut(section)
            .and_then(Value::as_table_mut)
            .expect("merged mirrors the defaults");
    }
    let default = default_table.get(last).ok_or_else(unknown)?;
    let secret = SECRET_KEYS.contains(&key.as_str());
    let bad = |what: &str| ConfigError::BadValue {
        key: key.clone(),
        origin: format!("environment variable {var}"),
        message: if secret {
            format!("expected {what}")
        } else {
            format!("expected {what}, got {raw:?}")
        },
    };
    let value = match default {
        Value::String(_) => Value::String(raw.to_owned()),
        Value::Integer(_) => Value::Integer(raw.trim().parse().map_err(|_| bad("an integer"))?),
        Value::Float(_) => Value::Float(raw.trim().parse().map_err(|_| bad("a number"))?),
        Value::Boolean(_) => Value::Boolean(raw.trim().parse().map_err(|_| bad("true or false"))?),
        Value::Table(_) => {
            return Err(ConfigError::BadValue {
                key: key.clone(),
                origin: format!("environment variable {var}"),
                message: "is a section: set its keys as RAREGEN__SECTION__KEY".into(),
            })
        }
        Value::Array(_) | Value::Datetime(_) => Value::String(raw.to_owned()),
    };
    target.insert(last.clone(), value);
    origins.insert(key, format!("environment variable {var}"));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn file(text: &str) -> tempfile_lite::TempFile {
        tempfile_lite::TempFile::with(text)
    }

    /// A throwaway file, deleted on drop (std only, to keep dev-dependencies small).
    mod tempfile_lite {
        use super::*;
        pub struct TempFile(pub PathBuf);
        impl TempFile {
            pub fn with(text: &str) -> Self {
                let path = std::env::temp_dir().join(format!(
                    "raregen-config-test-{}-{}.toml",
                    std::process::id(),
                    rand::random::<u64>()
                ));
                std::fs::File::create(&path)
                    .and_then(|mut f| f.write_all(text.as_bytes()))
                    .unwrap();
                TempFile(path)
            }
        }
        impl Drop for TempFile {
            fn drop(&mut self) {
                let _ = std::fs::remove_file(&self.0);
            }
        }
    }

    #[test]
    fn defaults_match_the_interface_contract() {
        let s = Settings::load_from(None, env(&[])).unwrap();
        assert_eq!(s.mode, Mode::Batch);
        assert_eq!(
            s.database.url.expose_secret(),
            "postgres://postgres@127.0.0.1:5432/raregen"
        );
        assert_eq!(s.api.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(s.api.key(), None);
        assert_eq!(s.chain.network, Network::Regtest);
        assert_eq!(s.chain.address_type, AddressType::P2wpkh);
        assert_eq!(s.chain.fee_rate, 2.0);
        assert_eq!(s.chain.max_payload_bytes, 80);
        assert_eq!(s.node.kind, NodeKind::Bitcoind);
        assert_eq!(s.node.url, "http://127.0.0.1:18443");
        assert_eq!(s.node.timeout, Duration::from_secs(10));
        assert_eq!(s.collector.interval, Duration::from_secs(5));
        assert_eq!(s.collector.max_batch, 500);
        assert_eq!(s.rate_limit.max, 500);
        assert_eq!(s.rate_limit.per, Duration::from_secs(3));
        assert_eq!(s.broadcaster.workers, 64);
        assert_eq!(s.broadcaster.max_attempts, 5);
        assert_eq!(s.utxo_pool.min_available, 200);
        assert_eq!(s.utxo_pool.split_outputs, 500);
        assert_eq!(s.utxo_pool.split_amount, 2000);
        assert_eq!(s.utxo_pool.reservation_timeout, Duration::from_secs(300));
        assert_eq!(s.utxo_pool.max_chain_depth, 25);
        assert_eq!(s.janitor.interval, Duration::from_secs(10));
        assert_eq!(s.janitor.stuck_after, Duration::from_secs(120));
    }

    #[test]
    fn layers_apply_in_order_file_then_env_then_database_url() {
        let f = file("mode = \"single\"\n[rate_limit]\nmax = 100\nper = \"1s\"\n[database]\nurl = \"postgres://a@b/c\"\n");
        let s = Settings::load_from(
            Some(&f.0),
            env(&[
                ("RAREGEN__RATE_LIMIT__MAX", "200"),
                ("RAREGEN__CHAIN__FEE_RATE", "3"),
                ("RAREGEN__API__API_KEY", "12345"),
            ]),
        )
        .unwrap();
        assert_eq!(s.mode, Mode::Single);
        assert_eq!(s.rate_limit.max, 200);
        assert_eq!(s.rate_limit.per, Duration::from_secs(1));
        assert_eq!(s.chain.fee_rate, 3.0);
        assert_eq!(s.api.key(), Some("12345"));
        assert_eq!(s.database.url.expose_secret(), "postgres://a@b/c");

        let s =
            Settings::load_from(Some(&f.0), env(&[("DATABASE_URL", "postgres://x@y/z")])).unwrap();
        assert_eq!(s.database.url.expose_secret(), "postgres://x@y/z");
    }

    #[test]
    fn unknown_keys_are_named() {
        let f = file("[collector]\nintervall = \"5s\"\n");
        let err = Settings::load_from(Some(&f.0), env(&[]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("`collector.intervall`"), "{err}");
        assert!(err.contains(&f.0.display().to_string()), "{err}");

        let err = Settings::load_from(None, env(&[("RAREGEN__RATE_LIMIT__MAXX", "1")]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("`rate_limit.maxx`") && err.contains("RAREGEN__RATE_LIMIT__MAXX"),
            "{err}"
        );

        let err = Settings::load_from(None, env(&[("RAREGEN__NOPE__X", "1")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("`nope.x`"), "{err}");
    }

    #[test]
    fn an_inline_wallet_key_is_refused_with_a_hint() {
        let f = file(
            "[chain]\nwallet_key = \"cVt4o7BGAig1UXywgGSmARhxMdzP5qvQsxKkSsc1XEkw3tDTQFpy\"\n",
        );
        let err = Settings::load_from(Some(&f.0), env(&[]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("`chain.wallet_key`") && err.contains("RAREGEN_WALLET_KEY"),
            "{err}"
        );
        assert!(
            !err.contains("cVt4o7"),
            "the key leaked into the error: {err}"
        );
    }

    #[test]
    fn bad_values_are_named() {
        let cases: &[(&str, &str, &str)] = &[
            ("RAREGEN__RATE_LIMIT__MAX", "lots", "rate_limit.max"),
            ("RAREGEN__RATE_LIMIT__MAX", "0", "rate_limit.max"),
            ("RAREGEN__RATE_LIMIT__MAX", "-5", "rate_limit.max"),
            (
                "RAREGEN__COLLECTOR__INTERVAL",
                "5 parsecs",
                "collector.interval",
            ),
            ("RAREGEN__MODE", "turbo", "mode"),
            ("RAREGEN__CHAIN__NETWORK", "mainnet", "chain.network"),
            ("RAREGEN__CHAIN__FEE_RATE", "0.5", "chain.fee_rate"),
            ("RAREGEN__API__LISTEN", "localhost", "api.listen"),
            ("RAREGEN__NODE__KIND", "electrum", "node.kind"),
            (
                "RAREGEN__COLLECTOR__MAX_BATCH",
                "20000",
                "collector.max_batch",
            ),
            ("DATABASE_URL", "mysql://x", "database.url"),
        ];
        for (var, value, key) in cases {
            let err = Settings::load_from(None, env(&[(var, value)]))
                .unwrap_err()
                .to_string();
            assert!(err.contains(&format!("`{key}`")), "{var}={value}: {err}");
        }
        let f = file("[rate_limit]\nper = 3\n");
        let err = Settings::load_from(Some(&f.0), env(&[]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("`rate_limit.per`") && err.contains(&f.0.display().to_string()),
            "{err}"
        );
    }

    #[test]
    fn secrets_are_not_echoed_in_errors_or_debug() {
        let f = file("[node]\npassword = 987654321\n");
        let err = Settings::load_from(Some(&f.0), env(&[]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("`node.password`") && !err.contains("987654321"),
            "{err}"
        );

        let s = Settings::load_from(
            None,
            env(&[
                ("RAREGEN__API__API_KEY", "topsecretkey"),
                ("RAREGEN__NODE__PASSWORD", "nodepass123"),
                ("DATABASE_URL", "postgres://u:dbpass999@h/db"),
            ]),
        )
        .unwrap();
        let dump = format!("{s:?}");
        for secret in ["topsecretkey", "nodepass123", "dbpass999"] {
            assert!(!dump.contains(secret), "{secret} in {dump}");
        }
        assert_eq!(s.database.redacted_url(), "postgres://u:***@h/db");
    }

    #[test]
    fn redact_url_handles_urls_without_passwords() {
        assert_eq!(
            redact_url("postgres://postgres@127.0.0.1:5432/raregen"),
            "postgres://postgres@127.0.0.1:5432/raregen"
        );
        assert_eq!(
            redact_url("postgres://u:p@h:1/d?x=y"),
            "postgres://u:***@h:1/d?x=y"
        );
        assert_eq!(redact_url("postgres://h/d"), "postgres://h/d");
    }
}
