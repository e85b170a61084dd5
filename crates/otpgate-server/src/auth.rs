//! Who is calling: password hashing (Argon2id, off the async runtime), token
//! checks on the `authToken` header, and the throttle on failed token
//! requests (contract §1, 429).

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use argon2::Argon2;
use argon2::password_hash::phc::PasswordHash;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use axum::http::HeaderMap;
use hmac::{Hmac, KeyInit, Mac};
use otpgate_core::{CustomerId, TokenError, TokenSigner};
use otpgate_store::Account;
use sha2::Sha256;
use subtle::ConstantTimeEq;

use crate::error::ApiError;
use crate::state::AppState;

/// Hashes a password with Argon2id's default parameters on a blocking thread
/// (a hash takes tens of milliseconds of CPU).
///
/// # Errors
/// Only if the blocking pool is gone or hashing itself fails.
pub async fn hash_password(password: &str) -> anyhow::Result<String> {
    let pw = password.as_bytes().to_vec();
    let hash = tokio::task::spawn_blocking(move || {
        Argon2::default()
            .hash_password(&pw)
            .map(|h| h.to_string())
            .map_err(|e| anyhow::anyhow!("argon2 failed: {e}"))
    })
    .await??;
    Ok(hash)
}

/// Checks `password` against a stored PHC string on a blocking thread.
pub async fn verify_password(phc: &str, password: &[u8]) -> bool {
    let phc = phc.to_owned();
    let pw = password.to_vec();
    tokio::task::spawn_blocking(move || {
        PasswordHash::new(&phc)
            .map(|h| Argon2::default().verify_password(&pw, &h).is_ok())
            .unwrap_or(false)
    })
    .await
    .unwrap_or(false)
}

/// Remembers, per account and token epoch, a keyed digest of the last key
/// that verified, so repeated token requests with the right key skip
/// Argon2. A password change bumps the epoch and so empties the entry; the
/// digest key is random per process and never stored.
pub struct KeyCache {
    digest_key: [u8; 32],
    entries: Mutex<HashMap<CustomerId, (i64, [u8; 32])>>,
}

impl KeyCache {
    pub fn new() -> Self {
        let mut digest_key = [0u8; 32];
        rand::fill(&mut digest_key);
        Self {
            digest_key,
            entries: Mutex::new(HashMap::new()),
        }
    }

    fn digest(&self, key: &[u8]) -> [u8; 32] {
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&self.digest_key)
            .expect("HMAC accepts keys of any length");
        mac.update(key);
        mac.finalize().into_bytes().into()
    }

    pub fn hit(&self, account: &Account, key: &[u8]) -> bool {
        let d = self.digest(key);
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries
            .get(&account.customer_id)
            .is_some_and(|(epoch, stored)| {
                *epoch == account.token_epoch && bool::from(stored.ct_eq(&d))
            })
    }

    pub fn remember(&self, account: &Account, key: &[u8]) {
        let d = self.digest(key);
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if entries.len() > 100_000 {
            entries.clear();
        }
        entries.insert(account.customer_id.clone(), (account.token_epoch, d));
    }
}

impl Default for KeyCache {
    fn default() -> Self {
        Self::new()
    }
}

/// Counts failures per key (a customerId, a client address) in a sliding
/// window. Per node: a determined attacker spreading guesses over N nodes
/// gets N times the budget, which Argon2's cost still makes slow.
pub struct Throttle {
    max: usize,
    window_ms: i64,
    failures: Mutex<HashMap<String, VecDeque<i64>>>,
}

impl Throttle {
    pub fn new(max: u32, window_secs: u64) -> Self {
        Self {
            max: max as usize,
            window_ms: i64::try_from(window_secs.saturating_mul(1000)).unwrap_or(i64::MAX),
            failures: Mutex::new(HashMap::new()),
        }
    }

    /// Seconds until `key` may try again, if it is over the limit now.
    pub fn blocked(&self, key: &str, now: i64) -> Option<u64> {
        let mut map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        let q = map.get_mut(key)?;
        while q.front().is_some_and(|t| *t <= now - self.window_ms) {
            q.pop_front();
        }
        if q.len() >= self.max {
            let oldest = *q.front()?;
            let wait_ms = oldest + self.window_ms - now;
            Some(
                u64::try_from((wait_ms + 999).div_euclid(1000))
                    .unwrap_or(1)
                    .max(1),
            )
        } else {
            None
        }
    }

    pub fn fail(&self, key: &str, now: i64) {
        let mut map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() > 100_000 {
            let cutoff = now - self.window_ms;
            map.retain(|_, q| q.back().is_some_and(|t| *t > cutoff));
        }
        let q = map.entry(key.to_owned()).or_default();
        q.push_back(now);
        while q.len() > self.max {
            q.pop_front();
        }
    }
}

/// Authenticates the `authToken` header (any case) and returns the account.
///
/// # Errors
/// 401 with the reason; 503/500 from the store.
pub async fn authenticate(state: &AppState, headers: &HeaderMap) -> Result<Account, ApiError> {
    let result = check_token(state, headers).await;
    if matches!(&result, Err(e) if e.code == otpgate_api::ResponseCode::Unauthorized) {
        state.metrics.token_failure("invalid_token");
    }
    result
}

async fn check_token(state: &AppState, headers: &HeaderMap) -> Result<Account, ApiError> {
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
    let account = state
        .store
        .account_get(&subject)
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
