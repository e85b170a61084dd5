//! `GET /metrics` (OpenMetrics text), on the API listener or a listener of
//! its own, behind an optional bearer token. What is counted is in
//! [`crate::metrics`].

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::metrics::CONTENT_TYPE;
use crate::state::AppState;

/// `/metrics`, for the API listener or a listener of its own.
pub fn router() -> Router<AppState> {
    Router::new().route("/metrics", get(scrape))
}

async fn scrape(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if let Some(token) = state
        .settings
        .metrics
        .bearer_token
        .as_ref()
        .filter(|t| !t.is_empty())
    {
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        // Digests first, so the comparison's time says nothing of length.
        let ok: bool = Sha256::digest(given.as_bytes())
            .ct_eq(&Sha256::digest(token.expose().as_bytes()))
            .into();
        if !ok {
            return (
                StatusCode::UNAUTHORIZED,
                [(header::WWW_AUTHENTICATE, "Bearer")],
                "a bearer token is required\n",
            )
                .into_response();
        }
    }
    let body = state
        .metrics
        .render(state.store.as_ref(), state.clock.now_ms())
        .await;
    let mut resp = body.into_response();
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}
