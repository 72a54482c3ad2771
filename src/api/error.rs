//! The one error shape of the API: `{"error": {"code": "snake_case", "message": "..."}}`.
//!
//! Every code the API can answer is a variant of [`ErrorCode`], with its one HTTP status
//! and what it means: the OpenAPI document and the README's error table are both read
//! from it (a test compares them), so neither can name a code the server never sends.

use actix_web::http::{header, StatusCode};
use actix_web::{HttpResponse, ResponseError};
use serde::Serialize;
use utoipa::ToSchema;

use crate::store::StoreError;

/// Every error code of the API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    MalformedJson,
    BadBody,
    InvalidQuery,
    Unauthorized,
    NotFound,
    MethodNotAllowed,
    IdempotencyConflict,
    UnsupportedMediaType,
    BodyTooLarge,
    TooManyJobs,
    TooManyIds,
    InvalidField,
    PayloadRequired,
    PayloadConflict,
    InvalidHex,
    EmptyPayload,
    PayloadTooLarge,
    InvalidIdempotencyKey,
    EmptyBulk,
    Internal,
    DatabaseUnavailable,
    NotReady,
}

impl ErrorCode {
    pub const ALL: [ErrorCode; 22] = [
        ErrorCode::MalformedJson,
        ErrorCode::BadBody,
        ErrorCode::InvalidQuery,
        ErrorCode::Unauthorized,
        ErrorCode::NotFound,
        ErrorCode::MethodNotAllowed,
        ErrorCode::IdempotencyConflict,
        ErrorCode::UnsupportedMediaType,
        ErrorCode::BodyTooLarge,
        ErrorCode::TooManyJobs,
        ErrorCode::TooManyIds,
        ErrorCode::InvalidField,
        ErrorCode::PayloadRequired,
        ErrorCode::PayloadConflict,
        ErrorCode::InvalidHex,
        ErrorCode::EmptyPayload,
        ErrorCode::PayloadTooLarge,
        ErrorCode::InvalidIdempotencyKey,
        ErrorCode::EmptyBulk,
        ErrorCode::Internal,
        ErrorCode::DatabaseUnavailable,
        ErrorCode::NotReady,
    ];

    /// The code as the client sees it.
    pub fn as_str(self) -> &'static str {
        use ErrorCode::*;
        match self {
            MalformedJson => "malformed_json",
            BadBody => "bad_body",
            InvalidQuery => "invalid_query",
            Unauthorized => "unauthorized",
            NotFound => "not_found",
            MethodNotAllowed => "method_not_allowed",
            IdempotencyConflict => "idempotency_conflict",
            UnsupportedMediaType => "unsupported_media_type",
            BodyTooLarge => "body_too_large",
            TooManyJobs => "too_many_jobs",
            TooManyIds => "too_many_ids",
            InvalidField => "invalid_field",
            PayloadRequired => "payload_required",
            PayloadConflict => "payload_conflict",
            InvalidHex => "invalid_hex",
            EmptyPayload => "empty_payload",
            PayloadTooLarge => "payload_too_large",
            InvalidIdempotencyKey => "invalid_idempotency_key",
            EmptyBulk => "empty_bulk",
            Internal => "internal",
            DatabaseUnavailable => "database_unavailable",
            NotReady => "not_ready",
        }
    }

    /// The one status this code is sent with.
    pub fn status(self) -> StatusCode {
        use ErrorCode::*;
        match self {
            MalformedJson | BadBody => StatusCode::BAD_REQUEST,
            Unauthorized => StatusCode::UNAUTHORIZED,
            NotFound => StatusCode::NOT_FOUND,
            MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            IdempotencyConflict => StatusCode::CONFLICT,
            UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            TooManyJobs
            | TooManyIds
            | InvalidQuery
            | InvalidField
            | PayloadRequired
            | PayloadConflict
            | InvalidHex
            | EmptyPayload
            | PayloadTooLarge
            | InvalidIdempotencyKey
            | EmptyBulk => StatusCode::UNPROCESSABLE_ENTITY,
            Internal => StatusCode::INTERNAL_SERVER_ERROR,
            DatabaseUnavailable | NotReady => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// When it is sent (the README's table says the same).
    pub fn when(self) -> &'static str {
        use ErrorCode::*;
        match self {
            MalformedJson => "the body is not JSON",
            BadBody => "the body could not be read",
            InvalidQuery => "a query parameter of the wrong type or out of range",
            Unauthorized => "missing or wrong bearer token",
            NotFound => "no such job or route",
            MethodNotAllowed => "the route exists, not with this method (the `Allow` header lists its methods)",
            IdempotencyConflict => "the idempotency key names a job with another payload",
            UnsupportedMediaType => {
                "a body without `Content-Type: application/json`"
            }
            BodyTooLarge => "body over `api.max_body_bytes`",
            TooManyJobs => "bulk over 10,000 jobs",
            TooManyIds => "lookup over 10,000 ids",
            InvalidField => {
                "unknown field, wrong type, missing field, not an object (the message names the field)"
            }
            PayloadRequired => "neither `payload` nor `payload_hex`",
            PayloadConflict => "both `payload` and `payload_hex`",
            InvalidHex => "`payload_hex` is not hex",
            EmptyPayload => "the payload is empty",
            PayloadTooLarge => "payload over `chain.max_payload_bytes`",
            InvalidIdempotencyKey => "idempotency key not 1–255 characters, or holding NUL",
            EmptyBulk => "`jobs` is empty",
            Internal => "a bug or an unexpected database error (details in the server log)",
            DatabaseUnavailable => "the database is not answering; retry later",
            NotReady => "`/readyz`: the database is not answering or migrations are not applied",
        }
    }
}

