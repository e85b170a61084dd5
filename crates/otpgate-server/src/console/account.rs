//! Sign-up, log-in and log-out. Log-in takes the e-mail or the customerId,
//! checks the password with Argon2id, and is throttled like token requests
//! ([`crate::limits`]: reserved before the check, per address and per
//! name and address, per name alone only for addresses that have not
//! logged in with it lately); a successful one always starts a new session
//! (a fresh id, so a planted cookie is worthless). Sign-ups are counted per
//! address, also reserved before the work.

use askama::Template;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use otpgate_core::CustomerId;
use serde::Deserialize;

use super::error::render_status;
use super::extract::{Lenient, Posted, PrePosted};
use super::session::{self, PRE_COOKIE, PRE_MAX_AGE_SECS, Principal, SESSION_COOKIE, Session};
use super::views::Chrome;
use super::{Console, PageError};
use crate::accounts::{self, AccountError, MAX_PASSWORD, NewAccountRequest};
use crate::client::Client;
use crate::limits::{self, Key};

#[derive(Template)]
#[template(path = "console/login.html")]
struct LoginPage {
    chrome: Chrome,
    csrf: String,
    login: String,
    error: String,
    notice: &'static str,
    signup: bool,
}

#[derive(Template)]
#[template(path = "console/signup.html")]
struct SignupPage {
    chrome: Chrome,
    csrf: String,
    email: String,
    country: String,
    errors: Vec<String>,
    open: bool,
}

