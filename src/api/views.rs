//! The operator's read endpoints: `/v1/batches`, `/v1/pool`, `/v1/rate`, `/v1/info`
//! (what the console shows, for any client).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::{get, web, HttpRequest, HttpResponse};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use utoipa::{IntoParams, ToSchema};

use super::body::{limit, parse_query};
use super::error::{error_responses, ApiError};
use super::AppState;
use crate::store::{self, BatchView, PoolSummary};

error_responses!(ReadErrors: Unauthorized, Internal, DatabaseUnavailable);
error_responses!(BatchErrors: Unauthorized, InvalidQuery, Internal, DatabaseUnavailable);
error_responses!(NotReadyErrors: NotReady);

/// How many batches `GET /v1/batches` shows at most.
pub const MAX_LIST_BATCHES: i64 = 100;

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct BatchQuery {
    /// How many (1 to 100; default 10).
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<i64>,
}

/// The last batches.
#[derive(Serialize, ToSchema)]
pub struct Batches {
    /// Newest first.
    pub batches: Vec<BatchView>,
}

/// The last batches claimed, newest first.
#[utoipa::path(
    tag = "operations",
    params(BatchQuery),
    responses((status = 200, description = "The batches.", body = Batches), BatchErrors),
    security(("bearer" = [])),
)]
#[get("/batches")]
pub async fn batches(
    state: web::Data<AppState>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let query: BatchQuery = parse_query(req.query_string(), "?limit=1..100")?;
    let limit = limit(query.limit, 10, MAX_LIST_BATCHES)?;
    let batches = store::recent_batches(state.store.pool(), limit).await?;
    Ok(HttpResponse::Ok().json(Batches { batches }))
}

/// The UTXO pool, and how many transactions it can fund now.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct PoolView {
    #[serde(flatten)]
    pub pool: PoolSummary,
    /// Transactions the pool can fund before the next confirmation: over the available
    /// clean coins, the links each lane can still add under `utxo_pool.max_chain_depth`
    /// (a coin `d` unconfirmed transactions deep funds `max_chain_depth − d` more).
    pub capacity: i64,
    pub max_chain_depth: u32,
}

/// The UTXO pool by state.
#[utoipa::path(
    tag = "operations",
    responses((status = 200, description = "The pool (exact counts of its live coins).", body = PoolView), ReadErrors),
    security(("bearer" = [])),
)]
#[get("/pool")]
pub async fn pool(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let db = state.store.pool();
    let max_chain_depth = state.max_chain_depth;
    Ok(HttpResponse::Ok().json(PoolView {
        pool: PoolSummary::load(db).await?,
        capacity: store::pool_capacity(db, max_chain_depth).await?,
        max_chain_depth,
    }))
}

/// What this daemon runs with (nothing secret).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Info {
    pub version: String,
    /// `batch` or `single`.
    #[schema(pattern = "^(batch|single)$")]
    pub mode: String,
    /// `chain.network`: `bitcoin`, `testnet`, `signet` or `regtest`.
    #[schema(pattern = "^(bitcoin|testnet|signet|regtest)$")]
    pub network: String,
    /// At most `rate_limit_max` broadcasts in any `rate_limit_per_seconds`, over every
    /// process on the database.
    pub rate_limit_max: u32,
    pub rate_limit_per_seconds: f64,
    pub max_payload_bytes: usize,
}

/// The daemon's version, mode, network and limits.
#[utoipa::path(
    tag = "operations",
    responses((status = 200, description = "The daemon's settings that clients may need.", body = Info), ReadErrors),
    security(("bearer" = [])),
)]
#[get("/info")]
pub async fn info(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok().json(&state.info)
}

/// One point of the rate chart.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct RatePoint {
    /// The end of the interval.
    pub at: DateTime<Utc>,
    /// Jobs that became `sent` per second over the interval, every process included.
    pub sent_per_second: f64,
    /// Jobs that became `failed` per second over the interval.
    pub failed_per_second: f64,
}

/// The recent rate of finished jobs against the rate limit.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Rate {
    /// `rate_limit.max / rate_limit.per`: broadcasts per second the limit allows.
    pub limit_per_second: f64,
    /// Seconds between points.
    pub interval_seconds: f64,
    /// Oldest first: the last 10 minutes this process has seen.
    pub points: Vec<RatePoint>,
}

/// Jobs sent and failed per second over the last minutes, against the limit.
#[utoipa::path(
    tag = "operations",
    responses((status = 200, description = "The rate history.", body = Rate), ReadErrors),
    security(("bearer" = [])),
)]
#[get("/rate")]
pub async fn rate(state: web::Data<AppState>) -> HttpResponse {
    let points = state.rate.points();
    HttpResponse::Ok().json(Rate {
        limit_per_second: f64::from(state.info.rate_limit_max) / state.info.rate_limit_per_seconds,
        interval_seconds: RATE_INTERVAL.as_secs_f64(),
        points,
    })
}

/// How often the rate is sampled, and how many points are kept (10 minutes).
pub const RATE_INTERVAL: Duration = Duration::from_secs(5);
const RATE_POINTS: usize = 120;

/// Totals of finished jobs sampled every [`RATE_INTERVAL`]; the points are their
/// differences.
#[derive(Default)]
pub struct RateHistory {
    samples: Mutex<VecDeque<(DateTime<Utc>, i64, i64)>>,
}

impl RateHistory {
    pub fn record(&self, at: DateTime<Utc>, sent: i64, failed: i64) {
        let mut samples = self.samples.lock().expect("not poisoned");
        samples.push_back((at, sent, failed));
        while samples.len() > RATE_POINTS + 1 {
            samples.pop_front();
        }
    }

    pub fn points(&self) -> Vec<RatePoint> {
        let samples = self.samples.lock().expect("not poisoned");
        samples
            .iter()
            .zip(samples.iter().skip(1))
            .filter_map(|(a, b)| {
                let seconds = (b.0 - a.0).num_milliseconds() as f64 / 1000.0;
                (seconds > 0.0).then(|| RatePoint {
                    at: b.0,
                    // A recount may move a total back: never a negative rate.
                    sent_per_second: ((b.1 - a.1).max(0)) as f64 / seconds,
                    failed_per_second: ((b.2 - a.2).max(0)) as f64 / seconds,
                })
            })
            .collect()
    }

    /// Samples the totals until the process stops (a failed read skips one point).
    pub async fn run(self: Arc<Self>, db: PgPool) {
        let mut tick = tokio::time::interval(RATE_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            match store::finished_totals(&db).await {
                Ok((sent, failed)) => self.record(Utc::now(), sent, failed),
                Err(e) => tracing::debug!(error = %e, "rate sample skipped"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn points_are_rates_between_samples_and_the_history_is_bounded() {
        let history = RateHistory::default();
        let t0 = Utc::now();
        history.record(t0, 100, 1);
        history.record(t0 + chrono::Duration::seconds(5), 600, 1);
        history.record(t0 + chrono::Duration::seconds(10), 590, 6);
        let points = history.points();
        assert_eq!(points.len(), 2);
        assert_eq!(points[0].sent_per_second, 100.0);
        assert_eq!(points[0].failed_per_second, 0.0);
        assert_eq!(points[1].sent_per_second, 0.0, "a total that moved back");
        assert_eq!(points[1].failed_per_second, 1.0);
        for i in 0..1000 {
            history.record(t0 + chrono::Duration::seconds(15 + i), i, 0);
        }
        assert_eq!(history.points().len(), RATE_POINTS);
    }
}
