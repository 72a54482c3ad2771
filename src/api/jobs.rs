//! `/v1/jobs` (submit and list), `/v1/jobs/bulk`, `/v1/jobs/lookup`, `/v1/jobs/{id}`,
//! `/v1/queue`.

use actix_web::{get, post, web, HttpRequest, HttpResponse};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::body::{limit, parse_query, read_json, Int};
use super::error::{error_responses, ApiError, ErrorCode};
use super::AppState;
use crate::store::{InsertOutcome, JobListing, JobState, JobStatus, JobView, NewJob, QueueCounts};

/// Most jobs in one bulk request.
pub const MAX_BULK_JOBS: usize = 10_000;
/// Longest idempotency key, in characters.
pub const MAX_IDEMPOTENCY_KEY_CHARS: usize = 255;

/// A job as a client submits it: exactly one of `payload` and `payload_hex`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct JobRequest {
    /// Text payload, published as its UTF-8 bytes (at most `chain.max_payload_bytes`).
    #[schema(min_length = 1)]
    pub payload: Option<String>,
    /// Binary payload, as hex (at most `chain.max_payload_bytes` bytes).
    #[schema(min_length = 2, pattern = "^([0-9a-fA-F]{2})+$")]
    pub payload_hex: Option<String>,
    /// The same key with the same payload names the same job; with another payload it
    /// is refused (409). 1 to 255 characters, no NUL.
    #[schema(min_length = 1, max_length = 255, pattern = "^[^\\u0000]*$")]
    pub idempotency_key: Option<String>,
    /// Higher is claimed first; default 0.
    #[schema(value_type = Option<i16>, minimum = -32768, maximum = 32767)]
    pub priority: Option<Int<i16>>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BulkRequest {
    /// 1 to 10,000 jobs, stored all or nothing.
    #[schema(min_items = 1, max_items = 10000)]
    pub jobs: Vec<JobRequest>,
}

/// A job just stored.
#[derive(Serialize, ToSchema)]
pub struct Created {
    pub id: i64,
    /// Always `queued`.
    pub status: JobStatus,
}

/// The jobs of a bulk request, in the order given.
#[derive(Serialize, ToSchema)]
pub struct BulkCreated {
    pub ids: Vec<i64>,
}

/// Many jobs' states.
#[derive(Serialize, ToSchema)]
pub struct JobStates {
    pub jobs: Vec<JobState>,
}

error_responses!(SubmitErrors: MalformedJson, BadBody, UnsupportedMediaType, Unauthorized, NotFound, IdempotencyConflict,
    BodyTooLarge, InvalidField, PayloadRequired, PayloadConflict, InvalidHex, EmptyPayload,
    PayloadTooLarge, InvalidIdempotencyKey, Internal, DatabaseUnavailable);
error_responses!(BulkErrors: MalformedJson, BadBody, UnsupportedMediaType, Unauthorized, IdempotencyConflict,
    BodyTooLarge, TooManyJobs, InvalidField, PayloadRequired, PayloadConflict, InvalidHex,
    EmptyPayload, PayloadTooLarge, InvalidIdempotencyKey, EmptyBulk, Internal,
    DatabaseUnavailable);
error_responses!(LookupErrors: MalformedJson, BadBody, UnsupportedMediaType, Unauthorized, BodyTooLarge, TooManyIds,
    InvalidField, Internal, DatabaseUnavailable);
error_responses!(GetErrors: Unauthorized, NotFound, Internal, DatabaseUnavailable);
error_responses!(ListErrors: Unauthorized, InvalidQuery, Internal, DatabaseUnavailable);

