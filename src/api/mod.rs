//! The HTTP API (actix-web): jobs in, queue state out, health for orchestrators.

mod body;
mod console;
pub mod error;
mod jobs;
mod views;

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;

use actix_web::body::MessageBody;
use actix_web::dev::{Server, ServiceRequest, ServiceResponse};
use actix_web::middleware::{from_fn, Next};
use actix_web::{get, http::header, web, App, HttpResponse, HttpServer};
use anyhow::Context;
use secrecy::{ExposeSecret, SecretString};
use sqlx::PgPool;
use subtle::ConstantTimeEq;

pub use error::{ApiError, ErrorCode};
pub use jobs::{JobRequest, MAX_BULK_JOBS};
use utoipa::OpenApi as _;
use utoipa_actix_web::AppExt;
use views::{Info, RateHistory};

use crate::config::Settings;
use crate::store::{self, PgStore};

/// What every handler can reach.
pub struct AppState {
    pub store: PgStore,
    pub max_body_bytes: usize,
    pub info: Info,
    pub rate: Arc<RateHistory>,
    pub max_chain_depth: u32,
    api_key: Option<SecretString>,
}

/// The HTTP server, bound and ready to run.
pub struct ApiServer {
    addr: SocketAddr,
    server: Server,
    /// The rate history and the database it samples (started by [`ApiServer::run`]).
    sampled: (Arc<RateHistory>, PgPool),
}

/// The OpenAPI document's fixed parts; the routes and their schemas are added by
/// [`routes`] from the handlers themselves.
#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "raregen",
        description = "Publishes one Bitcoin transaction per job. Errors are always `{\"error\": {\"code\", \"message\"}}` (see the `ErrorCode` schema); `/v1/*` needs `Authorization: Bearer <api.api_key>` when a key is configured."
    ),
    components(schemas(error::ErrorBody, error::ErrorDetail, error::ErrorCode)),
    modifiers(&BearerAuth),
    tags(
        (name = "jobs", description = "Submit jobs and follow them"),
        (name = "operations", description = "The queue, the batches, the pool and the rate"),
        (name = "health", description = "For orchestrators and scrapers (no API key)"),
    )
)]
struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("api.api_key; needed only when one is configured"))
                    .build(),
            ),
        );
    }
}

/// Every route of the API, registered and documented in one place.
fn routes<T>(app: utoipa_actix_web::UtoipaApp<T>) -> utoipa_actix_web::UtoipaApp<T>
where
    T: actix_web::dev::ServiceFactory<
        actix_web::dev::ServiceRequest,
        Config = (),
        Error = actix_web::Error,
        InitError = (),
    >,
{
    app.service(healthz)
        .service(readyz)
        .service(metrics)
        .service(
            utoipa_actix_web::scope("/v1")
                .wrap(from_fn(require_api_key))
                .service(jobs::submit)
                .service(jobs::list)
                .service(jobs::submit_bulk)
                .service(jobs::lookup)
                .service(jobs::get)
                .service(jobs::queue)
                .service(views::batches)
                .service(views::pool)
                .service(views::rate)
                .service(views::info)
                .default_service(web::to(not_found)),
        )
}

