//! `raregen wallet …`: the pool's address, importing funds, splitting, mining (regtest
//! only), the balance.
//!
//! This file holds [`run`] (which subcommand, and what it prints), [`Wallet`] (what the
//! subcommands that reach the database and the node share), the check that the pool's
//! coins are the key's, and `address` (a line). One file per other subcommand beside
//! it: `import.rs`, `split.rs`, `mine.rs`, `balance.rs`.

mod balance;
mod import;
mod mine;
mod split;

use std::sync::Arc;

use anyhow::bail;
use raregen_actors::Node;
use sqlx::PgPool;

pub use balance::balance;
pub use import::parse_outpoint;
pub use mine::Mined;
pub use split::SplitDone;

use crate::chain::{node, TxBuilder, WalletKey};
use crate::cli::WalletCommand;
use crate::config::Settings;
use crate::store::{self, utxos};

/// Confirmations a coinbase output needs before it may be spent.
pub const COINBASE_MATURITY: u32 = 100;

/// What the wallet commands need.
pub struct Wallet {
    pub settings: Settings,
    pub pool: PgPool,
    pub builder: TxBuilder,
    pub node: Arc<dyn Node>,
    /// Broadcast under the rate limit shared with the daemons on the database (the
    /// CLI); `false` broadcasts at once (tests setting up a wallet outside actix).
    pub shared_limit: bool,
}

impl Wallet {
    pub async fn open(settings: Settings) -> anyhow::Result<Wallet> {
        let key = WalletKey::from_settings(&settings)?;
        let builder = TxBuilder::new(
            key,
            settings.chain.fee_rate,
            settings.chain.max_payload_bytes,
        );
        let node = node::from_settings(&settings.node)?;
        let pool = store::connect_or_create(&settings.database).await?;
        store::migrate(&pool).await?;
        ensure_pool_is_ours(&pool, builder.wallet()).await?;
        Ok(Wallet {
            settings,
            pool,
            builder,
            node,
            shared_limit: true,
        })
    }

    fn script(&self) -> &bitcoin::ScriptBuf {
        self.builder.wallet().script_pubkey()
    }
}

/// Runs one `raregen wallet` subcommand and prints what it did.
pub async fn run(settings: Settings, command: WalletCommand) -> anyhow::Result<()> {
    match command {
        WalletCommand::Address => {
            println!("{}", address(&settings)?);
        }
        WalletCommand::New => {
            let (wallet, wif) =
                WalletKey::generate(settings.chain.network, settings.chain.address_type);
            eprintln!("a new key for {}; keep it secret", wallet.address());
            println!("{}", secrecy::ExposeSecret::expose_secret(&wif));
        }
        WalletCommand::Balance { json } => balance(&settings, json).await?,
        WalletCommand::Import { outpoints } => {
            let w = Wallet::open(settings).await?;
            let (imported, known, sats) = w.import(&outpoints).await?;
            println!("imported {imported} UTXO(s), {sats} sats; {known} already in the pool");
        }
        WalletCommand::Mine { blocks, import_max } => {
            let w = Wallet::open(settings).await?;
            let done = w.mine(blocks, import_max).await?;
            println!(
                "mined {} block(s), height {}; imported {} matured coinbase(s), {} sats",
                done.blocks, done.height, done.imported, done.sats
            );
            if let Some(advice) = done.segwit_advice {
                println!("warning: {advice}");
            }
        }
        WalletCommand::Split { outputs, amount } => {
            let w = Wallet::open(settings).await?;
            let done = w.split(outputs, amount).await?;
            println!(
                "split {}: {} outputs of {} sats, change {}, fee {} sats; unconfirmed depth {}",
                done.txid,
                done.outputs,
                done.amount,
                done.change.map_or("none".into(), |c| format!("{c} sats")),
                done.fee,
                done.depth
            );
        }
    }
    Ok(())
}

/// `raregen wallet address`: the address alone, no database or node needed.
pub fn address(settings: &Settings) -> anyhow::Result<String> {
    Ok(WalletKey::from_settings(settings)?.address().to_string())
}

/// Refuses a pool whose coins pay to another script than the key's: with the wrong key
/// every transaction would be signed for coins it cannot spend, and a node that answers
/// before it verifies (bcoin, some explorers) would say "accepted" to each of them.
pub async fn ensure_pool_is_ours(pool: &PgPool, key: &WalletKey) -> anyhow::Result<()> {
    let foreign = utxos::foreign_utxos(pool, key.script_pubkey().as_bytes()).await?;
    if foreign.coins == 0 {
        return Ok(());
    }
    let mut payees: Vec<String> = foreign
        .top
        .iter()
        .map(|(script, n)| {
            let script = bitcoin::Script::from_bytes(script);
            let to = bitcoin::Address::from_script(script, key.network())
                .map(|a| a.to_string())
                .unwrap_or_else(|_| format!("script {}", hex::encode(script.as_bytes())));
            format!("{n} to {to}")
        })
        .collect();
    let shown = foreign.top.len() as i64;
    if foreign.scripts > shown {
        let rest: i64 = foreign.coins - foreign.top.iter().map(|(_, n)| n).sum::<i64>();
        payees.push(format!(
            "{rest} to {} other address(es)",
            foreign.scripts - shown
        ));
    }
    let (count, sats) = (foreign.coins, foreign.sats);
    bail!(
        "the UTXO pool holds {count} coin(s) ({sats} sats) that pay to another address than \
         this wallet key's ({}): {}. The wallet key (RAREGEN_WALLET_KEY or \
         chain.wallet_key_file) is not the one these coins were funded with: use that key, \
         or point database.url at another database",
        key.address(),
        payees.join(", ")
    )
}
