//! `spawn()`: the server with the console, on a manual clock; API helpers
//! (token, send, validate, the inbox); and [`Visitor`], a console user
//! without a browser.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use otpgate_core::{Clock, ManualClock, SystemClock};
use otpgate_server::Settings;
use otpgate_store::{InboxEntry, Store};
use reqwest::StatusCode;
use reqwest::header::HeaderMap;
use serde_json::Value;

pub use crate::common::{Running, TempDir, code_in, run_app};

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

/// A console page as a test sees it.
#[derive(Debug)]
pub struct Page {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: String,
}

impl Page {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn location(&self) -> Option<&str> {
        self.header("location")
    }

    pub fn set_cookies(&self) -> Vec<&str> {
        self.headers
            .get_all("set-cookie")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect()
    }

    /// The first hidden `csrf` field's value.
    pub fn csrf(&self) -> String {
        attr_after(&self.body, "name=\"csrf\" value=\"").expect("a csrf field")
    }

    /// The text of the element with this id (`id="…">TEXT<`).
    pub fn text_of(&self, id: &str) -> Option<String> {
        let (_, rest) = self.body.split_once(&format!("id=\"{id}\""))?;
        let (_, rest) = rest.split_once('>')?;
        rest.split_once('<').map(|(t, _)| t.trim().to_owned())
    }
}

fn attr_after(html: &str, marker: &str) -> Option<String> {
    let (_, rest) = html.split_once(marker)?;
    rest.split_once('"').map(|(v, _)| v.to_owned())
}

/// A console user without a browser: follows nothing, keeps cookies by
/// hand (as a browser would for `Path=/console`).
pub struct Visitor {
    http: reqwest::Client,
    base: String,
    pub cookies: BTreeMap<String, String>,
}

impl Visitor {
    pub fn new(app: &ConsoleApp) -> Self {
        Self {
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .expect("client"),
            base: app.base.clone(),
            cookies: BTreeMap::new(),
        }
    }

    fn cookie_header(&self) -> String {
        self.cookies
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ")
    }

    async fn finish(&mut self, r: reqwest::Response) -> Page {
        let status = r.status();
        let headers = r.headers().clone();
        for c in headers
            .get_all("set-cookie")
            .iter()
            .filter_map(|v| v.to_str().ok())
        {
            let first = c.split(';').next().unwrap_or("");
            if let Some((k, v)) = first.split_once('=') {
                if v.is_empty() || c.contains("Max-Age=0") {
                    self.cookies.remove(k);
                } else {
                    self.cookies.insert(k.to_owned(), v.to_owned());
                }
            }
        }
        let body = r.text().await.expect("body");
        Page {
            status,
            headers,
            body,
        }
    }

    pub async fn get(&mut self, path: &str) -> Page {
        self.get_with(path, &[]).await
    }

    pub async fn get_with(&mut self, path: &str, headers: &[(&str, &str)]) -> Page {
        let mut req = self
            .http
            .get(format!("{}{path}", self.base))
            .header("cookie", self.cookie_header());
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let r = req.send().await.expect("get");
        self.finish(r).await
    }

    pub async fn post(&mut self, path: &str, fields: &[(&str, &str)]) -> Page {
        let r = self
            .http
            .post(format!("{}{path}", self.base))
            .header("cookie", self.cookie_header())
            .form(fields)
            .send()
            .await
            .expect("post");
        self.finish(r).await
    }

    /// Signs up through the form; returns the welcome page and the new
    /// customerId.
    pub async fn sign_up(&mut self, email: &str, password: &str) -> (Page, String) {
        let form = self.get("/console/signup").await;
        assert_eq!(form.status, StatusCode::OK);
        let csrf = form.csrf();
        let page = self
            .post(
                "/console/signup",
                &[
                    ("csrf", &csrf),
                    ("email", email),
                    ("password", password),
                    ("confirm", password),
                    ("country", "IN"),
                ],
            )
            .await;
        assert_eq!(page.status, StatusCode::CREATED, "{}", page.body);
        let id = page
            .text_of("customer-id")
            .expect("customer-id on the welcome page");
        (page, id)
    }

    /// Logs in through the form; returns the answer (303 on success).
    pub async fn log_in(&mut self, login: &str, password: &str) -> Page {
        let form = self.get("/console/login").await;
        let csrf = form.csrf();
        self.post(
            "/console/login",
            &[("csrf", &csrf), ("login", login), ("password", password)],
        )
        .await
    }

    /// GETs a page and posts one of its forms with this session's token.
    pub async fn submit(&mut self, page: &str, action: &str, fields: &[(&str, &str)]) -> Page {
        let csrf = self.get(page).await.csrf();
        let mut all = vec![("csrf", csrf.as_str())];
        all.extend_from_slice(fields);
        self.post(action, &all).await
    }
}
