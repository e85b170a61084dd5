//! The seam between the outbox worker and a gateway.

use async_trait::async_trait;
use otpgate_core::{CustomerId, PhoneNumber, VerificationId};
use otpgate_store::InboxEntry;

/// One message to hand to a gateway.
#[derive(Debug, Clone)]
pub struct Outgoing {
    /// The outbox row's id; a gateway that takes a client reference gets it,
    /// so a duplicate after a crash can be recognised there.
    pub message_id: i64,
    pub verification_id: VerificationId,
    pub customer_id: CustomerId,
    pub destination: PhoneNumber,
    pub flow_type: String,
    /// 0 for the requested flow, 1.. for the steps of a fallback workflow.
    pub step: u32,
    /// The recipient when it is not the phone number (an e-mail address).
    pub address: Option<String>,
    /// The send request's `langId` (a template language at the gateway).
    pub lang: Option<String>,
    /// What to send: the rendered text (SMS, voice), the bare code
    /// (WhatsApp), or an [`crate::email::EmailBody`] as JSON (e-mail).
    pub text: String,
}

/// A gateway accepted the message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    /// The gateway's id for the message (SMPP `message_id`, an HTTP API's
    /// id), kept for receipts and support.
    pub gateway_id: Option<String>,
}

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum ChannelError {
    /// Worth retrying later on this channel: a timeout, throttling, a 5xx.
    #[error("transient: {0}")]
    Transient(String),
    /// The channel cannot take messages now (not bound, connection refused):
    /// the router fails over to the next channel at once.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// This message will never go through (invalid destination, rejected):
    /// no retry, the verification fails and is refunded.
    #[error("permanent: {0}")]
    Permanent(String),
}

impl ChannelError {
    /// The reason, without the kind.
    pub fn reason(&self) -> &str {
        match self {
            Self::Transient(r) | Self::Unavailable(r) | Self::Permanent(r) => r,
        }
    }
}

/// A channel's health for `/readyz` and logs.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ChannelHealth {
    pub name: String,
    pub kind: &'static str,
    /// Ready to take a message now (bound, reachable as last seen).
    pub up: bool,
    pub last_error: Option<String>,
}

#[async_trait]
pub trait Channel: Send + Sync + 'static {
    /// The configured name (`[channels.NAME]`), recorded on each message.
    fn name(&self) -> &str;

    /// Hands one message to the gateway and waits for it to accept or refuse.
    ///
    /// # Errors
    /// [`ChannelError`], classified so the worker knows whether to retry,
    /// fail over or give up.
    async fn send(&self, msg: &Outgoing) -> Result<Accepted, ChannelError>;

    /// For a channel that delivers by storing the message (the development
    /// inbox): the entry to store and the acceptance to record, so that the
    /// worker stores both in one write instead of calling [`Channel::send`].
    /// `None` (every gateway): `send` delivers.
    fn stored_delivery(&self, _msg: &Outgoing) -> Option<(InboxEntry, Accepted)> {
        None
    }

    fn health(&self) -> ChannelHealth;

    /// Ends sessions politely (SMPP `unbind`); called once at shutdown.
    async fn close(&self) {}
}
