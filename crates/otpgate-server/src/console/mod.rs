//! The web console under `/console`: sign-up and log-in, the dashboard,
//! the verification log, credentials, account settings and webhook, the
//! events sent to it, the sandbox inbox,
//! and the operators' account list. Pages are rendered on the server from
//! askama templates (compile-time checked, HTML-escaped); htmx, vendored in
//! `assets/`, only refreshes parts of a page (log filters and paging, the
//! inbox). Every page also works without JavaScript.
//!
//! Security: see `session.rs` for sessions and CSRF; every response carries
//! a Content-Security-Policy that allows no inline script or style, so even
//! a value that escaped escaping could not run.

mod account;
mod assets;
mod credentials;
mod dashboard;
mod error;
mod extract;
mod fraud;
mod inbox;
mod log;
mod numbers;
mod operators;
mod session;
mod settings;
mod views;
mod webhooks;

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::middleware;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use tokio::sync::OnceCell;

use crate::limits::{KnownClients, Throttle};
use crate::state::AppState;

pub use error::PageError;
pub use session::{Principal, Session, Sessions};

/// The policy every console response carries: scripts, styles and images
/// only from this server, no inline script or style, no framing, forms
/// posting only here.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; frame-ancestors 'none'; form-action 'self'";

/// The console's state: the server's, plus sessions and throttles.
#[derive(Clone)]
pub struct Console(Arc<Inner>);

pub struct Inner {
    pub app: AppState,
    pub sessions: Sessions,
    /// Failed log-ins (and wrong current passwords) per login name, per
    /// client address and per both (see [`crate::limits`]).
    pub login_throttle: Throttle,
    /// Addresses that logged in with a name lately.
    pub login_known: KnownClients,
    /// Sign-ups per client address per hour.
    pub signup_throttle: Throttle,
    /// HMAC key of pre-session form tokens, kept in the database so every
    /// node and every restart accept the same forms.
    form_key: OnceCell<Vec<u8>>,
    /// The operator's Argon2 hash, computed once from the configured
    /// password (or the configured hash itself).
    admin_hash: OnceCell<Option<String>>,
}

impl std::ops::Deref for Console {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

impl Console {
    pub fn new(app: AppState) -> Self {
        let c = &app.settings.console;
        Self(Arc::new(Inner {
            sessions: Sessions::new(c.session_idle_secs, c.session_max_secs),
            login_throttle: Throttle::new(c.login_failure_window_secs),
            login_known: KnownClients::new(app.settings.auth.known_client_secs),
            signup_throttle: Throttle::new(3600),
            form_key: OnceCell::new(),
            admin_hash: OnceCell::new(),
            app,
        }))
    }

    pub fn now(&self) -> i64 {
        self.app.clock.now_ms()
    }

    /// The live session this request's cookie names, if any.
    pub fn session(&self, headers: &HeaderMap) -> Option<session::Session> {
        session::cookie(headers, session::SESSION_COOKIE)
            .and_then(|c| self.sessions.get(c, self.now()))
    }

    pub fn secure_cookies(&self) -> bool {
        self.app.settings.console.secure_cookies
    }

    /// Whether messages go to the development inbox (the sandbox page).
    pub fn inbox_enabled(&self) -> bool {
        self.app.delivery.health().iter().any(|h| h.kind == "inbox")
    }

    /// # Errors
    /// The store's, when the key cannot be loaded.
    pub async fn form_key(&self) -> Result<&[u8], PageError> {
        self.form_key
            .get_or_try_init(|| async {
                let mut candidate = vec![0u8; 32];
                rand::fill(&mut candidate[..]);
                self.app
                    .store
                    .secret_get_or_init("console_form_key", &candidate)
                    .await
            })
            .await
            .map(Vec::as_slice)
            .map_err(PageError::from)
    }

    /// The operator's password hash; `None` when no operator is configured.
    pub async fn admin_hash(&self) -> Option<&str> {
        self.admin_hash
            .get_or_init(|| async {
                let c = &self.app.settings.console;
                let pw = c.admin_password.as_ref().filter(|p| !p.is_empty())?;
                if c.admin_email.trim().is_empty() {
                    return None;
                }
                if pw.expose().starts_with("$argon2") {
                    return Some(pw.expose().to_owned());
                }
                match crate::password::hash_password(pw.expose()).await {
                    Ok(h) => Some(h),
                    Err(e) => {
                        tracing::error!(error = %e, "console: hashing the operator password failed");
                        None
                    }
                }
            })
            .await
            .as_deref()
    }
}

/// The console's routes, to be nested under `/console`.
pub fn router(app: &AppState) -> Router<AppState> {
    let console = Console::new(app.clone());
    Router::new()
        .route("/", get(index))
        .route("/signup", get(account::signup_form).post(account::signup))
        .route("/login", get(account::login_form).post(account::login))
        .route("/logout", post(account::logout))
        .route("/dashboard", get(dashboard::page))
        .route("/log", get(log::page))
        .route("/credentials", get(credentials::page))
        .route("/credentials/password", post(credentials::change_password))
        .route("/settings", get(settings::page).post(settings::save))
        .route("/settings/webhook", post(webhooks::save))
        .route("/events", get(webhooks::page))
        .route("/inbox", get(inbox::page))
        .route("/numbers", get(numbers::page))
        .route("/numbers/send", post(numbers::send))
        .route("/numbers/confirm", post(numbers::confirm))
        .route("/numbers/remove", post(numbers::remove))
        .route("/fraud", get(fraud::page))
        .route("/fraud/lift", post(fraud::lift))
        .route("/fraud/safe", post(fraud::safe))
        .route("/operators", get(operators::page))
        .route("/operators/credits", post(operators::add_credits))
        .route("/operators/disabled", post(operators::set_disabled))
        .route("/assets/{name}", get(assets::serve))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::map_response(security_headers))
        .with_state(console)
}

/// `/console/`, which the nested router does not see: to `/console`.
pub fn trailing_slash() -> axum::routing::MethodRouter<AppState> {
    get(|| async { Redirect::permanent("/console") })
}

/// `/console`: the home page of whoever is logged in, else the log-in page.
async fn index(State(console): State<Console>, headers: HeaderMap) -> Response {
    let to = match console.session(&headers).map(|s| s.principal) {
        Some(Principal::Operator) => "/console/operators",
        Some(Principal::Account { .. }) => "/console/dashboard",
        None => "/console/login",
    };
    Redirect::to(to).into_response()
}

async fn not_found() -> PageError {
    PageError::NotFound
}

async fn method_not_allowed() -> PageError {
    PageError::MethodNotAllowed
}

async fn security_headers(mut resp: Response) -> Response {
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    // Pages show balances, logs and codes: never kept by a cache. Assets
    // set their own (versioned, cacheable) policy.
    h.entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    resp
}