/// The API's OpenAPI 3.1 document, as `GET /openapi.json` serves it with
/// `chain.max_payload_bytes = max_payload_bytes`.
pub fn openapi(max_payload_bytes: usize) -> serde_json::Value {
    let document = routes(App::new().into_utoipa_app().openapi(ApiDoc::openapi()))
        .split_for_parts()
        .1;
    let mut json = serde_json::to_value(document).expect("the document serializes");
    // What the derive cannot say: exactly one of the two payload fields (a field that is
    // null counts as absent), and the configured size limit (exact for ASCII text: the
    // limit is on UTF-8 bytes).
    let request = &mut json["components"]["schemas"]["JobRequest"];
    request["oneOf"] = serde_json::json!([
        {"required": ["payload"], "properties": {"payload": {"type": "string"}}},
        {"required": ["payload_hex"], "properties": {"payload_hex": {"type": "string"}}},
    ]);
    request["properties"]["payload"]["maxLength"] = max_payload_bytes.into();
    request["properties"]["payload"]["description"] = format!(
        "Text payload, published as its UTF-8 bytes: at most {max_payload_bytes} bytes \
         (`chain.max_payload_bytes`; maxLength counts characters, exact for ASCII)."
    )
    .into();
    request["properties"]["payload_hex"]["maxLength"] = (2 * max_payload_bytes).into();
    // Job ids are i64: JSON Schema's integers are unbounded.
    let ids = &mut json["components"]["schemas"]["LookupRequest"]["properties"]["ids"]["items"];
    ids["minimum"] = i64::MIN.into();
    ids["maximum"] = i64::MAX.into();
    json
}

/// The served document and the methods of each of its routes (for 405 answers).
pub struct Document {
    json: serde_json::Value,
    routes: Vec<(Vec<String>, Vec<String>)>,
}

impl Document {
    fn new(json: serde_json::Value) -> Document {
        let mut routes: Vec<(Vec<String>, Vec<String>)> = json["paths"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(path, item)| {
                let methods = item
                    .as_object()
                    .into_iter()
                    .flatten()
                    .map(|(m, _)| m.to_uppercase())
                    .collect();
                (segments(path), methods)
            })
            .collect();
        for page in ["/", "/console", "/openapi.json"] {
            routes.push((segments(page), vec!["GET".to_owned()]));
        }
        Document { json, routes }
    }

    /// The methods of the route `path` matches, if it matches one (only literal
    /// routes, without `{parameters}`, when `literal_only`).
    fn methods(&self, path: &str, literal_only: bool) -> Option<Vec<String>> {
        let given = segments(path);
        let matching: Vec<&(Vec<String>, Vec<String>)> = self
            .routes
            .iter()
            .filter(|(template, _)| {
                template.len() == given.len()
                    && template
                        .iter()
                        .zip(&given)
                        .all(|(t, g)| t == g || (t.starts_with('{') && !g.is_empty()))
            })
            .collect();
        // A literal route wins over a template (`/v1/jobs/bulk` is not `/v1/jobs/{id}`).
        let literal = |(template, _): &&(Vec<String>, Vec<String>)| {
            !template.iter().any(|t| t.starts_with('{'))
        };
        let exact = literal_only || matching.iter().any(literal);
        let mut methods: Vec<String> = matching
            .into_iter()
            .filter(|route| !exact || literal(route))
            .flat_map(|(_, m)| m.iter().cloned())
            .collect();
        methods.sort();
        methods.dedup();
        (!methods.is_empty()).then_some(methods)
    }
}

fn segments(path: &str) -> Vec<String> {
    // "/" is the root route; any other trailing slash is another path (actix does not
    // match `/healthz/` to `/healthz`).
    let path = if path == "/" { "" } else { path };
    path.split('/').map(str::to_owned).collect()
}

