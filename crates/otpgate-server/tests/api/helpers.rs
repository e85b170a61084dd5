//! `spawn_app()` and request helpers shared by every API test.

use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use otpgate_core::{Clock, CustomerId, ManualClock, SystemClock};
use otpgate_server::Settings;
use otpgate_store::{Account, Store, Verification};
use otpgate_testkit::{TempPostgres, skip_or_fail};
use reqwest::StatusCode;
use serde_json::Value;

pub use crate::common::{
    RejectAll, Running, TempDir, code_in, inbox_message, run_app, test_settings,
};

pub const PASSWORD: &str = "correct horse battery";

/// Which store a test runs against. Every API test runs once per backend
/// (contract guarantees must not depend on the store): `both_stores!` turns
/// each listed `async fn` into a `sqlite::name` and a `postgres::name` test.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

tokio::task_local! {
    pub static BACKEND: Backend;
}

/// Runs `test` against `backend`; for PostgreSQL, starts (once per test
/// binary) a throwaway server, or skips by name when PostgreSQL is not
/// installed and services are not required.
pub async fn run_on<F: std::future::Future<Output = ()>>(backend: Backend, name: &str, test: F) {
    if backend == Backend::Postgres
        && let Err(e) = TempPostgres::shared()
    {
        if e.is_missing() {
            return skip_or_fail(&format!("postgres::{name}"), e).unwrap_or(());
        }
        panic!("postgres::{name}: {e}");
    }
    BACKEND.scope(backend, test).await;
}

#[macro_export]
macro_rules! both_stores {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test]
                async fn $name() {
                    $crate::helpers::run_on($crate::helpers::Backend::Sqlite, stringify!($name), super::$name()).await
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test]
                async fn $name() {
                    $crate::helpers::run_on($crate::helpers::Backend::Postgres, stringify!($name), super::$name()).await
                }
            )*
        }
    };
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Version {
    V2,
    V3,
}

impl Version {
    pub fn send_path(self) -> &'static str {
        match self {
            Version::V2 => otpgate_api::paths::SEND_V2,
            Version::V3 => otpgate_api::paths::SEND_V3,
        }
    }
    pub fn validate_path(self) -> &'static str {
        match self {
            Version::V2 => otpgate_api::paths::VALIDATE_V2,
            Version::V3 => otpgate_api::paths::VALIDATE_V3,
        }
    }
}

impl Version {
    /// `v2` on version 2, `v3` on version 3: what a test sends where it
    /// needs one value per version (a number of its own, say).
    pub fn pick<T>(self, v2: T, v3: T) -> T {
        match self {
            Version::V2 => v2,
            Version::V3 => v3,
        }
    }
}

pub const BOTH: [Version; 2] = [Version::V2, Version::V3];

pub struct TestApp {
    pub base: String,
    pub http: reqwest::Client,
    pub store: Arc<dyn Store>,
    pub clock: ManualClock,
    pub settings: Settings,
    pub account: Account,
    _running: Running,
    _dir: TempDir,
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(test_settings()).await
}

/// [`spawn_app`] and a token of its test account.
pub async fn spawn_app_signed_in() -> (TestApp, String) {
    let app = spawn_app().await;
    let token = app.token().await;
    (app, token)
}

/// With the test settings as `tune` changes them.
pub async fn spawn_app_tuned(tune: impl FnOnce(&mut Settings)) -> TestApp {
    let mut s = test_settings();
    tune(&mut s);
    spawn_app_with(s).await
}

pub async fn spawn_app_with(settings: Settings) -> TestApp {
    spawn_app_routed(settings, None).await
}

/// With the given delivery router instead of the inbox.
pub async fn spawn_app_routed(
    mut settings: Settings,
    router: Option<Arc<dyn otpgate_sms::worker::Router>>,
) -> TestApp {
    let dir = TempDir::new("api");
    settings.database_url = match BACKEND.try_with(|b| *b).unwrap_or(Backend::Sqlite) {
        Backend::Sqlite => dir.sqlite_url(),
        Backend::Postgres => TempPostgres::shared()
            .expect("throwaway PostgreSQL")
            .fresh_database(),
    };
    let clock = ManualClock::new(SystemClock.now_ms());
    let running = run_app(settings, Arc::new(clock.clone()), router).await;
    let account = create_account(&running.store, &clock, &running.settings, None).await;
    TestApp {
        base: running.base.clone(),
        http: reqwest::Client::new(),
        store: running.store.clone(),
        clock,
        settings: running.settings.clone(),
        account,
        _running: running,
        _dir: dir,
    }
}

pub async fn create_account(
    store: &Arc<dyn Store>,
    clock: &ManualClock,
    settings: &Settings,
    credits: Option<i64>,
) -> Account {
    crate::common::create_account(store.as_ref(), clock, settings, PASSWORD, credits).await
}

/// A response as a test looks at it.
#[derive(Debug)]
pub struct Resp {
    pub status: StatusCode,
    pub body: Value,
    pub retry_after: Option<String>,
    pub content_type: Option<String>,
}

