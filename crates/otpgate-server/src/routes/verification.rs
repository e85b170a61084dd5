//! Send (§2), validate (§3) and status (an extension) on both the v2 and v3
//! paths. The only difference between versions is the `verificationId` of
//! validate and status: a string on v2, a number on v3.

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::{get, post};
use otpgate_api::{
    Envelope, ResponseCode, SendData, StatusData, VERIFICATION_COMPLETED, ValidateData, WireId,
    WireSeconds, paths,
};

use crate::auth::authenticate;
use crate::client::Client;
use crate::error::{ApiError, json};
use crate::params::Params;
use crate::service::{self, SendRequest, SendResult};
use crate::state::AppState;

#[derive(Clone, Copy)]
enum Version {
    V2,
    V3,
}

pub fn router() -> Router<AppState> {
    Router::new()
        .route(paths::SEND_V2, post(send))
        .route(paths::SEND_V3, post(send))
        .route(paths::VALIDATE_V2, get(validate_v2).post(validate_v2))
        .route(paths::VALIDATE_V3, get(validate_v3).post(validate_v3))
        .route(paths::STATUS_V2, get(status_v2).post(status_v2))
        .route(paths::STATUS_V3, get(status_v3).post(status_v3))
}

async fn status_v2(
    state: State<AppState>,
    client: Client,
    headers: HeaderMap,
    params: Result<Params, ApiError>,
) -> Result<Response, ApiError> {
    status(state, client, headers, params, Version::V2).await
}

async fn status_v3(
    state: State<AppState>,
    client: Client,
    headers: HeaderMap,
    params: Result<Params, ApiError>,
) -> Result<Response, ApiError> {
    status(state, client, headers, params, Version::V3).await
}

/// Read-only: polling it changes nothing, so a client may poll as often as
/// its token allows; each poll is one indexed read.
async fn status(
    State(state): State<AppState>,
    client: Client,
    headers: HeaderMap,
    params: Result<Params, ApiError>,
    version: Version,
) -> Result<Response, ApiError> {
    let account = authenticate(&state, &headers, &client).await?;
    let v = service::status(&state, &account, &params?).await?;
    let now = state.clock.now_ms();
    let left_ms = (v.expires_at - now).max(0);
    Ok(success(StatusData {
        verification_id: match version {
            Version::V2 => WireId::string(v.id.get()),
            Version::V3 => WireId::number(v.id.get()),
        },
        mobile_number: Some(v.destination.national().to_owned()),
        verification_status: service::status_name(&v, now).to_owned(),
        delivery_status: v.delivery.as_str().to_ascii_uppercase(),
        channel: v.channel.clone(),
        flow_type: Some(v.flow_type.clone()),
        attempts_left: v.max_attempts.saturating_sub(v.wrong_attempts),
        timeout: WireSeconds(u64::try_from(left_ms).unwrap_or(0).div_ceil(1000)),
        created_at: v.created_at,
        expires_at: v.expires_at,
        completed_at: v.completed_at,
        response_code: Some(ResponseCode::Success),
        error_message: None,
        transaction_id: Some(v.transaction_id.clone()),
        reference_id: Some(v.transaction_id.clone()),
    }))
}

async fn send(
    State(state): State<AppState>,
    client: Client,
    headers: HeaderMap,
    params: Result<Params, ApiError>,
) -> Result<Response, ApiError> {
    let account = authenticate(&state, &headers, &client).await?;
    let req = SendRequest::parse(&state, &account, &params?)?;
    let timeout = req.timeout_secs;
    match service::send(&state, &account, req).await? {
        SendResult::Created(v) => {
            let data = SendData {
                verification_id: WireId::string(v.id.get()),
                mobile_number: Some(v.destination.national().to_owned()),
                response_code: Some(ResponseCode::Success),
                error_message: None,
                timeout: Some(WireSeconds(u64::from(timeout))),
                sms_cli: None,
                transaction_id: Some(v.transaction_id.clone()),
                reference_id: Some(v.transaction_id.clone()),
                flow_type: Some(v.flow_type.clone()),
            };
            Ok(success(data))
        }
        SendResult::Pending(v, left) => {
            let mut e = ApiError::new(ResponseCode::RequestAlreadyExists, "");
            e.pending = Some(Box::new(service::pending_data(&v, left)));
            Err(e)
        }
    }
}

async fn validate_v2(
    state: State<AppState>,
    client: Client,
    headers: HeaderMap,
    params: Result<Params, ApiError>,
) -> Result<Response, ApiError> {
    validate(state, client, headers, params, Version::V2).await
}

async fn validate_v3(
    state: State<AppState>,
    client: Client,
    headers: HeaderMap,
    params: Result<Params, ApiError>,
) -> Result<Response, ApiError> {
    validate(state, client, headers, params, Version::V3).await
}

async fn validate(
    State(state): State<AppState>,
    client: Client,
    headers: HeaderMap,
    params: Result<Params, ApiError>,
    version: Version,
) -> Result<Response, ApiError> {
    let account = authenticate(&state, &headers, &client).await?;
    let v = service::validate(&state, &account, &params?).await?;
    let id = match version {
        Version::V2 => WireId::string(v.id.get()),
        Version::V3 => WireId::number(v.id.get()),
    };
    Ok(success(ValidateData {
        verification_id: id,
        mobile_number: Some(v.destination.national().to_owned()),
        verification_status: Some(VERIFICATION_COMPLETED.to_owned()),
        response_code: Some(ResponseCode::Success),
        error_message: None,
        transaction_id: Some(v.transaction_id.clone()),
        reference_id: Some(v.transaction_id.clone()),
        auth_token: None,
    }))
}

fn success<T: serde::Serialize>(data: T) -> Response {
    json(
        StatusCode::OK,
        &Envelope {
            response_code: ResponseCode::Success,
            message: ResponseCode::Success.message().to_owned(),
            data: Some(data),
            error_message: None,
        },
    )
}
