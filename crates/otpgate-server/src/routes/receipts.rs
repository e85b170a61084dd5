//! `/receipts/{channel}`: delivery receipts from HTTP gateways that call back
//! (Kannel's `dlr-url`, Twilio's status callback, or a generic id + status),
//! recorded on the message the channel sent. Unknown channels and messages
//! are answered without revealing anything beyond "not recorded".
//!
//! A receipt can fail a verification (validate answers 700) and refund it,
//! so a channel with a `receipt_token` takes only callbacks whose `token`
//! parameter equals it: anything else is refused with 401 before the store
//! is touched. A channel without one refuses every callback (401) unless it
//! opted out with `receipts_unauthenticated = true` (the SMS crate warns
//! about that at start), and a channel that is not HTTP takes none: its
//! receipts never come this way, so one naming it can only be forged.

use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::get;
use otpgate_core::SecretString;
use otpgate_sms::ReceiptOutcome;
use otpgate_sms::config::ReceiptAuth;
use serde_json::json as j;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

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
    let no_such_channel = || ApiError::http(StatusCode::NOT_FOUND, "NOT_FOUND", "no such channel");
    let config = state
        .settings
        .channels
        .get(&channel)
        .ok_or_else(no_such_channel)?;
    // The same resolution the channel was built with at start, where a
    // missing variable or an empty token already stopped the server; should
    // it fail now (the variable was removed), refuse rather than accept
    // unauthenticated. The error names the variable, never a value.
    let auth = otpgate_sms::config::receipt_auth(&channel, config, &|k| std::env::var(k).ok())
        .map_err(|e| ApiError::internal(&e))?;
    match auth {
        ReceiptAuth::NotHttp => return Err(no_such_channel()),
        ReceiptAuth::Open => {}
        ReceiptAuth::NoToken => {
            tracing::warn!(
                channel = %channel,
                "delivery receipt refused: the channel has no receipt_token"
            );
            return Err(ApiError::unauthorized(
                "this channel has no receipt_token, so its receipts are refused \
                 (set receipt_token, or receipts_unauthenticated = true)",
            ));
        }
        ReceiptAuth::Token(expected) => {
            // The raw value, untrimmed: a token is compared as configured.
            let given = params
                .pairs()
                .iter()
                .find(|(k, _)| k == "token")
                .map(|(_, v)| v.as_str());
            if !token_matches(&expected, given) {
                tracing::warn!(
                    channel = %channel,
                    given = given.is_some(),
                    "delivery receipt refused: its token is missing or wrong"
                );
                return Err(ApiError::unauthorized(
                    "this channel's receipts need its token",
                ));
            }
        }
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

/// Whether `given` is the channel's token, in constant time. Both sides are
/// hashed first: `ct_eq` on slices of different lengths answers at once,
/// which would tell a caller the token's length.
fn token_matches(expected: &SecretString, given: Option<&str>) -> bool {
    let Some(given) = given else {
        return false;
    };
    let want = Sha256::digest(expected.expose().as_bytes());
    let got = Sha256::digest(given.as_bytes());
    want.as_slice().ct_eq(got.as_slice()).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_match_exactly() {
        let t = SecretString::new("a+b/c=d&e%f é");
        assert!(token_matches(&t, Some("a+b/c=d&e%f é")));
        assert!(!token_matches(&t, None));
        assert!(!token_matches(&t, Some("")));
        assert!(!token_matches(&t, Some("a+b/c=d&e%f e")));
        assert!(!token_matches(&t, Some("a+b/c=d&e%f é ")));
        assert!(!token_matches(&t, Some("a%2Bb")));
    }
}
