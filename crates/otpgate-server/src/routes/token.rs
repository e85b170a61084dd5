//! `GET /auth/v1/authentication/token` (contract §1).

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::get;
use otpgate_api::{TokenRequest, TokenResponse, paths};
use otpgate_core::{RequestError, TokenCommand};

use super::envelope::request_error;
use crate::client::Client;
use crate::error::{ApiError, TokenApiError, json};
use crate::params::Params;
use crate::state::AppState;
use crate::{limits, service};

pub fn router() -> Router<AppState> {
    // POST is accepted too: some clients send it, and it changes nothing.
    Router::new().route(paths::TOKEN, get(token).post(token))
}

async fn token(
    State(state): State<AppState>,
    client: Client,
    params: Result<Params, ApiError>,
) -> Result<Response, TokenApiError> {
    let cmd = TokenCommand::try_from(params?.read::<TokenRequest>()).map_err(|e| {
        if let RequestError::KeyNotBase64 { customer_id } = &e {
            let name = service::token_name(customer_id);
            limits::audit("token", client.ip, &name, "key is not base64");
        }
        request_error(e, service::timeout_range(&state))
    })?;
    let token = service::issue_token(&state, cmd, &client).await?;
    Ok(json(
        StatusCode::OK,
        &TokenResponse {
            status: 200,
            token: Some(token),
            error: None,
        },
    ))
}