impl JobRequest {
    /// Checks the request and turns it into a job; `at` prefixes messages (bulk index).
    pub fn validate(self, max_payload: usize, at: &str) -> Result<NewJob, ApiError> {
        let payload = match (self.payload, self.payload_hex) {
            (Some(text), None) => text.into_bytes(),
            (None, Some(hex_text)) => hex::decode(&hex_text).map_err(|e| {
                ApiError::new(
                    ErrorCode::InvalidHex,
                    format!("{at}payload_hex is not valid hex: {e}"),
                )
            })?,
            (Some(_), Some(_)) => {
                return Err(ApiError::new(
                    ErrorCode::PayloadConflict,
                    format!("{at}send either payload or payload_hex, not both"),
                ))
            }
            (None, None) => {
                return Err(ApiError::new(
                    ErrorCode::PayloadRequired,
                    format!("{at}send payload (text) or payload_hex (hex bytes)"),
                ))
            }
        };
        if payload.is_empty() {
            return Err(ApiError::new(
                ErrorCode::EmptyPayload,
                format!("{at}the payload is empty"),
            ));
        }
        if payload.len() > max_payload {
            return Err(ApiError::new(
                ErrorCode::PayloadTooLarge,
                format!(
                    "{at}the payload is {} bytes; chain.max_payload_bytes allows {max_payload}",
                    payload.len()
                ),
            ));
        }
        if let Some(key) = &self.idempotency_key {
            let chars = key.chars().count();
            if chars == 0 || chars > MAX_IDEMPOTENCY_KEY_CHARS || key.contains('\0') {
                return Err(ApiError::new(
                    ErrorCode::InvalidIdempotencyKey,
                    format!(
                        "{at}idempotency_key must be 1 to {MAX_IDEMPOTENCY_KEY_CHARS} characters, \
                         none of them NUL"
                    ),
                ));
            }
        }
        Ok(NewJob {
            payload,
            idempotency_key: self.idempotency_key,
            priority: self.priority.map_or(0, |p| p.0),
        })
    }
}

/// Submits one job.
#[utoipa::path(
    tag = "jobs",
    request_body = JobRequest,
    responses(
        (status = 201, description = "The job is stored and queued.", body = Created),
        (status = 200, description = "The idempotency key and payload name a job already stored: that job.", body = JobView),
        SubmitErrors,
    ),
    security(("bearer" = [])),
)]
#[post("/jobs")]
pub async fn submit(
    state: web::Data<AppState>,
    req: HttpRequest,
    body: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let request: JobRequest = read_json(&req, body, state.max_body_bytes).await?;
    let job = request.validate(state.info.max_payload_bytes, "")?;
    match state.store.insert_job(&job).await? {
        InsertOutcome::Created(id) => Ok(HttpResponse::Created().json(Created {
            id,
            status: JobStatus::Queued,
        })),
        InsertOutcome::Existing(id) => {
            let view = state.store.get_job(id).await?.ok_or_else(|| {
                ApiError::not_found(format!("job {id} was removed while it was being read"))
            })?;
            Ok(HttpResponse::Ok().json(view))
        }
        InsertOutcome::Conflict(id) => Err(ApiError::new(
            ErrorCode::IdempotencyConflict,
            format!("the idempotency key already names job {id}, which has another payload"),
        )),
    }
}

/// Submits up to 10,000 jobs, all or nothing.
#[utoipa::path(
    tag = "jobs",
    request_body = BulkRequest,
    responses(
        (status = 201, description = "Every job is stored (or was already, under its idempotency key); ids in the order given.", body = BulkCreated),
        BulkErrors,
    ),
    security(("bearer" = [])),
)]
#[post("/jobs/bulk")]
pub async fn submit_bulk(
    state: web::Data<AppState>,
    req: HttpRequest,
    body: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let request: BulkRequest = read_json(&req, body, state.max_body_bytes).await?;
    if request.jobs.is_empty() {
        return Err(ApiError::new(
            ErrorCode::EmptyBulk,
            "jobs is empty; send 1 to 10000 jobs",
        ));
    }
    if request.jobs.len() > MAX_BULK_JOBS {
        return Err(ApiError::new(
            ErrorCode::TooManyJobs,
            format!(
                "{} jobs in one request; send at most {MAX_BULK_JOBS} per request",
                request.jobs.len()
            ),
        ));
    }
    let jobs = request
        .jobs
        .into_iter()
        .enumerate()
        .map(|(i, j)| j.validate(state.info.max_payload_bytes, &format!("jobs[{i}]: ")))
        .collect::<Result<Vec<_>, _>>()?;
    let outcomes = state.store.insert_jobs(&jobs).await?;
    let conflicts: Vec<String> = outcomes
        .iter()
        .enumerate()
        .filter_map(|(i, o)| match o {
            InsertOutcome::Conflict(id) => Some(format!("jobs[{i}] (key of job {id})")),
            _ => None,
        })
        .collect();
    if !conflicts.is_empty() {
        let shown: Vec<&str> = conflicts.iter().take(10).map(String::as_str).collect();
        return Err(ApiError::new(
            ErrorCode::IdempotencyConflict,
            format!(
                "{} job(s) reuse an idempotency key with another payload: {}{}; nothing was stored",
                conflicts.len(),
                shown.join(", "),
                if conflicts.len() > shown.len() {
                    ", …"
                } else {
                    ""
                }
            ),
        ));
    }
    Ok(HttpResponse::Created().json(BulkCreated {
        ids: outcomes.into_iter().map(InsertOutcome::id).collect(),
    }))
}

