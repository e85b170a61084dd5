//! `/receipts/{channel}`: delivery receipts from HTTP gateways that call back
//! (Kannel's `dlr-url`, Twilio's status callback, or a generic id + status),
//! recorded on the message the channel sent. Unknown channels and messages
//! are answered without revealing anything beyond "not recorded".

use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::get;
use otpgate_sms::ReceiptOutcome;
use serde_json::json as j;

use crate::error::{ApiError, json};
use crate::params::Params;
use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new().route("/receipts/{channel}", get(receipt).post(receipt))
}

async fn receipt(
    State(state): State<AppState>,
    Path(channel): Path<String>,
    params: Result<Params, ApiError>,
) -> Result<Response, ApiError> {
    let params = params?;
    if !state.settings.channels.contains_key(&channel) {
        return Err(ApiError::http(
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            "no such channel",
        ));
    }
    let outcome = otpgate_sms::handle_http_receipt(
        state.store.as_ref(),
        state.clock.as_ref(),
        &channel,
        params.pairs(),
    )
    .await
    .map_err(|e| match e {
        otpgate_sms::ReceiptError::Store(s) => ApiError::from(s),
        other => ApiError::bad_request(other.to_string()),
    })?;
    let word = match outcome {
        ReceiptOutcome::Recorded => "recorded",
        ReceiptOutcome::Unmatched => "unmatched",
        ReceiptOutcome::Ignored => "ignored",
    };
    Ok(json(StatusCode::OK, &j!({"status": word})))
}
