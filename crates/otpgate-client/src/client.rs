//! The client: configuration, the token cache, and the three calls.
//!
//! Token handling is the client's job, not the caller's: a token is fetched
//! on first use, cached, replaced ahead of its `exp`, and replaced once when
//! a call is refused with 401 (that call is then repeated once). Concurrent
//! callers that need a token wait on one fetch instead of each making one.
//!
//! Retries are deliberately narrow. A send is never repeated on a transport
//! failure: if the first request reached the service, a second one would text
//! the person twice (or answer 506). Token fetches and validations are
//! repeated only when the connection could not be made at all, so the
//! service never saw the first request; a validation whose request may have
//! arrived is not repeated either, since a second try could turn a success
//! into "already verified" or spend one more attempt.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use otpgate_api::{
    AUTH_TOKEN_HEADER, SendRequest, TokenRequest, ValidateRequest, WireRequest, param, paths,
};
use reqwest::header::{CONTENT_TYPE, RETRY_AFTER};
use reqwest::{RequestBuilder, Url};
use tokio::sync::Mutex;

use crate::decode::{self, RawResponse};
use crate::error::{Error, Result};
use crate::model::{ApiVersion, Reply, SendOtp, SendOutcome, Validation};
use crate::token::{AuthToken, CachedToken};
use crate::{PRODUCTION_URL, USER_AGENT};

/// Responses larger than this are not read further: no contract response
/// comes close, and a misbehaving server must not exhaust memory.
const MAX_BODY: usize = 1 << 20;

/// A password or derived key that must not reach a log.
#[derive(Clone)]
struct Secret(Arc<str>);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// Whether a failed request may be sent again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Retry {
    /// Sends: never.
    Never,
    /// Validations: only when no connection was made.
    ConnectFailed,
    /// Token fetches, which are safe to repeat: also when the connection
    /// broke off before a response (but not on a timeout, which may mean the
    /// service is overloaded).
    ConnectionLost,
}

impl Retry {
    fn allows(self, e: &reqwest::Error) -> bool {
        match self {
            Self::Never => false,
            Self::ConnectFailed => e.is_connect(),
            Self::ConnectionLost => e.is_connect() || (e.is_request() && !e.is_timeout()),
        }
    }
}

/// Builds a [`Client`]. See [`Client::builder`].
#[derive(Debug, Clone)]
#[must_use]
pub struct ClientBuilder {
    base_url: String,
    customer_id: Option<String>,
    password: Option<Secret>,
    auth_token: Option<AuthToken>,
    email: Option<String>,
    country: Option<String>,
    api_version: ApiVersion,
    connect_timeout: Duration,
    request_timeout: Duration,
    connect_retries: u32,
    retry_backoff: Duration,
    refresh_ahead: Duration,
    http: Option<reqwest::Client>,
}

impl Default for ClientBuilder {
    fn default() -> Self {
        Self {
            base_url: PRODUCTION_URL.to_owned(),
            customer_id: None,
            password: None,
            auth_token: None,
            email: None,
            country: None,
            api_version: ApiVersion::V3,
            connect_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            connect_retries: 2,
            retry_backoff: Duration::from_millis(200),
            refresh_ahead: Duration::from_secs(60),
            http: None,
        }
    }
}

impl ClientBuilder {
    /// The service's base URL, e.g. `https://otp.example.com` or
    /// [`STAGING_URL`](crate::STAGING_URL). Default:
    /// [`PRODUCTION_URL`](crate::PRODUCTION_URL). A path prefix is kept.
    pub fn base_url(mut self, url: impl Into<String>) -> Self {
        self.base_url = url.into();
        self
    }

    /// The account's customerId (`C-` and 15 hex digits).
    pub fn customer_id(mut self, id: impl Into<String>) -> Self {
        self.customer_id = Some(id.into());
        self
    }

    /// The account's password. The SDK base64-encodes it into the token
    /// request's `key` (contract §1); it never appears in `Debug` output.
    pub fn password(mut self, password: impl Into<String>) -> Self {
        let password: String = password.into();
        self.password = Some(Secret(STANDARD.encode(password.as_bytes()).into()));
        self
    }

    /// A token obtained elsewhere. Used until it nears expiry or is refused;
    /// then, if a customerId and password are also set, a new one is fetched,
    /// otherwise calls fail with [`Error::Unauthorized`].
    pub fn auth_token(mut self, token: impl Into<String>) -> Self {
        self.auth_token = Some(AuthToken::new(token));
        self
    }

