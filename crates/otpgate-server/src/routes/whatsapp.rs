//! `/webhooks/whatsapp/{channel}`: the WhatsApp Business Cloud API's webhook
//! for a `type = "whatsapp"` channel.
//!
//! - `GET` is Meta's registration handshake: with `hub.mode=subscribe` and
//!   `hub.verify_token` equal to the channel's `verify_token`, the answer is
//!   `hub.challenge` as plain text; anything else is 403.
//! - `POST` carries message statuses. Its `X-Hub-Signature-256` must be the
//!   HMAC-SHA256 of the raw body under the channel's `app_secret`, checked
//!   before the body is parsed: a missing or wrong signature is 401 and
//!   nothing is recorded. That signature is the webhook's authentication (a
//!   channel without `app_secret` refuses every call). `delivered` and
//!   `read` mark the message delivered (which cancels the fallback steps
//!   still held), `failed` undeliverable.
//!
//! A body is read up to 256 KiB (Meta batches statuses); the signature check
//! is one HMAC over it, so a stranger's call costs little.

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use otpgate_sms::config::ChannelConfig;
use otpgate_sms::whatsapp::{WebhookSecrets, parse_webhook, verify_signature, webhook_secrets};
use serde_json::json as j;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::error::{ApiError, json};
use crate::params::Params;
use crate::state::AppState;

/// Largest webhook body read.
const MAX_BODY: usize = 256 * 1024;

pub fn router() -> Router<AppState> {
    Router::new().route(
        "/webhooks/whatsapp/{channel}",
        get(handshake).post(statuses),
    )
}

fn secrets(state: &AppState, channel: &str) -> Result<WebhookSecrets, ApiError> {
    let no_such_channel = || ApiError::http(StatusCode::NOT_FOUND, "NOT_FOUND", "no such channel");
    let Some(ChannelConfig::Whatsapp(c)) = state.settings.channels.get(channel) else {
        return Err(no_such_channel());
    };
    // Resolved as at start, where a missing variable stopped the server;
    // should it fail now, refuse rather than accept unauthenticated.
    webhook_secrets(channel, c, &|k| std::env::var(k).ok()).map_err(|e| ApiError::internal(&e))
}

async fn handshake(
    State(state): State<AppState>,
    Path(channel): Path<String>,
    params: Result<Params, ApiError>,
) -> Result<Response, ApiError> {
    let params = params?;
    let secrets = secrets(&state, &channel)?;
    let forbidden = || ApiError::http(StatusCode::FORBIDDEN, "FORBIDDEN", "verification refused");
    let expected = secrets.verify_token.ok_or_else(forbidden)?;
    let given = params.get("hub.verify_token").unwrap_or("");
    let same: bool = Sha256::digest(expected.expose().as_bytes())
        .as_slice()
        .ct_eq(Sha256::digest(given.as_bytes()).as_slice())
        .into();
    if params.get("hub.mode") != Some("subscribe") || !same {
        return Err(forbidden());
    }
    // Meta's challenge is a number; echo only something that looks like one.
    let challenge: String = params
        .get("hub.challenge")
        .unwrap_or("")
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .take(64)
        .collect();
    let mut resp = (StatusCode::OK, challenge).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    Ok(resp)
}

async fn statuses(
    State(state): State<AppState>,
    Path(channel): Path<String>,
    req: Request<Body>,
) -> Result<Response, ApiError> {
    let secrets = secrets(&state, &channel)?;
    let signature = req
        .headers()
        .get("x-hub-signature-256")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = axum::body::to_bytes(req.into_body(), MAX_BODY)
        .await
        .map_err(|_| {
            ApiError::http(
                StatusCode::PAYLOAD_TOO_LARGE,
                "PAYLOAD_TOO_LARGE",
                "webhook body too large",
            )
        })?;
    let ok = secrets
        .app_secret
        .as_ref()
        .is_some_and(|s| verify_signature(s, &body, signature.as_deref()));
    if !ok {
        tracing::warn!(
            channel = %channel,
            signed = signature.is_some(),
            "WhatsApp webhook refused: its signature is missing or wrong"
        );
        return Err(ApiError::unauthorized(
            "X-Hub-Signature-256 is missing or does not match",
        ));
    }
    let receipts = parse_webhook(&body).map_err(ApiError::bad_request)?;
    let matched = otpgate_sms::receipt::record_receipts(
        state.store.as_ref(),
        state.clock.as_ref(),
        &channel,
        &receipts,
    )
    .await?;
    Ok(json(
        StatusCode::OK,
        &j!({"status": "ok", "statuses": receipts.len(), "matched": matched}),
    ))
}
