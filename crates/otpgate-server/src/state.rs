//! The state every handler shares: one cheap-to-clone handle over `Arc`s.

use std::sync::Arc;

use otpgate_core::{Clock, CodeKey, TokenSigner};
use otpgate_sms::Delivery;
use otpgate_store::Store;

use crate::account_cache::AccountCache;
use crate::auth::VerifiedTokens;
use crate::client::ProxyConfig;
use crate::config::Settings;
use crate::events::Events;
use crate::limits::{KnownClients, Throttle};
use crate::metrics::Metrics;
use crate::password::{Hasher, KeyCache};

#[derive(Clone)]
pub struct AppState(Arc<Inner>);

pub struct Inner {
    pub store: Arc<dyn Store>,
    pub clock: Arc<dyn Clock>,
    pub settings: Arc<Settings>,
    pub signer: TokenSigner,
    pub code_key: CodeKey,
    pub delivery: Arc<Delivery>,
    /// The webhook worker (woken after a change that queues an event).
    pub events: Arc<Events>,
    pub metrics: Arc<Metrics>,
    /// Failed token requests (see [`crate::limits`]).
    pub token_throttle: Throttle,
    /// Clients that got a token per customerId lately.
    pub token_known: KnownClients,
    pub key_cache: KeyCache,
    /// Accounts read lately, for the token checks (see [`crate::account_cache`]).
    pub accounts: AccountCache,
    /// Tokens whose signature was checked lately (see [`crate::auth::VerifiedTokens`]).
    pub tokens: VerifiedTokens,
    /// The bound on concurrent password hashing.
    pub hasher: Hasher,
    /// Trusted proxies, for the client address.
    pub proxies: ProxyConfig,
    /// An Argon2 hash of nothing in particular, verified against when the
    /// customerId is unknown so that answer takes as long as a wrong key.
    pub dummy_hash: String,
}

impl AppState {
    pub fn new(inner: Inner) -> Self {
        Self(Arc::new(inner))
    }
}

impl std::ops::Deref for AppState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}