/// One job, with every transaction signed for it.
#[utoipa::path(
    tag = "jobs",
    params(("id" = i64, Path, description = "The job's id")),
    responses(
        (status = 200, description = "The job.", body = JobView),
        GetErrors,
    ),
    security(("bearer" = [])),
)]
#[get("/jobs/{id}")]
pub async fn get(
    state: web::Data<AppState>,
    req: HttpRequest,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = id.into_inner();
    let not_found = || ApiError::not_found(format!("no job with id {id:?}"));
    let Ok(job_id) = id.parse::<i64>() else {
        // `/v1/jobs/bulk` and `/v1/jobs/lookup` exist for POST: a GET of them is a 405.
        return super::method_not_allowed(&req, true).ok_or_else(not_found);
    };
    let job = state.store.get_job(job_id).await?.ok_or_else(not_found)?;
    Ok(HttpResponse::Ok().json(job))
}

/// Jobs per state.
#[utoipa::path(
    tag = "jobs",
    responses(
        (status = 200, description = "Jobs per state (exact counts).", body = QueueCounts),
        super::views::ReadErrors,
    ),
    security(("bearer" = [])),
)]
#[get("/queue")]
pub async fn queue(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(state.store.queue_counts().await?))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LookupRequest {
    /// Up to 10,000 job ids.
    #[schema(value_type = Vec<i64>, max_items = 10000)]
    pub ids: Vec<Int<i64>>,
}

/// `POST /v1/jobs/lookup {"ids": [...]}` (up to 10,000): the state of many jobs in one
/// round trip (what `raregen load-test` polls). Ids that name no job are left out.
#[utoipa::path(
    tag = "jobs",
    request_body = LookupRequest,
    responses(
        (status = 200, description = "The jobs that exist, by id.", body = JobStates),
        LookupErrors,
    ),
    security(("bearer" = [])),
)]
#[post("/jobs/lookup")]
pub async fn lookup(
    state: web::Data<AppState>,
    req: HttpRequest,
    body: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let request: LookupRequest = read_json(&req, body, state.max_body_bytes).await?;
    if request.ids.len() > MAX_BULK_JOBS {
        return Err(ApiError::new(
            ErrorCode::TooManyIds,
            format!(
                "{} ids in one request; send at most {MAX_BULK_JOBS} per request",
                request.ids.len()
            ),
        ));
    }
    let ids: Vec<i64> = request.ids.iter().map(|id| id.0).collect();
    let jobs = state.store.job_states(&ids).await?;
    Ok(HttpResponse::Ok().json(JobStates { jobs }))
}

/// Most jobs one `GET /v1/jobs` lists.
pub const MAX_LIST_JOBS: i64 = 500;

/// Which jobs `GET /v1/jobs` lists.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// The state to list.
    pub status: JobStatus,
    /// How many (1 to 500; default 50).
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<i64>,
}

/// Jobs in one state, in the order that matters for it: failed ones newest failure
/// first, sending ones oldest first (the stuck ones), queued ones in claim order,
/// processing ones by id, sent ones newest first.
#[utoipa::path(
    tag = "jobs",
    params(ListQuery),
    responses(
        (status = 200, description = "The jobs, at most `limit`.", body = JobListing),
        ListErrors,
    ),
    security(("bearer" = [])),
)]
#[get("/jobs")]
pub async fn list(state: web::Data<AppState>, req: HttpRequest) -> Result<HttpResponse, ApiError> {
    let query: ListQuery = parse_query(
        req.query_string(),
        "?status=queued|processing_batch|sending|sent|failed&limit=1..500",
    )?;
    let limit = limit(query.limit, 50, MAX_LIST_JOBS)?;
    let jobs = state.store.list_jobs(query.status, limit).await?;
    Ok(HttpResponse::Ok().json(jobs))
}
