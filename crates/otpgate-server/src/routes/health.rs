//! `/healthz` (the process answers) and `/readyz` (the store answers). A
//! caller sees only ready or unavailable; the detail (store error, outbox
//! depth, channel names and their last errors) is for the operator, who
//! sends `Authorization: Bearer <health.token>`.

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;
use axum::routing::get;
use serde_json::json as j;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::error::json;
use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
}

async fn healthz() -> Response {
    json(StatusCode::OK, &j!({"status": "ok"}))
}

/// Whether the request carries the configured health token.
fn operator(state: &AppState, headers: &HeaderMap) -> bool {
    let Some(expected) = state
        .settings
        .health
        .token
        .as_ref()
        .filter(|t| !t.is_empty())
    else {
        return false;
    };
    let Some(given) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    else {
        return false;
    };
    // Digests first: `ct_eq` on different lengths would answer at once.
    let want = Sha256::digest(expected.expose().as_bytes());
    let got = Sha256::digest(given.trim().as_bytes());
    want.as_slice().ct_eq(got.as_slice()).into()
}

async fn readyz(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let store = state.store.ping().await;
    if !operator(&state, &headers) {
        let (status, word) = if store.is_ok() {
            (StatusCode::OK, "ready")
        } else {
            (StatusCode::SERVICE_UNAVAILABLE, "unavailable")
        };
        return json(status, &j!({ "status": word }));
    }
    let depth = match &store {
        Ok(()) => state.store.outbox_depth().await.ok(),
        Err(_) => None,
    };
    let channels = state.delivery.health();
    let status = if store.is_ok() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    json(
        status,
        &j!({
            "status": if store.is_ok() { "ready" } else { "unavailable" },
            "store": {
                "backend": state.store.backend(),
                "ok": store.is_ok(),
                "error": store.err().map(|e| e.to_string()),
            },
            "outbox": depth.map(|d| j!({"queued": d.queued, "inFlight": d.in_flight, "failed": d.failed})),
            "channels": channels,
        }),
    )
}
