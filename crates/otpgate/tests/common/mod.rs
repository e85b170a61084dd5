//! Helpers for tests that run the real `otpgate` binary: start `serve` on an
//! ephemeral port (reading the address it logs), create accounts with the
//! CLI, get tokens, and temporary directories.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

pub mod pumping;

pub const BIN: &str = env!("CARGO_BIN_EXE_otpgate");
pub const PASSWORD: &str = "binary test password";
/// `health.token` of every server [`start`] runs: `/readyz` shows its
/// detail only with it ([`readyz`]).
pub const HEALTH_TOKEN: &str = "binary-test-health-token-0123456789abcdef";

/// A directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        let p = std::env::temp_dir().join(format!(
            "otpgate-{tag}-{}-{}",
            std::process::id(),
            rand_suffix()
        ));
        std::fs::create_dir_all(&p).expect("create temp dir");
        Self(p)
    }

    pub fn sqlite_url(&self) -> String {
        format!("sqlite://{}", self.0.join("otpgate.db").display())
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn rand_suffix() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(std::time::SystemTime::now())
}

/// A running `otpgate serve`; killed (SIGKILL) on drop.
pub struct Server {
    pub child: Child,
    pub base: String,
    /// Every line the server logged so far.
    pub log: Arc<Mutex<Vec<String>>>,
    /// The thread copying stderr into `log`; it ends when the server exits.
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Server {
    pub fn log_text(&self) -> String {
        self.log.lock().map(|l| l.join("\n")).unwrap_or_default()
    }

    /// Stops the server (SIGTERM: a graceful shutdown, so it writes out its
    /// last lines), waits for it to exit and for its stderr to reach its end,
    /// and returns everything it logged.
    #[allow(dead_code)] // not every test binary using `common` needs it
    pub fn stop_and_log(mut self) -> String {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while self.child.try_wait().ok().flatten().is_none() {
            assert!(
                std::time::Instant::now() < deadline,
                "the server did not exit on SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        if let Some(r) = self.reader.take() {
            r.join().expect("log reader");
        }
        self.log_text()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `otpgate serve --listen 127.0.0.1:0` with `args` and `envs`, and
/// waits for the address it logs once listening.
pub fn start(args: &[&str], envs: &[(&str, &str)]) -> Server {
    let mut cmd = Command::new(BIN);
    cmd.args(["serve", "--listen", "127.0.0.1:0"])
        .args(args)
        .env("OTPGATE_LOG", "info")
        .env("OTPGATE_HEALTH__TOKEN", HEALTH_TOKEN)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("start otpgate serve");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    let log: Arc<Mutex<Vec<String>>> = Arc::default();
    let sink = log.clone();
    let reader = std::thread::spawn(move || {
        let mut sent = false;
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Ok(mut l) = sink.lock() {
                l.push(line.clone());
            }
            if !sent && let Some(i) = line.find("address=http://") {
                let addr: String = line[i + "address=".len()..]
                    .chars()
                    .take_while(|c| !c.is_whitespace())
                    .collect();
                let _ = tx.send(addr);
                sent = true;
            }
            if std::env::var_os("OTPGATE_TEST_SERVER_LOG").is_some() {
                eprintln!("[server] {line}");
            }
        }
    });
    let base = rx.recv_timeout(Duration::from_secs(60)).expect(
        "otpgate serve did not report its address (set OTPGATE_TEST_SERVER_LOG=1 to see its log)",
    );
    Server {
        child,
        base,
        log,
        reader: Some(reader),
    }
}

/// `GET {base}/readyz` as the operator (with the health token), for its
/// detail.
pub fn readyz(http: &reqwest::Client, base: &str) -> reqwest::RequestBuilder {
    http.get(format!("{base}/readyz")).bearer_auth(HEALTH_TOKEN)
}

/// `otpgate customer create … --json`; returns the customerId.
pub fn create_account(db: &str, credits: Option<i64>) -> String {
    let mut args = vec![
        "customer",
        "create",
        "--password",
        PASSWORD,
        "--json",
        "--database",
        db,
    ];
    let c;
    if let Some(n) = credits {
        c = n.to_string();
        args.extend(["--credits", c.as_str()]);
    }
    let out = Command::new(BIN)
        .args(&args)
        .output()
        .expect("run customer create");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    v["customerId"].as_str().expect("customerId").to_owned()
}

pub async fn token(http: &reqwest::Client, base: &str, cid: &str) -> String {
    let v: serde_json::Value = http
        .get(format!("{base}/auth/v1/authentication/token"))
        .query(&[("customerId", cid), ("key", &STANDARD.encode(PASSWORD))])
        .send()
        .await
        .expect("token request")
        .json()
        .await
        .expect("token json");
    v["token"]
        .as_str()
        .unwrap_or_else(|| panic!("no token: {v}"))
        .to_owned()
}

/// The first run of `len` digits in a message text: the code.
pub fn code_in(text: &str, len: usize) -> String {
    text.split(|c: char| !c.is_ascii_digit())
        .find(|w| w.len() == len)
        .unwrap_or_else(|| panic!("no {len}-digit code in the message"))
        .to_owned()
}

/// Whether a missing external program must fail the test (CI) rather than
/// skip it (plain `cargo test`).
pub fn require_services() -> bool {
    std::env::var("OTPGATE_REQUIRE_SERVICES").is_ok_and(|v| !v.is_empty() && v != "0")
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
        .send()
        .await
        .expect("validate request")
        .json()
        .await
        .expect("validate json")
}