#[derive(Template)]
#[template(path = "console/welcome.html")]
struct WelcomePage {
    chrome: Chrome,
    customer_id: String,
    test_credits: i64,
    token_curl: String,
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub struct LoginForm {
    login: String,
    password: String,
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub struct SignupForm {
    email: String,
    password: String,
    confirm: String,
    country: String,
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub struct LoginQuery {
    out: Option<String>,
}

/// The pre-session form token for this visitor, and the cookie that
/// carries its nonce (set again on every form, so it lives as long as the
/// form is open).
async fn pre_session(
    console: &Console,
    headers: &HeaderMap,
) -> Result<(String, HeaderValue), PageError> {
    let nonce = session::cookie(headers, PRE_COOKIE)
        .filter(|n| session::plausible_nonce(n))
        .map_or_else(session::random_token, str::to_owned);
    let token = session::pre_token(console.form_key().await?, &nonce);
    let cookie = session::set_cookie(
        PRE_COOKIE,
        &nonce,
        PRE_MAX_AGE_SECS,
        console.secure_cookies(),
    );
    Ok((token, cookie))
}

/// A form page before a session (log-in, sign-up): the page gets this
/// visitor's pre-session token, the response the cookie that carries it.
async fn form_page<T: Template>(
    console: &Console,
    headers: &HeaderMap,
    status: StatusCode,
    page: impl FnOnce(String) -> T,
) -> Result<Response, PageError> {
    let (csrf, cookie) = pre_session(console, headers).await?;
    Ok(with_cookies(render_status(status, &page(csrf)), [cookie]))
}

fn with_cookies(mut resp: Response, cookies: impl IntoIterator<Item = HeaderValue>) -> Response {
    for c in cookies {
        resp.headers_mut().append(header::SET_COOKIE, c);
    }
    resp
}

/// The log-in or sign-up form as first shown; a visitor already logged in
/// is led home instead.
async fn blank_form<T: Template>(
    console: &Console,
    headers: &HeaderMap,
    page: impl FnOnce(String) -> T,
) -> Result<Response, PageError> {
    if console.session(headers).is_some() {
        return Ok(Redirect::to("/console").into_response());
    }
    form_page(console, headers, StatusCode::OK, page).await
}

pub async fn login_form(
    State(console): State<Console>,
    headers: HeaderMap,
    Lenient(q): Lenient<LoginQuery>,
) -> Result<Response, PageError> {
    let notice = if q.out.is_some() {
        "You are logged out."
    } else {
        ""
    };
    blank_form(&console, &headers, |csrf| LoginPage {
        chrome: Chrome::bare("Log in"),
        csrf,
        login: String::new(),
        error: String::new(),
        notice,
        signup: console.app.settings.console.signup,
    })
    .await
}

pub async fn login(
    State(console): State<Console>,
    headers: HeaderMap,
    client: Client,
    PrePosted(form): PrePosted<LoginForm>,
) -> Result<Response, PageError> {
    let now = console.now();
    let name = form.login.trim().to_owned();
    let lname = limits::name_key(&name.to_ascii_lowercase());
    let c = &console.app.settings.console;
    let mut keys = vec![
        (Key::Client(client.key), c.max_login_failures),
        (
            Key::LoginFrom(lname.clone(), client.key),
            c.max_login_failures,
        ),
    ];
    if !console.login_known.knows(&lname, client.key, now) {
        keys.push((Key::Login(lname.clone()), c.max_login_failures_per_name));
    }
    let attempt = match console.login_throttle.reserve(&keys, now) {
        Ok(a) => a,
        Err(r) => {
            limits::audit("console-login", client.ip, &lname, "throttled");
            let minutes = r.retry_after.div_ceil(60);
            let mut resp = login_refused(
                &console,
                &headers,
                &name,
                StatusCode::TOO_MANY_REQUESTS,
                format!(
                    "Too many failed log-ins. Try again in {minutes} minute{}.",
                    if minutes == 1 { "" } else { "s" }
                ),
            )
            .await?;
            crate::error::add_retry_after(&mut resp, Some(r.retry_after));
            return Ok(resp);
        }
    };

    let principal = match authenticate(&console, &name, &form.password).await {
        Ok(p) => p,
        Err(PageError::Busy) => {
            limits::audit("console-login", client.ip, &lname, "password hasher busy");
            return Err(PageError::Busy);
        }
        Err(e) => return Err(e),
    };
    let Some(principal) = principal else {
        attempt.record();
        limits::audit("console-login", client.ip, &lname, "wrong name or password");
        return login_refused(
            &console,
            &headers,
            &name,
            StatusCode::UNAUTHORIZED,
            "Wrong e-mail, customerId or password, or the account is disabled.".to_owned(),
        )
        .await;
    };
    drop(attempt);
    console.login_known.remember(&lname, client.key, now);
    let home = match &principal {
        Principal::Operator => {
            tracing::info!(client = %client.ip, "console operator log-in");
            "/console/operators"
        }
        Principal::Account { id, .. } => {
            tracing::info!(customer = %id, client = %client.ip, "console log-in");
            "/console/dashboard"
        }
    };
    let (_, cookies) = open_session(&console, &headers, principal);
    Ok(with_cookies(Redirect::to(home).into_response(), cookies))
}

/// The log-in form again, with what was typed as the name and why it failed.
async fn login_refused(
    console: &Console,
    headers: &HeaderMap,
    name: &str,
    status: StatusCode,
    error: String,
) -> Result<Response, PageError> {
    form_page(console, headers, status, |csrf| LoginPage {
        chrome: Chrome::bare("Log in"),
        csrf,
        login: name.to_owned(),
        error,
        notice: "",
        signup: console.app.settings.console.signup,
    })
    .await
}

/// The principal for a login name and password, if they match an enabled
/// account or the configured operator. Spends one Argon2 verification
/// whatever the outcome, so timing does not tell which names exist.
async fn authenticate(
    console: &Console,
    name: &str,
    password: &str,
) -> Result<Option<Principal>, PageError> {
    let pw = password.as_bytes();
    if pw.is_empty() || pw.len() > MAX_PASSWORD {
        return Ok(None);
    }
    let hasher = &console.app.hasher;
    let admin = &console.app.settings.console.admin_email;
    if !admin.trim().is_empty()
        && name.eq_ignore_ascii_case(admin.trim())
        && let Some(hash) = console.admin_hash().await
    {
        let ok = hasher.verify(hash, pw).await.map_err(|_| PageError::Busy)?;
        return Ok(ok.then_some(Principal::Operator));
    }
    let store = &console.app.store;
    let account = match CustomerId::parse(&name.to_ascii_uppercase()) {
        Ok(id) => store.account_get(&id).await?,
        Err(_) if name.contains('@') => store.account_by_email(name).await?,
        Err(_) => None,
    };
    let Some(account) = account else {
        let _ = hasher
            .verify(&console.app.dummy_hash, pw)
            .await
            .map_err(|_| PageError::Busy)?;
        return Ok(None);
    };
    let ok = hasher
        .verify(&account.password_hash, pw)
        .await
        .map_err(|_| PageError::Busy)?;
    Ok((ok && !account.disabled).then_some(Principal::Account {
        id: account.customer_id,
        epoch: account.token_epoch,
    }))
}

/// Starts a session for `principal`: returns it with the cookies to set
/// (the new session's, and the pre-session's cleared); any earlier session
/// of this browser ends.
fn open_session(
    console: &Console,
    headers: &HeaderMap,
    principal: Principal,
) -> (Session, [HeaderValue; 2]) {
    if let Some(old) = session::cookie(headers, SESSION_COOKIE) {
        console.sessions.remove(old);
    }
    let (id, session) = console.sessions.create(principal, console.now());
    let secure = console.secure_cookies();
    let cookies = [
        session::set_cookie(SESSION_COOKIE, &id, console.sessions.max_age_secs(), secure),
        session::clear_cookie(PRE_COOKIE, secure),
    ];
    (session, cookies)
}

pub async fn logout(
    State(console): State<Console>,
    headers: HeaderMap,
    Posted(_): Posted<serde::de::IgnoredAny>,
) -> Response {
    if let Some(c) = session::cookie(&headers, SESSION_COOKIE) {
        console.sessions.remove(c);
    }
    with_cookies(
        Redirect::to("/console/login?out=1").into_response(),
        [session::clear_cookie(
            SESSION_COOKIE,
            console.secure_cookies(),
        )],
    )
}

pub async fn signup_form(
    State(console): State<Console>,
    headers: HeaderMap,
) -> Result<Response, PageError> {
    blank_form(&console, &headers, |csrf| SignupPage {
        chrome: Chrome::bare("Sign up"),
        csrf,
        email: String::new(),
        country: String::new(),
        errors: Vec::new(),
        open: console.app.settings.console.signup,
    })
    .await
}

pub async fn signup(
    State(console): State<Console>,
    headers: HeaderMap,
    client: Client,
    PrePosted(form): PrePosted<SignupForm>,
) -> Result<Response, PageError> {
    let settings = &console.app.settings;
    let now = console.now();
    let mut attempt = None;
    let mut errors = Vec::new();
    let mut status = StatusCode::UNPROCESSABLE_ENTITY;
    let email = form.email.trim().to_owned();
    let country = form.country.trim().to_ascii_uppercase();
    if !settings.console.signup {
        errors.push("Sign-up is closed on this server. Ask its operator for an account.".into());
        status = StatusCode::FORBIDDEN;
    } else if let Err(r) = console
        .signup_throttle
        .reserve(
            &[(Key::Signup(client.key), settings.console.signups_per_hour)],
            now,
        )
        .map(|a| attempt = Some(a))
    {
        limits::audit("console-signup", client.ip, &email, "throttled");
        errors.push(format!(
            "Too many sign-ups from here. Try again in {} minutes.",
            r.retry_after.div_ceil(60)
        ));
        status = StatusCode::TOO_MANY_REQUESTS;
    } else {
        if email.is_empty() {
            errors.push("Enter your e-mail address: you log in with it.".into());
        }
        if country.is_empty() {
            errors.push("Enter your country (e.g. IN or 91).".into());
        }
        if form.password != form.confirm {
            errors.push("The two passwords differ.".into());
        }
    }
    // Geo permission by default: a sign-up sends only to its own country
    // until the account (Settings) or an operator widens it.
    let mut initial = otpgate_store::AccountSettings::default();
    if errors.is_empty() && settings.fraud.signup_own_country_only {
        let shaped = (country.len() == 2 && country.bytes().all(|b| b.is_ascii_uppercase()))
            || ((1..=3).contains(&country.len()) && country.bytes().all(|b| b.is_ascii_digit()));
        match otpgate_core::dialing_code_of(&country) {
            Some(cc) => initial.allowed_country_codes = Some(vec![cc]),
            // A malformed country is explained by the account check below.
            None if !shaped => {}
            None => errors.push(
                "That country is not known here: write its 2-letter code (IN, GB) or its dialing code (91, 44)."
                    .into(),
            ),
        }
    }
    if errors.is_empty() {
        let req = NewAccountRequest {
            password: form.password,
            email: Some(email.clone()),
            country: Some(country.clone()),
            credits: None,
            settings: initial,
        };
        // Creating an account hashes its password: within the hasher's
        // bound like every other hash a stranger can cause.
        let created = accounts::create_with(
            console.app.store.as_ref(),
            console.app.clock.as_ref(),
            settings,
            req,
            Some(&console.app.hasher),
        )
        .await;
        match created {
            Ok(account) => {
                if let Some(a) = attempt.take() {
                    a.record();
                }
                tracing::info!(customer = %account.customer_id, client = %client.ip, "console sign-up");
                let (session, cookies) = open_session(
                    &console,
                    &headers,
                    Principal::Account {
                        id: account.customer_id.clone(),
                        epoch: account.token_epoch,
                    },
                );
                let page = WelcomePage {
                    chrome: Chrome {
                        title: "Welcome".to_owned(),
                        active: "",
                        who: email,
                        csrf: session.csrf,
                        account_nav: true,
                        operator_nav: false,
                        inbox: console.inbox_enabled(),
                        v: super::assets::version(),
                    },
                    customer_id: account.customer_id.to_string(),
                    test_credits: account.test_credits,
                    token_curl: super::credentials::token_curl(
                        &super::credentials::public_base(&console, &headers),
                        account.customer_id.as_str(),
                    ),
                };
                return Ok(with_cookies(
                    render_status(StatusCode::CREATED, &page),
                    cookies,
                ));
            }
            Err(AccountError::Store(e)) => return Err(e.into()),
            Err(AccountError::Busy) => return Err(PageError::Busy),
            Err(AccountError::Internal(e)) => return Err(PageError::internal(&e)),
            Err(AccountError::EmailTaken) => {
                // Counted like a sign-up: asking which e-mails have
                // accounts costs a stranger a sign-up each.
                if let Some(a) = attempt.take() {
                    a.record();
                }
                errors.push("An account with this e-mail exists. Log in instead.".into());
                status = StatusCode::CONFLICT;
            }
            Err(AccountError::BadPassword) => errors.push(format!(
                "Choose a password of {} to {MAX_PASSWORD} characters.",
                accounts::MIN_PASSWORD
            )),
            Err(AccountError::BadEmail) => {
                errors.push("That does not look like an e-mail address.".into());
            }
            Err(AccountError::BadCountry) => errors.push(
                "Country must be a 2-letter code (IN, GB) or a dialing code (91, 44).".into(),
            ),
            Err(AccountError::NotFound) => return Err(PageError::Internal),
        }
    }
    form_page(&console, &headers, status, |csrf| SignupPage {
        chrome: Chrome::bare("Sign up"),
        csrf,
        email,
        country,
        errors,
        open: settings.console.signup,
    })
    .await
}