    /// The account's email, sent with token requests (the service accepts
    /// it without checking).
    pub fn email(mut self, email: impl Into<String>) -> Self {
        self.email = Some(email.into());
        self
    }

    /// The account's country (`IN` or `91`), sent with token requests.
    pub fn country(mut self, country: impl Into<String>) -> Self {
        self.country = Some(country.into());
        self
    }

    /// Which path family to call. Default [`ApiVersion::V3`].
    pub fn api_version(mut self, version: ApiVersion) -> Self {
        self.api_version = version;
        self
    }

    /// How long to wait for a connection. Default 10 s. Ignored with
    /// [`http_client`](Self::http_client), whose own setting applies.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// How long one request may take, connection included. Default 30 s.
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// How often a token fetch or a validation is tried again when the
    /// connection fails, and the first pause (doubled each time).
    /// Default 2 retries, 200 ms. Sends are never retried.
    pub fn connect_retries(mut self, retries: u32, backoff: Duration) -> Self {
        self.connect_retries = retries.min(10);
        self.retry_backoff = backoff;
        self
    }

    /// How long before a token's `exp` to replace it. Default 60 s; never
    /// more than half the token's lifetime.
    pub fn refresh_ahead(mut self, ahead: Duration) -> Self {
        self.refresh_ahead = ahead;
        self
    }

    /// Uses this reqwest client (proxies, TLS roots, DNS) instead of building
    /// one. [`request_timeout`](Self::request_timeout) still applies per
    /// request.
    pub fn http_client(mut self, client: reqwest::Client) -> Self {
        self.http = Some(client);
        self
    }

    /// Checks the configuration and builds the client. Nothing is sent yet.
    ///
    /// # Errors
    /// [`Error::Config`] when the base URL is not an `http(s)` URL, when
    /// neither a customerId with a password nor a token was given, or when
    /// the HTTP client cannot start.
    pub fn build(self) -> Result<Client> {
        let base = Url::parse(self.base_url.trim())
            .map_err(|e| Error::Config(format!("base URL does not parse: {e}")))?;
        if !matches!(base.scheme(), "http" | "https") || base.host_str().is_none() {
            return Err(Error::Config("base URL must be http(s)://host".into()));
        }
        if base.query().is_some() || base.fragment().is_some() {
            return Err(Error::Config(
                "base URL must not have a query or fragment".into(),
            ));
        }
        let customer_id = self
            .customer_id
            .map(|c| c.trim().to_owned())
            .filter(|c| !c.is_empty());
        let credentials = match (customer_id.clone(), self.password) {
            (Some(id), Some(key)) => Some(Credentials {
                customer_id: id,
                key,
            }),
            (None, Some(_)) => {
                return Err(Error::Config("a password needs a customerId".into()));
            }
            _ => None,
        };
        if credentials.is_none() && self.auth_token.is_none() {
            return Err(Error::Config(
                "give a customerId and password, or an auth token".into(),
            ));
        }
        let http = match self.http {
            Some(http) => http,
            None => reqwest::Client::builder()
                .connect_timeout(self.connect_timeout)
                .user_agent(USER_AGENT)
                .build()
                .map_err(|e| Error::Config(format!("HTTP client: {}", e.without_url())))?,
        };
        let now = Instant::now();
        let initial = self
            .auth_token
            .map(|t| CachedToken::new(t, now, self.refresh_ahead));
        Ok(Client {
            inner: Arc::new(Inner {
                http,
                base: base.as_str().trim_end_matches('/').to_owned(),
                customer_id,
                credentials,
                email: self.email,
                country: self.country,
                api_version: self.api_version,
                request_timeout: self.request_timeout,
                connect_retries: self.connect_retries,
                retry_backoff: self.retry_backoff,
                refresh_ahead: self.refresh_ahead,
                fetches_done: AtomicU64::new(0),
                tokens: Mutex::new(TokenState {
                    current: initial,
                    fetches_done: 0,
                    last_error: None,
                }),
            }),
        })
    }
}

#[derive(Debug)]
struct Credentials {
    customer_id: String,
    /// base64 of the password, as the token request's `key`.
    key: Secret,
}

/// The cached token and what the last fetch did, behind one async mutex so
/// that one caller fetches while the others wait and then reuse its result.
#[derive(Debug)]
struct TokenState {
    current: Option<CachedToken>,
    /// Fetches completed, for telling waiters that a fetch finished while
    /// they queued.
    fetches_done: u64,
    last_error: Option<Error>,
}

