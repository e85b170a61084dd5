//! `GET /auth/v1/authentication/token` (contract §1).

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::get;
use otpgate_api::{TokenResponse, paths};

use crate::client::Client;
use crate::error::{ApiError, TokenApiError, json};
use crate::params::Params;
use crate::service;
use crate::state::AppState;

pub fn router() -> Router<AppState> {
    // POST is accepted too: some clients send it, and it changes nothing.
    Router::new().route(paths::TOKEN, get(token).post(token))
}

async fn token(
    State(state): State<AppState>,
    client: Client,
    params: Result<Params, ApiError>,
) -> Result<Response, TokenApiError> {
    let params = params?;
    let token = service::issue_token(&state, &params, &client).await?;
    Ok(json(
        StatusCode::OK,
        &TokenResponse {
            status: 200,
            token: Some(token),
            error: None,
        },
    ))
}
