//! What only the PostgreSQL backend has: the standalone `migrate` (run
//! before rolling out nodes), and a network database's failures — an outage
//! and its recovery, a row lock held by a stopped node, a frozen network —
//! each answered as `Unavailable` within about a second, and healed without
//! a new store.
//!
//! A worker recording a result and a validate of the same verification take
//! their locks in one order, so neither waits for the other forever.
//!
//! Every test takes a fresh database on the binary's shared throwaway server,
//! but the outage test, which runs its own since it stops it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use otpgate_core::{CustomerId, DeliveryStatus};
use otpgate_store::postgres::{self, PgOptions, PostgresStore, SCHEMA_VERSION};
use otpgate_store::prelude::*;
use otpgate_store::{CreateOutcome, StoreError, StoreResult};
use otpgate_testkit::TempPostgres;
use sqlx::Connection;

use crate::fixture::{TestDb, pg_at_schema, skip_or_fail};
use crate::helpers::*;

const TEN_S: Duration = Duration::from_secs(10);

/// Options that give up quickly: a second per statement and per connect.
fn impatient(pool_size: u32) -> PgOptions {
    PgOptions {
        pool_size,
        statement_timeout_ms: 1000,
        connect_timeout_ms: 1000,
    }
}

/// Options that wait long enough for a test that holds locks on purpose.
fn patient() -> PgOptions {
    PgOptions {
        pool_size: 4,
        statement_timeout_ms: 10_000,
        connect_timeout_ms: 5_000,
    }
}

