//! The SDK's error type, one variant per cause a caller would act on
//! differently: fix the configuration, wait and retry, top up, correct the
//! input, or report a service fault.

use std::sync::Arc;
use std::time::Duration;

use otpgate_api::ResponseCode;

/// Everything that can go wrong in a call, other than the failure outcomes
/// the contract defines for a verification (those are
/// [`Validation`](crate::Validation) and [`SendOutcome`](crate::SendOutcome)
/// values, not errors).
///
/// Variants that come from a response keep its raw `body`, so a caller (the
/// CLI's `--json`, a log) can show what the service said.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The client is not usable as configured (no credentials, a base URL that
    /// does not parse, a TLS backend that fails to start).
    #[error("invalid client configuration: {0}")]
    Config(String),

    /// The service could not be reached, or the exchange broke off before a
    /// whole response arrived. The URL is stripped from the inner error
    /// because a token request's query string carries the password.
    #[error("could not reach the service: {0}")]
    Transport(#[source] Arc<reqwest::Error>),

    /// The credentials or the token were refused (contract §1 401, §4 401),
    /// and a fresh token did not help or could not be obtained.
    #[error("unauthorized: {message}")]
    Unauthorized {
        message: String,
        /// The response body, when there was a response.
        body: Option<String>,
    },

    /// Too many requests: token attempts (§1 429) or a send rate limit (§4
    /// 800). `retry_after` is the `Retry-After` header, when it gave seconds.
    #[error("rate limited{}: {message}", retry_after_text(*.retry_after))]
    RateLimited {
        retry_after: Option<Duration>,
        message: String,
        body: String,
    },

    /// The account's credits do not cover the message (§4 402).
    #[error("insufficient balance: {message}")]
    InsufficientBalance { message: String, body: String },

    /// The request was refused as malformed: a missing or bad parameter (400),
    /// a customerId that is not the token's (501), an unknown or forbidden
    /// country (511). `message` is the service's reason.
    #[error("invalid input ({}): {message}", code.code())]
    InvalidInput {
        code: ResponseCode,
        message: String,
        body: String,
    },

    /// The service reported a fault of its own (500, 503, or a bare 5xx from
    /// something in front of it). Nothing was done; trying later may work.
    #[error("service error (HTTP {status}, code {}): {message}", code.code())]
    Server {
        status: u16,
        code: ResponseCode,
        message: String,
        body: String,
    },

    /// A response this SDK does not know how to read: the status and the raw
    /// body are kept for whoever has to find out what happened.
    #[error("unexpected response (HTTP {status}): {reason}")]
    Unexpected {
        status: u16,
        reason: String,
        body: String,
    },
}

fn retry_after_text(d: Option<Duration>) -> String {
    d.map_or_else(String::new, |d| format!(" (retry after {} s)", d.as_secs()))
}

impl Error {
    /// The raw response body behind this error, when a response arrived.
    pub fn body(&self) -> Option<&str> {
        match self {
            Self::Unauthorized { body, .. } => body.as_deref(),
            Self::RateLimited { body, .. }
            | Self::InsufficientBalance { body, .. }
            | Self::InvalidInput { body, .. }
            | Self::Server { body, .. }
            | Self::Unexpected { body, .. } => Some(body),
            Self::Config(_) | Self::Transport(_) => None,
        }
    }

    /// Whether the service was never reached or the exchange broke off.
    pub fn is_transport(&self) -> bool {
        matches!(self, Self::Transport(_))
    }
}

/// Shorthand for this crate's results.
pub type Result<T, E = Error> = std::result::Result<T, E>;
