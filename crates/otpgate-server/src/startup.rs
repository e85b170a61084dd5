//! Building and running the server: open the store, load or create the
//! secrets, start the delivery worker, bind, and serve until told to stop
//! (then stop accepting, finish in-flight requests, let the worker finish
//! its round). Tests build it on port 0 and read `port()`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use axum::extract::Request;
use axum::middleware::{self, Next};
use axum::response::Response;
use otpgate_core::{Clock, CodeKey, SecretString, SystemClock, TokenSigner};
use otpgate_sms::worker::Router as SmsRouter;
use otpgate_sms::{Delivery, DeliveryConfig};
use otpgate_store::Store;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::account_cache::AccountCache;
use crate::auth::VerifiedTokens;
use crate::client::Client;
use crate::config::Settings;
use crate::events::Events;
use crate::limits::{KnownClients, Throttle};
use crate::metrics::Metrics;
use crate::metrics::store::metered;
use crate::params::BodyLimit;
use crate::password::{Hasher, KeyCache};
use crate::routes;
use crate::state::{AppState, Inner};

/// A built server, bound and ready to run.
pub struct Application {
    listener: TcpListener,
    /// `/metrics` on a listener of its own, when `metrics.listen` is set.
    metrics_listener: Option<TcpListener>,
    state: AppState,
    delivery: Arc<Delivery>,
}

