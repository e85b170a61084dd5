//! What the delivery tests share: the SMSC simulator as a child process, a
//! fresh SQLite store per test, and a running outbox worker.

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use otpgate_core::{Clock, CodeHash, CustomerId, PhoneNumber, SystemClock, VerificationId};
use otpgate_sms::config::{SmsConfig, build_table};
use otpgate_sms::{Delivery, DeliveryConfig, RouteTable, Router};
use otpgate_store::sqlite::SqliteStore;
use otpgate_store::{
    CreateOutcome, NewAccount, NewVerification, OutboxMessage, SendLimits, Store, Verification,
};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// CI sets `OTPGATE_REQUIRE_SERVICES=1`: a missing Node.js is then a failure,
/// not a skip.
pub fn services_required() -> bool {
    std::env::var("OTPGATE_REQUIRE_SERVICES").is_ok_and(|v| !v.is_empty() && v != "0")
}

fn sim_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tools/smsc-sim")
}

/// Installs the simulator's npm packages once per test binary.
fn ensure_sim_installed() -> Result<(), String> {
    static DONE: Mutex<Option<Result<(), String>>> = Mutex::new(None);
    let mut done = DONE.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(r) = done.as_ref() {
        return r.clone();
    }
    let r = (|| {
        let node = std::process::Command::new("node").arg("--version").output();
        if !node.is_ok_and(|o| o.status.success()) {
            return Err("node is not installed (apt-get install nodejs npm)".to_owned());
        }
        if !sim_dir().join("node_modules/smpp").exists() {
            let out = std::process::Command::new("npm")
                .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
                .current_dir(sim_dir())
                .output()
                .map_err(|e| format!("cannot run npm ci: {e}"))?;
            if !out.status.success() {
                return Err(format!(
                    "npm ci in tools/smsc-sim failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                ));
            }
        }
        Ok(())
    })();
    *done = Some(r.clone());
    r
}

/// The SMSC simulator (tools/smsc-sim), killed when dropped.
pub struct Sim {
    child: Child,
    stdin: ChildStdin,
    port: u16,
    events: Arc<Mutex<Vec<Value>>>,
    changed: Arc<Notify>,
}

impl Sim {
    /// Starts the simulator on any free port; `None` (after printing
    /// `SKIPPED`) when Node.js is missing and services are not required.
    pub async fn start(test: &str, args: &[&str]) -> Option<Sim> {
        Self::start_on(test, 0, args).await
    }

    pub async fn start_on(test: &str, port: u16, args: &[&str]) -> Option<Sim> {
        if let Err(why) = ensure_sim_installed() {
            if services_required() {
                panic!("{test}: the SMSC simulator cannot run: {why}");
            }
            println!("SKIPPED {test}: {why}");
            return None;
        }
        let port_s = port.to_string();
        let mut cmd = Command::new("node");
        cmd.arg("sim.js")
            .args(["--port", &port_s])
            .args(args)
            .current_dir(sim_dir())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        let mut child = cmd.spawn().expect("spawn node tools/smsc-sim/sim.js");
        let stdin = child.stdin.take().expect("stdin");
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let first = tokio::time::timeout(Duration::from_secs(15), lines.next_line())
            .await
            .expect("simulator printed nothing within 15 s")
            .expect("read the simulator's output")
            .expect("simulator exited before listening");
        let port: u16 = first
            .strip_prefix("LISTENING ")
            .and_then(|p| p.trim().parse().ok())
            .unwrap_or_else(|| panic!("unexpected first line from the simulator: {first}"));
        let events = Arc::new(Mutex::new(Vec::new()));
        let changed = Arc::new(Notify::new());
        let (ev, ch) = (events.clone(), changed.clone());
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                if let Ok(v) = serde_json::from_str::<Value>(&line) {
                    ev.lock().unwrap().push(v);
                    ch.notify_waiters();
                }
            }
        });
        Some(Sim {
            child,
            stdin,
            port,
            events,
            changed,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn events(&self) -> Vec<Value> {
        self.events.lock().unwrap().clone()
    }

    pub fn of_kind(&self, kind: &str) -> Vec<Value> {
        self.events()
            .into_iter()
            .filter(|e| e["event"] == kind)
            .collect()
    }

    pub fn submits(&self) -> Vec<Value> {
        self.of_kind("submit")
    }

    /// Waits until an event of `kind` satisfying `pred` has been printed.
    pub async fn wait_for(
        &self,
        kind: &str,
        pred: impl Fn(&Value) -> bool,
        limit: Duration,
    ) -> Value {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let notified = self.changed.notified();
            if let Some(e) = self.of_kind(kind).into_iter().find(|e| pred(e)) {
                return e;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                panic!(
                    "no matching {kind:?} event within {limit:?}; events: {:#?}",
                    self.events()
                );
            }
        }
    }

    /// Sends a control line (`throttle 3`, `drop`, …).
    pub async fn control(&mut self, line: &str) {
        self.stdin
            .write_all(format!("{line}\n").as_bytes())
            .await
            .expect("write to the simulator");
        self.stdin.flush().await.expect("flush");
    }

    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}

/// A port nothing listens on (bound, read, released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind an ephemeral port")
}

/// A directory removed when the test ends.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new() -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "otpgate-sms-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create a temporary directory");
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A fresh SQLite database with one account holding 10 test credits.
pub struct Db {
    _dir: TempDir,
    pub store: Arc<dyn Store>,
    pub clock: Arc<dyn Clock>,
    pub customer: CustomerId,
    next_id: AtomicU32,
}

