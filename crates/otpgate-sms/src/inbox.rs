//! The development channel: "delivers" by storing the message where
//! `otpgate inbox` and the console's sandbox can show it. No phone needed.

use std::sync::Arc;

use async_trait::async_trait;
use otpgate_core::Clock;
use otpgate_store::{InboxEntry, InboxStore};
use serde::Deserialize;

use crate::channel::{Accepted, Channel, ChannelError, ChannelHealth, Outgoing};
use crate::setup::{ChannelSetup, ConfigError, EnvLookup, StartContext, Starter};

/// `type = "inbox"` takes no settings.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InboxConfig {}

impl ChannelSetup for InboxConfig {
    fn prepare(&self, _name: &str, _env: EnvLookup<'_>) -> Result<Starter, ConfigError> {
        Ok(Box::new(|name: &str, ctx: &StartContext| {
            Arc::new(InboxChannel::new(
                name,
                ctx.store.clone(),
                ctx.clock.clone(),
            )) as Arc<dyn Channel>
        }))
    }
}

pub struct InboxChannel {
    name: String,
    store: Arc<dyn InboxStore>,
    clock: Arc<dyn Clock>,
}

impl InboxChannel {
    pub fn new(name: impl Into<String>, store: Arc<dyn InboxStore>, clock: Arc<dyn Clock>) -> Self {
        Self {
            name: name.into(),
            store,
            clock,
        }
    }
}

impl InboxChannel {
    /// What delivering `msg` stores, and the acceptance recorded for it.
    fn entry(&self, msg: &Outgoing) -> (InboxEntry, Accepted) {
        let entry = InboxEntry {
            customer_id: Some(msg.customer_id.clone()),
            destination: msg.destination.e164_digits(),
            text: msg.text.clone(),
            verification_id: Some(msg.verification_id),
            created_at: self.clock.now_ms(),
        };
        let accepted = Accepted {
            gateway_id: Some(format!("inbox-{}", msg.message_id)),
        };
        (entry, accepted)
    }
}

#[async_trait]
impl Channel for InboxChannel {
    fn name(&self) -> &str {
        &self.name
    }

    async fn send(&self, msg: &Outgoing) -> Result<Accepted, ChannelError> {
        let (entry, accepted) = self.entry(msg);
        self.store
            .inbox_put(&entry)
            .await
            .map_err(|e| ChannelError::Transient(e.to_string()))?;
        Ok(accepted)
    }

    fn stored_delivery(&self, msg: &Outgoing) -> Option<(InboxEntry, Accepted)> {
        Some(self.entry(msg))
    }

    fn health(&self) -> ChannelHealth {
        ChannelHealth {
            name: self.name.clone(),
            kind: "inbox",
            up: true,
            last_error: None,
        }
    }
}
