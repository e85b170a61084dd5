//! What the delivery tests share beyond `otpgate-testkit` (the SMSC
//! simulator, temporary directories, ports): a fresh SQLite store per test
//! and a running outbox worker.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use otpgate_core::{Clock, CustomerId, DeliveryStatus, PhoneNumber, SystemClock, VerificationId};
use otpgate_sms::config::{SmsConfig, build_table};
use otpgate_sms::{Delivery, DeliveryConfig, Outgoing, RouteTable, Router};
use otpgate_store::sqlite::SqliteStore;
use otpgate_store::{
    CreateOutcome, NewAccount, NewVerification, OutboxMessage, Store, Verification,
};
use tokio_util::sync::CancellationToken;

pub use otpgate_testkit::sim::Simulator as Sim;
pub use otpgate_testkit::{TempDir, free_port};

/// A fresh SQLite database with one account holding 10 test credits.
pub struct Db {
    dir: TempDir,
    pub store: Arc<dyn Store>,
    pub clock: Arc<dyn Clock>,
    pub customer: CustomerId,
    next_id: AtomicU32,
}

impl Db {
    pub async fn new() -> Db {
        let dir = TempDir::new("sms");
        let store: Arc<dyn Store> = Arc::new(
            SqliteStore::open(&dir.sqlite_url())
                .await
                .expect("open SQLite"),
        );
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
            dir,
            store,
            clock,
            customer,
            next_id: AtomicU32::new(1),
        }
    }

    /// The database file.
    pub fn path(&self) -> std::path::PathBuf {
        self.dir.db()
    }

    /// Queues a verification to `country_code`/`national` with `text`,
    /// valid for a minute.
    pub async fn queue(&self, country_code: &str, national: &str, text: &str) -> Verification {
        let req = self.request(country_code, national, text);
        match self.store.verification_create(req).await.expect("create") {
            CreateOutcome::Created(v) => v,
            other => panic!("expected Created, got {other:?}"),
        }
    }

    /// The send [`Db::queue`] makes, not yet made.
    pub fn request(&self, country_code: &str, national: &str, text: &str) -> NewVerification {
        let n = self.next_id.fetch_add(1, Ordering::Relaxed);
        otpgate_store::testkit::plain_send(
            VerificationId::new(1000 + u64::from(n)).unwrap(),
            &self.customer,
            &PhoneNumber::parse(country_code, national).expect("a valid number"),
            text,
            self.clock.now_ms(),
        )
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

    /// Waits until the outbox row's status is `status`.
    pub async fn wait_status(
        &self,
        v: &Verification,
        status: DeliveryStatus,
        limit: Duration,
    ) -> OutboxMessage {
        let what = format!("{status:?}");
        self.wait_outbox(v, &what, |m| m.status == status, limit)
            .await
    }

    /// Waits until the message has left the queue (sent, or failed).
    pub async fn wait_dequeued(&self, v: &Verification, limit: Duration) -> OutboxMessage {
        self.wait_outbox(v, "sent", |m| m.status != DeliveryStatus::Queued, limit)
            .await
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

/// The simulator started as `name` with `args`, a fresh database and a
/// worker delivering through one SMPP channel `smsc` bound to it; `None`
/// when the simulator cannot run (the test is skipped, see [`Sim::start`]).
pub async fn smsc_worker(name: &str, args: &[&str]) -> Option<(Sim, Db, Worker)> {
    let sim = Sim::start(name, args)?;
    let db = Db::new().await;
    let worker = Worker::start(&db, db.build(&smpp_channel("smsc", sim.port(), "")));
    Some((sim, db, worker))
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

/// A message to `+91 9876543210` for a channel's `send`.
pub fn outgoing(message_id: i64, verification_id: u64, text: &str) -> Outgoing {
    Outgoing {
        message_id,
        verification_id: VerificationId::new(verification_id).unwrap(),
        customer_id: CustomerId::parse("C-0000000000000A1").unwrap(),
        destination: PhoneNumber::parse("91", "9876543210").unwrap(),
        flow_type: "SMS".into(),
        step: 0,
        address: None,
        lang: None,
        text: text.into(),
    }
}

/// An SMPP channel table for the simulator at `port`, quick to give up and
/// to reconnect; `extra` lines go into the channel's table.
pub fn smpp_channel(name: &str, port: u16, extra: &str) -> String {
    otpgate_testkit::settings::smpp_channel(
        name,
        port,
        &format!(
            "reconnect_max_ms = 300\nconnect_timeout_ms = 2000\nrequest_timeout_ms = 3000\n{extra}"
        ),
    )
}
