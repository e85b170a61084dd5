//! Who is calling: the token check on the `authToken` header. Passwords are
//! hashed and checked in [`crate::password`]; the throttles on failed
//! attempts are in [`crate::limits`].

use axum::http::HeaderMap;
use otpgate_core::{TokenError, TokenSigner};
use otpgate_store::Account;

use crate::client::Client;
use crate::error::ApiError;
use crate::state::AppState;

/// Authenticates the `authToken` header (any case) and returns the account.
///
/// # Errors
/// 400 for two `authToken` headers; 401 with the reason; 503/500 from the
/// store.
pub async fn authenticate(
    state: &AppState,
    headers: &HeaderMap,
    client: &Client,
) -> Result<Account, ApiError> {
    let mut subject_seen = String::new();
    let r = check_token(state, headers, &mut subject_seen).await;
    if let Err(e) = &r
        && e.code == otpgate_api::ResponseCode::Unauthorized
    {
        state.metrics.token_failure("invalid_token");
        crate::limits::audit("authToken", client.ip, &subject_seen, &e.reason);
    }
    r
}

async fn check_token(
    state: &AppState,
    headers: &HeaderMap,
    subject_seen: &mut String,
) -> Result<Account, ApiError> {
    // Two headers could be read differently by a proxy and by this server
    // (which one "wins"); refuse rather than pick.
    if headers
        .get_all(otpgate_api::AUTH_TOKEN_HEADER)
        .iter()
        .nth(1)
        .is_some()
    {
        return Err(ApiError::bad_request(
            "authToken header is given more than once",
        ));
    }
    let token = headers
        .get(otpgate_api::AUTH_TOKEN_HEADER)
        .ok_or_else(|| ApiError::unauthorized("authToken header is required"))?
        .to_str()
        .map_err(|_| ApiError::unauthorized("authToken is not a well-formed JWT"))?
        .trim();
    if token.is_empty() {
        return Err(ApiError::unauthorized("authToken header is required"));
    }
    let subject = TokenSigner::unverified_subject(token).map_err(token_error)?;
    subject_seen.push_str(subject.as_str());
    let account = state
        .accounts
        .get(state.store.as_ref(), &subject)
        .await?
        .ok_or_else(|| ApiError::unauthorized(TokenError::BadSignature.to_string()))?;
    state
        .signer
        .verify(
            token,
            &account.customer_id,
            account.token_epoch,
            state.clock.now_ms(),
        )
        .map_err(token_error)?;
    if account.disabled {
        return Err(ApiError::unauthorized("the account is disabled"));
    }
    Ok(account)
}

fn token_error(e: TokenError) -> ApiError {
    ApiError::unauthorized(e.to_string())
}
