//! `spawn()`: the server with the console, on a manual clock; API helpers
//! (token, send, validate, the inbox); and [`Visitor`], a console user
//! without a browser (from the testkit).

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use otpgate_core::{Clock, ManualClock, SystemClock};
use otpgate_server::Settings;
use otpgate_store::{InboxEntry, Store};
use reqwest::StatusCode;
use serde_json::Value;

pub use crate::common::{Running, TempDir, code_in, run_app};
pub use otpgate_testkit::console::{Page, Visitor};

pub const PASSWORD: &str = "correct horse battery";
pub const ADMIN_EMAIL: &str = "ops@otpgate.test";
pub const ADMIN_PASSWORD: &str = "operator password 1";

/// The shared test settings, with the console's operator account.
pub fn test_settings() -> Settings {
    let mut s = crate::common::test_settings();
    s.console.admin_email = ADMIN_EMAIL.into();
    s.console.admin_password = Some(otpgate_core::SecretString::new(ADMIN_PASSWORD));
    s
}

pub struct ConsoleApp {
    pub base: String,
    pub store: Arc<dyn Store>,
    pub clock: ManualClock,
    pub settings: Settings,
    pub api: reqwest::Client,
    _running: Running,
    _dir: TempDir,
}

pub async fn spawn() -> ConsoleApp {
    spawn_with(test_settings()).await
}

/// [`spawn_with`] the test settings as `tune` changes them.
pub async fn spawn_tuned(tune: impl FnOnce(&mut Settings)) -> ConsoleApp {
    let mut s = test_settings();
    tune(&mut s);
    spawn_with(s).await
}

pub async fn spawn_with(settings: Settings) -> ConsoleApp {
    spawn_at(settings, SystemClock.now_ms()).await
}

/// With the clock starting at `start_ms` (tests that fill past days).
pub async fn spawn_at(mut settings: Settings, start_ms: i64) -> ConsoleApp {
    let dir = TempDir::new("console");
    settings.database_url = dir.sqlite_url();
    let clock = ManualClock::new(start_ms);
    let running = run_app(settings, Arc::new(clock.clone()), None).await;
    ConsoleApp {
        base: running.base.clone(),
        store: running.store.clone(),
        clock,
        settings: running.settings.clone(),
        api: reqwest::Client::new(),
        _running: running,
        _dir: dir,
    }
}

/// An API answer.
#[derive(Debug)]
pub struct Api {
    pub status: StatusCode,
    pub body: Value,
}

impl Api {
    pub fn code(&self) -> i64 {
        self.body["responseCode"].as_i64().unwrap_or(-1)
    }
}

async fn api(r: reqwest::Response) -> Api {
    let status = r.status();
    let text = r.text().await.expect("body");
    Api {
        status,
        body: serde_json::from_str(&text).unwrap_or(Value::String(text)),
    }
}

impl ConsoleApp {
    /// Account `id` as the store holds it now; it must exist.
    pub async fn account(&self, id: &otpgate_core::CustomerId) -> otpgate_store::Account {
        self.store
            .account_get(id)
            .await
            .expect("get")
            .expect("the account exists")
    }

    /// A new visitor signed up through the form as `email` with
    /// [`PASSWORD`], and its customerId.
    pub async fn signed_up(&self, email: &str) -> (Visitor, String) {
        let mut v = Visitor::new(&self.base);
        let (_, id) = v.sign_up(email, PASSWORD).await;
        (v, id)
    }

    /// Creates an account for `email` in `country` with [`PASSWORD`] and
    /// the defaults a sign-up gets, as the server's account code does.
    pub async fn create_account(&self, email: &str, country: &str) -> otpgate_store::Account {
        otpgate_server::accounts::create(
            self.store.as_ref(),
            &self.clock,
            &self.settings,
            otpgate_server::accounts::NewAccountRequest {
                password: PASSWORD.into(),
                email: Some(email.into()),
                country: Some(country.into()),
                credits: None,
                settings: Default::default(),
            },
        )
        .await
        .expect("account")
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub async fn token_request(&self, customer_id: &str, password: &str) -> Api {
        api(self
            .api
            .get(self.url(otpgate_api::paths::TOKEN))
            .query(&[
                ("customerId", customer_id),
                ("key", &STANDARD.encode(password)),
                ("scope", "NEW"),
            ])
            .send()
            .await
            .expect("token request"))
        .await
    }

    pub async fn token(&self, customer_id: &str, password: &str) -> String {
        let r = self.token_request(customer_id, password).await;
        assert_eq!(r.status, StatusCode::OK, "token: {:?}", r.body);
        r.body["token"].as_str().expect("token").to_owned()
    }

    pub async fn send(&self, token: &str, country_code: &str, number: &str) -> Api {
        api(self
            .api
            .post(self.url(otpgate_api::paths::SEND_V3))
            .header("authToken", token)
            .query(&[
                ("countryCode", country_code),
                ("mobileNumber", number),
                ("flowType", "SMS"),
            ])
            .send()
            .await
            .expect("send"))
        .await
    }

    /// Sends; asserts 200; returns the verificationId.
    pub async fn send_ok(&self, token: &str, country_code: &str, number: &str) -> String {
        let r = self.send(token, country_code, number).await;
        assert_eq!(r.status, StatusCode::OK, "send: {:?}", r.body);
        r.body["data"]["verificationId"]
            .as_str()
            .expect("verificationId")
            .to_owned()
    }

    pub async fn validate(&self, token: &str, id: &str, code: &str) -> Api {
        api(self
            .api
            .get(self.url(otpgate_api::paths::VALIDATE_V3))
            .header("authToken", token)
            .query(&[("verificationId", id), ("code", code)])
            .send()
            .await
            .expect("validate"))
        .await
    }

    /// The inbox message of verification `id`, once delivered.
    pub async fn inbox_message(&self, id: &str) -> InboxEntry {
        crate::common::inbox_message(self.store.as_ref(), id).await
    }

    /// Waits until verification `id`'s message left the outbox queue.
    pub async fn delivered(&self, id: &str) {
        let _ = self.inbox_message(id).await;
        let vid = otpgate_core::VerificationId::parse(id).expect("id");
        for _ in 0..500 {
            let m = self
                .store
                .outbox_for_verification(vid)
                .await
                .expect("outbox");
            if m.is_some_and(|m| m.status != otpgate_core::DeliveryStatus::Queued) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("verification {id} never left the queue");
    }
}
