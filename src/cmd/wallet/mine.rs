//! `raregen wallet mine --blocks N` (regtest only): mines blocks paying the pool's
//! address and imports the matured coinbases.

use anyhow::{bail, Context};

use super::{Wallet, COINBASE_MATURITY};

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