impl Application {
    /// Opens the store named by `settings.database_url` and builds on it.
    ///
    /// # Errors
    /// When the store cannot be opened, the address cannot be bound, or a
    /// setting is invalid.
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        let store = crate::store::open(&settings).await?;
        Self::build_with(settings, store, Arc::new(SystemClock)).await
    }

    /// Builds on a given store and clock (tests use a manual clock).
    ///
    /// # Errors
    /// As [`Application::build`].
    pub async fn build_with(
        settings: Settings,
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
    ) -> anyhow::Result<Self> {
        Self::build_with_router(settings, store, clock, None).await
    }

    /// Builds with the given SMS router instead of the configured channels
    /// (tests plug in gateways that fail on purpose).
    ///
    /// # Errors
    /// As [`Application::build`].
    pub async fn build_with_router(
        settings: Settings,
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        router: Option<Arc<dyn SmsRouter>>,
    ) -> anyhow::Result<Self> {
        settings.validate().map_err(anyhow::Error::msg)?;
        otpgate_core::warm_up();
        // Everything below (the SMS channels' receipts included) uses the
        // store through the metrics wrapper.
        let metrics = Arc::new(Metrics::new());
        let store: Arc<dyn Store> = Arc::new(metered(store, metrics.clone()));

        let token_secret = secret_bytes(&store, "token_secret", settings.token.secret.as_ref())
            .await
            .context("failed to load the token signing secret")?;
        let code_key = secret_bytes(&store, "code_key", settings.otp.code_key.as_ref())
            .await
            .context("failed to load the code HMAC key")?;

        let router = match router {
            Some(r) => r,
            None => build_router(&settings, &store, &clock)?,
        };
        let mut dcfg = DeliveryConfig {
            batch: settings.delivery.batch,
            lease_ms: settings.delivery.lease_ms,
            poll_ms: settings.delivery.poll_ms,
            retry_base_ms: settings.delivery.retry_base_ms,
            retry_max_ms: settings.delivery.retry_max_ms,
            ..DeliveryConfig::default()
        };
        dcfg.worker_id = if settings.delivery.worker_id.is_empty() {
            default_worker_id()
        } else {
            settings.delivery.worker_id.clone()
        };
        let events = Events::new(
            store.clone(),
            clock.clone(),
            settings.events.clone(),
            dcfg.worker_id.clone(),
            metrics.clone(),
        )?;
        let delivery =
            Delivery::observed(store.clone(), clock.clone(), router, dcfg, metrics.clone());

        let listener = TcpListener::bind(&settings.listen)
            .await
            .with_context(|| format!("failed to bind {}", settings.listen))?;
        let metrics_listener = match settings.metrics.listen.trim() {
            "" => None,
            addr if settings.metrics.enabled => Some(
                TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("failed to bind metrics.listen {addr}"))?,
            ),
            _ => None,
        };

        let a = &settings.auth;
        let hasher = Hasher::new(
            if a.max_concurrent_hashes == 0 {
                Hasher::default_running()
            } else {
                a.max_concurrent_hashes
            },
            a.hash_queue,
            Duration::from_millis(a.hash_wait_ms),
        );
        let dummy_hash = hasher
            .hash("otpgate-dummy-password")
            .await
            .map_err(|_| anyhow::anyhow!("the password hasher did not start"))??;
        let proxies = settings.proxies().map_err(anyhow::Error::msg)?;
        let state = AppState::new(Inner {
            token_throttle: Throttle::new(settings.token.failure_window_secs),
            token_known: KnownClients::new(settings.auth.known_client_secs),
            hasher,
            proxies,
            signer: TokenSigner::new(token_secret, settings.token.lifetime_secs),
            code_key: CodeKey::new(code_key),
            key_cache: KeyCache::new(),
            accounts: AccountCache::new(settings.auth.account_cache_ms),
            tokens: VerifiedTokens::default(),
            dummy_hash,
            store,
            clock,
            delivery: delivery.clone(),
            events,
            metrics,
            settings: Arc::new(settings),
        });
        Ok(Self {
            listener,
            metrics_listener,
            state,
            delivery,
        })
    }

    pub fn port(&self) -> u16 {
        self.listener.local_addr().map(|a| a.port()).unwrap_or(0)
    }

    /// The port of `metrics.listen`'s listener, when there is one.
    pub fn metrics_port(&self) -> Option<u16> {
        self.metrics_listener
            .as_ref()
            .and_then(|l| l.local_addr().ok())
            .map(|a| a.port())
    }

    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.listener.local_addr().ok()
    }

    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// The axum router with every layer, for tests that call it in-process.
    pub fn router(&self) -> Router {
        app(self.state.clone())
    }

    /// Serves until `shutdown` fires; then stops accepting, lets in-flight
    /// requests finish, and waits for the delivery worker to finish its
    /// round and close its channels.
    ///
    /// # Errors
    /// When serving fails.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let worker: JoinHandle<()> = tokio::spawn(self.delivery.clone().run(shutdown.clone()));
        let events: Option<JoinHandle<()>> = self
            .state
            .settings
            .events
            .enabled
            .then(|| tokio::spawn(self.state.events.clone().run(shutdown.clone())));
        let metrics_server = self.metrics_listener.map(|l| {
            let s = shutdown.clone();
            let app = crate::routes::scrape::router().with_state(self.state.clone());
            tokio::spawn(async move {
                axum::serve(l, app)
                    .with_graceful_shutdown(async move { s.cancelled().await })
                    .await
            })
        });
        let housekeeping = tokio::spawn(housekeeping(self.state.clone(), shutdown.clone()));
        let sweeper: JoinHandle<()> =
            tokio::spawn(crate::retention::run(self.state.clone(), shutdown.clone()));
        let app = app(self.state.clone());
        let h = &self.state.settings.http;
        let limits = crate::conn::ConnLimits {
            header_timeout: Duration::from_secs(h.header_timeout_secs),
            idle_timeout: Duration::from_secs(h.idle_timeout_secs),
            max_connections: h.max_connections,
            max_header_bytes: h.max_header_bytes,
        };
        // In-flight requests end within the request timeout; a little more
        // for their responses to be written.
        let drain = Duration::from_millis(h.request_timeout_ms) + Duration::from_secs(5);
        crate::conn::serve(self.listener, app, limits, shutdown.clone(), drain).await;
        let _ = housekeeping.await;
        // The server returns once in-flight requests are done; the worker
        // sees the same signal and finishes its round.
        shutdown.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(30), worker).await;
        if let Some(events) = events {
            let _ = tokio::time::timeout(Duration::from_secs(30), events).await;
        }
        if let Some(m) = metrics_server {
            let _ = tokio::time::timeout(Duration::from_secs(5), m).await;
        }
        let _ = tokio::time::timeout(Duration::from_secs(5), sweeper).await;
        Ok(())
    }
}

