//! The rate limit for the commands that broadcast outside `serve` (`raregen unstick`,
//! `raregen wallet split`). They join the budget of the processes on the database as a
//! daemon does — a lease of their own (mode `cli`), counted by the others, the same
//! TokenBucket and Leaser — so that running one beside daemons never puts more than
//! `rate_limit.max` broadcasts in a window of `rate_limit.per` at the node's door.
//! Joining running daemons waits until they have seen the newcomer (about
//! `2 s + rate_limit.per`); alone, it starts at once.

use std::sync::Arc;

use actix::prelude::*;
use raregen_actors::leaser::{Leaser, LeaserConfig, Stop};
use raregen_actors::rate_limit::TokenBucket;
use raregen_actors::{BroadcastOutcome, LeaseStore, Node};
use sqlx::PgPool;

use crate::config::Settings;
use crate::identity;
use crate::store::PgStore;

/// How long a command waits for one slot before it gives up.
pub const SLOT_PATIENCE: std::time::Duration = std::time::Duration::from_secs(120);

/// A share of the node's budget, held until [`SharedLimit::leave`].
pub struct SharedLimit {
    tokens: Addr<TokenBucket>,
    store: Arc<PgStore>,
    leaser: Addr<Leaser>,
    /// The Leaser's own thread, stopped on leave.
    arbiter: Arbiter,
    settings_max: u32,
}

impl SharedLimit {
    /// Takes a lease and a share of the budget. Must run inside an actix System (the
    /// CLI's).
    pub async fn join(settings: &Settings, pool: PgPool) -> anyhow::Result<SharedLimit> {
        let store = Arc::new(PgStore::new(pool, identity::new_worker_id()).with_mode("cli"));
        let lease = crate::cmd::serve::lease(settings);
        // The lease first, so that the others count us from the first share refresh.
        store.heartbeat(lease).await?;
        let tokens = TokenBucket::shared(settings.rate_limit.max, settings.rate_limit.per)
            .with_broadcast_timeout(settings.node.timeout)
            .start_supervised();
        let arbiter = Arbiter::new();
        let leaser = {
            let config = LeaserConfig {
                lease,
                share_grace: settings.rate_limit.per + settings.node.timeout,
            };
            // Its own connections: they live on the Leaser's thread, which stops on
            // leave (a connection of the shared pool opened there would die with it).
            let (store, tokens) = (Arc::new(store.with_own_pool()), tokens.clone());
            Leaser::start_in_arbiter(&arbiter.handle(), move |_| {
                Leaser::new(config, store, tokens)
            })
        };
        Ok(SharedLimit {
            tokens,
            store,
            leaser,
            arbiter,
            settings_max: settings.rate_limit.max,
        })
    }

    /// The store holding this share's lease (its identity owns what it adopts).
    pub fn store(&self) -> &Arc<PgStore> {
        &self.store
    }

    /// One broadcast under the limit: waits for a slot (and again after a 429). An
    /// error when no slot comes within [`SLOT_PATIENCE`] (more processes share the
    /// limit than it has broadcasts per window, or the node keeps saying 429).
    pub async fn broadcast(
        &self,
        node: &dyn Node,
        raw_tx: &[u8],
    ) -> anyhow::Result<BroadcastOutcome> {
        raregen_actors::send::broadcast_within(
            &self.tokens,
            node,
            raw_tx,
            None,
            Some(SLOT_PATIENCE),
        )
        .await
        .map_err(|_| {
            anyhow::anyhow!(
                "no share of the rate limit within {}: rate_limit.max = {} is shared \
                 by every process on the database (see `raregen status`)",
                humantime::format_duration(SLOT_PATIENCE),
                self.settings_max
            )
        })
    }

    /// Ends the lease (the others stop counting us one `per` after our last broadcast).
    pub async fn leave(self) {
        let _ = self.leaser.send(Stop).await;
        if let Err(e) = self.store.stop_worker().await {
            tracing::warn!(error = %e, "could not end the lease");
        }
        self.arbiter.stop();
    }
}
