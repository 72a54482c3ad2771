//! `raregen wallet …`: the pool's address, importing funds, splitting, the balance.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use raregen_actors::{BroadcastOutcome, Node, OutpointState, SignError, TxPresence};
use sqlx::PgPool;

use crate::chain::{node, TxBuilder, WalletKey};
use crate::config::Settings;
use crate::shared_limit::SharedLimit;
use crate::store::utxos::{self, NewUtxo};
use crate::store::{self, PoolSummary};

/// Confirmations a coinbase output needs before it may be spent.
pub const COINBASE_MATURITY: u32 = 100;
/// How long to wait for a node that answered "ok" to show the transaction (bcoin
/// verifies after it answers; a busy one takes seconds to get there).
const PRESENCE_WAIT: Duration = Duration::from_secs(30);

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

    /// Asks the node about each outpoint and adds the spendable ones to the pool, all
    /// or nothing. Returns (imported, already in the pool, sats imported).
    pub async fn import(&self, outpoints: &[String]) -> anyhow::Result<(usize, usize, u64)> {
        if outpoints.is_empty() {
            bail!("name at least one outpoint as TXID:VOUT");
        }
        let mut refusals = Vec::new();
        let mut found = Vec::new();
        for text in outpoints {
            let (txid, vout) = match parse_outpoint(text) {
                Ok(o) => o,
                Err(e) => {
                    refusals.push(e);
                    continue;
                }
            };
            let state = self
                .node
                .outpoint(&txid, vout)
                .await
                .with_context(|| format!("asking the node about {txid}:{vout}"))?;
            match state {
                OutpointState::Gone { spent_by: Some(by) } => {
                    refusals.push(format!("{txid}:{vout} is already spent (by {by})"))
                }
                OutpointState::Gone { spent_by: None } => {
                    refusals.push(format!("{txid}:{vout} is spent or unknown to the node"))
                }
                OutpointState::Unspent { script_pubkey, .. }
                    if script_pubkey != self.script().as_bytes() =>
                {
                    refusals.push(format!(
                        "{txid}:{vout} does not pay this wallet ({}); it is not ours to spend",
                        self.builder.wallet().address()
                    ))
                }
                OutpointState::Unspent {
                    coinbase: true,
                    confirmations,
                    ..
                } if confirmations < COINBASE_MATURITY => refusals.push(format!(
                    "{txid}:{vout} is an immature coinbase output ({confirmations} confirmations; \
                     spendable after {COINBASE_MATURITY})"
                )),
                OutpointState::Unspent {
                    value,
                    script_pubkey,
                    confirmations,
                    coinbase,
                } => found.push(NewUtxo {
                    txid,
                    vout,
                    satoshis: value,
                    script_pubkey,
                    unconfirmed_depth: u32::from(confirmations == 0),
                    coinbase,
                }),
            }
        }
        if !refusals.is_empty() {
            bail!("nothing imported: {}", refusals.join("; "));
        }
        let new = utxos::insert_utxos(&self.pool, &found).await?;
        let imported = new.iter().filter(|n| **n).count();
        let sats = found
            .iter()
            .zip(&new)
            .filter(|(_, n)| **n)
            .map(|(u, _)| u.satoshis)
            .sum();
        Ok((imported, found.len() - imported, sats))
    }

    /// Splits the largest available UTXO into `outputs` outputs of `amount` sats
    /// (write-ahead: stored before it is broadcast). Splits left unfinished by an
    /// earlier run are re-broadcast from their stored bytes first.
    pub async fn split(&self, outputs: u32, amount: u64) -> anyhow::Result<SplitDone> {
        let share = match self.shared_limit {
            true => Some(SharedLimit::join(&self.settings, self.pool.clone()).await?),
            false => None,
        };
        let done = self.split_under(share.as_ref(), outputs, amount).await;
        if let Some(share) = share {
            share.leave().await;
        }
        done
    }

    async fn split_under(
        &self,
        share: Option<&SharedLimit>,
        outputs: u32,
        amount: u64,
    ) -> anyhow::Result<SplitDone> {
        for unfinished in utxos::unfinished_splits(&self.pool).await? {
            tracing::info!(txid = %unfinished.txid, "re-broadcasting an unfinished split");
            self.publish_split(share, &unfinished).await?;
        }
        let mut tx = self.pool.begin().await?;
        let input = utxos::lock_largest_available(&mut tx, self.settings.utxo_pool.max_chain_depth)
            .await?
            .context("no available UTXO in the pool: fund `raregen wallet address` and run `raregen wallet import`")?;
        let signed = self
            .builder
            .build_split(&input, outputs, amount)
            .map_err(|e| match e {
                SignError::InsufficientFunds { have, need } => anyhow::anyhow!(
                    "the largest available UTXO ({}:{}, {have} sats) cannot pay {outputs} × {amount} sats \
                     plus the fee ({need} sats in all)",
                    input.txid,
                    input.vout
                ),
                other => anyhow::anyhow!(other),
            })?;
        let id = utxos::store_split(
            &mut tx,
            &input,
            &signed,
            outputs,
            amount,
            self.script().as_bytes(),
        )
        .await?;
        tx.commit().await?;
        let split = raregen_actors::StoredSplit {
            id,
            txid: signed.txid.clone(),
            raw_tx: signed.raw_tx,
            input_utxo_id: input.id,
        };
        self.publish_split(share, &split).await?;
        Ok(SplitDone {
            txid: signed.txid,
            outputs,
            amount,
            fee: signed.fee,
            change: signed.change.map(|c| c.1),
            depth: input.unconfirmed_depth + 1,
        })
    }

    /// Broadcasts a stored split and records what became of it.
    async fn publish_split(
        &self,
        share: Option<&SharedLimit>,
        split: &raregen_actors::StoredSplit,
    ) -> anyhow::Result<()> {
        let outcome = match share {
            Some(share) => share.broadcast(self.node.as_ref(), &split.raw_tx).await?,
            None => self.node.broadcast(&split.raw_tx).await,
        };
        match outcome {
            BroadcastOutcome::Accepted => {}
            BroadcastOutcome::Rejected {
                reason,
                input_problem,
            } => {
                utxos::split_rejected(&self.pool, split, &reason, input_problem).await?;
                bail!("the node refused split {}: {reason}", split.txid);
            }
            BroadcastOutcome::Unknown { reason } => {
                utxos::split_unknown(&self.pool, split, &reason).await?;
                bail!(
                    "the outcome of split {} is unknown ({reason}); it is stored and will be \
                     re-broadcast by the next `raregen wallet split` or by the daemon",
                    split.txid
                );
            }
            BroadcastOutcome::RateLimited { retry_after } => {
                bail!(
                    "the node is rate-limiting (retry after {}); split {} is stored, run again to re-broadcast it",
                    retry_after.map_or("a while".into(), |d| humantime::format_duration(d).to_string()),
                    split.txid
                );
            }
        }
        // Some nodes (bcoin, explorers) answer "ok" and verify afterwards: look.
        let started = Instant::now();
        loop {
            match self.node.tx_presence(&split.txid).await {
                Ok(TxPresence::InMempool | TxPresence::Confirmed { .. }) => {
                    utxos::split_accepted(&self.pool, split).await?;
                    return Ok(());
                }
                Ok(TxPresence::Unknown) if started.elapsed() < PRESENCE_WAIT => {}
                Ok(TxPresence::Unknown) => break,
                Err(e) => {
                    utxos::split_unknown(&self.pool, split, &e.to_string()).await?;
                    bail!("cannot check split {} on the node: {e}", split.txid);
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // Accepted, then dropped. If our input is still unspent, the split is dead.
        let input: (String, i32) = sqlx::query_as("SELECT txid, vout FROM utxos WHERE id = $1")
            .bind(split.input_utxo_id)
            .fetch_one(&self.pool)
            .await?;
        match self.node.outpoint(&input.0, input.1 as u32).await? {
            OutpointState::Unspent { .. } => {
                let reason =
                    "the node accepted the transaction, then dropped it (see the node's log)";
                utxos::split_rejected(&self.pool, split, reason, false).await?;
                bail!("split {}: {reason}", split.txid);
            }
            OutpointState::Gone { .. } => {
                let reason = "the node dropped the transaction and its input is spent elsewhere";
                utxos::split_unknown(&self.pool, split, reason).await?;
                bail!("split {}: {reason}", split.txid);
            }
        }
    }
}

/// What a split made.
#[derive(Debug, Clone)]
pub struct SplitDone {
    pub txid: String,
    pub outputs: u32,
    pub amount: u64,
    pub fee: u64,
    pub change: Option<u64>,
    pub depth: u32,
}

/// What `raregen wallet mine` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mined {
    pub blocks: u32,
    pub height: u64,
    pub imported: usize,
    pub sats: u64,
    /// What to do when the pool's P2WPKH coins cannot be spent yet (SegWit not active
    /// on the node: bcoin's regtest below height 432).
    pub segwit_advice: Option<String>,
}

impl Wallet {
    /// Regtest only: mines `blocks` blocks paying the pool's address and imports the
    /// coinbases of those now mature (at most `import_max`, the newest first).
    pub async fn mine(&self, blocks: u32, import_max: usize) -> anyhow::Result<Mined> {
        use crate::config::{Network, NodeKind};
        use serde_json::json;
        if self.settings.chain.network != Network::Regtest {
            bail!("wallet mine works on regtest only (chain.network is not regtest)");
        }
        if self.settings.node.kind != NodeKind::Bitcoind {
            bail!("wallet mine needs a JSON-RPC node (node.kind = \"bitcoind\")");
        }
        if blocks == 0 {
            bail!("--blocks must be at least 1");
        }
        let rpc = crate::chain::node::BitcoindClient::new(&self.settings.node)?;
        let core = self.builder.wallet().address().to_string();
        // Bitcoin Core reads its own regtest addresses; bcoin its own (other prefixes).
        let hashes = match rpc.call("generatetoaddress", json!([blocks, core])).await {
            Ok(h) => h,
            Err(first) => {
                let bcoin = crate::chain::key::bcoin_regtest_address(self.script())
                    .context("the pool's script has no regtest address")?;
                rpc.call("generatetoaddress", json!([blocks, bcoin]))
                    .await
                    .map_err(|e| anyhow::anyhow!("generatetoaddress failed: {e:?} (and with Core's address format: {first:?})"))?
            }
        };
        let hashes: Vec<String> =
            serde_json::from_value(hashes).context("generatetoaddress answered no block hashes")?;
        let height = rpc
            .block_count()
            .await
            .map_err(|e| anyhow::anyhow!("getblockcount: {e}"))?;
        let mut outpoints = Vec::new();
        for hash in hashes.iter().rev() {
            if outpoints.len() >= import_max {
                break;
            }
            let block = rpc
                .call("getblock", json!([hash, true]))
                .await
                .map_err(|e| anyhow::anyhow!("getblock {hash}: {e:?}"))?;
            let confirmations = block["confirmations"].as_u64().unwrap_or(0);
            if confirmations <= u64::from(COINBASE_MATURITY) {
                continue;
            }
            let coinbase = block["tx"][0]
                .as_str()
                .or_else(|| block["tx"][0]["txid"].as_str())
                .context("getblock answered no coinbase")?;
            outpoints.push(format!("{coinbase}:0"));
        }
        let (imported, sats) = if outpoints.is_empty() {
            (0, 0)
        } else {
            let (imported, _, sats) = self.import(&outpoints).await?;
            (imported, sats)
        };
        let segwit_advice = match self.settings.chain.address_type {
            crate::config::AddressType::P2wpkh => match rpc.segwit().await {
                Ok(Some(state)) if !state.active => Some(state.advice()),
                _ => None,
            },
            crate::config::AddressType::P2pkh => None,
        };
        Ok(Mined {
            blocks,
            height,
            imported,
            sats,
            segwit_advice,
        })
    }
}

/// `TXID:VOUT` → (lowercase txid, vout).
pub fn parse_outpoint(text: &str) -> Result<(String, u32), String> {
    let bad = || {
        format!("{text:?} is not an outpoint: write TXID:VOUT (64 hex digits, a colon, an output index)")
    };
    let (txid, vout) = text.trim().split_once(':').ok_or_else(bad)?;
    if txid.len() != 64 || !txid.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(bad());
    }
    let vout: u32 = vout.parse().map_err(|_| bad())?;
    Ok((txid.to_ascii_lowercase(), vout))
}

