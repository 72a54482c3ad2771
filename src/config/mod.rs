//! Layered configuration: the compiled-in `config/default.toml`, then the file named by
//! `--config` / `RAREGEN_CONFIG`, then `RAREGEN__<SECTION>__<KEY>` environment variables,
//! then `DATABASE_URL`. Every layer is checked against the defaults' keys, so a typo stops
//! start-up with the key's name instead of being ignored.
//!
//! [`types`] holds the settings' types, [`load`] the layering (with provenance, for error
//! messages) and the wallet key, [`validate`] the range checks.

use std::collections::BTreeMap;
use std::path::PathBuf;

mod load;
mod types;
mod validate;

#[cfg(test)]
mod tests;

pub(crate) use load::plain_serde_message;
pub use types::*;

/// The defaults, compiled in so the binary runs from any directory.
pub const DEFAULT_TOML: &str = include_str!("../../config/default.toml");

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

/// Where each key's value came from, for error messages.
type Origins = BTreeMap<String, String>;
