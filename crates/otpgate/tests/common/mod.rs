//! Helpers for tests that run the real `otpgate` binary: start `serve` on an
//! ephemeral port (reading the address it logs), create accounts with the
//! CLI, get tokens; with what every test crate shares (temporary
//! directories, the SMSC simulator) re-exported from `otpgate-testkit`.
#![allow(dead_code, unused_imports)] // each test binary uses its part

use std::process::Command;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

pub mod pumping;

pub use otpgate_testkit::http::ReplyJson;
pub use otpgate_testkit::process::Logged;
pub use otpgate_testkit::sim::{self, Simulator};
pub use otpgate_testkit::{TempDir, require_services};

pub const BIN: &str = env!("CARGO_BIN_EXE_otpgate");
pub const PASSWORD: &str = "binary test password";
/// `health.token` of every server [`start`] runs: `/readyz` shows its
/// detail only with it ([`readyz`]).
pub const HEALTH_TOKEN: &str = "binary-test-health-token-0123456789abcdef";

/// A running `otpgate serve`: its address, and the process with its log
/// (killed on drop; `.child` for a `kill -9`).
pub struct Server {
    pub base: String,
    run: Logged,
}

impl std::ops::Deref for Server {
    type Target = Logged;
    fn deref(&self) -> &Logged {
        &self.run
    }
}

impl std::ops::DerefMut for Server {
    fn deref_mut(&mut self) -> &mut Logged {
        &mut self.run
    }
}

impl Server {
    /// Stops the server gracefully (SIGTERM) and returns all it logged.
    pub fn stop_and_log(self) -> String {
        self.run.stop_and_log()
    }
}

/// Starts `otpgate serve --listen 127.0.0.1:0` with `args` and `envs`, and
/// waits for the address it logs once listening.
pub fn start(args: &[&str], envs: &[(&str, &str)]) -> Server {
    let mut cmd = Command::new(BIN);
    cmd.args(["serve", "--listen", "127.0.0.1:0"])
        .args(args)
        .env("OTPGATE_LOG", "info")
        .env("OTPGATE_HEALTH__TOKEN", HEALTH_TOKEN);
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let mut run = Logged::spawn(&mut cmd);
    let base = run.wait_for_address(Duration::from_secs(60));
    Server { base, run }
}

/// A fresh SQLite database in a directory of its own (tagged `tag`), an
/// account on it with `credits` ([`create_account`]), and [`start`] on it
/// with `envs`: (the directory, the database URL, the customerId, the
/// server).
pub fn serve_sqlite(
    tag: &str,
    credits: Option<i64>,
    envs: &[(&str, &str)],
) -> (TempDir, String, String, Server) {
    let dir = TempDir::new(tag);
    let db = dir.sqlite_url();
    let cid = create_account(&db, credits);
    let server = start(&["--database", &db], envs);
    (dir, db, cid, server)
}

/// `GET {base}/readyz` as the operator (with the health token), for its
/// detail.
pub fn readyz(http: &reqwest::Client, base: &str) -> reqwest::RequestBuilder {
    http.get(format!("{base}/readyz")).bearer_auth(HEALTH_TOKEN)
}

/// A command for the binary with none of the caller's `OTPGATE_` variables.
pub fn otpgate() -> Command {
    let mut c = Command::new(BIN);
    otpgate_testkit::process::without_otpgate_env(&mut c).env("NO_COLOR", "1");
    c
}

/// `otpgate customer create … --json` with [`PASSWORD`]; returns the
/// customerId.
pub fn create_account(db: &str, credits: Option<i64>) -> String {
    create_account_with(PASSWORD, db, credits)
}

/// [`create_account`] with another password.
pub fn create_account_with(password: &str, db: &str, credits: Option<i64>) -> String {
    let mut cmd = otpgate();
    cmd.args(["customer", "create", "--password", password, "--json"])
        .args(["--database", db]);
    if let Some(n) = credits {
        cmd.args(["--credits", &n.to_string()]);
    }
    let out = otpgate_testkit::process::output_ok(&mut cmd);
    let v: serde_json::Value = serde_json::from_slice(&out).expect("json");
    v["customerId"].as_str().expect("customerId").to_owned()
}

pub async fn token(http: &reqwest::Client, base: &str, cid: &str) -> String {
    let v: serde_json::Value = http
        .get(format!("{base}/auth/v1/authentication/token"))
        .query(&[("customerId", cid), ("key", &STANDARD.encode(PASSWORD))])
        .reply_json()
        .await;
    v["token"]
        .as_str()
        .unwrap_or_else(|| panic!("no token: {v}"))
        .to_owned()
}