struct Inner {
    http: reqwest::Client,
    /// Without a trailing slash; paths are appended.
    base: String,
    customer_id: Option<String>,
    credentials: Option<Credentials>,
    email: Option<String>,
    country: Option<String>,
    api_version: ApiVersion,
    request_timeout: Duration,
    connect_retries: u32,
    retry_backoff: Duration,
    refresh_ahead: Duration,
    /// Mirror of `TokenState::fetches_done`, readable without the lock.
    fetches_done: AtomicU64,
    tokens: Mutex<TokenState>,
}

/// A Verify Now client for otpgate or the hosted service. Cheap to clone;
/// clones share the connection pool and the token.
///
/// ```no_run
/// # async fn demo() -> Result<(), otpgate_client::Error> {
/// use otpgate_client::{Client, SendOtp, Validation};
///
/// let client = Client::builder()
///     .base_url("http://127.0.0.1:8080")
///     .customer_id("C-6D16D900FA3044F")
///     .password("s3cret")
///     .build()?;
/// let sent = client.send(SendOtp::sms("91", "9876543210")).await?;
/// let outcome = client.validate(sent.verification_id(), "1234").await?;
/// assert_eq!(outcome, Validation::Verified);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let i = &self.inner;
        f.debug_struct("Client")
            .field("base_url", &i.base)
            .field("customer_id", &i.customer_id)
            .field("api_version", &i.api_version)
            .field("has_password", &i.credentials.is_some())
            .finish_non_exhaustive()
    }
}

impl Client {
    /// Starts configuring a client.
    ///
    /// ```
    /// use otpgate_client::{ApiVersion, Client, STAGING_URL};
    ///
    /// let client = Client::builder()
    ///     .base_url(STAGING_URL)
    ///     .customer_id("C-6D16D900FA3044F")
    ///     .password("s3cret")
    ///     .api_version(ApiVersion::V2)
    ///     .build()
    ///     .expect("valid configuration");
    /// assert!(!format!("{client:?}").contains("s3cret"));
    /// ```
    pub fn builder() -> ClientBuilder {
        ClientBuilder::default()
    }

    /// The base URL calls go to, without a trailing slash.
    pub fn base_url(&self) -> &str {
        &self.inner.base
    }

    /// The token calls will use, fetching one first if none is cached or the
    /// cached one is near its expiry.
    ///
    /// ```no_run
    /// # async fn demo(client: otpgate_client::Client) -> Result<(), otpgate_client::Error> {
    /// let token = client.token().await?;
    /// println!("expires at {:?}", token.expires_at());
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// As [`fetch_token`](Self::fetch_token), or [`Error::Unauthorized`] when
    /// the configured token is stale and there are no credentials.
    pub async fn token(&self) -> Result<AuthToken> {
        self.inner.current_token(None).await
    }