/// `raregen wallet address`: the address alone, no database or node needed.
pub fn address(settings: &Settings) -> anyhow::Result<String> {
    Ok(WalletKey::from_settings(settings)?.address().to_string())
}

/// `raregen wallet balance`.
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

pub async fn balance(settings: &Settings, json: bool) -> anyhow::Result<()> {
    let pool = store::connect(&settings.database).await?;
    // Without a key the balance is shown as it is; with one, only if the coins are its.
    match WalletKey::from_settings(settings) {
        Ok(key) => ensure_pool_is_ours(&pool, &key).await?,
        Err(crate::chain::WalletError::Missing) => {}
        Err(e) => return Err(e.into()),
    }
    let summary = PoolSummary::load_with_history(&pool).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        print!("{}", crate::cmd::status::render_pool(&summary));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outpoints_parse_strictly() {
        let txid = "AB".repeat(32);
        assert_eq!(
            parse_outpoint(&format!("{txid}:7")),
            Ok(("ab".repeat(32), 7))
        );
        for bad in [
            "xyz".to_owned(),
            txid.clone(),
            format!("{txid}:"),
            format!("{txid}:-1"),
            format!("{txid}:x"),
            format!("{}:0", "ab".repeat(31)),
            format!("{}:0", "zz".repeat(32)),
        ] {
            assert!(parse_outpoint(&bad).is_err(), "{bad}");
        }
    }
}
