//! The HTTP surface: one router per resource, merged here with the
//! fallbacks that keep even unknown paths and wrong methods in the
//! contract's envelope.

mod envelope;
mod health;
pub mod openapi;
mod receipts;
pub mod scrape;
mod token;
mod verification;
mod whatsapp;

use axum::Router;
use axum::http::StatusCode;
use axum::response::IntoResponse;

use crate::error::ApiError;
use crate::state::AppState;

pub fn router(state: AppState) -> Router {
    let mut router = Router::new()
        .merge(token::router())
        .merge(verification::router())
        .merge(health::router())
        .merge(receipts::router())
        .merge(whatsapp::router())
        .merge(openapi::router());
    if state.settings.metrics.enabled && state.settings.metrics.listen.trim().is_empty() {
        router = router.merge(scrape::router());
    }
    if state.settings.console.enabled {
        router = router
            .nest("/console", crate::console::router(&state))
            .route("/console/", crate::console::trailing_slash());
    }
    router
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
}

async fn not_found() -> impl IntoResponse {
    ApiError::http(StatusCode::NOT_FOUND, "NOT_FOUND", "no such endpoint")
}

async fn method_not_allowed() -> impl IntoResponse {
    ApiError::http(
        StatusCode::METHOD_NOT_ALLOWED,
        "METHOD_NOT_ALLOWED",
        "this endpoint does not take that method",
    )
}
