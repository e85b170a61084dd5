//! What the channels that make one request per message (HTTP, WhatsApp,
//! voice, e-mail) share: classifying a failed request or a refusal for the
//! worker, and keeping their health (up, last error) between messages.

use std::sync::{Mutex, PoisonError};

use std::time::Duration;

use crate::channel::{Accepted, ChannelError, ChannelHealth};
use crate::setup::ConfigError;

/// The client of a per-request channel `channel`: `timeout_ms` bounds the
/// whole request, and connecting too, up to 10 s at most.
///
/// # Errors
/// [`ConfigError::Invalid`] when the client cannot be built (no TLS roots).
pub(crate) fn http_client(channel: &str, timeout_ms: u64) -> Result<reqwest::Client, ConfigError> {
    reqwest::Client::builder()
        .timeout(Duration::from_millis(timeout_ms.max(1)))
        .connect_timeout(Duration::from_millis(timeout_ms.clamp(1, 10_000)))
        .build()
        .map_err(|e| ConfigError::invalid(channel, format!("HTTP client: {e}")))
}

/// A request that got no answer: a timeout is retried later, a failed
/// connection means the API cannot be reached now (fail over), anything
/// else is retried. The error goes without its URL, which may carry
/// credentials.
pub fn request_failed(e: reqwest::Error, api: &str) -> ChannelError {
    let e = e.without_url();
    if e.is_timeout() {
        ChannelError::Transient(format!("{api} timed out: {e}"))
    } else if e.is_connect() {
        ChannelError::Unavailable(format!("cannot reach the {api}: {e}"))
    } else {
        ChannelError::Transient(format!("request failed: {e}"))
    }
}

/// An answer that is not a success: 408, 425, 429 and 5xx are retried
/// later; 401 and 403 mean the channel's `credential` is wrong (the channel
/// is unavailable, not the message); the rest refuse the message.
pub fn refused(code: u16, api: &str, credential: &str) -> ChannelError {
    let what = format!("{api} answered HTTP {code}");
    match code {
        408 | 425 | 429 | 500..=599 => ChannelError::Transient(what),
        401 | 403 => ChannelError::Unavailable(format!("{what}: check the {credential}")),
        _ => ChannelError::Permanent(what),
    }
}

/// How a channel's `up` follows its results.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Liveness {
    /// Always up: each message is one independent request.
    Always,
    /// Down after an unavailable answer; up after any other result.
    LastResult,
    /// Down after an unavailable answer; up again after a success only.
    LastSuccess,
}

/// A channel's health between messages: whether it is up and the last
/// error it met (kept after later successes, for `/readyz`).
#[derive(Debug)]
pub struct Health {
    kind: &'static str,
    liveness: Liveness,
    state: Mutex<(bool, Option<String>)>,
}

impl Health {
    /// Up until shown otherwise: these channels have no session to wait for.
    pub fn new(kind: &'static str, liveness: Liveness) -> Self {
        Self {
            kind,
            liveness,
            state: Mutex::new((true, None)),
        }
    }

    /// Records one send's result and hands it back.
    ///
    /// # Errors
    /// `r`'s own.
    pub fn note(&self, r: Result<Accepted, ChannelError>) -> Result<Accepted, ChannelError> {
        let mut st = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let (up, last_error) = &mut *st;
        match (&r, self.liveness) {
            (_, Liveness::Always) => {}
            (Ok(_), _) | (Err(_), Liveness::LastResult) => *up = true,
            (Err(_), Liveness::LastSuccess) => {}
        }
        if let Err(e) = &r {
            if matches!(e, ChannelError::Unavailable(_)) && self.liveness != Liveness::Always {
                *up = false;
            }
            *last_error = Some(e.reason().to_owned());
        }
        r
    }

    /// The health of channel `name`, as last noted.
    pub fn of(&self, name: &str) -> ChannelHealth {
        let st = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        ChannelHealth {
            name: name.to_owned(),
            kind: self.kind,
            up: st.0,
            last_error: st.1.clone(),
        }
    }
}

/// Implements [`Channel`](crate::channel::Channel) for a per-request channel
/// type with fields `name: String` and `health: Health` and an
/// `async fn deliver(&self, &Outgoing) -> Result<Accepted, ChannelError>`:
/// each send goes through `deliver` and its result into the health.
macro_rules! per_request_channel {
    ($ty:ty) => {
        #[async_trait::async_trait]
        impl $crate::channel::Channel for $ty {
            fn name(&self) -> &str {
                &self.name
            }

            async fn send(
                &self,
                msg: &$crate::channel::Outgoing,
            ) -> Result<$crate::channel::Accepted, $crate::channel::ChannelError> {
                self.health.note(self.deliver(msg).await)
            }

            fn health(&self) -> $crate::channel::ChannelHealth {
                self.health.of(&self.name)
            }
        }
    };
}
pub(crate) use per_request_channel;
