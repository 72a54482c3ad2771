//! `/v1/jobs`, `/v1/jobs/bulk`, `/v1/jobs/lookup`, `/v1/jobs/{id}`, `/v1/queue`.

use actix_web::{web, HttpRequest, HttpResponse};
use serde::{Deserialize, Serialize};

use super::body::read_json;
use super::error::ApiError;
use super::AppState;
use crate::store::{InsertOutcome, NewJob};

/// Most jobs in one bulk request.
pub const MAX_BULK_JOBS: usize = 10_000;
/// Longest idempotency key, in bytes.
pub const MAX_IDEMPOTENCY_KEY_BYTES: usize = 255;

/// A job as a client submits it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobRequest {
    /// Text payload, published as its UTF-8 bytes.
    pub payload: Option<String>,
    /// Binary payload, as hex.
    pub payload_hex: Option<String>,
    pub idempotency_key: Option<String>,
    /// Higher is claimed first; default 0.
    pub priority: Option<i16>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BulkRequest {
    pub jobs: Vec<JobRequest>,
}

#[derive(Serialize)]
struct Created {
    id: i64,
    status: &'static str,
}

#[derive(Serialize)]
struct BulkCreated {
    ids: Vec<i64>,
}

impl JobRequest {
    /// Checks the request and turns it into a job; `at` prefixes messages (bulk index).
    pub fn validate(self, max_payload: usize, at: &str) -> Result<NewJob, ApiError> {
        let payload = match (self.payload, self.payload_hex) {
            (Some(text), None) => text.into_bytes(),
            (None, Some(hex_text)) => hex::decode(hex_text.trim()).map_err(|e| {
                ApiError::unprocessable(
                    "invalid_hex",
                    format!("{at}payload_hex is not valid hex: {e}"),
                )
            })?,
            (Some(_), Some(_)) => {
                return Err(ApiError::unprocessable(
                    "payload_conflict",
                    format!("{at}send either payload or payload_hex, not both"),
                ))
            }
            (None, None) => {
                return Err(ApiError::unprocessable(
                    "payload_required",
                    format!("{at}send payload (text) or payload_hex (hex bytes)"),
                ))
            }
        };
        if payload.is_empty() {
            return Err(ApiError::unprocessable(
                "empty_payload",
                format!("{at}the payload is empty"),
            ));
        }
        if payload.len() > max_payload {
            return Err(ApiError::unprocessable(
                "payload_too_large",
                format!(
                    "{at}the payload is {} bytes; chain.max_payload_bytes allows {max_payload}",
                    payload.len()
                ),
            ));
        }
        if let Some(key) = &self.idempotency_key {
            if key.is_empty() || key.len() > MAX_IDEMPOTENCY_KEY_BYTES {
                return Err(ApiError::unprocessable(
                    "invalid_idempotency_key",
                    format!("{at}idempotency_key must be 1 to {MAX_IDEMPOTENCY_KEY_BYTES} bytes"),
                ));
            }
        }
        Ok(NewJob {
            payload,
            idempotency_key: self.idempotency_key,
            priority: self.priority.unwrap_or(0),
        })
    }
}

pub async fn submit(
    state: web::Data<AppState>,
    req: HttpRequest,
    body: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let request: JobRequest = read_json(&req, body, state.max_body_bytes).await?;
    let job = request.validate(state.max_payload_bytes, "")?;
    match state.store.insert_job(&job).await? {
        InsertOutcome::Created(id) => Ok(HttpResponse::Created().json(Created {
            id,
            status: "queued",
        })),
        InsertOutcome::Existing(id) => {
            let view = state.store.get_job(id).await?.ok_or_else(|| {
                ApiError::not_found(format!("job {id} was removed while it was being read"))
            })?;
            Ok(HttpResponse::Ok().json(view))
        }
        InsertOutcome::Conflict(id) => Err(ApiError::conflict(
            "idempotency_conflict",
            format!("the idempotency key already names job {id}, which has another payload"),
        )),
    }
}

pub async fn submit_bulk(
    state: web::Data<AppState>,
    req: HttpRequest,
    body: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let request: BulkRequest = read_json(&req, body, state.max_body_bytes).await?;
    if request.jobs.is_empty() {
        return Err(ApiError::unprocessable(
            "empty_bulk",
            "jobs is empty; send 1 to 10000 jobs",
        ));
    }
    if request.jobs.len() > MAX_BULK_JOBS {
        return Err(ApiError::too_large(
            "too_many_jobs",
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
        .map(|(i, j)| j.validate(state.max_payload_bytes, &format!("jobs[{i}]: ")))
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
        return Err(ApiError::conflict(
            "idempotency_conflict",
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

pub async fn get(
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = id.into_inner();
    let not_found = || ApiError::not_found(format!("no job with id {id:?}"));
    let job_id: i64 = id.parse().map_err(|_| not_found())?;
    let job = state.store.get_job(job_id).await?.ok_or_else(not_found)?;
    Ok(HttpResponse::Ok().json(job))
}

pub async fn queue(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(state.store.queue_counts().await?))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LookupRequest {
    pub ids: Vec<i64>,
}

/// `POST /v1/jobs/lookup {"ids": [...]}` (up to 10,000): the state of many jobs in one
/// round trip (what `raregen load-test` polls). Ids that name no job are left out.
pub async fn lookup(
    state: web::Data<AppState>,
    req: HttpRequest,
    body: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let request: LookupRequest = read_json(&req, body, state.max_body_bytes).await?;
    if request.ids.len() > MAX_BULK_JOBS {
        return Err(ApiError::too_large(
            "too_many_ids",
            format!(
                "{} ids in one request; send at most {MAX_BULK_JOBS} per request",
                request.ids.len()
            ),
        ));
    }
    let jobs = state.store.job_states(&request.ids).await?;
    Ok(HttpResponse::Ok().json(serde_json::json!({ "jobs": jobs })))
}
