//! `raregen wallet …` as an operator runs it, against a real regtest node: the address,
//! every refusal of `wallet import`, `wallet split`, `wallet balance`.

use std::process::{Command, Output, Stdio};

use crate::support::regtest::RegtestNode;
use raregen::chain::WalletKey;
use raregen::config::{AddressType, Network};
use secrecy::ExposeSecret;
use serde_json::Value;
use sqlx::PgPool;

struct Cli {
    env: Vec<(String, String)>,
}

impl Cli {
    fn run(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_raregen"))
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    /// Runs a command that must fail; returns its one-line message.
    fn fails(&self, args: &[&str]) -> String {
        let out = self.run(args);
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(
            !out.status.success(),
            "{args:?} should fail; stdout: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        // The error is one line; log lines (a timestamp first: e.g. the shared rate
        // limit's, when a previous command's lease still counts) are not the error.
        let error: Vec<&str> = stderr
            .lines()
            .filter(|l| !l.trim().is_empty() && !l.starts_with("20"))
            .collect();
        assert_eq!(error.len(), 1, "one line: {stderr}");
        error[0].to_owned()
    }

    /// Runs `raregen serve` until its log shows `needle` (at most 60 s), then stops it;
    /// returns the log.
    fn serve_until(&self, needle: &str) -> String {
        use std::io::{BufRead, BufReader};
        let mut child = Command::new(env!("CARGO_BIN_EXE_raregen"))
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .arg("serve")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut log = String::new();
        let until = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while let Some(left) = until.checked_duration_since(std::time::Instant::now()) {
            match rx.recv_timeout(left) {
                Ok(line) => {
                    log.push_str(&line);
                    log.push('\n');
                    if line.contains(needle) {
                        break;
                    }
                }
                Err(_) => break,
            }
        }
        let _ = child.kill();
        let _ = child.wait();
        log
    }

    fn succeeds(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }
}

async fn utxo_count(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM utxos")
        .fetch_one(pool)
        .await
        .unwrap()
}

#[sqlx::test]
async fn wallet_import_refuses_what_it_cannot_spend(pool: PgPool) {
    let node = RegtestNode::start().await;
    let (wallet, wif) = WalletKey::generate(Network::Regtest, AddressType::P2wpkh);
    let (stranger, _) = WalletKey::generate(Network::Regtest, AddressType::P2wpkh);
    let mut env = node.env();
    env.push((
        "DATABASE_URL".into(),
        crate::support::database_url(&pool).await,
    ));
    env.push(("RAREGEN_WALLET_KEY".into(), wif.expose_secret().to_owned()));
    let cli = Cli { env };

    // The address: one line, nothing else, and the key never shows.
    let address = cli.succeeds(&["wallet", "address"]);
    assert_eq!(address, format!("{}\n", wallet.address()));

    // 101 blocks to us, then 1 to a stranger.
    let ours = node.mine_to(wallet.script_pubkey(), 101).await;
    let theirs = node.mine_to(stranger.script_pubkey(), 1).await;
    let mature = format!("{}:0", ours[0]);
    let immature = format!("{}:0", ours[100]);

    let cases: Vec<(Vec<String>, &str)> = vec![
        (vec![immature.clone()], "immature coinbase"),
        (vec![format!("{}:0", theirs[0])], "does not pay this wallet"),
        (vec![format!("{}:0", "ab".repeat(32))], "spent or unknown"),
        (vec![format!("{}:7", ours[0])], "spent or unknown"),
        (vec!["nothing:here".into()], "is not an outpoint"),
        (vec![ours[0].clone()], "is not an outpoint"),
        // All or nothing: a good outpoint beside a bad one is not imported either.
        (vec![mature.clone(), immature.clone()], "immature coinbase"),
    ];
    for (outpoints, expected) in &cases {
        let mut args = vec!["wallet", "import"];
        args.extend(outpoints.iter().map(String::as_str));
        let message = cli.fails(&args);
        assert!(message.contains(expected), "{outpoints:?}: {message}");
        assert!(message.contains("nothing imported"), "{message}");
        assert!(!message.contains(wif.expose_secret()));
        assert_eq!(
            utxo_count(&pool).await,
            0,
            "{outpoints:?} imported something"
        );
    }
    // No outpoint at all: clap's usage message.
    assert!(!cli.run(&["wallet", "import"]).status.success());

    // The good one alone.
    let out = cli.succeeds(&["wallet", "import", &mature]);
    assert!(out.contains("imported 1 UTXO(s), 5000000000 sats"), "{out}");
    let out = cli.succeeds(&["wallet", "import", &mature]);
    assert!(
        out.contains("imported 0") && out.contains("1 already in the pool"),
        "{out}"
    );

    // Before SegWit activates, bcoin answers "ok" to a P2WPKH spend and drops it
    // (no-witness-yet): the split says so, and the coinbase is back in the pool, clean.
    let message = cli.fails(&["wallet", "split", "--outputs", "10", "--amount", "5000"]);
    assert!(
        message.contains("accepted the transaction, then dropped it"),
        "{message}"
    );
    let (state, dirty): (String, bool) =
        sqlx::query_as("SELECT state, dirty FROM utxos WHERE txid = $1")
            .bind(&ours[0])
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!((state.as_str(), dirty), ("available", false));
    let failed: String = sqlx::query_scalar("SELECT status FROM pool_transactions")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(failed, "failed");
    node.mine_to(stranger.script_pubkey(), 450 - 102).await;

    // Split it; then the coinbase is spent, and importing it again is refused.
    let out = cli.succeeds(&["wallet", "split", "--outputs", "10", "--amount", "5000"]);
    assert!(
        out.contains("10 outputs of 5000 sats") && out.contains("depth 1"),
        "{out}"
    );
    node.mine_to(stranger.script_pubkey(), 1).await;
    let message = cli.fails(&["wallet", "import", &mature]);
    assert!(message.contains("spent or unknown"), "{message}");

    let balance: Value =
        serde_json::from_str(&cli.succeeds(&["wallet", "balance", "--json"])).unwrap();
    assert_eq!(balance["available"], 11, "10 outputs and the change");
    assert_eq!(balance["spent"], 1);
    let total: i64 =
        sqlx::query_scalar("SELECT sum(satoshis)::bigint FROM utxos WHERE state = 'available'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(balance["available_sats"], total);
    let table = cli.succeeds(&["wallet", "balance"]);
    assert!(
        table.contains("available") && table.contains(&total.to_string()),
        "{table}"
    );

    // Asking more of the pool than the largest UTXO holds.
    let message = cli.fails(&[
        "wallet",
        "split",
        "--outputs",
        "2000",
        "--amount",
        "10000000",
    ]);
    assert!(message.contains("cannot pay"), "{message}");
}

#[sqlx::test]
async fn wallet_commands_explain_missing_pieces(pool: PgPool) {
    let db = crate::support::database_url(&pool).await;
    let no_key = Cli {
        env: vec![("DATABASE_URL".into(), db.clone())],
    };
    let message = no_key.fails(&["wallet", "address"]);
    assert!(message.contains("RAREGEN_WALLET_KEY"), "{message}");

    // `wallet new` makes a key for the configured network; the address follows from it.
    let wif = no_key.succeeds(&["wallet", "new"]).trim().to_owned();
    let key = WalletKey::from_wif(
        &secrecy::SecretString::from(wif.clone()),
        Network::Regtest,
        AddressType::P2wpkh,
    )
    .expect("a regtest WIF");
    let with_key = Cli {
        env: vec![("RAREGEN_WALLET_KEY".into(), wif)],
    };
    assert_eq!(
        with_key.succeeds(&["wallet", "address"]).trim(),
        key.address().to_string()
    );

    let (_, mainnet_wif) = WalletKey::generate(Network::Bitcoin, AddressType::P2wpkh);
    let wrong_net = Cli {
        env: vec![
            ("DATABASE_URL".into(), db.clone()),
            (
                "RAREGEN_WALLET_KEY".into(),
                mainnet_wif.expose_secret().to_owned(),
            ),
        ],
    };
    let message = wrong_net.fails(&["wallet", "address"]);
    assert!(message.contains("chain.network"), "{message}");
    assert!(!message.contains(mainnet_wif.expose_secret()));

    let garbage = Cli {
        env: vec![("RAREGEN_WALLET_KEY".into(), "not-a-key-at-all".into())],
    };
    let message = garbage.fails(&["wallet", "address"]);
    assert!(
        message.contains("not a valid WIF") && !message.contains("not-a-key-at-all"),
        "{message}"
    );

    // A node that does not answer.
    let (_, wif) = WalletKey::generate(Network::Regtest, AddressType::P2pkh);
    let no_node = Cli {
        env: vec![
            ("DATABASE_URL".into(), db),
            ("RAREGEN_WALLET_KEY".into(), wif.expose_secret().to_owned()),
            ("RAREGEN__NODE__URL".into(), "http://127.0.0.1:1".into()),
            ("RAREGEN__NODE__PASSWORD".into(), "nodesecret".into()),
            ("RAREGEN__NODE__TIMEOUT".into(), "2s".into()),
        ],
    };
    let message = no_node.fails(&["wallet", "import", &format!("{}:0", "cd".repeat(32))]);
    assert!(
        message.contains("asking the node") && message.contains("unavailable"),
        "{message}"
    );
    assert!(!message.contains("nodesecret"));
    let message = no_node.fails(&["wallet", "split", "--outputs", "2", "--amount", "1000"]);
    assert!(message.contains("no available UTXO"), "{message}");
}

/// A new user's two silent traps, said at once: a wallet key that does not own the
/// pool's coins (every command that spends them refuses, naming the addresses), and a
/// chain where SegWit is not active yet (`wallet mine` and `serve` say so, with the fix).
#[sqlx::test]
async fn a_foreign_pool_or_an_inactive_segwit_is_said_at_once(pool: PgPool) {
    let node = RegtestNode::start().await;
    let db = crate::support::database_url(&pool).await;
    let (first, first_wif) = WalletKey::generate(Network::Regtest, AddressType::P2wpkh);
    let (second, second_wif) = WalletKey::generate(Network::Regtest, AddressType::P2wpkh);
    let with = |wif: &secrecy::SecretString| {
        let mut env = node.env();
        env.push(("DATABASE_URL".into(), db.clone()));
        env.push(("RAREGEN_WALLET_KEY".into(), wif.expose_secret().to_owned()));
        env.push(("RAREGEN__API__LISTEN".into(), "127.0.0.1:0".into()));
        Cli { env }
    };
    let owner = with(&first_wif);

    // 110 blocks: 10 coinbases mature, but bcoin's regtest activates SegWit at 432.
    let out = owner.succeeds(&["wallet", "mine", "--blocks", "110", "--import-max", "2"]);
    assert!(out.contains("imported 2 matured coinbase(s)"), "{out}");
    assert!(
        out.contains("SegWit is not active") && out.contains("432") && out.contains("p2pkh"),
        "wallet mine explains what stops the pool: {out}"
    );
    let log = owner.serve_until("raregen serving");
    assert!(
        log.contains("SegWit is not active") && log.contains("ERROR"),
        "serve says it in its log: {log}"
    );

    // Another key on the same pool: refused by every command that would sign.
    let stranger = with(&second_wif);
    for args in [
        &["wallet", "split", "--outputs", "2", "--amount", "1000"][..],
        &["wallet", "balance"],
        &["wallet", "mine", "--blocks", "1"],
        &["wallet", "import", &format!("{}:0", "ab".repeat(32))],
    ] {
        let message = stranger.fails(args);
        assert!(
            message.contains("2 coin(s)")
                && message.contains(&first.address().to_string())
                && message.contains(&second.address().to_string())
                && message.contains("RAREGEN_WALLET_KEY"),
            "{args:?}: {message}"
        );
        assert!(!message.contains(second_wif.expose_secret()));
    }
    let serve = stranger.run(&["serve"]);
    let log = String::from_utf8_lossy(&serve.stderr);
    assert!(!serve.status.success(), "serve refuses a foreign pool");
    assert!(
        log.contains("2 coin(s)") && log.contains(&first.address().to_string()),
        "{log}"
    );
    // The owner's commands still work.
    owner.succeeds(&["wallet", "balance"]);
}