impl ApiServer {
    /// Binds `api.listen` (port 0 picks a free port) and builds the server.
    pub fn build(settings: &Settings, store: PgStore) -> anyhow::Result<ApiServer> {
        let _ = crate::telemetry::metrics::handle();
        let listener = TcpListener::bind(settings.api.listen)
            .with_context(|| format!("cannot listen on api.listen {}", settings.api.listen))?;
        let addr = listener.local_addr()?;
        let rate = Arc::new(RateHistory::default());
        let sampled = (rate.clone(), store.pool().clone());
        let state = web::Data::new(AppState {
            store,
            max_body_bytes: settings.api.max_body_bytes,
            info: Info {
                version: env!("CARGO_PKG_VERSION").to_owned(),
                mode: settings.mode.as_str().to_owned(),
                network: settings.chain.network.as_str().to_owned(),
                rate_limit_max: settings.rate_limit.max,
                rate_limit_per_seconds: settings.rate_limit.per.as_secs_f64(),
                max_payload_bytes: settings.chain.max_payload_bytes,
            },
            rate,
            max_chain_depth: settings.utxo_pool.max_chain_depth,
            api_key: settings.api.key().map(|k| SecretString::from(k.to_owned())),
        });
        let document = web::Data::new(Document::new(openapi(settings.chain.max_payload_bytes)));
        let server = HttpServer::new(move || {
            let app = App::new()
                .app_data(state.clone())
                .app_data(document.clone())
                .wrap(
                    actix_web::middleware::Logger::new("%r %s %b %Dms").log_target("raregen::http"),
                )
                .into_utoipa_app();
            routes(app)
                .into_app()
                .service(openapi_json)
                .service(console::page)
                .service(console::console)
                .default_service(web::to(not_found))
        })
        .disable_signals()
        .shutdown_timeout(10)
        .listen(listener)?
        .run();
        Ok(ApiServer {
            addr,
            server,
            sampled,
        })
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
        let (rate, pool) = self.sampled;
        let sampler = tokio::spawn(rate.run(pool));
        let result = self.server.await;
        sampler.abort();
        result
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

/// The process runs.
#[utoipa::path(tag = "health", responses((status = 200, description = "`{\"status\": \"ok\"}`", body = Object)))]
#[get("/healthz")]
async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({ "status": "ok" }))
}

/// Prometheus text exposition (no API key: scrapers rarely carry one, and nothing in
/// it is secret).
#[utoipa::path(tag = "health", responses((status = 200, description = "Prometheus text exposition format 0.0.4", content_type = "text/plain", body = String)))]
#[get("/metrics")]
async fn metrics() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(crate::telemetry::metrics::render())
}

/// Ready when the database answers and the migrations are applied.
#[utoipa::path(tag = "health", responses(
    (status = 200, description = "`{\"status\": \"ready\"}`", body = Object),
    views::NotReadyErrors,
))]
#[get("/readyz")]
async fn readyz(state: web::Data<AppState>) -> HttpResponse {
    match readiness(state.store.pool()).await {
        Ok(()) => HttpResponse::Ok().json(serde_json::json!({ "status": "ready" })),
        Err(reason) => {
            actix_web::ResponseError::error_response(&ApiError::new(ErrorCode::NotReady, reason))
        }
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
    if let Some(response) = method_not_allowed(&req, false) {
        return Ok(response);
    }
    Err(ApiError::not_found(format!(
        "no route for {} {}",
        req.method(),
        req.path()
    )))
}

/// A 405 with `Allow` when `req`'s path is a route for other methods.
fn method_not_allowed(req: &actix_web::HttpRequest, literal_only: bool) -> Option<HttpResponse> {
    let methods = req
        .app_data::<web::Data<Document>>()
        .and_then(|d| d.methods(req.path(), literal_only))?;
    // A route that has this very method did not match (e.g. a path parameter that is no
    // id): that is a 404, not a 405.
    if methods.iter().any(|m| m == req.method().as_str()) {
        return None;
    }
    let allow = methods.join(", ");
    let mut response = actix_web::ResponseError::error_response(&ApiError::new(
        ErrorCode::MethodNotAllowed,
        format!(
            "{} {} is not a route; {} is ({allow})",
            req.method(),
            req.path(),
            req.path()
        ),
    ));
    response.headers_mut().insert(
        header::ALLOW,
        header::HeaderValue::from_str(&allow).expect("method names are ASCII"),
    );
    Some(response)
}

/// The OpenAPI document (no API key, like `/metrics`).
#[get("/openapi.json")]
async fn openapi_json(document: web::Data<Document>) -> HttpResponse {
    HttpResponse::Ok().json(&document.json)
}