    /// Asks the service for a new token now (contract §1), caches it for
    /// later calls, and returns it with the response it came in.
    ///
    /// ```no_run
    /// # async fn demo(client: otpgate_client::Client) -> Result<(), otpgate_client::Error> {
    /// let reply = client.fetch_token().await?;
    /// println!("{}", reply.body); // {"status":200,"token":"eyJ..."}
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`Error::Config`] without a customerId and password;
    /// [`Error::Unauthorized`] for wrong credentials; [`Error::InvalidInput`],
    /// [`Error::RateLimited`], [`Error::Server`], [`Error::Transport`],
    /// [`Error::Unexpected`] as their names say.
    pub async fn fetch_token(&self) -> Result<Reply<AuthToken>> {
        let mut state = self.inner.tokens.lock().await;
        self.inner.fetch_locked(&mut state).await
    }

    /// Sends a code (contract §2). A 506 is not an error but
    /// [`SendOutcome::AlreadyPending`], whose id can be validated against.
    ///
    /// Never retried on a transport error: the first request may have been
    /// delivered, and a second could text the person twice.
    ///
    /// ```no_run
    /// # async fn demo(client: otpgate_client::Client) -> Result<(), otpgate_client::Error> {
    /// use otpgate_client::{SendOtp, SendOutcome};
    ///
    /// match client.send(SendOtp::sms("91", "9876543210").with_otp_length(6)).await? {
    ///     SendOutcome::Sent(sent) => println!("sent, id {}", sent.verification_id),
    ///     SendOutcome::AlreadyPending { verification_id, seconds_left } => {
    ///         println!("code already sent, id {verification_id}, {seconds_left:?} s left")
    ///     }
    ///     _ => {}
    /// }
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for a bad number, country or length;
    /// [`Error::InsufficientBalance`]; [`Error::RateLimited`] with the
    /// `Retry-After`; [`Error::Unauthorized`] when a fresh token is refused
    /// too; [`Error::Transport`], [`Error::Server`], [`Error::Unexpected`].
    pub async fn send(&self, request: SendOtp) -> Result<SendOutcome> {
        self.send_raw(&request).await.map(|r| r.value)
    }

    /// [`send`](Self::send), also returning the response body as received.
    ///
    /// ```no_run
    /// # async fn demo(client: otpgate_client::Client) -> Result<(), otpgate_client::Error> {
    /// let reply = client.send_raw(&otpgate_client::SendOtp::sms("91", "9876543210")).await?;
    /// println!("{} {}", reply.status, reply.body);
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// As [`send`](Self::send).
    pub async fn send_raw(&self, request: &SendOtp) -> Result<Reply<SendOutcome>> {
        let path = match self.inner.api_version {
            ApiVersion::V2 => paths::SEND_V2,
            ApiVersion::V3 => paths::SEND_V3,
        };
        let country = request.country_code.trim();
        let wire = SendRequest {
            country_code: Some(country.strip_prefix('+').unwrap_or(country).to_owned()),
            mobile_number: Some(request.mobile_number.trim().to_owned()),
            flow_type: Some(request.flow.as_str().to_owned()),
            otp_length: request.otp_length.map(|n| n.to_string()),
            timeout: request.timeout.map(|t| t.as_secs().to_string()),
            ..SendRequest::default()
        };
        let query = wire.to_params();
        let url = self.inner.url(path);
        self.inner
            .authorized(
                Retry::Never,
                |http, token| {
                    http.post(&url)
                        .query(&query)
                        .query(&customer_param(&self.inner, token))
                        .header(CONTENT_TYPE, "application/json")
                        .body("{}")
                },
                |raw| decode::send(raw, &request.mobile_number),
            )
            .await
    }

    /// Checks a code the person typed against a verification (contract §3).
    ///
    /// Repeated (bounded) only when the connection could not be made, so a
    /// code is never submitted twice.
    ///
    /// ```no_run
    /// # async fn demo(client: otpgate_client::Client) -> Result<(), otpgate_client::Error> {
    /// use otpgate_client::Validation;
    ///
    /// match client.validate(5915384, "1234").await? {
    ///     Validation::Verified => println!("verified"),
    ///     Validation::WrongCode { attempts_left } => println!("wrong, {attempts_left:?} left"),
    ///     other => println!("not verified: {other:?}"),
    /// }
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for a malformed id or code;
    /// [`Error::Unauthorized`]; [`Error::Transport`], [`Error::Server`],
    /// [`Error::Unexpected`]. Failure outcomes (wrong code, expired, …) are
    /// `Ok` values of [`Validation`].
    pub async fn validate(&self, verification_id: u64, code: &str) -> Result<Validation> {
        self.validate_raw(verification_id, code)
            .await
            .map(|r| r.value)
    }

    /// [`validate`](Self::validate), also returning the response body.
    ///
    /// ```no_run
    /// # async fn demo(client: otpgate_client::Client) -> Result<(), otpgate_client::Error> {
    /// let reply = client.validate_raw(5915384, "1234").await?;
    /// println!("{:?}: {}", reply.value, reply.body);
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// As [`validate`](Self::validate).
    pub async fn validate_raw(
        &self,
        verification_id: u64,
        code: &str,
    ) -> Result<Reply<Validation>> {
        let path = match self.inner.api_version {
            ApiVersion::V2 => paths::VALIDATE_V2,
            ApiVersion::V3 => paths::VALIDATE_V3,
        };
        let url = self.inner.url(path);
        let query = ValidateRequest {
            verification_id: Some(verification_id.to_string()),
            code: Some(code.trim().to_owned()),
            customer_id: None,
        }
        .to_params();
        self.inner
            .authorized(
                Retry::ConnectFailed,
                |http, token| {
                    http.get(&url)
                        .query(&query)
                        .query(&customer_param(&self.inner, token))
                },
                decode::validate,
            )
            .await
    }
}

/// `customerId` for send and validate: optional in the contract, shown in the
/// hosted service's examples. Taken from the configuration, else from the
/// token's `sub`.
fn customer_param(inner: &Inner, token: &AuthToken) -> Vec<(&'static str, String)> {
    inner
        .customer_id
        .clone()
        .or_else(|| token.subject())
        .map(|id| vec![(param::CUSTOMER_ID, id)])
        .unwrap_or_default()
}

