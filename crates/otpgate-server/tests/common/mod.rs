//! What the server's test binaries (`api`, `console`, `ops`) and the SDK's
//! tests against it (`otpgate/tests/cli_client.rs`, through `#[path]`)
//! share on top of `otpgate-testkit`: test settings, the real
//! `Application` in-process on port 0 with a fresh database, and accounts.
//!
//! A source module rather than a crate: a crate holding these helpers would
//! depend on `otpgate-server` and be a dev-dependency of it, a cycle.
#![allow(dead_code, unused_imports)] // each binary uses its part

use std::sync::Arc;
use std::time::Duration;

use otpgate_core::Clock;
use otpgate_server::accounts::{self, NewAccountRequest};
use otpgate_server::{Application, Settings};
use otpgate_store::{Account, InboxEntry, Store};
use tokio_util::sync::CancellationToken;

pub use otpgate_testkit::TempDir;

/// Settings for a test server: port 0, a delivery worker that polls fast
/// and retries soon.
pub fn test_settings() -> Settings {
    let mut s = Settings {
        listen: "127.0.0.1:0".into(),
        ..Settings::default()
    };
    s.delivery.poll_ms = 20;
    s.delivery.retry_base_ms = 50;
    // These suites test the contract, the console and the SDK with accounts
    // that start on test credits and send to numbers they never verified;
    // the rule that test credits pay only for verified numbers has its own
    // tests, against the binary with default settings (otpgate/tests/fraud.rs).
    s.fraud.test_credits_verified_only = false;
    s
}

/// The real server running in-process, stopped on drop.
pub struct Running {
    pub base: String,
    pub port: u16,
    pub metrics_port: Option<u16>,
    pub store: Arc<dyn Store>,
    pub settings: Settings,
    shutdown: CancellationToken,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Opens the store of `settings.database_url` as the server does, builds
/// the application (with `router` instead of the configured channels, if
/// given) and runs it.
pub async fn run_app(
    settings: Settings,
    clock: Arc<dyn Clock>,
    router: Option<Arc<dyn otpgate_sms::Router>>,
) -> Running {
    let store = otpgate_server::store::open(&settings)
        .await
        .expect("open store");
    let app = Application::build_with_router(settings.clone(), store.clone(), clock, router)
        .await
        .expect("build app");
    let port = app.port();
    let metrics_port = app.metrics_port();
    let shutdown = CancellationToken::new();
    tokio::spawn(app.run_until_stopped(shutdown.clone()));
    Running {
        base: format!("http://127.0.0.1:{port}"),
        port,
        metrics_port,
        store,
        settings,
        shutdown,
    }
}

/// A new account with `password`, country IN, and `credits` (else the
/// server's starting test credits).
pub async fn create_account(
    store: &dyn Store,
    clock: &dyn Clock,
    settings: &Settings,
    password: &str,
    credits: Option<i64>,
) -> Account {
    accounts::create(
        store,
        clock,
        settings,
        NewAccountRequest {
            password: password.into(),
            email: None,
            country: Some("IN".into()),
            credits,
            settings: Default::default(),
        },
    )
    .await
    .expect("create account")
}

/// The inbox message of verification `id`, once the delivery worker has put
/// it there (waits up to 5 s).
pub async fn inbox_message(store: &dyn Store, id: &str) -> InboxEntry {
    for _ in 0..500 {
        let entries = store.inbox_list(None, None, 1000).await.expect("inbox");
        if let Some(e) = entries
            .into_iter()
            .find(|e| e.verification_id.map(|v| v.get().to_string()).as_deref() == Some(id))
        {
            return e;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("verification {id} never reached the inbox");
}

/// The first run of 4 to 8 digits in a message: the code.
pub fn code_in(text: &str) -> String {
    text.split(|c: char| !c.is_ascii_digit())
        .find(|w| (4..=8).contains(&w.len()))
        .expect("a code in the text")
        .to_owned()
}

/// A gateway that refuses every message for good, as one would an invalid
/// destination. With a gate, each refusal waits for a permit the test hands
/// out, so what comes before it (the charge) can be seen first. Written out
/// by hand (what `#[async_trait]` would generate): not every crate whose
/// tests use this module depends on `async-trait`.
pub struct RejectAll(pub Option<Arc<tokio::sync::Semaphore>>);

impl otpgate_sms::Channel for RejectAll {
    fn name(&self) -> &str {
        "reject-all"
    }

    fn send<'a, 'b, 'f>(
        &'a self,
        _msg: &'b otpgate_sms::Outgoing,
    ) -> std::pin::Pin<
        Box<
            dyn std::future::Future<
                    Output = Result<otpgate_sms::Accepted, otpgate_sms::ChannelError>,
                > + Send
                + 'f,
        >,
    >
    where
        'a: 'f,
        'b: 'f,
        Self: 'f,
    {
        Box::pin(async move {
            if let Some(gate) = &self.0 {
                gate.acquire().await.expect("gate open").forget();
            }
            Err(otpgate_sms::ChannelError::Permanent(
                "invalid destination".into(),
            ))
        })
    }

    fn health(&self) -> otpgate_sms::ChannelHealth {
        otpgate_sms::ChannelHealth {
            name: "reject-all".into(),
            kind: "test",
            up: true,
            last_error: None,
        }
    }
}