impl Resp {
    pub fn code(&self) -> i64 {
        self.body["responseCode"].as_i64().unwrap_or(-1)
    }

    /// The reason of an error envelope, or "" when it has none.
    pub fn error_message(&self) -> &str {
        self.body["errorMessage"].as_str().unwrap_or_default()
    }
}

/// Sends `req` and reads its answer.
pub async fn call(req: reqwest::RequestBuilder) -> Resp {
    resp(req.send().await.expect("request")).await
}

pub async fn resp(r: reqwest::Response) -> Resp {
    let status = r.status();
    let header = |n: &str| {
        r.headers()
            .get(n)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let retry_after = header("retry-after");
    let content_type = header("content-type");
    let text = r.text().await.expect("body");
    let body = serde_json::from_str(&text)
        .unwrap_or_else(|_| panic!("response is not JSON ({status}): {text}"));
    Resp {
        status,
        body,
        retry_after,
        content_type,
    }
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub async fn token_for(&self, account: &Account) -> String {
        let r = self
            .token_with(account.customer_id.as_str(), PASSWORD)
            .await;
        assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
        r.body["token"].as_str().expect("token").to_owned()
    }

    pub async fn token(&self) -> String {
        self.token_for(&self.account).await
    }

    /// A POST to `path` authenticated with `token`.
    pub fn post_as(&self, path: &str, token: &str) -> reqwest::RequestBuilder {
        self.http.post(self.url(path)).header("authToken", token)
    }

    /// A token request for `customer` with `password` as its key.
    pub async fn token_with(&self, customer: &str, password: &str) -> Resp {
        self.token_request(&[
            ("customerId", customer),
            ("key", &STANDARD.encode(password)),
        ])
        .await
    }

    /// A token request for the test account with `password` as its key.
    pub async fn login(&self, password: &str) -> Resp {
        self.token_with(self.account.customer_id.as_str(), password)
            .await
    }

    /// The test account's verification `id` as the store holds it now; it
    /// must exist.
    pub async fn verification_now(&self, id: otpgate_core::VerificationId) -> Verification {
        self.store
            .verification_get(&self.account.customer_id, id)
            .await
            .unwrap()
            .expect("the verification exists")
    }

    /// The test account as the store holds it now.
    pub async fn account_now(&self) -> Account {
        self.account_of(&self.account.customer_id).await
    }

    /// Account `id` as the store holds it now; it must exist.
    pub async fn account_of(&self, id: &CustomerId) -> Account {
        self.store
            .account_get(id)
            .await
            .unwrap()
            .expect("the account exists")
    }

    /// Sends to `+91 <national>` with defaults, which must succeed, and waits
    /// for its code in the inbox: (verification id, code).
    pub async fn sent_code(&self, v: Version, token: &str, national: &str) -> (String, String) {
        let id = self.send_ok(v, token, national).await;
        let code = self.code_for(&id).await;
        (id, code)
    }

    pub async fn token_request(&self, params: &[(&str, &str)]) -> Resp {
        call(
            self.http
                .get(self.url(otpgate_api::paths::TOKEN))
                .query(params),
        )
        .await
    }

    pub async fn send(&self, v: Version, token: &str, params: &[(&str, &str)]) -> Resp {
        call(
            self.post_as(v.send_path(), token)
                .header("content-type", "application/json")
                .body("{}")
                .query(params),
        )
        .await
    }

    /// An SMS send to `+<country_code> <national>` with defaults.
    pub async fn send_to(
        &self,
        v: Version,
        token: &str,
        country_code: &str,
        national: &str,
    ) -> Resp {
        self.send(
            v,
            token,
            &[
                ("countryCode", country_code),
                ("mobileNumber", national),
                ("flowType", "SMS"),
            ],
        )
        .await
    }

    /// Sends to `+91 <national>` with defaults; asserts success; returns the id.
    pub async fn send_ok(&self, v: Version, token: &str, national: &str) -> String {
        let r = self.send_to(v, token, "91", national).await;
        assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
        r.body["data"]["verificationId"]
            .as_str()
            .expect("verificationId is a string")
            .to_owned()
    }

    pub async fn validate(&self, v: Version, token: &str, id: &str, code: &str) -> Resp {
        call(
            self.http
                .get(self.url(v.validate_path()))
                .header("authToken", token)
                .query(&[("verificationId", id), ("code", code)]),
        )
        .await
    }

    /// A validation of `id` with a code that is certainly not `code`.
    pub async fn validate_wrong(&self, v: Version, token: &str, id: &str, code: &str) -> Resp {
        self.validate(v, token, id, &Self::wrong(code)).await
    }

    /// The code of verification `id`, read from the inbox channel once the
    /// delivery worker has put it there.
    pub async fn code_for(&self, id: &str) -> String {
        code_in(&inbox_message(self.store.as_ref(), id).await.text)
    }

    /// A code that is certainly not `code` (same length).
    pub fn wrong(code: &str) -> String {
        code.chars()
            .map(|c| {
                if c == '9' {
                    '0'
                } else {
                    char::from(c as u8 + 1)
                }
            })
            .collect()
    }
}
