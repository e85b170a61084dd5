//! Account operations shared by the CLI, the console and the admin API:
//! creating an account with a fresh customerId and test credits, and
//! changing a password (which revokes every earlier token).

use otpgate_core::{Clock, CustomerId};
use otpgate_store::{Account, NewAccount, Store, StoreError};

use crate::config::Settings;

/// Shortest password accepted.
pub const MIN_PASSWORD: usize = 8;
/// Longest password accepted (Argon2 takes any length; this bounds work).
pub const MAX_PASSWORD: usize = 1024;

#[derive(Debug, thiserror::Error)]
pub enum AccountError {
    #[error("password must be {MIN_PASSWORD} to {MAX_PASSWORD} bytes")]
    BadPassword,
    #[error("email is not a valid address")]
    BadEmail,
    #[error("country must be a 2-letter ISO code or a dialing code")]
    BadCountry,
    #[error("an account with this email exists")]
    EmailTaken,
    #[error("no such account")]
    NotFound,
    #[error("the server is busy hashing passwords")]
    Busy,
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    Internal(String),
}

/// What a new account starts with.
#[derive(Debug, Default)]
pub struct NewAccountRequest {
    pub password: String,
    pub email: Option<String>,
    pub country: Option<String>,
    /// Exactly this many paid credits and no test credits, instead of the
    /// configured test credits.
    pub credits: Option<i64>,
    /// Its settings from the start.
    pub settings: otpgate_store::AccountSettings,
}

/// # Errors
/// [`AccountError`] for bad input; store errors pass through.
pub async fn create(
    store: &dyn Store,
    clock: &dyn Clock,
    settings: &Settings,
    req: NewAccountRequest,
) -> Result<Account, AccountError> {
    create_with(store, clock, settings, req, None).await
}

/// As [`create`], hashing the password on `hasher`'s threads when given
/// (a sign-up from a stranger: within the server's bound on hashing).
///
/// # Errors
/// As [`create`], and [`AccountError::Busy`] when the hasher is full.
pub async fn create_with(
    store: &dyn Store,
    clock: &dyn Clock,
    settings: &Settings,
    req: NewAccountRequest,
    hasher: Option<&crate::password::Hasher>,
) -> Result<Account, AccountError> {
    check_password(&req.password)?;
    let email = req
        .email
        .map(|e| e.trim().to_owned())
        .filter(|e| !e.is_empty());
    if let Some(e) = &email {
        if !plausible_email(e) {
            return Err(AccountError::BadEmail);
        }
        if store.account_by_email(e).await?.is_some() {
            return Err(AccountError::EmailTaken);
        }
    }
    let country = req
        .country
        .map(|c| c.trim().to_ascii_uppercase())
        .filter(|c| !c.is_empty());
    if let Some(c) = &country {
        let iso = c.len() == 2 && c.bytes().all(|b| b.is_ascii_uppercase());
        let dial = (1..=3).contains(&c.len()) && c.bytes().all(|b| b.is_ascii_digit());
        if !iso && !dial {
            return Err(AccountError::BadCountry);
        }
    }
    let password_hash = match hasher {
        Some(h) => h
            .hash(&req.password)
            .await
            .map_err(|_| AccountError::Busy)?,
        None => crate::password::hash_password(&req.password).await,
    }
    .map_err(|e| AccountError::Internal(e.to_string()))?;
    let (credits, test_credits) = match req.credits {
        Some(n) => (n.max(0), 0),
        None => (0, settings.accounts.test_credits),
    };
    for _ in 0..3 {
        let new = NewAccount {
            customer_id: CustomerId::generate(&mut rand::rng()),
            password_hash: password_hash.clone(),
            email: email.clone(),
            country: country.clone(),
            credits,
            test_credits,
            settings: req.settings.clone(),
            created_at: clock.now_ms(),
        };
        match store.account_create(new).await {
            Err(StoreError::Conflict(_)) => {}
            other => return Ok(other?),
        }
    }
    Err(AccountError::Internal("customerId collisions".into()))
}

/// Sets a new password; the store bumps the token epoch, so every token
/// issued before stops working.
///
/// # Errors
/// [`AccountError::BadPassword`], [`AccountError::NotFound`].
pub async fn set_password(
    store: &dyn Store,
    id: &CustomerId,
    password: &str,
) -> Result<Account, AccountError> {
    check_password(password)?;
    let hash = crate::password::hash_password(password)
        .await
        .map_err(|e| AccountError::Internal(e.to_string()))?;
    match store.account_set_password(id, &hash).await {
        Err(StoreError::NotFound) => Err(AccountError::NotFound),
        other => Ok(other?),
    }
}

fn check_password(pw: &str) -> Result<(), AccountError> {
    if (MIN_PASSWORD..=MAX_PASSWORD).contains(&pw.len()) {
        Ok(())
    } else {
        Err(AccountError::BadPassword)
    }
}

/// One `@`, something on each side, a dot in the domain, no spaces or
/// control characters, at most 254 bytes: enough to catch typos without
/// pretending to implement RFC 5322.
pub fn plausible_email(e: &str) -> bool {
    let Some((local, domain)) = e.split_once('@') else {
        return false;
    };
    e.len() <= 254
        && !local.is_empty()
        && domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && !domain.contains('@')
        && !e.chars().any(|c| c.is_whitespace() || c.is_control())
}
