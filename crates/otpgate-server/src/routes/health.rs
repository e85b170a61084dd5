//! `/healthz` (the process answers) and `/readyz` (the store answers; with
//! channel health and outbox depth as detail).

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::get;
use serde_json::json as j;

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

async fn readyz(State(state): State<AppState>) -> Response {
    let store = state.store.ping().await;
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
