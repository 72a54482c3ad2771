//! The range checks: every value a key may not take is refused by name, with the layer
//! it came from.

use std::time::Duration;

use secrecy::ExposeSecret;

use super::load::bad_value;
use super::*;

impl Settings {
    pub(super) fn validate(&self, origins: &Origins) -> Result<(), ConfigError> {
        let check = |ok: bool, key: &str, message: &str| {
            if ok {
                Ok(())
            } else {
                Err(bad_value(origins, key.to_owned(), message.to_owned()))
            }
        };
        let url = self.database.url.expose_secret();
        check(
            url.starts_with("postgres://") || url.starts_with("postgresql://"),
            "database.url",
            "must be a postgres:// URL",
        )?;
        check(
            self.database.max_connections >= 2,
            "database.max_connections",
            "must be at least 2",
        )?;
        check(
            self.chain.fee_rate.is_finite() && self.chain.fee_rate >= 1.0,
            "chain.fee_rate",
            "must be a number of sat/vB, at least 1.0 (the minimum relay fee)",
        )?;
        check(
            (1..=100_000).contains(&self.chain.max_payload_bytes),
            "chain.max_payload_bytes",
            "must be between 1 and 100000",
        )?;
        check(
            self.node.url.starts_with("http://") || self.node.url.starts_with("https://"),
            "node.url",
            "must be an http:// or https:// URL",
        )?;
        check(
            !self.node.timeout.is_zero(),
            "node.timeout",
            "must be longer than 0s",
        )?;
        check(
            !self.collector.interval.is_zero(),
            "collector.interval",
            "must be longer than 0s",
        )?;
        check(
            (1..=10_000).contains(&self.collector.max_batch),
            "collector.max_batch",
            "must be between 1 and 10000",
        )?;
        check(
            self.rate_limit.max >= 1,
            "rate_limit.max",
            "must be at least 1",
        )?;
        check(
            !self.rate_limit.per.is_zero(),
            "rate_limit.per",
            "must be longer than 0s",
        )?;
        check(
            (1..=4096).contains(&self.broadcaster.workers),
            "broadcaster.workers",
            "must be between 1 and 4096",
        )?;
        check(
            self.broadcaster.max_attempts >= 1,
            "broadcaster.max_attempts",
            "must be at least 1",
        )?;
        check(
            (2..=2_000).contains(&self.utxo_pool.split_outputs),
            "utxo_pool.split_outputs",
            "must be between 2 and 2000",
        )?;
        check(
            self.utxo_pool.split_amount >= 546,
            "utxo_pool.split_amount",
            "must be at least 546 sats (the dust limit)",
        )?;
        check(
            self.utxo_pool.max_chain_depth >= 1,
            "utxo_pool.max_chain_depth",
            "must be at least 1",
        )?;
        check(
            !self.janitor.interval.is_zero(),
            "janitor.interval",
            "must be longer than 0s",
        )?;
        check(
            self.janitor.settle_interval != Some(Duration::ZERO),
            "janitor.settle_interval",
            "must be longer than 0s",
        )?;
        check(
            self.janitor.confirm_interval != Some(Duration::ZERO),
            "janitor.confirm_interval",
            "must be longer than 0s",
        )?;
        check(
            !self.retention.interval.is_zero(),
            "retention.interval",
            "must be longer than 0s",
        )?;
        check(
            (1..=1_000_000).contains(&self.retention.batch),
            "retention.batch",
            "must be from 1 to 1000000",
        )?;
        check(
            !self.janitor.stuck_after.is_zero(),
            "janitor.stuck_after",
            "must be longer than 0s",
        )?;
        check(
            self.janitor.reanchor_confirmations >= 1,
            "janitor.reanchor_confirmations",
            "must be at least 1 (a spend in the mempool can still vanish)",
        )?;
        check(
            u64::from(self.janitor.reanchor_confirmations)
                <= crate::chain::node::SPENDER_SCAN_BLOCKS,
            "janitor.reanchor_confirmations",
            "must be at most 144 (the blocks raregen looks through for the spender of a coin)",
        )?;
        check(
            !self.metrics.refresh.is_zero(),
            "metrics.refresh",
            "must be longer than 0s",
        )?;
        tracing_subscriber::EnvFilter::try_new(&self.log.level).map_err(|e| {
            bad_value(
                origins,
                "log.level".into(),
                format!("not a log filter: {e}"),
            )
        })?;
        Ok(())
    }
}
