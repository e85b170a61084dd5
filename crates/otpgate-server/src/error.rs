//! The HTTP layer's one error type per envelope. Each carries the contract's
//! response code and a reason for the client; internal causes are logged
//! here with their chain and never sent (contract §4: a failure has no
//! `data`; the one that does, 506, is built with the send response in
//! `routes/verification.rs`).

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use otpgate_api::{Envelope, ResponseCode};
use otpgate_store::StoreError;

/// A failure on the send and validate endpoints (and the fallbacks).
#[derive(Debug)]
pub struct ApiError {
    pub code: ResponseCode,
    /// Overrides the contract's HTTP status for codes outside its table
    /// (404, 405, 413).
    pub http: Option<StatusCode>,
    /// Overrides the envelope's `message` for those same codes.
    pub message: Option<&'static str>,
    pub reason: String,
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(code: ResponseCode, reason: impl Into<String>) -> Self {
        Self {
            code,
            http: None,
            message: None,
            reason: reason.into(),
            retry_after: None,
        }
    }

    pub fn bad_request(reason: impl Into<String>) -> Self {
        Self::new(ResponseCode::BadRequest, reason)
    }

    pub fn unauthorized(reason: impl Into<String>) -> Self {
        Self::new(ResponseCode::Unauthorized, reason)
    }

    pub fn rate_limited(reason: impl Into<String>, retry_after: u64) -> Self {
        let mut e = Self::new(ResponseCode::MaximumLimitReached, reason);
        e.retry_after = Some(retry_after.max(1));
        e
    }

    /// The password hasher is full (see `password::Hasher`): nothing was
    /// checked; try again in a second.
    pub fn busy() -> Self {
        let mut e = Self::new(
            ResponseCode::ServiceUnavailable,
            "the server is busy checking passwords; nothing was checked, try again shortly",
        );
        e.retry_after = Some(1);
        e
    }

    /// Outside the contract's table: unknown paths, wrong methods, bodies too
    /// large. Still the same envelope, so clients parse every failure alike.
    pub fn http(status: StatusCode, message: &'static str, reason: impl Into<String>) -> Self {
        let mut e = Self::new(ResponseCode::Other(i64::from(status.as_u16())), reason);
        e.http = Some(status);
        e.message = Some(message);
        e
    }

    /// An internal fault: logged with its cause, answered with a bland 500.
    pub fn internal(cause: &dyn std::fmt::Display) -> Self {
        tracing::error!(error = %cause, "internal error");
        Self::new(ResponseCode::ServerError, "internal error")
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Unavailable(cause) => {
                tracing::warn!(error = %cause, "storage unavailable");
                Self::new(
                    ResponseCode::ServiceUnavailable,
                    "storage is unavailable; nothing was stored or charged",
                )
            }
            other => Self::internal(&other),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.http.unwrap_or_else(|| {
            StatusCode::from_u16(self.code.http_status()).unwrap_or(StatusCode::BAD_REQUEST)
        });
        let message = self
            .message
            .unwrap_or_else(|| self.code.message())
            .to_owned();
        let mut resp = json(
            status,
            &Envelope::<()> {
                response_code: self.code,
                message,
                data: None,
                error_message: Some(self.reason),
            },
        );
        add_retry_after(&mut resp, self.retry_after);
        resp
    }
}

/// A failure of the token endpoint: `{"status": N, "error": "..."}` with the
/// HTTP status equal to `status` (contract §1).
#[derive(Debug)]
pub struct TokenApiError {
    pub status: StatusCode,
    pub reason: String,
    pub retry_after: Option<u64>,
}

impl TokenApiError {
    pub fn new(status: StatusCode, reason: impl Into<String>) -> Self {
        Self {
            status,
            reason: reason.into(),
            retry_after: None,
        }
    }
}

impl From<ApiError> for TokenApiError {
    fn from(e: ApiError) -> Self {
        let status = e.http.unwrap_or_else(|| {
            StatusCode::from_u16(e.code.http_status()).unwrap_or(StatusCode::BAD_REQUEST)
        });
        Self {
            status,
            reason: e.reason,
            retry_after: e.retry_after,
        }
    }
}

impl IntoResponse for TokenApiError {
    fn into_response(self) -> Response {
        let body = otpgate_api::TokenResponse {
            status: i64::from(self.status.as_u16()),
            token: None,
            error: Some(self.reason),
        };
        let mut resp = json(self.status, &body);
        add_retry_after(&mut resp, self.retry_after);
        resp
    }
}

/// Serialises `body` with `Content-Type: application/json`.
pub fn json<T: serde::Serialize>(status: StatusCode, body: &T) -> Response {
    match serde_json::to_vec(body) {
        Ok(bytes) => (
            status,
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            bytes,
        )
            .into_response(),
        Err(e) => {
            tracing::error!(error = %e, "response did not serialise");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

/// Sets `Retry-After` to `secs` (whole seconds, as [`crate::limits::retry_after_secs`]
/// rounds them), when there is a wait to tell.
pub fn add_retry_after(resp: &mut Response, secs: Option<u64>) {
    if let Some(s) = secs
        && let Ok(v) = HeaderValue::from_str(&s.to_string())
    {
        resp.headers_mut().insert(header::RETRY_AFTER, v);
    }
}
