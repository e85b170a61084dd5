//! Who is calling: password hashing (Argon2id, off the async runtime, at
//! most a configured number at once) and token checks on the `authToken`
//! header. The throttles on failed attempts are in [`crate::limits`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use argon2::Argon2;
use argon2::password_hash::phc::PasswordHash;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use axum::http::HeaderMap;
use hmac::{Hmac, KeyInit, Mac};
use otpgate_core::{CustomerId, TokenError, TokenSigner};
use otpgate_store::Account;
use sha2::Sha256;
use subtle::ConstantTimeEq;

use crate::client::Client;
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

/// The bound on password hashing. Each Argon2id hash takes about 19 MiB
/// and tens of milliseconds of CPU; without a bound, a burst of token
/// requests for unknown customerIds would run one per blocking thread (up to
/// 512) and take gigabytes. At most `running` hashes run at once, at most
/// `queued` more wait (for at most `max_wait`), and anything beyond answers
/// at once that the server is busy. Waiting costs no hashing memory.
pub struct Hasher {
    running: Arc<tokio::sync::Semaphore>,
    admitted: Arc<tokio::sync::Semaphore>,
    max_wait: Duration,
}

/// The hasher is full: answer 503 with `Retry-After: 1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Busy;

/// A place to run one hash; dropping it frees the place.
pub struct HashPermit {
    _running: tokio::sync::OwnedSemaphorePermit,
    _admitted: tokio::sync::OwnedSemaphorePermit,
}

impl Hasher {
    /// `running` at once (at least 1) and `queued` waiting.
    pub fn new(running: usize, queued: usize, max_wait: Duration) -> Self {
        let running = running.max(1);
        Self {
            running: Arc::new(tokio::sync::Semaphore::new(running)),
            admitted: Arc::new(tokio::sync::Semaphore::new(running + queued)),
            max_wait,
        }
    }

    /// The default for `auth.max_concurrent_hashes`: one per core.
    pub fn default_running() -> usize {
        std::thread::available_parallelism().map_or(2, std::num::NonZeroUsize::get)
    }

    /// A place to hash, waiting in the queue if there is room in it.
    ///
    /// # Errors
    /// [`Busy`] at once when the queue is full, or when the wait is over.
    pub async fn permit(&self) -> Result<HashPermit, Busy> {
        let admitted = self
            .admitted
            .clone()
            .try_acquire_owned()
            .map_err(|_| Busy)?;
        let running = tokio::time::timeout(self.max_wait, self.running.clone().acquire_owned())
            .await
            .map_err(|_| Busy)?
            .map_err(|_| Busy)?;
        Ok(HashPermit {
            _running: running,
            _admitted: admitted,
        })
    }

    /// Checks `password` against a stored PHC string, within the bound.
    ///
    /// # Errors
    /// [`Busy`] as [`Hasher::permit`].
    pub async fn verify(&self, phc: &str, password: &[u8]) -> Result<bool, Busy> {
        let permit = self.permit().await?;
        let ok = verify_password(phc, password).await;
        drop(permit);
        Ok(ok)
    }

    /// Places free to run a hash now (for tests and health detail).
    pub fn available(&self) -> usize {
        self.running.available_permits()
    }
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
        crate::limits::audit("authToken", client, &subject_seen, &e.reason);
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
