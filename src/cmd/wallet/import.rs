//! `raregen wallet import TXID:VOUT …`: asks the node about each outpoint and adds the
//! spendable ones that pay the pool's address to the pool.

use anyhow::{bail, Context};
use raregen_actors::OutpointState;

use super::{Wallet, COINBASE_MATURITY};
use crate::store::utxos::{self, NewUtxo};

impl Wallet {
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
