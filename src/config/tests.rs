use std::time::Duration;

use secrecy::ExposeSecret;

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

    let s = Settings::load_from(Some(&f.0), env(&[("DATABASE_URL", "postgres://x@y/z")])).unwrap();
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
    let f =
        file("[chain]\nwallet_key = \"cVt4o7BGAig1UXywgGSmARhxMdzP5qvQsxKkSsc1XEkw3tDTQFpy\"\n");
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