#[tokio::test]
async fn the_standalone_migration_is_a_no_op_when_current_and_refuses_a_newer_schema() {
    let test = "postgres_only::the_standalone_migration_is_a_no_op_when_current_and_refuses_a_newer_schema";
    let Some(db) = TestDb::postgres(test).await else {
        return;
    };
    let store = db.open().await;
    assert_eq!(postgres::migrate(db.url()).await.unwrap(), SCHEMA_VERSION);
    assert_eq!(store.schema_version().await, SCHEMA_VERSION);
    store.close().await;
    db.pretend_a_newer_build_migrated().await;
    let r = postgres::migrate(db.url()).await;
    assert!(matches!(r, Err(StoreError::SchemaTooNew { .. })), "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_outage_is_unavailable_promptly_and_heals_without_a_new_store() {
    let test =
        "postgres_only::a_database_outage_is_unavailable_promptly_and_heals_without_a_new_store";
    // Its own server: this test stops it.
    let pg = match tokio::task::spawn_blocking(TempPostgres::start_new)
        .await
        .unwrap()
    {
        Ok(pg) => Arc::new(pg),
        Err(e) => {
            skip_or_fail::<()>(test, &e);
            return;
        }
    };
    let url = pg.fresh_database();
    let store = PostgresStore::connect(&url, impatient(4)).await.unwrap();
    let c = cid(1);
    account(&store, &c, 100, 0).await;
    created(&store, send(1, &c, &phone(1), T0)).await;

    let stopper = pg.clone();
    tokio::task::spawn_blocking(move || stopper.stop())
        .await
        .unwrap();

    for attempt in 0..3u32 {
        let req = send(10 + u64::from(attempt), &c, &phone(2 + attempt), T0);
        let what = format!("outage, attempt {attempt}");
        unavailable_within(TEN_S, &what, store.verification_create(req)).await;
        unavailable_within(TEN_S, &format!("{what}, ping"), store.ping()).await;
    }

    let starter = pg.clone();
    tokio::task::spawn_blocking(move || starter.start())
        .await
        .unwrap()
        .unwrap();

    // The same store, no reconnect by the caller.
    store.ping().await.expect("ping after restart");
    let v = created(&store, send(2, &c, &phone(9), T0 + 1)).await;
    assert_eq!(store.verification_get(&c, v.id).await.unwrap(), Some(v));
    // What was committed before the crash is still there.
    assert!(has_verification(&store, &c, vid(1)).await);
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_stuck_behind_a_lock_gives_up_at_the_statement_timeout() {
    let test = "postgres_only::a_send_stuck_behind_a_lock_gives_up_at_the_statement_timeout";
    let Some(db) = TestDb::postgres(test).await else {
        return;
    };
    let store = PostgresStore::connect(db.url(), impatient(2))
        .await
        .unwrap();
    let c = cid(1);
    account(&store, &c, 10, 0).await;
    // Another node holds the account's row lock and has stopped (a
    // partitioned node in the middle of a send).
    let mut other = holding_the_account_row(db.url(), &c).await;
    let r = store.verification_create(send(1, &c, &phone(1), T0));
    unavailable_within(Duration::from_secs(5), "lock wait", r).await;
    sqlx::query("rollback").execute(&mut other).await.unwrap();
    created(&store, send(1, &c, &phone(1), T0)).await;
    assert_eq!(balance(&store, &c).await.0, 9);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_database_is_unavailable_promptly_and_heals() {
    let test = "postgres_only::a_partitioned_database_is_unavailable_promptly_and_heals";
    let Some(db) = TestDb::postgres(test).await else {
        return;
    };
    let (relay, url) = Relay::before(&db).await;
    let store = PostgresStore::connect(&url, impatient(2)).await.unwrap();
    let c = cid(1);
    account(&store, &c, 10, 0).await;

    relay.freeze(true);
    for attempt in 0..2u32 {
        let req = send(1 + u64::from(attempt), &c, &phone(1 + attempt), T0);
        let what = format!("partition, attempt {attempt}");
        unavailable_within(TEN_S, &what, store.verification_create(req)).await;
    }
    relay.freeze(false);

    // Connections left mid-conversation are tested and replaced; calls
    // succeed again on the same store within a few seconds.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        match store.verification_create(send(10, &c, &phone(9), T0)).await {
            Ok(CreateOutcome::Created(_)) => break,
            Ok(other) => panic!("unexpected {other:?}"),
            Err(e) if Instant::now() < deadline => {
                eprintln!("not yet: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("still failing after the partition healed: {e}"),
        }
    }
    // Nothing from the frozen attempts was charged.
    assert_eq!(balance(&store, &c).await.0, 9);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_cut_off_mid_transaction_by_a_partition_never_commits_after_its_503() {
    let test =
        "postgres_only::a_send_cut_off_mid_transaction_by_a_partition_never_commits_after_its_503";
    let Some(db) = TestDb::postgres(test).await else {
        return;
    };
    let (relay, url) = Relay::before(&db).await;
    let store = Arc::new(PostgresStore::connect(&url, impatient(2)).await.unwrap());
    let c = cid(1);
    account(&*store, &c, 10, 0).await;
    // Another session (not through the relay) holds the account's row, so
    // the send's transaction stops at its first statement; the network
    // then partitions, and the row is let go: the transaction's answer is
    // stuck in the partition while its caller gives up.
    let mut other = holding_the_account_row(db.url(), &c).await;
    let sender = store.clone();
    let req = send(1, &c, &phone(1), T0);
    let send = tokio::spawn(async move { sender.verification_create(req).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    relay.freeze(true);
    sqlx::query("rollback").execute(&mut other).await.unwrap();
    let r = send.await.unwrap();
    assert!(matches!(r, Err(StoreError::Unavailable(_))), "{r:?}");
    // Healed after the store's deadline: the transaction was given up
    // with its caller (the server's idle-in-transaction timeout, which the
    // store sets on its sessions, ended it while its answer was stuck), so
    // nothing of it commits now.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    relay.freeze(false);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut direct = sqlx::PgConnection::connect(db.url()).await.unwrap();
    let (credits, sent): (i64, i64) = sqlx::query_as(
        "select credits, (select count(*) from verifications) from accounts
          where customer_id = $1",
    )
    .bind(c.as_str())
    .fetch_one(&mut direct)
    .await
    .unwrap();
    assert_eq!(
        (credits, sent),
        (10, 0),
        "a send that answered 503 committed"
    );
}

/// Awaits `op`, which must fail as `Unavailable` within `limit`: the store
/// gives up after a few of its one-second timeouts, long before a client
/// or load balancer would.
async fn unavailable_within<T: std::fmt::Debug>(
    limit: Duration,
    what: &str,
    op: impl Future<Output = Result<T, StoreError>>,
) {
    let started = Instant::now();
    let r = op.await;
    let took = started.elapsed();
    eprintln!("{what}: {took:?}");
    assert!(
        matches!(r, Err(StoreError::Unavailable(_))),
        "{what}: expected Unavailable, got {r:?}"
    );
    assert!(took < limit, "{what} took {took:?}");
}

/// A TCP relay that can be frozen: bytes it reads while frozen are held
/// back, as a network partition would, while both sockets stay open.
struct Relay {
    port: u16,
    frozen: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

/// A session of its own (as another node would have) holding account
/// `c`'s row lock in an open transaction, until it rolls back.
async fn holding_the_account_row(url: &str, c: &CustomerId) -> sqlx::PgConnection {
    let mut other = sqlx::PgConnection::connect(url).await.unwrap();
    sqlx::query("begin").execute(&mut other).await.unwrap();
    sqlx::query("select 1 from accounts where customer_id = $1 for update")
        .bind(c.as_str())
        .execute(&mut other)
        .await
        .unwrap();
    other
}

impl Relay {
    /// A relay in front of the shared server, and `db`'s URL through it.
    async fn before(db: &TestDb) -> (Self, String) {
        let port = TempPostgres::shared().expect("the shared server").port();
        let relay = Self::start(port).await;
        let url = db
            .url()
            .replace(&format!(":{port}/"), &format!(":{}/", relay.port));
        (relay, url)
    }

    async fn start(upstream: u16) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let frozen = Arc::new(AtomicBool::new(false));
        let flag = frozen.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = tokio::net::TcpStream::connect(("127.0.0.1", upstream)).await
                else {
                    continue;
                };
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                tokio::spawn(pipe(cr, sw, flag.clone()));
                tokio::spawn(pipe(sr, cw, flag.clone()));
            }
        });
        Self { port, frozen, task }
    }

    fn freeze(&self, on: bool) {
        self.frozen.store(on, Ordering::SeqCst);
    }
}

/// Copies `from` to `to`, holding each chunk back while `frozen`.
async fn pipe(
    mut from: impl tokio::io::AsyncRead + Unpin,
    mut to: impl tokio::io::AsyncWrite + Unpin,
    frozen: Arc<AtomicBool>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        while frozen.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A fresh database for `test` as the build at schema 1 left it, and a
/// connection to it; `None` when the test is skipped.
async fn schema_1_database(test: &str) -> Option<(TestDb, sqlx::PgConnection)> {
    let db = TestDb::postgres(test).await?;
    let conn = pg_at_schema(db.url(), 1).await;
    Some((db, conn))
}

/// A database at schema 1 (before fallback steps), with a queued message,
/// migrates when a node opens it: the row keeps its id and becomes step 0
/// of its verification's flow, and is claimed and sent as before.
#[tokio::test]
async fn a_schema_1_database_keeps_its_outbox_rows_as_first_steps() {
    let test = "postgres_only::a_schema_1_database_keeps_its_outbox_rows_as_first_steps";
    let Some((db, mut conn)) = schema_1_database(test).await else {
        return;
    };
    sqlx::raw_sql(
        "insert into accounts (customer_id, password_hash, credits, test_credits, created_at)
             values ('C-000000000000001', 'x', 5, 0, 1);
         insert into verifications (id, customer_id, country_code, national, destination,
             flow_type, code_hash, otp_length, state, wrong_attempts, max_attempts, created_at,
             expires_at, transaction_id, cost, cost_test, delivery)
             values (7, 'C-000000000000001', 91, '9876543210', '919876543210', 'SMS', '\\x00',
                     4, 'pending', 0, 5, 1000, 9999999999999, 't7', 1, 0, 'queued');
         insert into outbox (verification_id, customer_id, text, status, attempts,
                             next_attempt_at, created_at, updated_at)
             values (7, 'C-000000000000001', 'code 1234', 'queued', 0, 1000, 1000, 1000);",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    let old_id: i64 = sqlx::query_scalar("select id from outbox")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    conn.close().await.unwrap();

    let store = db.open().await;
    assert_eq!(store.schema_version().await, SCHEMA_VERSION);
    let claimed = store.outbox_claim("w", 10, 1000, 2000).await.unwrap();
    assert_eq!(claimed.len(), 1);
    let m = &claimed[0];
    assert_eq!((m.id, m.step, m.flow_type.as_str()), (old_id, 0, "SMS"));
    assert_eq!(m.text.as_deref(), Some("code 1234"));
    let info = sent_info("sms", "g");
    assert!(store.outbox_sent(m.id, "w", &info, 2001).await.unwrap());
    let steps = store.outbox_attempts(vid(7)).await.unwrap();
    assert_eq!(steps.len(), 1);
    assert_eq!(steps[0].status, otpgate_core::DeliveryStatus::Sent);
}

/// A database made by the build before the daily aggregate (schema 1) opens,
/// migrates, and its dashboard counts come back from the backfill.
#[tokio::test]
async fn a_schema_1_database_is_backfilled_into_the_daily_counts() {
    let test = "postgres_only::a_schema_1_database_is_backfilled_into_the_daily_counts";
    let Some((db, mut conn)) = schema_1_database(test).await else {
        return;
    };
    {
        // The rows as the earlier build left them.
        sqlx::raw_sql(
            "insert into accounts (customer_id, password_hash, credits, test_credits, created_at)
                  values ('C-000000000000001', 'x', 10, 0, 0);",
        )
        .execute(&mut conn)
        .await
        .unwrap();
        for (id, at, state) in BEFORE_DAILY_COUNTS {
            sqlx::query(
                "insert into verifications (id, customer_id, country_code, national, destination,
                     flow_type, code_hash, otp_length, state, max_attempts, created_at,
                     expires_at, transaction_id, cost, cost_test, delivery)
                 values ($1, 'C-000000000000001', 91, '9876500001', '919876500001', 'SMS',
                     decode(repeat('00', 32), 'hex'), 4, $3, 5, $2, $2 + 60000, 'tx', 1, 0, 'sent')",
            )
            .bind(id)
            .bind(at)
            .bind(state)
            .execute(&mut conn)
            .await
            .unwrap();
        }
        conn.close().await.unwrap();
    }
    let store = db.open().await;
    assert_eq!(store.schema_version().await, SCHEMA_VERSION);
    assert_backfilled_daily_counts(&store).await;
}

/// The results a worker records, each of which touches a message's outbox
/// row and its verification.
#[derive(Clone, Copy, Debug)]
enum WorkerResult {
    Sent,
    Retry,
    Failed,
    Receipt,
}

/// A validate locks the verification and then cancels its queued steps. A
/// worker recording a result at the same moment must wait for the
/// verification before it takes the outbox row: had it taken the row first,
/// the two would deadlock and PostgreSQL would abort one (a right code
/// answered 503, or a sent message left unrecorded and sent again).
/// Sends queued behind a lock on their account are run in one transaction,
/// each with the outcome it would have alone; a send that fails in such a
/// transaction fails alone, and the others are kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_sends_of_one_account_share_a_transaction_and_keep_their_own_outcomes() {
    let test = "postgres_only::queued_sends_of_one_account_share_a_transaction_and_keep_their_own_outcomes";
    let Some(db) = TestDb::postgres(test).await else {
        return;
    };
    let patient = patient();
    let store = Arc::new(PostgresStore::connect(db.url(), patient).await.unwrap());
    let c = cid(1);
    account(&*store, &c, 30, 0).await;
    created(&*store, send(1, &c, &phone(1), T0)).await;

    let burst = |reqs| queued_behind_the_account_lock(&store, db.url(), &c, reqs);
    // The transactions that wrote the account's verifications.
    let writers = || async {
        let mut conn = sqlx::PgConnection::connect(db.url()).await.unwrap();
        let n: i64 = sqlx::query_scalar(
            "select count(distinct xmin::text) from verifications where id >= 100",
        )
        .fetch_one(&mut conn)
        .await
        .unwrap();
        n
    };

    // 29 credits left: the first send, then 31 to new numbers (29 of which
    // the balance pays for, whichever they are), and one to the first's
    // number, which is pending.
    let mut reqs = vec![send(100, &c, &phone(100), T0)];
    reqs.extend((101..=131).map(|n| send(n, &c, &phone(u32::try_from(n).unwrap()), T0)));
    reqs.push(send(200, &c, &phone(100), T0));
    let outcomes = burst(reqs).await;
    let count = |f: fn(&CreateOutcome) -> bool| {
        outcomes
            .iter()
            .filter(|o| matches!(o, Ok(o) if f(o)))
            .count()
    };
    assert_eq!(
        count(|o| matches!(o, CreateOutcome::Created(_))),
        29,
        "{outcomes:?}"
    );
    assert_eq!(
        count(|o| matches!(o, CreateOutcome::InsufficientBalance)),
        3,
        "{outcomes:?}"
    );
    assert!(
        matches!(outcomes[32], Ok(CreateOutcome::AlreadyPending(_))),
        "{:?}",
        outcomes[32]
    );
    assert_eq!(balance(&*store, &c).await, (0, 0));
    assert_eq!(
        writers().await,
        2,
        "the first send alone, then the 28 created behind it together"
    );

    // A send whose id is taken fails alone; the others are kept. Credits
    // for all four, since the queue's order decides which runs when: the
    // one that fails is charged nothing.
    store.account_add_credits(&c, 4).await.unwrap();
    let reqs = vec![
        send(300, &c, &phone(300), T0),
        send(301, &c, &phone(301), T0),
        send(1, &c, &phone(302), T0),
        send(303, &c, &phone(303), T0),
    ];
    let outcomes = burst(reqs).await;
    assert!(
        matches!(outcomes[2], Err(StoreError::Conflict(_))),
        "{outcomes:?}"
    );
    for i in [0, 1, 3] {
        assert!(
            matches!(outcomes[i], Ok(CreateOutcome::Created(_))),
            "{outcomes:?}"
        );
    }
    assert_eq!(balance(&*store, &c).await, (1, 0));
}

/// Queues `reqs` (sends of `c`) behind another session's lock on the
/// account's row, releases it, and returns their outcomes in the order
/// given: the first runs alone and waits for the lock, the rest queue
/// behind it in that order and run as one group.
async fn queued_behind_the_account_lock(
    store: &Arc<PostgresStore>,
    url: &str,
    c: &CustomerId,
    reqs: Vec<otpgate_store::NewVerification>,
) -> Vec<StoreResult<CreateOutcome>> {
    let mut other = holding_the_account_row(url, c).await;
    let mut reqs = reqs.into_iter();
    let spawn = |req| {
        let store = store.clone();
        tokio::spawn(async move { store.verification_create(req).await })
    };
    let mut tasks = vec![spawn(reqs.next().unwrap())];
    wait_for_a_lock_wait(&mut other).await;
    // One at a time, each queued before the next is spawned, so that they
    // queue in the order given.
    for (queued, req) in reqs.enumerate() {
        tasks.push(spawn(req));
        let deadline = Instant::now() + TEN_S;
        while store.send_queue_len() <= queued {
            assert!(Instant::now() < deadline, "the sends were never queued");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    sqlx::query("rollback").execute(&mut other).await.unwrap();
    let mut outcomes = Vec::new();
    for t in tasks {
        outcomes.push(t.await.unwrap());
    }
    outcomes
}

/// Outcomes without what differs between two equal runs (a created
/// verification's id).
fn outcome_kinds(outcomes: Vec<StoreResult<CreateOutcome>>) -> Vec<String> {
    outcomes
        .into_iter()
        .map(|o| match o {
            Ok(CreateOutcome::Created(v)) => {
                format!("created, cost {} ({} test)", v.cost, v.cost_test)
            }
            Ok(CreateOutcome::AlreadyPending(v)) => format!("already pending: {}", v.id.get()),
            other => format!("{other:?}"),
        })
        .collect()
}

/// A group reads the facts of all its sends at once, before any of them is
/// written, and adds what its earlier sends took. Each case runs the same
/// sends as a group (behind a held lock) on one database and one after
/// another on another; every outcome, the balance and the blocks stored
/// must be the same. The cases are the counts a group carries: the
/// per-second limit, the account caps, the prefix and the country guard
/// (whose block a send of the group triggers), own-number sends, and a
/// number sent to twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_decides_each_send_as_the_same_sends_one_after_another() {
    use otpgate_core::PhoneNumber;
    use otpgate_core::fraud::{self, GuardPolicy};
    use otpgate_store::{NewVerification, SendKind};
    let test = "postgres_only::a_group_decides_each_send_as_the_same_sends_one_after_another";
    let guard = |min_unconverted| GuardPolicy {
        min_unconverted,
        max_conversion_percent: 35,
        window_ms: fraud::HOUR_MS,
        block_ms: fraud::HOUR_MS,
        max_block_ms: fraud::DAY_MS,
    };
    // Twelve sends to +91 98765 4nnnn (one prefix), each set up by `f`.
    let sends = |f: &dyn Fn(usize, &mut NewVerification)| -> Vec<NewVerification> {
        (0..12)
            .map(|i| {
                let n = u32::try_from(i).unwrap();
                let to = PhoneNumber::parse("91", &format!("987654{n:04}")).unwrap();
                let mut req = send(100 + u64::from(n), &cid(1), &to, T0 + i64::from(n % 3));
                f(i, &mut req);
                req
            })
            .collect()
    };
    let cases: Vec<(&str, Vec<NewVerification>)> = vec![
        (
            "per-second limit",
            sends(&|_, r| r.limits.per_account_per_second = Some(5)),
        ),
        (
            "account caps",
            sends(&|_, r| {
                r.fraud.caps.account_hour_messages = 4;
                r.fraud.caps.account_day_credits = 7;
            }),
        ),
        (
            "prefix guard",
            sends(&|_, r| {
                r.fraud.guard = true;
                r.fraud.prefix = guard(5);
                r.fraud.country = guard(1_000);
            }),
        ),
        (
            "country guard",
            sends(&|_, r| {
                r.fraud.guard = true;
                r.fraud.prefix = guard(1_000);
                r.fraud.country = guard(6);
            }),
        ),
        (
            "own numbers",
            sends(&|i, r| {
                if i % 2 == 0 {
                    r.kind = SendKind::OwnNumber { max_per_day: 3 };
                }
            }),
        ),
        (
            "a number twice",
            sends(&|i, r| {
                if i == 7 {
                    r.destination = PhoneNumber::parse("91", "9876540003").unwrap();
                }
                r.limits.per_account_per_second = Some(9);
            }),
        ),
    ];
    for (case, reqs) in cases {
        let mut runs = Vec::new();
        for grouped in [true, false] {
            let Some(db) = TestDb::postgres(test).await else {
                return;
            };
            let store = Arc::new(PostgresStore::connect(db.url(), patient()).await.unwrap());
            let c = cid(1);
            account(&*store, &c, 10, 3).await;
            let outcomes = if grouped {
                queued_behind_the_account_lock(&store, db.url(), &c, reqs.clone()).await
            } else {
                let mut outcomes = Vec::new();
                for req in reqs.clone() {
                    outcomes.push(store.verification_create(req).await);
                }
                outcomes
            };
            let mut conn = sqlx::PgConnection::connect(db.url()).await.unwrap();
            let blocks: Vec<(String, String, i32)> =
                sqlx::query_as("select scope, key, strikes from fraud_blocks order by scope, key")
                    .fetch_all(&mut conn)
                    .await
                    .unwrap();
            let counted: Option<i64> =
                sqlx::query_scalar("select sum(sends)::bigint from daily_stats")
                    .fetch_one(&mut conn)
                    .await
                    .unwrap();
            let writers: i64 =
                sqlx::query_scalar("select count(distinct xmin::text) from verifications")
                    .fetch_one(&mut conn)
                    .await
                    .unwrap();
            runs.push((
                outcome_kinds(outcomes),
                balance(&*store, &c).await,
                blocks,
                counted,
                writers,
            ));
        }
        let (grouped, alone) = (&runs[0], &runs[1]);
        assert_eq!(grouped.0, alone.0, "{case}: outcomes");
        assert_eq!(grouped.1, alone.1, "{case}: balance");
        assert_eq!(grouped.2, alone.2, "{case}: blocks");
        assert_eq!(grouped.3, alone.3, "{case}: daily count");
        assert!(
            grouped
                .0
                .iter()
                .filter(|o| o.starts_with("created"))
                .count()
                > 1,
            "{case}: more than one send created: {:?}",
            grouped.0
        );
        assert!(
            grouped.4 < alone.4,
            "{case}: the grouped sends were written by fewer transactions ({} against {})",
            grouped.4,
            alone.4
        );
    }
}

/// One account's completions of a day are counted in up to 16 rows, by the
/// verification's id, so that its validations do not all wait for one
/// row's lock; the day's counts are the sums of its rows (and of what
/// `daily_stats` holds from before).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_days_counts_are_spread_over_shards_and_read_as_their_sums() {
    use otpgate_store::ValidationAction;
    let test = "postgres_only::a_days_counts_are_spread_over_shards_and_read_as_their_sums";
    let Some(db) = TestDb::postgres(test).await else {
        return;
    };
    let store = PostgresStore::connect(db.url(), patient()).await.unwrap();
    let c = cid(1);
    account(&store, &c, 100, 0).await;
    for n in 1..=40u32 {
        let v = created(
            &store,
            send(u64::from(n), &c, &phone(n), DAY0 + i64::from(n)),
        )
        .await;
        if n % 2 == 0 {
            assert!(
                store
                    .verification_apply(&c, v.id, 0, ValidationAction::Complete, DAY0 + 100)
                    .await
                    .unwrap()
            );
        }
    }
    let mut conn = sqlx::PgConnection::connect(db.url()).await.unwrap();
    let completed_rows: i64 = sqlx::query_scalar("select count(*) from daily_completions")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    // Ids 2, 4, …, 40: their low four bits take 8 values.
    assert_eq!(completed_rows, 8);
    let stats = store.daily_stats(&c, DAY0, DAY0 + DAY).await.unwrap();
    let counts: Vec<_> = stats.iter().map(|d| (d.sends, d.completed)).collect();
    assert_eq!(counts, [(40, 20)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_result_waits_for_a_validate_of_its_verification_without_deadlock() {
    let test =
        "postgres_only::a_worker_result_waits_for_a_validate_of_its_verification_without_deadlock";
    let mut failed = Vec::new();
    for result in [
        WorkerResult::Sent,
        WorkerResult::Retry,
        WorkerResult::Failed,
        WorkerResult::Receipt,
    ] {
        // Each result is tried, and the test names every one that failed.
        let Some(db) = TestDb::postgres(test).await else {
            return;
        };
        let patient = patient();
        let store = Arc::new(PostgresStore::connect(db.url(), patient).await.unwrap());
        queued(&*store, 1).await;
        let msg = claim(&*store, "w", 1, T0).await.remove(0);
        if let WorkerResult::Receipt = result {
            let info = sent_info("sms", "g1");
            assert!(store.outbox_sent(msg.id, "w", &info, T0 + 1).await.unwrap());
        }
        // A validate in the middle of its statement: it holds the
        // verification and is about to cancel the queued steps.
        let mut validate = sqlx::PgConnection::connect(db.url()).await.unwrap();
        sqlx::query("begin").execute(&mut validate).await.unwrap();
        sqlx::query("select 1 from verifications where id = 1 for update")
            .execute(&mut validate)
            .await
            .unwrap();
        let worker = tokio::spawn({
            let store = store.clone();
            async move {
                let now = T0 + 2;
                match result {
                    WorkerResult::Sent => {
                        let info = sent_info("sms", "g1");
                        store.outbox_sent(msg.id, "w", &info, now).await
                    }
                    WorkerResult::Retry => {
                        store
                            .outbox_retry(msg.id, "w", now + 1000, "busy", now)
                            .await
                    }
                    WorkerResult::Failed => store.outbox_failed(msg.id, "w", "rejected", now).await,
                    WorkerResult::Receipt => store
                        .outbox_receipt("sms", "g1", DeliveryStatus::Delivered, "ok", now)
                        .await
                        .map(|found| found.is_some()),
                }
            }
        });
        // Until the worker's statement waits for a lock (the verification's
        // now, the outbox row's before the fix would have been taken
        // already): only then can the cancel below meet it.
        wait_for_a_lock_wait(&mut validate).await;
        let cancel =
            sqlx::query("update outbox set updated_at = updated_at where verification_id = 1")
                .execute(&mut validate)
                .await;
        if let Err(e) = cancel {
            failed.push(format!("{result:?}: the validate's cancel: {e}"));
        }
        sqlx::query("commit").execute(&mut validate).await.unwrap();
        let recorded = tokio::time::timeout(TEN_S, worker).await.unwrap().unwrap();
        if !matches!(recorded, Ok(true)) {
            failed.push(format!("{result:?}: {recorded:?}"));
        }
    }
    assert!(failed.is_empty(), "{failed:#?}");
}

/// Returns once another session of the database waits for a lock (within
/// ten seconds, else the test fails).
async fn wait_for_a_lock_wait(on: &mut sqlx::PgConnection) {
    let deadline = Instant::now() + TEN_S;
    loop {
        let waiting: i64 = sqlx::query_scalar(
            "select count(*) from pg_stat_activity
              where wait_event_type = 'Lock' and pid <> pg_backend_pid()
                and datname = current_database()",
        )
        .fetch_one(&mut *on)
        .await
        .unwrap();
        if waiting > 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no session came to wait for a lock"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
