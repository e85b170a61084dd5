//! The server with an SMPP channel to the simulator, an account and its
//! token, and a webhook receiver that verifies Standard Webhooks signatures
//! with its own code (not the server's).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, KeyInit, Mac};
use otpgate_core::{Clock, SystemClock};
use otpgate_server::Settings;
use otpgate_store::{Account, Store};
use sha2::Sha256;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use crate::common::{Running, TempDir, create_account, run_app};
use crate::sim::Simulator;
use otpgate_testkit::http::ReplyJson;

pub const PASSWORD: &str = "correct horse battery";

/// Settings with one SMPP channel `smsc` to the simulator on `port`, fast
/// delivery and webhook timings, and webhooks allowed to loopback.
pub fn settings(port: u16, dir: &TempDir) -> Settings {
    let toml = format!(
        r#"
listen = "127.0.0.1:0"
database_url = "sqlite://{db}"

[otp]
min_timeout_secs = 1

[delivery]
poll_ms = 20
retry_base_ms = 50

[events]
poll_ms = 50
retry_base_ms = 200
retry_max_ms = 1000
sweep_interval_ms = 200
timeout_ms = 2000
lease_ms = 5000
allow_private_addresses = true

{channel}"#,
        db = dir.db().display(),
        channel = otpgate_testkit::settings::smpp_channel("smsc", port, ""),
    );
    toml::from_str(&toml).expect("test settings")
}

/// Sends `req`; the status of its answer.
pub async fn status_of(req: reqwest::RequestBuilder) -> reqwest::StatusCode {
    req.send()
        .await
        .expect("the request reaches the server")
        .status()
}

pub struct Server {
    pub base: String,
    pub metrics_port: Option<u16>,
    pub store: Arc<dyn Store>,
    pub account: Account,
    pub token: String,
    pub http: reqwest::Client,
    _running: Running,
}

pub async fn start(settings: Settings) -> Server {
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let running = run_app(settings, clock.clone(), None).await;
    let account = create_account(
        running.store.as_ref(),
        clock.as_ref(),
        &running.settings,
        PASSWORD,
        Some(1000),
    )
    .await;
    let http = reqwest::Client::new();
    let token: serde_json::Value = http
        .get(format!("{}{}", running.base, otpgate_api::paths::TOKEN))
        .query(&[
            ("customerId", account.customer_id.as_str()),
            ("key", &STANDARD.encode(PASSWORD)),
        ])
        .reply_json()
        .await;
    let token = token["token"].as_str().expect("token").to_owned();
    Server {
        base: running.base.clone(),
        metrics_port: running.metrics_port,
        store: running.store.clone(),
        account,
        token,
        http,
        _running: running,
    }
}

impl Server {
    /// A receiver on a free port, set as the test account's webhook with a
    /// new secret; the receiver and the secret.
    pub async fn webhook_receiver(&self) -> (Receiver, String) {
        let receiver = Receiver::start(0).await;
        let secret = otpgate_server::events::sign::new_secret();
        receiver.set_secret(&secret);
        self.store
            .webhook_set(
                &self.account.customer_id,
                &receiver.url(),
                &secret,
                SystemClock.now_ms(),
            )
            .await
            .unwrap();
        (receiver, secret)
    }

    /// Waits up to `secs` until verification `id` is marked delivered (its
    /// receipt came); `what` names the wait in the failure.
    pub async fn wait_delivered(&self, id: &str, secs: u64, what: &str) {
        let id = otpgate_core::VerificationId::parse(id).unwrap();
        eventually(secs, what, async || {
            self.store
                .verification_get(&self.account.customer_id, id)
                .await
                .unwrap()
                .is_some_and(|v| v.delivery == otpgate_core::DeliveryStatus::Delivered)
        })
        .await;
    }

    /// Sends to `+91 <national>`; returns the verification id.
    pub async fn send(&self, national: &str, timeout: &str) -> String {
        let v: serde_json::Value = self
            .http
            .post(format!("{}/verification/v3/send", self.base))
            .header("authToken", &self.token)
            .query(&[
                ("countryCode", "91"),
                ("mobileNumber", national),
                ("flowType", "SMS"),
                ("timeout", timeout),
            ])
            .reply_json()
            .await;
        assert_eq!(v["responseCode"], 200, "{v}");
        v["data"]["verificationId"].as_str().unwrap().to_owned()
    }

