//! Who is calling: the token check on the `authToken` header. Passwords are
//! hashed and checked in [`crate::password`]; the throttles on failed
//! attempts are in [`crate::limits`].

use std::collections::HashMap;
use std::sync::Mutex;

use axum::http::HeaderMap;
use otpgate_core::{CustomerId, TokenError, TokenSigner};
use otpgate_store::Account;
use sha2::{Digest, Sha256};

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
    let seen = state.tokens.get(token);
    let subject = match &seen {
        Some(seen) => seen.customer.clone(),
        None => TokenSigner::unverified_subject(token).map_err(token_error)?,
    };
    subject_seen.push_str(subject.as_str());
    let account = state
        .accounts
        .get(state.store.as_ref(), &subject)
        .await?
        .ok_or_else(|| ApiError::unauthorized(TokenError::BadSignature.to_string()))?;
    let now = state.clock.now_ms();
    if !seen.is_some_and(|s| s.holds(&account, now)) {
        // Not checked before, or no longer good as checked: the full check,
        // which also names what is wrong.
        let claims = state
            .signer
            .verify(token, &account.customer_id, account.token_epoch, now)
            .map_err(token_error)?;
        state.tokens.remember(token, &account, claims.exp);
    }
    if account.disabled {
        return Err(ApiError::unauthorized("the account is disabled"));
    }
    Ok(account)
}

fn token_error(e: TokenError) -> ApiError {
    ApiError::unauthorized(e.to_string())
}

/// Tokens kept at most in [`VerifiedTokens`]; past it, it starts over (a
/// token seen again then costs one signature check).
pub const MAX_TOKENS: usize = 4_096;

/// The tokens whose signature this server has checked lately, so that the
/// token check of every send and validation need not check it again.
///
/// Why: an application asks for a token and uses it for many calls; each
/// call decoded the token's JSON twice, derived the account's key and
/// computed an HMAC-SHA512 (5% of the server's CPU samples validating codes).
///
/// What is trusted: only a token that passed the full check is kept, keyed
/// by the SHA-256 of its whole text, so a hit is the very token that was
/// checked; the tokens themselves (bearer secrets) are not held. Each use
/// still checks, against the account as read now, what can change after the
/// signature was checked: the account's token epoch (a revocation or a new
/// password fails the kept token at once) and the token's expiry; the
/// disabled flag is the caller's check, as before. A stranger without a
/// valid token cannot add entries, and there are at most [`MAX_TOKENS`].
#[derive(Default)]
pub struct VerifiedTokens {
    seen: Mutex<HashMap<[u8; 32], Seen>>,
}

/// The key a token is kept under.
fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// What the full check of a token established.
#[derive(Clone)]
struct Seen {
    customer: CustomerId,
    /// The account's token epoch it was signed for.
    epoch: i64,
    /// Its `exp` claim, in seconds.
    exp: i64,
}

impl Seen {
    /// Whether the token still passes as `account` is now, at `now_ms`:
    /// the same account and epoch, and not expired (as
    /// [`TokenSigner::verify`] decides it).
    fn holds(&self, account: &Account, now_ms: i64) -> bool {
        self.customer == account.customer_id
            && self.epoch == account.token_epoch
            && self.exp > now_ms.div_euclid(1000)
    }
}

impl VerifiedTokens {
    fn get(&self, token: &str) -> Option<Seen> {
        self.seen.lock().ok()?.get(&digest(token)).cloned()
    }

    fn remember(&self, token: &str, account: &Account, exp: i64) {
        let Ok(mut seen) = self.seen.lock() else {
            return;
        };
        if seen.len() >= MAX_TOKENS {
            seen.clear();
        }
        seen.insert(
            digest(token),
            Seen {
                customer: account.customer_id.clone(),
                epoch: account.token_epoch,
                exp,
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn account(epoch: i64) -> Account {
        Account {
            customer_id: CustomerId::parse("C-6D16D900FA3044F").unwrap(),
            password_hash: String::new(),
            email: None,
            country: None,
            credits: 0,
            test_credits: 0,
            token_epoch: epoch,
            disabled: false,
            settings: Default::default(),
            created_at: 0,
        }
    }

    #[test]
    fn a_kept_token_holds_only_for_its_account_epoch_and_lifetime() {
        let tokens = VerifiedTokens::default();
        assert!(tokens.get("t").is_none(), "nothing is kept unchecked");
        tokens.remember("t", &account(3), 100);
        let seen = tokens.get("t").unwrap();
        assert!(seen.holds(&account(3), 99_999));
        assert!(!seen.holds(&account(3), 100_000), "expired at exp");
        assert!(!seen.holds(&account(4), 0), "revoked by a new epoch");
        let mut other = account(3);
        other.customer_id = CustomerId::parse("C-0000000000000AA").unwrap();
        assert!(!seen.holds(&other, 0), "another account");
        assert!(tokens.get("t2").is_none() && tokens.get("").is_none());
    }

    #[test]
    fn the_kept_tokens_are_bounded() {
        let tokens = VerifiedTokens::default();
        for i in 0..=MAX_TOKENS {
            tokens.remember(&format!("t{i}"), &account(0), 100);
        }
        let kept = tokens.seen.lock().unwrap().len();
        assert!((1..=MAX_TOKENS).contains(&kept), "{kept}");
        assert!(
            tokens.get(&format!("t{MAX_TOKENS}")).is_some(),
            "the newest is kept"
        );
    }
}