impl Db {
    pub async fn new() -> Db {
        let dir = TempDir::new();
        let url = format!("sqlite://{}", dir.0.join("otpgate.db").display());
        let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&url).await.expect("open SQLite"));
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        let customer = CustomerId::parse("C-0000000000000A1").unwrap();
        store
            .account_create(NewAccount {
                customer_id: customer.clone(),
                password_hash: "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA".into(),
                email: None,
                country: Some("IN".into()),
                credits: 0,
                test_credits: 10,
                settings: Default::default(),
                created_at: clock.now_ms(),
            })
            .await
            .expect("create the account");
        Db {
            _dir: dir,
            store,
            clock,
            customer,
            next_id: AtomicU32::new(1),
        }
    }

    /// Queues a verification to `country_code`/`national` with `text`,
    /// valid for `valid_ms`.
    pub async fn queue(
        &self,
        country_code: &str,
        national: &str,
        text: &str,
        valid_ms: i64,
    ) -> Verification {
        let n = self.next_id.fetch_add(1, Ordering::Relaxed);
        let now = self.clock.now_ms();
        let req = NewVerification {
            id: VerificationId::new(1000 + u64::from(n)).unwrap(),
            customer_id: self.customer.clone(),
            destination: PhoneNumber::parse(country_code, national).expect("a valid number"),
            flow_type: "SMS".into(),
            code_hash: CodeHash([7; 32]),
            spare_ids: Vec::new(),
            otp_length: 4,
            max_attempts: 5,
            created_at: now,
            expires_at: now + valid_ms,
            transaction_id: format!("tx-{n}"),
            price: 1,
            message_text: text.to_owned(),
            address: None,
            lang: None,
            fallbacks: Vec::new(),
            limits: SendLimits {
                per_number_max: 1000,
                per_number_window_ms: 3_600_000,
                wrong_code_max: 1000,
                wrong_code_window_ms: 3_600_000,
                per_account_per_second: None,
            },
            prefix: String::new(),
            fraud: otpgate_core::fraud::FraudPolicy::off(),
            kind: otpgate_store::SendKind::Normal,
        };
        match self.store.verification_create(req).await.expect("create") {
            CreateOutcome::Created(v) => v,
            other => panic!("expected Created, got {other:?}"),
        }
    }

    pub async fn outbox(&self, v: &Verification) -> OutboxMessage {
        self.store
            .outbox_for_verification(v.id)
            .await
            .expect("read the outbox")
            .expect("the verification has an outbox row")
    }

    pub async fn verification(&self, v: &Verification) -> Verification {
        self.store
            .verification_get(&self.customer, v.id)
            .await
            .expect("read")
            .expect("exists")
    }

    /// Polls the outbox row until `pred` holds.
    pub async fn wait_outbox(
        &self,
        v: &Verification,
        what: &str,
        pred: impl Fn(&OutboxMessage) -> bool,
        limit: Duration,
    ) -> OutboxMessage {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let m = self.outbox(v).await;
            if pred(&m) {
                return m;
            }
            if tokio::time::Instant::now() >= deadline {
                panic!("outbox never became {what} within {limit:?}: {m:#?}");
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    pub async fn test_credits(&self) -> i64 {
        self.store
            .account_get(&self.customer)
            .await
            .unwrap()
            .unwrap()
            .test_credits
    }

    /// Builds channels and routes from TOML.
    pub fn build(&self, toml: &str) -> Arc<RouteTable> {
        let cfg = SmsConfig::from_toml(toml).expect("valid TOML");
        Arc::new(
            build_table(&cfg, self.store.clone(), self.clock.clone(), &|_| None)
                .expect("a valid configuration"),
        )
    }
}

/// A running outbox worker, stopped (channels closed) by [`Worker::stop`].
pub struct Worker {
    pub delivery: Arc<Delivery>,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Worker {
    pub fn start(db: &Db, router: Arc<dyn Router>) -> Worker {
        let delivery = Delivery::new(
            db.store.clone(),
            db.clock.clone(),
            router,
            DeliveryConfig {
                worker_id: "test-worker".into(),
                batch: 64,
                lease_ms: 10_000,
                poll_ms: 25,
                retry_base_ms: 100,
                retry_max_ms: 400,
            },
        );
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(delivery.clone().run(shutdown.clone()));
        delivery.notify();
        Worker {
            delivery,
            shutdown,
            task,
        }
    }

    /// Waits until every channel reports up (SMPP: bound), so that counts
    /// of attempts do not include ones made before the first bind.
    pub async fn wait_up(&self) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !self.delivery.health().iter().all(|h| h.up) {
            if tokio::time::Instant::now() >= deadline {
                panic!("channels never came up: {:?}", self.delivery.health());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(10), self.task).await;
    }
}

/// An SMPP channel table for the simulator at `port`; `extra` lines go into
/// the channel's table.
pub fn smpp_channel(name: &str, port: u16, extra: &str) -> String {
    format!(
        r#"
[channels.{name}]
type = "smpp"
host = "127.0.0.1"
port = {port}
system_id = "otpgate"
password = "secret"
source_addr = "OTPGATE"
reconnect_min_ms = 100
reconnect_max_ms = 300
connect_timeout_ms = 2000
request_timeout_ms = 3000
{extra}
"#
    )
}
