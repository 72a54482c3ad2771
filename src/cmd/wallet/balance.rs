//! `raregen wallet balance`: the pool's summary, from the database alone.

use super::ensure_pool_is_ours;
use crate::chain::WalletKey;
use crate::config::Settings;
use crate::store::{self, PoolSummary};

/// `raregen wallet balance`.
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