/// A token request for `cid` with `key` (base64-encoded here): the status
/// and the JSON body (`null` when there is none).
pub async fn token_status(
    http: &reqwest::Client,
    base: &str,
    cid: &str,
    key: &str,
) -> (u16, serde_json::Value) {
    let r = http
        .get(format!("{base}/auth/v1/authentication/token"))
        .query(&[("customerId", cid), ("key", &STANDARD.encode(key))])
        .send()
        .await
        .expect("token request");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(serde_json::Value::Null))
}

/// The environment that makes `email` (with `password`) the console's
/// operator, for [`start`].
pub fn operator<'a>(email: &'a str, password: &'a str) -> [(&'static str, &'a str); 2] {
    [
        ("OTPGATE_CONSOLE__ADMIN_EMAIL", email),
        ("OTPGATE_CONSOLE__ADMIN_PASSWORD", password),
    ]
}

/// The first run of `len` digits in a message text: the code.
pub fn code_in(text: &str, len: usize) -> String {
    text.split(|c: char| !c.is_ascii_digit())
        .find(|w| w.len() == len)
        .unwrap_or_else(|| panic!("no {len}-digit code in the message"))
        .to_owned()
}

/// The store behind `db`, opened as the server opens it.
pub async fn open_store(db: &str) -> std::sync::Arc<dyn otpgate_store::Store> {
    let settings = otpgate_server::Settings {
        database_url: db.to_owned(),
        ..Default::default()
    };
    otpgate_server::store::open(&settings)
        .await
        .expect("open the store")
}

/// Account `cid` as `store` holds it now; it must exist.
pub async fn account_of(store: &dyn otpgate_store::Store, cid: &str) -> otpgate_store::Account {
    let id = otpgate_core::CustomerId::parse(cid).expect("a customerId");
    found(store.account_get(&id).await, "the account")
}

/// Verification `id` of account `cid` as `store` holds it now; it must
/// exist.
pub async fn verification_of(
    store: &dyn otpgate_store::Store,
    cid: &str,
    id: &str,
) -> otpgate_store::Verification {
    let customer = otpgate_core::CustomerId::parse(cid).expect("a customerId");
    let id = otpgate_core::VerificationId::parse(id).expect("a verification id");
    found(
        store.verification_get(&customer, id).await,
        "the verification",
    )
}

/// What a store lookup found; a panic naming `what` when the read failed
/// or found nothing.
fn found<T>(read: otpgate_store::StoreResult<Option<T>>, what: &str) -> T {
    read.unwrap_or_else(|e| panic!("read {what}: {e}"))
        .unwrap_or_else(|| panic!("{what} does not exist"))
}

/// The `len`-digit code of verification `id` (to `to`, E.164 digits), read
/// from the inbox channel once the message is there; waits up to `wait`.
pub async fn inbox_code(
    store: &dyn otpgate_store::Store,
    to: &str,
    id: &str,
    len: usize,
    wait: Duration,
) -> String {
    let deadline = std::time::Instant::now() + wait;
    loop {
        let entries = store.inbox_list(None, Some(to), 10).await.expect("inbox");
        if let Some(e) = entries
            .iter()
            .find(|e| e.verification_id.map(|v| v.get().to_string()).as_deref() == Some(id))
        {
            return code_in(&e.text, len);
        }
        assert!(
            std::time::Instant::now() < deadline,
            "verification {id} never reached the inbox"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `POST /verification/v3/send` of an SMS to `+<cc> <national>`, to be sent.
pub fn send_request(
    http: &reqwest::Client,
    base: &str,
    token: &str,
    cc: &str,
    national: &str,
) -> reqwest::RequestBuilder {
    http.post(format!("{base}/verification/v3/send"))
        .header("authToken", token)
        .query(&[
            ("countryCode", cc),
            ("mobileNumber", national),
            ("flowType", "SMS"),
        ])
}

/// `GET /verification/v3/validateOtp`; the response body.
pub async fn validate(
    http: &reqwest::Client,
    base: &str,
    token: &str,
    id: &str,
    code: &str,
) -> serde_json::Value {
    http.get(format!("{base}/verification/v3/validateOtp"))
        .header("authToken", token)
        .query(&[("verificationId", id), ("code", code)])
        .reply_json()
        .await
}
