//! Reading a JSON body with a size limit and errors that name the offending field.

use actix_web::{http::header, web, HttpRequest};
use futures::StreamExt;
use serde::de::DeserializeOwned;

use super::error::{ApiError, ErrorCode};

/// Reads the whole body (at most `limit` bytes) and parses it as `T`.
///
/// Malformed JSON is 400 `malformed_json`; JSON of the wrong shape (unknown field, wrong
/// type, missing field) is 422 `invalid_field` naming the field's path; a body over the
/// limit is 413 `body_too_large`, refused before it is read when Content-Length says so.
pub async fn read_json<T: DeserializeOwned>(
    req: &HttpRequest,
    mut payload: web::Payload,
    limit: usize,
) -> Result<T, ApiError> {
    let too_large = || {
        ApiError::new(
            ErrorCode::BodyTooLarge,
            format!("the request body is larger than api.max_body_bytes ({limit} bytes)"),
        )
    };
    // JSON only, and said so: a cross-site page can POST a body without a Content-Type
    // (or as text/plain) without asking first; it cannot send `application/json`
    // without a CORS preflight, which this server never grants.
    let kind = req
        .headers()
        .get(header::CONTENT_TYPE)
        .map(|v| v.to_str().unwrap_or("?").to_ascii_lowercase());
    let essence = kind
        .as_deref()
        .map(|k| k.split(';').next().unwrap_or("").trim().to_owned());
    let json = essence.as_deref().is_some_and(|e| {
        e == "application/json" || (e.starts_with("application/") && e.ends_with("+json"))
    });
    if !json {
        let sent = essence.map_or_else(|| "no Content-Type".to_owned(), |e| format!("{e:?}"));
        return Err(ApiError::new(
            ErrorCode::UnsupportedMediaType,
            format!(
                "the body is sent with {sent}; send JSON with `Content-Type: application/json`"
            ),
        ));
    }
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(too_large());
    }
    let mut body = web::BytesMut::with_capacity(declared.unwrap_or(1024).min(limit));
    while let Some(chunk) = payload.next().await {
        let chunk = chunk
            .map_err(|e| ApiError::new(ErrorCode::BadBody, format!("cannot read the body: {e}")))?;
        if body.len() + chunk.len() > limit {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    parse_json(&body)
}

/// Parses a JSON object, naming the path of a field of the wrong shape.
pub fn parse_json<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::new(
            ErrorCode::MalformedJson,
            "the body is empty; send a JSON object",
        ));
    }
    let value: serde_json::Value = serde_json::from_slice(body).map_err(|e| {
        ApiError::new(
            ErrorCode::MalformedJson,
            format!("the body is not valid JSON: {e}"),
        )
    })?;
    if !value.is_object() {
        return Err(ApiError::new(
            ErrorCode::InvalidField,
            "the body must be a JSON object",
        ));
    }
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let at = if path == "." {
            String::new()
        } else {
            format!("{path}: ")
        };
        // serde names Rust types ("expected i16"); the client sees JSON words.
        let message = crate::config::plain_serde_message(&e.into_inner().to_string());
        ApiError::new(ErrorCode::InvalidField, format!("{at}{message}"))
    })
}

/// An integer as JSON Schema counts them: `5` and `5.0` alike (the OpenAPI document says
/// `integer`, and a schema-valid request is never refused for its spelling).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Int<T>(pub T);

/// The Rust name serde's messages use for `T` (turned into JSON words for the client).
pub trait IntName: TryFrom<i64> {
    const NAME: &'static str;
}

impl IntName for i16 {
    const NAME: &'static str = "i16";
}

impl IntName for i64 {
    const NAME: &'static str = "i64";
}

impl<'de, T: IntName> serde::Deserialize<'de> for Int<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::{Error, Unexpected, Visitor};
        struct V<T>(std::marker::PhantomData<T>);
        impl<T: IntName> V<T> {
            fn fit<E: Error>(v: i64, shown: Unexpected<'_>) -> Result<Int<T>, E> {
                T::try_from(v)
                    .map(Int)
                    .map_err(|_| E::invalid_value(shown, &T::NAME))
            }
        }
        impl<T: IntName> Visitor<'_> for V<T> {
            type Value = Int<T>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str(T::NAME)
            }
            fn visit_i64<E: Error>(self, v: i64) -> Result<Int<T>, E> {
                Self::fit(v, Unexpected::Signed(v))
            }
            fn visit_u64<E: Error>(self, v: u64) -> Result<Int<T>, E> {
                let signed = i64::try_from(v)
                    .map_err(|_| E::invalid_value(Unexpected::Unsigned(v), &self))?;
                Self::fit(signed, Unexpected::Unsigned(v))
            }
            fn visit_f64<E: Error>(self, v: f64) -> Result<Int<T>, E> {
                // Only where a float still names one integer exactly (|v| ≤ 2^53): a
                // bigger one may be the rounding of an integer out of range.
                const EXACT: f64 = 9_007_199_254_740_992.0;
                if v.fract() == 0.0 && (-EXACT..=EXACT).contains(&v) {
                    Self::fit(v as i64, Unexpected::Float(v))
                } else {
                    Err(E::invalid_type(Unexpected::Float(v), &self))
                }
            }
        }
        d.deserialize_any(V(std::marker::PhantomData))
    }
}

/// Parses a query string as `T`; a bad one is 422 `invalid_query`, its message ending
/// with `usage` (what to send).
pub fn parse_query<T: DeserializeOwned>(query: &str, usage: &str) -> Result<T, ApiError> {
    actix_web::web::Query::<T>::from_query(query)
        .map(actix_web::web::Query::into_inner)
        .map_err(|e| {
            let message = crate::config::plain_serde_message(&e.to_string());
            ApiError::new(ErrorCode::InvalidQuery, format!("{message}; send {usage}"))
        })
}

/// `limit` or its default, refused (422 `invalid_query`) outside 1..=`max`.
pub fn limit(limit: Option<i64>, default: i64, max: i64) -> Result<i64, ApiError> {
    let limit = limit.unwrap_or(default);
    if (1..=max).contains(&limit) {
        Ok(limit)
    } else {
        Err(ApiError::new(
            ErrorCode::InvalidQuery,
            format!("limit is {limit}; send 1 to {max}"),
        ))
    }
}
