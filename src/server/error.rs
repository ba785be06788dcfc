//! The one HTTP error type, [`ApiError`], and the extractors whose refusals become it: every
//! answer that is not a success is `{"error": {"code", "message", ...}}` with a status that
//! says whose fault it was. Internal failures are logged here and answered without details.

use std::time::Duration;

use axum::body::Body;
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request};
use axum::http::header::{CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE};
use axum::http::request::Parts;
use axum::http::{HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Json;
use http_body_util::BodyExt;
use serde::de::DeserializeOwned;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::error::LeaseError;

/// The largest request body accepted, in bytes (1 MiB).
pub const MAX_BODY_BYTES: usize = 1 << 20;

/// How much of an oversized body is read (and dropped) so that the client can read the 413.
const DRAIN_LIMIT_BYTES: usize = 16 << 20;

/// How long reading an oversized body may take before the connection is closed instead.
const DRAIN_TIME: Duration = Duration::from_secs(5);

/// Why a request failed, as the server answers it.
#[derive(Debug)]
pub enum ApiError {
    /// A lease operation failed; its code and fields are answered as they are, except a
    /// storage failure, whose details stay in the log.
    Lease(LeaseError),
    /// No token, a malformed `Authorization` header, or an unknown or revoked token (401).
    Unauthorized(String),
    /// A valid token that may not do this (403): not an admin token, or a request naming
    /// another agent than the token's.
    Forbidden(String),
    /// The body is larger than [`MAX_BODY_BYTES`] (413).
    PayloadTooLarge,
    /// The body is not declared as JSON (415).
    UnsupportedMediaType(String),
    /// No route has this path (404).
    NoRoute {
        /// The method asked for.
        method: Method,
        /// The path asked for.
        path: String,
    },
    /// The route exists but not with this method (405).
    MethodNotAllowed {
        /// The method asked for.
        method: Method,
        /// The path asked for.
        path: String,
    },
    /// The server is stopping; a waiting acquisition was given up (503).
    ShuttingDown,
}

impl From<LeaseError> for ApiError {
    fn from(error: LeaseError) -> Self {
        ApiError::Lease(error)
    }
}

impl ApiError {
    /// An `invalid_input` error about `what`.
    pub fn invalid(what: impl Into<String>, why: impl Into<String>) -> ApiError {
        ApiError::Lease(LeaseError::invalid(what, why))
    }

    /// The status this error is answered with.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::Lease(error) => lease_status(error),
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::NoRoute { .. } => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The short code in the body, which [`LeaseError::code`] gives for lease errors.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::Lease(error) => error.code(),
            ApiError::Unauthorized(_) => "unauthorized",
            ApiError::Forbidden(_) => "forbidden",
            ApiError::PayloadTooLarge => "payload_too_large",
            ApiError::UnsupportedMediaType(_) => "invalid_input",
            ApiError::NoRoute { .. } => "no_route",
            ApiError::MethodNotAllowed { .. } => "method_not_allowed",
            ApiError::ShuttingDown => "shutting_down",
        }
    }

    fn body(&self) -> Value {
        let error =
            |message: String| json!({ "error": { "code": self.code(), "message": message } });
        match self {
            ApiError::Lease(LeaseError::Storage { message }) => {
                // The cause (file names, SQL) is for the operator, not the client.
                tracing::error!(cause = %message, "request failed in the store");
                error("the server could not complete the request; the cause is in its log".into())
            }
            ApiError::Lease(other) => other.to_json(),
            ApiError::Unauthorized(why) | ApiError::Forbidden(why) => error(why.clone()),
            ApiError::PayloadTooLarge => {
                let mut body = error(format!(
                    "the request body is larger than the limit of {MAX_BODY_BYTES} bytes"
                ));
                body["error"]["limit_bytes"] = json!(MAX_BODY_BYTES);
                body
            }
            ApiError::UnsupportedMediaType(got) => {
                let mut body = error(format!(
                    "invalid content-type: the body must be JSON (application/json), not {got:?}"
                ));
                body["error"]["what"] = json!("content-type");
                body["error"]["why"] = json!(format!("{got:?} is not application/json"));
                body
            }
            ApiError::NoRoute { method, path } => error(format!(
                "no route for {method} {path}; the routes are listed at /v1/openapi.json"
            )),
            ApiError::MethodNotAllowed { method, path } => error(format!(
                "{path} does not take {method}; the routes are listed at /v1/openapi.json"
            )),
            ApiError::ShuttingDown => error(
                "the server is shutting down; the request was given up and changed nothing \
                 it had not acknowledged; retry once the server is back"
                    .into(),
            ),
        }
    }
}

/// The status of a lease error: the request's fault (4xx) or the server's (500).
fn lease_status(error: &LeaseError) -> StatusCode {
    match error {
        LeaseError::AlreadyHeld { .. }
        | LeaseError::WaitTimeout { .. }
        | LeaseError::Deadlock { .. }
        | LeaseError::LeaseLost { .. }
        | LeaseError::RenewalLimitReached { .. } => StatusCode::CONFLICT,
        LeaseError::NotFound { .. } => StatusCode::NOT_FOUND,
        LeaseError::NotHolder { .. } => StatusCode::FORBIDDEN,
        LeaseError::InvalidInput { .. } => StatusCode::BAD_REQUEST,
        LeaseError::Storage { .. } => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status(), Json(self.body())).into_response();
        let headers = response.headers_mut();
        match self {
            ApiError::Unauthorized(_) => {
                headers.insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            ApiError::ShuttingDown => {
                headers.insert(RETRY_AFTER, HeaderValue::from_static("1"));
            }
            _ => {}
        }
        response
    }
}

