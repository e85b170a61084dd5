//! Credentials: the customerId, how the token `key` is formed, copyable
//! curl examples against this server's own URL, and the password change
//! (which bumps the token epoch: every token issued before stops working,
//! and so does every other console session of the account).

use askama::Template;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use otpgate_api::paths;
use serde::Deserialize;

use super::error::{render, render_status};
use super::extract::{AccountCtx, Lenient, Posted};
use super::{Console, PageError};
use crate::accounts::{self, AccountError, MAX_PASSWORD, MIN_PASSWORD};
use crate::limits::Key;

#[derive(Template)]
#[template(path = "console/credentials.html")]
struct CredentialsPage {
    chrome: super::views::Chrome,
    customer_id: String,
    base: String,
    token_curl: String,
    send_curl: String,
    validate_curl: String,
    notice: &'static str,
    error: String,
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub struct PasswordForm {
    current: String,
    new: String,
    confirm: String,
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub struct Flags {
    changed: Option<String>,
}

/// The URL API clients reach this server at: `public_url` when set, else
/// the scheme and `Host` this request came with.
pub fn public_base(console: &Console, headers: &HeaderMap) -> String {
    let configured = console.app.settings.public_url.trim().trim_end_matches('/');
    if !configured.is_empty() {
        return configured.to_owned();
    }
    let scheme = if console.secure_cookies() {
        "https"
    } else {
        "http"
    };
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| plausible_host(h))
        .unwrap_or(&console.app.settings.listen);
    format!("{scheme}://{host}")
}

/// A host, optionally with a port, with nothing a shell or a URL would
/// read as more than that (the examples are pasted into shells).
fn plausible_host(h: &str) -> bool {
    (1..=255).contains(&h.len())
        && h.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-.:[]".contains(&b))
}

pub fn token_curl(base: &str, customer_id: &str) -> String {
    format!(
        "curl -sG \"{base}{}\" \\\n  --data-urlencode \"customerId={customer_id}\" \\\n  --data-urlencode \"key=$(printf '%s' \"$PASSWORD\" | base64 | tr -d '\\n')\" \\\n  -d scope=NEW",
        paths::TOKEN
    )
}

fn send_curl(base: &str) -> String {
    format!(
        "curl -s -X POST \"{base}{}?countryCode=91&mobileNumber=9876543210&flowType=SMS\" \\\n  -H \"authToken: $TOKEN\"",
        paths::SEND_V3
    )
}

fn validate_curl(base: &str) -> String {
    format!(
        "curl -s \"{base}{}?verificationId=$VERIFICATION_ID&code=$CODE\" \\\n  -H \"authToken: $TOKEN\"",
        paths::VALIDATE_V3
    )
}

fn credentials_page(
    console: &Console,
    ctx: &AccountCtx,
    headers: &HeaderMap,
    notice: &'static str,
    error: String,
) -> CredentialsPage {
    let base = public_base(console, headers);
    CredentialsPage {
        chrome: ctx.chrome(console, "Credentials", "credentials"),
        customer_id: ctx.account.customer_id.to_string(),
        token_curl: token_curl(&base, ctx.account.customer_id.as_str()),
        send_curl: send_curl(&base),
        validate_curl: validate_curl(&base),
        base,
        notice,
        error,
    }
}

pub async fn page(
    State(console): State<Console>,
    ctx: AccountCtx,
    headers: HeaderMap,
    Lenient(flags): Lenient<Flags>,
) -> Response {
    let notice = if flags.changed.is_some() {
        "Password changed. Every token issued before now is revoked: request a new token with the new key."
    } else {
        ""
    };
    render(&credentials_page(
        &console,
        &ctx,
        &headers,
        notice,
        String::new(),
    ))
}

pub async fn change_password(
    State(console): State<Console>,
    ctx: AccountCtx,
    headers: HeaderMap,
    Posted(form): Posted<PasswordForm>,
) -> Result<Response, PageError> {
    let now = console.now();
    let id = &ctx.account.customer_id;
    let refuse = |status: StatusCode, error: String| {
        render_status(
            status,
            &credentials_page(&console, &ctx, &headers, "", error),
        )
    };
    let c = &console.app.settings.console;
    let attempt = match console.login_throttle.reserve(
        &[(Key::Password(id.to_string()), c.max_login_failures)],
        now,
    ) {
        Ok(a) => a,
        Err(r) => {
            return Ok(refuse(
                StatusCode::TOO_MANY_REQUESTS,
                format!(
                    "Too many wrong passwords. Try again in {} minutes.",
                    r.retry_after.div_ceil(60)
                ),
            ));
        }
    };
    let current_ok = !form.current.is_empty()
        && form.current.len() <= MAX_PASSWORD
        && console
            .app
            .hasher
            .verify(&ctx.account.password_hash, form.current.as_bytes())
            .await
            .map_err(|_| PageError::Busy)?;
    if !current_ok {
        attempt.record();
        return Ok(refuse(
            StatusCode::UNPROCESSABLE_ENTITY,
            "The current password is wrong; nothing was changed.".into(),
        ));
    }
    drop(attempt);
    if form.new != form.confirm {
        return Ok(refuse(
            StatusCode::UNPROCESSABLE_ENTITY,
            "The two new passwords differ; nothing was changed.".into(),
        ));
    }
    match accounts::set_password(console.app.store.as_ref(), id, &form.new).await {
        Ok(account) => {
            console
                .sessions
                .password_changed(&ctx.cookie, id, account.token_epoch);
            tracing::info!(customer = %id, "console: password changed; earlier tokens revoked");
            Ok(Redirect::to("/console/credentials?changed=1").into_response())
        }
        Err(AccountError::BadPassword) => Ok(refuse(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!(
                "Choose a password of {MIN_PASSWORD} to {MAX_PASSWORD} characters; nothing was changed."
            ),
        )),
        Err(AccountError::Store(e)) => Err(e.into()),
        Err(AccountError::NotFound) => Err(PageError::Login),
        Err(e) => Err(PageError::internal(&e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_with_shell_or_url_syntax_are_not_echoed() {
        assert!(plausible_host("otp.example.com"));
        assert!(plausible_host("127.0.0.1:8080"));
        assert!(plausible_host("[::1]:8080"));
        for bad in ["", "a b", "x\"y", "a$(id)", "h/x", "a;b", "a`b"] {
            assert!(!plausible_host(bad), "{bad}");
        }
    }

    #[test]
    fn the_token_example_url_encodes_the_key() {
        let c = token_curl("http://h", "C-6D16D900FA3044F");
        assert!(c.contains("--data-urlencode \"key="));
        assert!(c.contains("customerId=C-6D16D900FA3044F"));
        assert!(c.contains("http://h/auth/v1/authentication/token"));
    }
}