/// The OpenAPI responses of the given error codes, one per status, each naming its
/// codes and when they are sent.
pub fn responses_for(
    codes: &[ErrorCode],
) -> std::collections::BTreeMap<String, utoipa::openapi::RefOr<utoipa::openapi::response::Response>>
{
    use utoipa::openapi::{content::Content, response::Response, Ref, RefOr};
    let mut by_status: std::collections::BTreeMap<u16, Vec<ErrorCode>> = Default::default();
    for &code in codes {
        by_status
            .entry(code.status().as_u16())
            .or_default()
            .push(code);
    }
    by_status
        .into_iter()
        .map(|(status, codes)| {
            let description = codes
                .iter()
                .map(|c| format!("`{}`: {}", c.as_str(), c.when()))
                .collect::<Vec<_>>()
                .join("; ");
            let example = serde_json::json!({"error": {"code": codes[0].as_str(), "message": codes[0].when()}});
            let content = Content::builder()
                .schema(Some(Ref::from_schema_name("ErrorBody")))
                .example(Some(example))
                .build();
            let response = Response::builder()
                .description(description)
                .content("application/json", content)
                .build();
            (status.to_string(), RefOr::T(response))
        })
        .collect()
}

/// `error_responses!(Name: Code, Code, …)`: a type whose OpenAPI responses are these
/// error codes' (for `responses(Name)` in `#[utoipa::path]`).
macro_rules! error_responses {
    ($name:ident: $($code:ident),+ $(,)?) => {
        pub struct $name;
        impl $name {
            #[allow(dead_code)]
            pub const CODES: &'static [$crate::api::error::ErrorCode] =
                &[$($crate::api::error::ErrorCode::$code),+];
        }
        impl utoipa::IntoResponses for $name {
            fn responses() -> std::collections::BTreeMap<
                String,
                utoipa::openapi::RefOr<utoipa::openapi::response::Response>,
            > {
                $crate::api::error::responses_for(Self::CODES)
            }
        }
    };
}
pub(crate) use error_responses;

#[derive(Debug, Clone, thiserror::Error)]
#[error("{}: {message}", code.as_str())]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
}

/// The body of every error answer.
#[derive(Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Serialize, ToSchema)]
pub struct ErrorDetail {
    pub code: ErrorCode,
    /// What went wrong and what to fix, in words.
    pub message: String,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError {
            code,
            message: message.into(),
        }
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::NotFound, message)
    }

    pub fn unauthorized() -> Self {
        Self::new(
            ErrorCode::Unauthorized,
            "send the API key as `Authorization: Bearer <key>`",
        )
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.code.status()
    }

    fn error_response(&self) -> HttpResponse {
        let mut response = HttpResponse::build(self.code.status());
        if self.code == ErrorCode::Unauthorized {
            response.insert_header((header::WWW_AUTHENTICATE, "Bearer"));
        }
        response.json(ErrorBody {
            error: ErrorDetail {
                code: self.code,
                message: self.message.clone(),
            },
        })
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        // The detail goes to the log, not to the client.
        tracing::error!(error = %e, "store error while serving a request");
        match e {
            StoreError::Unavailable(_) => ApiError::new(
                ErrorCode::DatabaseUnavailable,
                "the database is not answering; retry later",
            ),
            StoreError::Other(_) | StoreError::Fenced => {
                ApiError::new(ErrorCode::Internal, "internal error; see the server log")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_is_listed_once_and_serializes_as_its_name() {
        let mut names: Vec<&str> = ErrorCode::ALL.iter().map(|c| c.as_str()).collect();
        for code in ErrorCode::ALL {
            assert_eq!(
                serde_json::to_value(code).unwrap(),
                serde_json::Value::from(code.as_str())
            );
        }
        names.sort();
        names.dedup();
        assert_eq!(names.len(), ErrorCode::ALL.len());
    }
}
