//! The console's failures as pages: each names its HTTP status and a short,
//! fixed sentence for the person at the browser. Internal causes are logged
//! here and never shown.

use askama::Template;
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Redirect, Response};
use otpgate_store::StoreError;

use super::views::{Chrome, ErrorPage};

#[derive(Debug)]
pub enum PageError {
    /// No session (or it ended): to the log-in page.
    Login,
    /// Somewhere else first (an operator on an account page, and back).
    Redirect(&'static str),
    /// A POST without this session's CSRF token.
    Csrf,
    NotFound,
    MethodNotAllowed,
    BadRequest(&'static str),
    TooLarge,
    /// Too many attempts; retry after this many seconds.
    Throttled(u64),
    /// The password hasher is full: try again in a second.
    Busy,
    Unavailable,
    Internal,
}

impl PageError {
    /// Logs an internal cause and answers a bland 500.
    pub fn internal(cause: &dyn std::fmt::Display) -> Self {
        tracing::error!(error = %cause, "console internal error");
        Self::Internal
    }
}

impl From<StoreError> for PageError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Unavailable(cause) => {
                tracing::warn!(error = %cause, "console: storage unavailable");
                Self::Unavailable
            }
            other => Self::internal(&other),
        }
    }
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        let (status, title, text) = match self {
            Self::Login => return Redirect::to("/console/login").into_response(),
            Self::Redirect(to) => return Redirect::to(to).into_response(),
            Self::Csrf => (
                StatusCode::FORBIDDEN,
                "Form refused",
                "This form was not sent from this console session, or the session has changed. Go back, reload the page and try again.",
            ),
            Self::NotFound => (
                StatusCode::NOT_FOUND,
                "Not found",
                "There is no such page in the console.",
            ),
            Self::MethodNotAllowed => (
                StatusCode::METHOD_NOT_ALLOWED,
                "Not allowed",
                "This page does not take that kind of request.",
            ),
            Self::BadRequest(why) => (StatusCode::BAD_REQUEST, "Bad request", why),
            Self::TooLarge => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "Too large",
                "That form was larger than the console accepts.",
            ),
            Self::Throttled(_) => (
                StatusCode::TOO_MANY_REQUESTS,
                "Too many attempts",
                "Too many attempts from here. Wait a few minutes and try again.",
            ),
            Self::Busy => (
                StatusCode::SERVICE_UNAVAILABLE,
                "Busy",
                "The server is busy checking passwords; nothing was checked. Try again in a moment.",
            ),
            Self::Unavailable => (
                StatusCode::SERVICE_UNAVAILABLE,
                "Unavailable",
                "Storage is not answering right now; nothing was changed. Try again shortly.",
            ),
            Self::Internal => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "Something went wrong",
                "The server could not show this page. The error has been logged.",
            ),
        };
        let page = ErrorPage {
            chrome: Chrome::bare(title),
            text,
        };
        let mut resp = render_status(status, &page);
        let retry = match self {
            Self::Throttled(secs) => Some(secs),
            Self::Busy => Some(1),
            _ => None,
        };
        crate::error::add_retry_after(&mut resp, retry);
        resp
    }
}

/// Renders a template as a 200 page.
pub fn render<T: Template>(t: &T) -> Response {
    render_status(StatusCode::OK, t)
}

/// Renders a template with the given status; a template that fails to
/// render (a bug) is a plain 500 rather than a half page.
pub fn render_status<T: Template>(status: StatusCode, t: &T) -> Response {
    match t.render() {
        Ok(html) => (status, Html(html)).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "console template failed to render");
            (StatusCode::INTERNAL_SERVER_ERROR, "internal error").into_response()
        }
    }
}
