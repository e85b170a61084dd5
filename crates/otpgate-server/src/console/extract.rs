//! Extractors that make the console's rules hard to forget: a handler that
//! takes [`AccountCtx`] only runs for a live session of an enabled account
//! whose password has not changed since; one that takes [`Posted`] only
//! runs when the form carries this session's CSRF token ([`PrePosted`] for
//! the log-in and sign-up forms, which come before any session).

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::Response;
use otpgate_store::Account;
use serde::Deserialize;
use serde::de::DeserializeOwned;

use super::session::{self, PRE_COOKIE, Principal, SESSION_COOKIE, Session};
use super::views::Chrome;
use super::{Console, PageError};

/// Largest form body the console reads.
const MAX_FORM_BYTES: usize = 64 * 1024;

/// A logged-in customer: the session and the account as stored now.
pub struct AccountCtx {
    pub account: Account,
    pub session: Session,
    /// The session cookie's value, to end or update this session.
    pub cookie: String,
}

impl AccountCtx {
    /// The page frame for this account.
    pub fn chrome(&self, console: &Console, title: &str, active: &'static str) -> Chrome {
        Chrome {
            title: title.to_owned(),
            active,
            who: self
                .account
                .email
                .clone()
                .unwrap_or_else(|| self.account.customer_id.to_string()),
            csrf: self.session.csrf.clone(),
            account_nav: true,
            operator_nav: false,
            inbox: console.inbox_enabled(),
            v: super::assets::version(),
        }
    }
}

impl FromRequestParts<Console> for AccountCtx {
    type Rejection = PageError;

    async fn from_request_parts(parts: &mut Parts, console: &Console) -> Result<Self, PageError> {
        let cookie = session::cookie(&parts.headers, SESSION_COOKIE)
            .ok_or(PageError::Login)?
            .to_owned();
        let session = console
            .sessions
            .get(&cookie, console.now())
            .ok_or(PageError::Login)?;
        let (id, epoch) = match &session.principal {
            Principal::Operator => return Err(PageError::Redirect("/console/operators")),
            Principal::Account { id, epoch } => (id.clone(), *epoch),
        };
        match console.app.store.account_get(&id).await? {
            Some(account) if !account.disabled && account.token_epoch == epoch => Ok(Self {
                account,
                session,
                cookie,
            }),
            // Disabled, deleted, or its password changed elsewhere: this
            // session is over.
            _ => {
                console.sessions.remove(&cookie);
                Err(PageError::Login)
            }
        }
    }
}

/// A logged-in operator.
pub struct OperatorCtx {
    pub session: Session,
}

impl OperatorCtx {
    pub fn chrome(&self, console: &Console, title: &str, active: &'static str) -> Chrome {
        Chrome {
            title: title.to_owned(),
            active,
            who: console.app.settings.console.admin_email.clone(),
            csrf: self.session.csrf.clone(),
            account_nav: false,
            operator_nav: true,
            inbox: false,
            v: super::assets::version(),
        }
    }
}

impl FromRequestParts<Console> for OperatorCtx {
    type Rejection = PageError;

    async fn from_request_parts(parts: &mut Parts, console: &Console) -> Result<Self, PageError> {
        let session = console.session(&parts.headers).ok_or(PageError::Login)?;
        match session.principal {
            Principal::Operator => Ok(Self { session }),
            Principal::Account { .. } => Err(PageError::NotFound),
        }
    }
}

/// Whether htmx asked for a fragment (and not for a whole page to restore
/// history).
fn wants_fragment(headers: &HeaderMap) -> bool {
    headers.contains_key("hx-request") && !headers.contains_key("hx-history-restore-request")
}

/// `part` rendered as the fragment when htmx asked for one, else as the
/// whole page; either way with `Vary: HX-Request`, so a cache keeps the two
/// apart.
pub fn page_or_fragment<T>(
    headers: &HeaderMap,
    part: T,
    fragment: impl FnOnce(T) -> Response,
    page: impl FnOnce(T) -> Response,
) -> Response {
    let mut resp = if wants_fragment(headers) {
        fragment(part)
    } else {
        page(part)
    };
    resp.headers_mut()
        .insert(header::VARY, HeaderValue::from_static("HX-Request"));
    resp
}

#[derive(Deserialize)]
struct CsrfField {
    #[serde(default)]
    csrf: String,
}

/// A form posted by this session, CSRF token checked.
pub struct Posted<T>(pub T);

impl<T: DeserializeOwned> FromRequest<Console> for Posted<T> {
    type Rejection = PageError;

    async fn from_request(req: Request, console: &Console) -> Result<Self, PageError> {
        let (parts, body) = req.into_parts();
        let session = console.session(&parts.headers).ok_or(PageError::Login)?;
        checked(&parts.headers, body, async { Ok(session.csrf) })
            .await
            .map(Self)
    }
}

/// A log-in or sign-up form, checked against its pre-session cookie.
pub struct PrePosted<T>(pub T);

impl<T: DeserializeOwned> FromRequest<Console> for PrePosted<T> {
    type Rejection = PageError;

    async fn from_request(req: Request, console: &Console) -> Result<Self, PageError> {
        let (parts, body) = req.into_parts();
        let nonce = session::cookie(&parts.headers, PRE_COOKIE)
            .filter(|n| session::plausible_nonce(n))
            .map(str::to_owned);
        let expected = async {
            let Some(nonce) = nonce else {
                tracing::warn!("console: form refused: no pre-session cookie");
                return Err(PageError::Csrf);
            };
            Ok(session::pre_token(console.form_key().await?, &nonce))
        };
        checked(&parts.headers, body, expected).await.map(Self)
    }
}

/// The posted form, once its `csrf` field matches the token `expected`
/// yields (awaited only after the body is read, so a body the console did
/// not send is refused as such first).
async fn checked<T: DeserializeOwned>(
    headers: &HeaderMap,
    body: axum::body::Body,
    expected: impl Future<Output = Result<String, PageError>>,
) -> Result<T, PageError> {
    let bytes = form_body(headers, body).await?;
    let CsrfField { csrf } = parse(&bytes)?;
    if !session::tokens_match(&expected.await?, &csrf) {
        tracing::warn!("console: form refused: CSRF token missing or wrong");
        return Err(PageError::Csrf);
    }
    parse(&bytes)
}

async fn form_body(headers: &HeaderMap, body: axum::body::Body) -> Result<Bytes, PageError> {
    let is_form = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(';')
                .next()
                .is_some_and(|m| m.trim() == "application/x-www-form-urlencoded")
        });
    if !is_form {
        return Err(PageError::BadRequest(
            "The console only accepts forms it sent.",
        ));
    }
    axum::body::to_bytes(body, MAX_FORM_BYTES)
        .await
        .map_err(|_| PageError::TooLarge)
}

fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, PageError> {
    serde_urlencoded::from_bytes(bytes)
        .map_err(|_| PageError::BadRequest("That form could not be read."))
}

/// The query string as `T`; anything unreadable reads as the defaults (a
/// mangled filter shows the unfiltered page rather than an error).
pub struct Lenient<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Default> FromRequestParts<S> for Lenient<T> {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Ok(Self(
            parts
                .uri
                .query()
                .and_then(|q| serde_urlencoded::from_str(q).ok())
                .unwrap_or_default(),
        ))
    }
}