/// A JSON request body: like [`axum::Json`], but every refusal is an [`ApiError`], an empty
/// body reads as `{}`, and a missing `content-type` is accepted (one that is not JSON is not).
#[derive(Debug)]
pub struct JsonBody<T>(pub T);

impl<S, T> FromRequest<S> for JsonBody<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(request: Request, _state: &S) -> Result<Self, ApiError> {
        if let Some(content_type) = request.headers().get(CONTENT_TYPE) {
            let text = content_type.to_str().unwrap_or_default();
            let essence = text
                .split(';')
                .next()
                .unwrap_or_default()
                .trim()
                .to_ascii_lowercase();
            if essence != "application/json" && !essence.ends_with("+json") {
                return Err(ApiError::UnsupportedMediaType(text.to_string()));
            }
        }
        let bytes = read_body(request.into_body()).await?;
        let text: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) {
            b"{}"
        } else {
            &bytes
        };
        serde_json::from_slice(text).map(JsonBody).map_err(|error| {
            ApiError::invalid("body", format!("the JSON body is not valid: {error}"))
        })
    }
}

/// Reads a whole body of at most [`MAX_BODY_BYTES`]. A longer one is drained (see [`drain`])
/// and refused.
async fn read_body(mut body: Body) -> Result<Vec<u8>, ApiError> {
    let mut bytes = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame
            .map_err(|e| ApiError::invalid("body", format!("cannot read the request body: {e}")))?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        if bytes.len() + data.len() > MAX_BODY_BYTES {
            drain(body, bytes.len() + data.len()).await;
            return Err(ApiError::PayloadTooLarge);
        }
        bytes.extend_from_slice(&data);
    }
    Ok(bytes)
}

/// Reads and drops the rest of an oversized body, up to [`DRAIN_LIMIT_BYTES`] in all and for
/// at most [`DRAIN_TIME`], and says whether it reached the end. Answering before the client has
/// sent its body would close the connection with unread data, which resets it, and most
/// clients would then report "connection reset" instead of the 413.
pub(crate) async fn drain(mut body: Body, mut seen: usize) -> bool {
    let drained = tokio::time::timeout(DRAIN_TIME, async {
        while let Some(frame) = body.frame().await {
            match frame {
                Ok(frame) => {
                    seen += frame.data_ref().map_or(0, |d| d.len());
                    if seen > DRAIN_LIMIT_BYTES {
                        return false;
                    }
                }
                Err(_) => return false,
            }
        }
        true
    })
    .await;
    drained.unwrap_or(false)
}

/// A query string: like [`axum::extract::Query`], but refusals are [`ApiError`]s.
#[derive(Debug)]
pub struct QueryParams<T>(pub T);

impl<S, T> FromRequestParts<S> for QueryParams<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        query_of(&parts.uri).map(QueryParams)
    }
}

fn query_of<T: DeserializeOwned>(uri: &Uri) -> Result<T, ApiError> {
    Query::<T>::try_from_uri(uri)
        .map(|Query(value)| value)
        .map_err(|rejection| {
            let text = rejection.body_text();
            let why = text
                .strip_prefix("Failed to deserialize query string: ")
                .unwrap_or(&text);
            ApiError::invalid("query", format!("the query string is not valid: {why}"))
        })
}

/// The `{id}` of a lease route, which must be a UUID.
#[derive(Debug)]
pub struct LeaseId(pub Uuid);

impl<S: Send + Sync> FromRequestParts<S> for LeaseId {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Path(text) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|rejection| ApiError::invalid("lease_id", rejection.body_text()))?;
        Uuid::parse_str(&text).map(LeaseId).map_err(|_| {
            ApiError::invalid("lease_id", format!("{text:?} is not a lease id (a UUID)"))
        })
    }
}

/// A single text segment of a route (`{agent}`, `{key}`).
#[derive(Debug)]
pub struct Segment(pub String);

impl<S: Send + Sync> FromRequestParts<S> for Segment {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        Path::<String>::from_request_parts(parts, state)
            .await
            .map(|Path(text)| Segment(text))
            .map_err(|rejection| ApiError::invalid("path", rejection.body_text()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_errors_get_the_documented_statuses() {
        let id = Uuid::nil();
        let cases = [
            (LeaseError::AlreadyHeld { conflicts: vec![] }, 409),
            (
                LeaseError::WaitTimeout {
                    waited_ms: 1,
                    conflicts: vec![],
                },
                409,
            ),
            (LeaseError::Deadlock { cycle: vec![] }, 409),
            (
                LeaseError::LeaseLost {
                    lease_id: id,
                    status: crate::LeaseStatus::Expired,
                },
                409,
            ),
            (
                LeaseError::RenewalLimitReached {
                    lease_id: id,
                    max_renewals: 1,
                },
                409,
            ),
            (
                LeaseError::NotFound {
                    lease_id: id.to_string(),
                },
                404,
            ),
            (
                LeaseError::NotHolder {
                    lease_id: id,
                    holder: "a".into(),
                    agent_id: "b".into(),
                },
                403,
            ),
            (LeaseError::invalid("x", "y"), 400),
            (LeaseError::storage("disk on fire at /secret/path"), 500),
        ];
        for (error, status) in cases {
            let api = ApiError::from(error.clone());
            assert_eq!(api.status().as_u16(), status, "{error:?}");
            assert_eq!(api.code(), error.code());
        }
        let body = ApiError::from(LeaseError::storage("disk on fire at /secret/path")).body();
        assert!(!body.to_string().contains("/secret/path"), "{body}");
    }
}