impl Inner {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// The cached token if it is fresh and not `stale` (the one a call was
    /// just refused with); otherwise a new one, fetched once for all the
    /// callers waiting here.
    async fn current_token(&self, stale: Option<&AuthToken>) -> Result<AuthToken> {
        let seen = self.fetches_done.load(Ordering::Acquire);
        let mut state = self.tokens.lock().await;
        if let Some(cached) = &state.current {
            let refused = stale.is_some_and(|s| s == &cached.token);
            if !refused && (cached.is_fresh(Instant::now()) || self.credentials.is_none()) {
                return Ok(cached.token.clone());
            }
            if self.credentials.is_none() {
                return Err(Error::Unauthorized {
                    message: "the auth token was refused and no credentials are set to get another"
                        .into(),
                    body: None,
                });
            }
        }
        // A fetch finished while this caller queued and it failed: share its
        // error rather than hammering the token endpoint (wrong credentials
        // would otherwise turn into a lockout).
        if state.fetches_done != seen
            && let Some(e) = &state.last_error
        {
            return Err(e.clone());
        }
        self.fetch_locked(&mut state).await.map(|r| r.value)
    }

    async fn fetch_locked(&self, state: &mut TokenState) -> Result<Reply<AuthToken>> {
        let Some(creds) = &self.credentials else {
            return Err(Error::Config(
                "fetching a token needs a customerId and password".into(),
            ));
        };
        let url = self.url(paths::TOKEN);
        let query = TokenRequest {
            customer_id: Some(creds.customer_id.clone()),
            key: Some(creds.key.0.to_string()),
            scope: Some("NEW".into()),
            country: self.country.clone(),
            email: self.email.clone(),
        }
        .to_params();
        let result = self
            .execute(Retry::ConnectionLost, |http| http.get(&url).query(&query))
            .await
            .and_then(|raw| {
                decode::token(&raw).map(|t| Reply {
                    value: t,
                    status: raw.status,
                    body: raw.body,
                })
            });
        state.fetches_done += 1;
        self.fetches_done
            .store(state.fetches_done, Ordering::Release);
        match &result {
            Ok(reply) => {
                state.current = Some(CachedToken::new(
                    reply.value.clone(),
                    Instant::now(),
                    self.refresh_ahead,
                ));
                state.last_error = None;
            }
            Err(e) => state.last_error = Some(e.clone()),
        }
        result
    }

    /// Runs a call with the current token; on a 401, gets a new token and
    /// runs it once more (a 401 means the service did nothing, so repeating
    /// even a send is safe).
    async fn authorized<T>(
        &self,
        retry: Retry,
        build: impl Fn(&reqwest::Client, &AuthToken) -> RequestBuilder,
        decode: impl Fn(&RawResponse) -> Result<T>,
    ) -> Result<Reply<T>> {
        let mut token = self.current_token(None).await?;
        let mut refreshed = false;
        loop {
            let raw = self
                .execute(retry, |http| {
                    build(http, &token).header(AUTH_TOKEN_HEADER, token.expose())
                })
                .await?;
            match decode(&raw) {
                Err(Error::Unauthorized { .. }) if !refreshed && self.credentials.is_some() => {
                    refreshed = true;
                    token = self.current_token(Some(&token)).await?;
                }
                Ok(value) => {
                    return Ok(Reply {
                        value,
                        status: raw.status,
                        body: raw.body,
                    });
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Sends a request, repeating it on connection failures as `retry`
    /// allows, and reads the response.
    async fn execute(
        &self,
        retry: Retry,
        build: impl Fn(&reqwest::Client) -> RequestBuilder,
    ) -> Result<RawResponse> {
        let mut pause = self.retry_backoff;
        let mut retries_left = self.connect_retries;
        loop {
            let sent = build(&self.http).timeout(self.request_timeout).send().await;
            match sent {
                Ok(response) => return read(response).await,
                Err(e) if retries_left > 0 && retry.allows(&e) => {
                    retries_left -= 1;
                    tokio::time::sleep(pause).await;
                    pause = pause.saturating_mul(2);
                }
                // The URL goes: a token request's query holds the password.
                Err(e) => return Err(Error::Transport(Arc::new(e.without_url()))),
            }
        }
    }
}

async fn read(mut response: reqwest::Response) -> Result<RawResponse> {
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get(RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    let mut body = Vec::new();
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                if body.len() + chunk.len() > MAX_BODY {
                    return Err(Error::Unexpected {
                        status,
                        reason: format!("response body larger than {MAX_BODY} bytes"),
                        body: String::from_utf8_lossy(&body).into_owned(),
                    });
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => break,
            Err(e) => return Err(Error::Transport(Arc::new(e.without_url()))),
        }
    }
    Ok(RawResponse {
        status,
        retry_after,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}
