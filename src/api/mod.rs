//! The HTTP API (actix-web): jobs in, queue state out, health for orchestrators.

mod body;
mod error;
mod jobs;

use std::net::{SocketAddr, TcpListener};

use actix_web::body::MessageBody;
use actix_web::dev::{Server, ServiceRequest, ServiceResponse};
use actix_web::middleware::{from_fn, Next};
use actix_web::{http::header, web, App, HttpResponse, HttpServer};
use anyhow::Context;
use secrecy::{ExposeSecret, SecretString};
use sqlx::PgPool;
use subtle::ConstantTimeEq;

pub use error::ApiError;
pub use jobs::{JobRequest, MAX_BULK_JOBS};

use crate::config::Settings;
use crate::store::{self, PgStore};

/// What every handler can reach.
pub struct AppState {
    pub store: PgStore,
    pub max_payload_bytes: usize,
    pub max_body_bytes: usize,
    api_key: Option<SecretString>,
}

/// The HTTP server, bound and ready to run.
pub struct ApiServer {
    addr: SocketAddr,
    server: Server,
}

impl ApiServer {
    /// Binds `api.listen` (port 0 picks a free port) and builds the server.
    pub fn build(settings: &Settings, store: PgStore) -> anyhow::Result<ApiServer> {
        let _ = crate::monitor::handle();
        let listener = TcpListener::bind(settings.api.listen)
            .with_context(|| format!("cannot listen on api.listen {}", settings.api.listen))?;
        let addr = listener.local_addr()?;
        let state = web::Data::new(AppState {
            store,
            max_payload_bytes: settings.chain.max_payload_bytes,
            max_body_bytes: settings.api.max_body_bytes,
            api_key: settings.api.key().map(|k| SecretString::from(k.to_owned())),
        });
        let server = HttpServer::new(move || {
            App::new()
                .app_data(state.clone())
                .wrap(
                    actix_web::middleware::Logger::new("%r %s %b %Dms").log_target("raregen::http"),
                )
                .route("/healthz", web::get().to(healthz))
                .route("/readyz", web::get().to(readyz))
                .route("/metrics", web::get().to(metrics))
                .service(
                    web::scope("/v1")
                        .wrap(from_fn(require_api_key))
                        .route("/jobs", web::post().to(jobs::submit))
                        .route("/jobs/bulk", web::post().to(jobs::submit_bulk))
                        .route("/jobs/lookup", web::post().to(jobs::lookup))
                        .route("/jobs/{id}", web::get().to(jobs::get))
                        .route("/queue", web::get().to(jobs::queue))
                        .default_service(web::to(not_found)),
                )
                .default_service(web::to(not_found))
        })
        .disable_signals()
        .shutdown_timeout(10)
        .listen(listener)?
        .run();
        Ok(ApiServer { addr, server })
    }

    /// The address actually bound.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A handle to stop the server gracefully.
    pub fn handle(&self) -> actix_web::dev::ServerHandle {
        self.server.handle()
    }

    pub async fn run(self) -> std::io::Result<()> {
        self.server.await
    }
}

/// `/v1/*` needs `Authorization: Bearer <api.api_key>` when a key is configured.
async fn require_api_key(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let state = req
        .app_data::<web::Data<AppState>>()
        .expect("AppState is registered");
    if let Some(expected) = &state.api_key {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .unwrap_or("");
        let ok: bool = given
            .as_bytes()
            .ct_eq(expected.expose_secret().as_bytes())
            .into();
        if !ok {
            return Err(ApiError::unauthorized().into());
        }
    }
    next.call(req).await
}

async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({ "status": "ok" }))
}

/// Prometheus text exposition (no API key: scrapers rarely carry one, and nothing in
/// it is secret).
async fn metrics() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(crate::monitor::render())
}

async fn readyz(state: web::Data<AppState>) -> HttpResponse {
    match readiness(state.store.pool()).await {
        Ok(()) => HttpResponse::Ok().json(serde_json::json!({ "status": "ready" })),
        Err(reason) => actix_web::ResponseError::error_response(&ApiError::new(
            actix_web::http::StatusCode::SERVICE_UNAVAILABLE,
            "not_ready",
            reason,
        )),
    }
}

async fn readiness(pool: &PgPool) -> Result<(), String> {
    match store::migrations_applied(pool).await {
        Ok(true) => Ok(()),
        Ok(false) => Err("migrations are not applied: run `raregen migrate`".into()),
        Err(e) => {
            tracing::warn!(error = %e, "readiness check: database not answering");
            Err("the database is not answering".into())
        }
    }
}

async fn not_found(req: actix_web::HttpRequest) -> Result<HttpResponse, ApiError> {
    Err(ApiError::not_found(format!(
        "no route for {} {}",
        req.method(),
        req.path()
    )))
}
