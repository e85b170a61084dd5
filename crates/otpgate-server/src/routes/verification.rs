//! Send (§2), validate (§3) and status (an extension) on both the v2 and v3
//! paths. The only difference between versions is the `verificationId` of
//! validate and status: a string on v2, a number on v3 ([`IdStyle`]).
//! Each handler parses the wire request into a core command, calls one
//! service function, and builds the response (the 506 body included).

use axum::Router;
use std::marker::PhantomData;

use axum::extract::{FromRequest, FromRequestParts, Request, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::{get, post};
use otpgate_api::{
    Envelope, PendingData, ResponseCode, SendData, SendRequest, StatusData, VERIFICATION_COMPLETED,
    ValidateData, ValidateRequest, WireId, WireRequest, WireSeconds, paths,
};
use otpgate_core::{RequestError, SendCommand, StatusCommand, ValidateCommand};
use otpgate_store::{Account, SendKind, Verification};

use super::envelope::request_error;
use crate::auth::authenticate;
use crate::client::Client;
use crate::error::{ApiError, json};
use crate::params::Params;
use crate::service::{self, SendResult};
use crate::state::AppState;

/// How a path family writes `verificationId` on validate and status.
trait IdStyle: Send + Sync + 'static {
    fn wire(id: u64) -> WireId;
}

/// v2: a string.
struct V2;
/// v3: a number.
struct V3;

impl IdStyle for V2 {
    fn wire(id: u64) -> WireId {
        WireId::string(id)
    }
}

impl IdStyle for V3 {
    fn wire(id: u64) -> WireId {
        WireId::number(id)
    }
}

pub fn router() -> Router<AppState> {
    Router::new()
        .route(paths::SEND_V2, post(send))
        .route(paths::SEND_V3, post(send))
        .route(paths::VALIDATE_V2, get(validate::<V2>).post(validate::<V2>))
        .route(paths::VALIDATE_V3, get(validate::<V3>).post(validate::<V3>))
        .route(paths::STATUS_V2, get(status::<V2>).post(status::<V2>))
        .route(paths::STATUS_V3, get(status::<V3>).post(status::<V3>))
}

/// A call of an authenticated endpoint: its account, and its request `R`
/// parsed into the command `C` (or why it could not be). The parameters are
/// read before the token is checked, as every endpoint reads them.
struct Call<R, C> {
    account: Account,
    cmd: Result<C, ApiError>,
    request: PhantomData<R>,
}

impl<R, C> FromRequest<AppState> for Call<R, C>
where
    R: WireRequest + Send,
    C: TryFrom<R, Error = RequestError> + Send,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiError> {
        let (mut parts, body) = req.into_parts();
        let Ok(client) = Client::from_request_parts(&mut parts, state).await;
        let headers = parts.headers.clone();
        let params = Params::from_request(Request::from_parts(parts, body), state).await;
        let account = authenticate(state, &headers, &client).await?;
        let cmd = C::try_from(params?.read::<R>())
            .map_err(|e| request_error(e, service::timeout_range(state)));
        Ok(Self {
            account,
            cmd,
            request: PhantomData,
        })
    }
}

/// Seconds of validity left in `ms`, rounded up (0 once expired): the
/// `timeout` of status and of the 506 body.
fn seconds_left(ms: i64) -> WireSeconds {
    WireSeconds(u64::try_from(ms).unwrap_or(0).div_ceil(1000))
}

/// Read-only: polling it changes nothing, so a client may poll as often as
/// its token allows; each poll is one indexed read.
async fn status<I: IdStyle>(
    State(state): State<AppState>,
    call: Call<ValidateRequest, StatusCommand>,
) -> Result<Response, ApiError> {
    let v = service::status(&state, &call.account, &call.cmd?).await?;
    let now = state.clock.now_ms();
    Ok(success(StatusData {
        verification_id: I::wire(v.id.get()),
        mobile_number: Some(v.destination.national().to_owned()),
        verification_status: status_name(&v, now).to_owned(),
        delivery_status: v.delivery.as_str().to_ascii_uppercase(),
        channel: v.channel.clone(),
        flow_type: Some(v.flow_type.clone()),
        attempts_left: v.max_attempts.saturating_sub(v.wrong_attempts),
        timeout: seconds_left(v.expires_at - now),
        created_at: v.created_at,
        expires_at: v.expires_at,
        completed_at: v.completed_at,
        response_code: Some(ResponseCode::Success),
        error_message: None,
        transaction_id: Some(v.transaction_id.clone()),
        reference_id: Some(v.transaction_id.clone()),
    }))
}

/// The `verificationStatus` a verification has at `now`, by validate's
/// precedence (703 → 800 → 705 → 700): what a validation now would answer.
fn status_name(v: &Verification, now: i64) -> &'static str {
    use otpgate_core::VerificationState as S;
    match v.state {
        S::Completed => VERIFICATION_COMPLETED,
        _ if v.wrong_attempts >= v.max_attempts => "VERIFICATION_BLOCKED",
        _ if now >= v.expires_at => "VERIFICATION_EXPIRED",
        S::Failed => "VERIFICATION_FAILED",
        S::Cancelled => "VERIFICATION_CANCELLED",
        S::Pending => "VERIFICATION_PENDING",
    }
}

async fn send(
    State(state): State<AppState>,
    call: Call<SendRequest, SendCommand>,
) -> Result<Response, ApiError> {
    let account = call.account;
    let plan = service::plan_send(&state, &account, call.cmd?)?;
    let timeout = plan.timeout_secs;
    Ok(
        match service::send(&state, &account, plan, SendKind::Normal).await? {
            SendResult::Created(v) => success(SendData {
                verification_id: WireId::string(v.id.get()),
                mobile_number: Some(v.destination.national().to_owned()),
                response_code: Some(ResponseCode::Success),
                error_message: None,
                timeout: Some(WireSeconds(u64::from(timeout))),
                sms_cli: None,
                transaction_id: Some(v.transaction_id.clone()),
                reference_id: Some(v.transaction_id.clone()),
                flow_type: Some(v.flow_type.clone()),
            }),
            SendResult::Pending(v, left_ms) => pending(&v, left_ms),
        },
    )
}

/// The 506 (contract §4, "506 in detail"): the one failure with `data`, the
/// pending verification clients reuse.
fn pending(v: &Verification, left_ms: i64) -> Response {
    let code = ResponseCode::RequestAlreadyExists;
    json(
        StatusCode::from_u16(code.http_status()).unwrap_or(StatusCode::BAD_REQUEST),
        &Envelope {
            response_code: code,
            message: code.message().to_owned(),
            data: Some(PendingData {
                verification_id: WireId::string(v.id.get()),
                mobile_number: Some(v.destination.national().to_owned()),
                response_code: Some(code),
                error_message: Some(code.message().to_owned()),
                timeout: Some(seconds_left(left_ms)),
            }),
            error_message: None,
        },
    )
}

async fn validate<I: IdStyle>(
    State(state): State<AppState>,
    call: Call<ValidateRequest, ValidateCommand>,
) -> Result<Response, ApiError> {
    let cmd = call
        .cmd
        .inspect_err(|_| service::validation_unparsed(&state))?;
    let v = service::validate(&state, &call.account, &cmd).await?;
    Ok(success(ValidateData {
        verification_id: I::wire(v.id.get()),
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
