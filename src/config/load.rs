//! The layers: the compiled-in defaults, the file, `RAREGEN__SECTION__KEY` variables and
//! `DATABASE_URL`, each checked against the defaults' keys; and the wallet key.

use std::path::{Path, PathBuf};

use secrecy::SecretString;
use toml::{Table, Value};

use super::*;

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

pub(super) fn bad_value(origins: &Origins, key: String, message: String) -> ConfigError {
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