/// The full router with its layers.
pub fn app(state: AppState) -> Router {
    let limit = BodyLimit(state.settings.http.max_body_bytes);
    let max_params = crate::params::MaxParams(state.settings.http.max_params);
    let timeout = Duration::from_millis(state.settings.http.request_timeout_ms);
    let proxies = state.proxies.clone();
    let http = state.settings.http.clone();
    let router =
        routes::router(state).layer(middleware::from_fn(move |mut req: Request, next: Next| {
            // The client as throttles and logs see it: the peer, or what a
            // trusted proxy says it is.
            if let Some(peer) = req
                .extensions()
                .get::<axum::extract::ConnectInfo<SocketAddr>>()
                .map(|c| c.0.ip())
            {
                let ip = proxies.client_ip(peer, req.headers());
                req.extensions_mut().insert(Client::new(ip));
            }
            req.extensions_mut().insert(limit);
            req.extensions_mut().insert(max_params);
            async move { run_with_timeout(req, next, timeout).await }
        }));
    crate::cors::layer(router, &http)
}

/// Periodic work beside serving: scrubbing delivered texts from the
/// store's files (`delivery.scrub_secs`) and the development inbox's
/// retention (`inbox.retention_secs`).
async fn housekeeping(state: AppState, shutdown: CancellationToken) {
    let scrub_every = state.settings.delivery.scrub_secs;
    let retention = state.settings.inbox.retention_secs;
    let retention_ms = i64::try_from(retention.saturating_mul(1000)).unwrap_or(i64::MAX);
    // Often enough that a message outlives its retention by a small
    // fraction of it; at most once a minute.
    let purge_every_ms = (retention / 10).clamp(1, 60) * 1000;
    let mut next_scrub = 0u64;
    let mut next_purge = 0u64;
    let started = std::time::Instant::now();
    loop {
        let now = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        if scrub_every > 0 && now >= next_scrub {
            next_scrub = now + scrub_every * 1000;
            if let Err(e) = state.store.scrub().await {
                tracing::debug!(error = %e, "store scrub did not finish; it is retried");
            }
        }
        if retention > 0 && now >= next_purge {
            next_purge = now + purge_every_ms;
            let before = state.clock.now_ms().saturating_sub(retention_ms);
            match state.store.inbox_purge(before).await {
                Ok(0) => {}
                Ok(n) => {
                    tracing::info!(deleted = n, "inbox: messages past their retention deleted")
                }
                Err(e) => tracing::warn!(error = %e, "inbox: deleting old messages failed"),
            }
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(500)) => {}
            () = shutdown.cancelled() => return,
        }
    }
}

/// Answers 503 in the contract's envelope when a request outlives the
/// timeout (e.g. a database that stopped answering).
async fn run_with_timeout(req: Request, next: Next, timeout: Duration) -> Response {
    match tokio::time::timeout(timeout, next.run(req)).await {
        Ok(resp) => resp,
        Err(_) => axum::response::IntoResponse::into_response(crate::error::ApiError::new(
            otpgate_api::ResponseCode::ServiceUnavailable,
            "the request timed out; nothing may have been stored",
        )),
    }
}

/// `HOST-PID`, as `delivery.worker_id` documents. The pid alone is not
/// enough: nodes in containers all run as pid 1, and two nodes sharing a
/// worker id could record results on each other's leases (a node whose lease
/// expired would still pass the store's `lease_owner` check).
fn default_worker_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "node".to_owned());
    format!("{host}-{}", std::process::id())
}

/// A secret from configuration, else the one kept in the database, else a
/// new random one stored there (so restarts and other nodes agree).
async fn secret_bytes(
    store: &Arc<dyn Store>,
    name: &str,
    configured: Option<&SecretString>,
) -> anyhow::Result<Vec<u8>> {
    if let Some(s) = configured.filter(|s| !s.is_empty()) {
        return Ok(s.expose().as_bytes().to_vec());
    }
    let mut candidate = vec![0u8; 64];
    rand::fill(&mut candidate[..]);
    Ok(store.secret_get_or_init(name, &candidate).await?)
}

fn build_router(
    settings: &Settings,
    store: &Arc<dyn Store>,
    clock: &Arc<dyn Clock>,
) -> anyhow::Result<Arc<dyn SmsRouter>> {
    if settings.channels.is_empty() {
        tracing::warn!(
            "NO SMS CHANNEL CONFIGURED: messages go to the development inbox \
             (see `otpgate inbox`), not to phones"
        );
    }
    otpgate_sms::build(&settings.sms(), store.clone(), clock.clone())
        .context("invalid SMS channel configuration")
}