    /// Validates; returns the response code.
    pub async fn validate(&self, id: &str, code: &str) -> i64 {
        let v: serde_json::Value = self
            .http
            .get(format!("{}/verification/v3/validateOtp", self.base))
            .header("authToken", &self.token)
            .query(&[("verificationId", id), ("code", code)])
            .reply_json()
            .await;
        v["responseCode"].as_i64().unwrap_or(-1)
    }
}

/// The code in the text the simulator received for `+91 <national>`.
pub fn code_sent_to(sim: &Simulator, national: &str) -> String {
    let submit = sim.submit_to(&format!("91{national}"));
    submit["text"]
        .as_str()
        .unwrap()
        .split(|c: char| !c.is_ascii_digit())
        .find(|w| (4..=8).contains(&w.len()))
        .expect("a code in the text")
        .to_owned()
}

/// Polls `cond` every 50 ms for up to `secs`.
pub async fn eventually(secs: u64, what: &str, mut cond: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !cond().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ---- the webhook receiver --------------------------------------------------

/// One request the receiver got.
#[derive(Debug, Clone)]
pub struct Received {
    pub id: String,
    pub timestamp: String,
    pub signature: String,
    pub body: String,
    /// Whether the signature checked out with the receiver's own code.
    pub valid: bool,
}

impl Received {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).expect("event body is JSON")
    }
}

/// Standard Webhooks verification as a receiver writes it: the key is the
/// base64 after `whsec_`; any `v1,` signature in the space-separated list
/// must equal base64(HMAC-SHA256(key, "id.timestamp.body")), compared in
/// constant time; the timestamp within five minutes of now.
pub fn verify(secret: &str, id: &str, timestamp: &str, body: &str, header: &str) -> bool {
    let Some(key) = secret
        .strip_prefix("whsec_")
        .and_then(|k| STANDARD.decode(k).ok())
    else {
        return false;
    };
    let Ok(ts) = timestamp.parse::<i64>() else {
        return false;
    };
    let now = SystemClock.now_ms() / 1000;
    if (now - ts).abs() > 300 {
        return false;
    }
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&key).unwrap();
    mac.update(format!("{id}.{timestamp}.{body}").as_bytes());
    let expected = mac.finalize().into_bytes();
    header.split(' ').any(|sig| {
        sig.strip_prefix("v1,")
            .and_then(|b| STANDARD.decode(b).ok())
            .is_some_and(|given| {
                use subtle::ConstantTimeEq;
                bool::from(given.as_slice().ct_eq(expected.as_slice()))
            })
    })
}

#[derive(Clone)]
struct ReceiverState {
    secret: Arc<Mutex<String>>,
    got: Arc<Mutex<Vec<Received>>>,
}

/// A receiver at `127.0.0.1:<port>/hook`, answering 204 to what it can
/// verify and 400 otherwise.
pub struct Receiver {
    pub addr: SocketAddr,
    state: ReceiverState,
    stop: CancellationToken,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Receiver {
    /// Listens on `port` (0 for any); fails if it is taken.
    pub async fn start(port: u16) -> Self {
        let listener = TcpListener::bind(("127.0.0.1", port))
            .await
            .expect("bind the receiver");
        let addr = listener.local_addr().unwrap();
        let state = ReceiverState {
            secret: Arc::default(),
            got: Arc::default(),
        };
        let app = axum::Router::new()
            .route("/hook", post(hook))
            .with_state(state.clone());
        let stop = CancellationToken::new();
        let s = stop.clone();
        tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move { s.cancelled().await })
                .await
        });
        Self { addr, state, stop }
    }

    pub fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    pub fn set_secret(&self, secret: &str) {
        *self.state.secret.lock().unwrap() = secret.to_owned();
    }

    pub fn received(&self) -> Vec<Received> {
        self.state.got.lock().unwrap().clone()
    }
}

async fn hook(State(state): State<ReceiverState>, headers: HeaderMap, body: String) -> StatusCode {
    let h = |n: &str| {
        headers
            .get(n)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned()
    };
    let (id, timestamp, signature) = (
        h("webhook-id"),
        h("webhook-timestamp"),
        h("webhook-signature"),
    );
    let secret = state.secret.lock().unwrap().clone();
    let valid = verify(&secret, &id, &timestamp, &body, &signature);
    state.got.lock().unwrap().push(Received {
        id,
        timestamp,
        signature,
        body,
        valid,
    });
    if valid {
        StatusCode::NO_CONTENT
    } else {
        StatusCode::BAD_REQUEST
    }
}
