//! Whether SegWit is active on the node (`getblockchaininfo`), and what an operator
//! should do when it is not: bcoin's regtest activates it only at height 432.

use raregen_actors::NodeError;
use serde_json::json;

use super::BitcoindClient;

/// Whether SegWit is active on the node, from `getblockchaininfo`, with the height.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegwitState {
    pub active: bool,
    /// The deployment's status as the node words it (`defined`, `started`, …).
    pub status: String,
    pub height: u64,
}

/// Height from which SegWit is active on a regtest chain whose deployment goes through
/// BIP9 (bcoin): three windows of 144 blocks (defined, started, locked in).
pub const REGTEST_SEGWIT_HEIGHT: u64 = 432;

impl BitcoindClient {
    /// SegWit's deployment state, where the node reports one: bcoin and old Cores in
    /// `bip9_softforks.segwit.status`, Core 0.19–22 in `softforks.segwit.active`.
    /// `None` when the node says nothing about it (Core 23 on: always active there).
    pub async fn segwit(&self) -> Result<Option<SegwitState>, NodeError> {
        let info = self.call("getblockchaininfo", json!([])).await?;
        let height = info["blocks"].as_u64().unwrap_or(0);
        if let Some(status) = info["bip9_softforks"]["segwit"]["status"].as_str() {
            return Ok(Some(SegwitState {
                active: status == "active",
                status: status.to_owned(),
                height,
            }));
        }
        if let Some(active) = info["softforks"]["segwit"]["active"].as_bool() {
            return Ok(Some(SegwitState {
                active,
                status: if active { "active" } else { "inactive" }.to_owned(),
                height,
            }));
        }
        Ok(None)
    }
}

impl SegwitState {
    /// One line for an operator: what is wrong and what to do.
    pub fn advice(&self) -> String {
        let more = REGTEST_SEGWIT_HEIGHT.saturating_sub(self.height);
        format!(
            "SegWit is not active on the node yet (deployment {} at height {}), so it refuses \
             every P2WPKH spend (no-witness-yet) and nothing can be published: on regtest it \
             activates at height {REGTEST_SEGWIT_HEIGHT}, so mine at least {more} more block(s) \
             (`raregen wallet mine --blocks {more}`), or use chain.address_type = \"p2pkh\"",
            self.status, self.height
        )
    }
}
