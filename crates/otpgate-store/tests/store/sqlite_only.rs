//! What only the SQLite backend has: the locations `open` takes, and group
//! commit — one writer task committing the writes queued at a time in one
//! transaction and one fsync, with per-write rollback inside the batch.

use std::path::Path;

use otpgate_store::prelude::*;
use otpgate_store::sqlite::{MAX_BATCH, SqliteStore, WriteStats};
use otpgate_store::{CreateOutcome, StoreError, VerificationFilter};

use crate::fixture::{TempDir, sqlite_at_schema};
use crate::helpers::*;

async fn open(path: &Path) -> SqliteStore {
    SqliteStore::open_path(path)
        .await
        .expect("open a fresh database")
}

/// A fresh file in a directory of its own, opened, with account `cid(1)`
/// holding these balances: (the directory, the store, the account).
async fn fresh_with_account(
    credits: i64,
    test_credits: i64,
) -> (TempDir, SqliteStore, otpgate_core::CustomerId) {
    let dir = TempDir::new("store");
    let store = open(&dir.db()).await;
    let c = cid(1);
    account(&store, &c, credits, test_credits).await;
    (dir, store, c)
}

/// Opens the file at `path`, which an earlier build made: it must migrate
/// to this build's schema.
async fn open_migrated(path: &Path) -> SqliteStore {
    let store = open(path).await;
    assert_eq!(
        store.schema_version().await.unwrap(),
        otpgate_store::sqlite::SCHEMA_VERSION
    );
    store
}

// ---- opening ---------------------------------------------------------------------------

#[tokio::test]
async fn open_takes_the_servers_urls_and_plain_paths() {
    let dir = TempDir::new("store");
    let url = format!("sqlite://{}", dir.db().display());
    let by_url = SqliteStore::open(&url).await.unwrap();
    account(&by_url, &cid(1), 1, 0).await;
    by_url.close().await;
    let by_path = SqliteStore::open(dir.db().to_str().unwrap()).await.unwrap();
    assert!(by_path.account_get(&cid(1)).await.unwrap().is_some());

    let memory = SqliteStore::open("sqlite::memory:").await.unwrap();
    assert!(memory.account_get(&cid(1)).await.unwrap().is_none());
    account(&memory, &cid(1), 1, 0).await;
    assert!(memory.account_get(&cid(1)).await.unwrap().is_some());
    let other_memory = SqliteStore::in_memory().await.unwrap();
    assert!(other_memory.account_get(&cid(1)).await.unwrap().is_none());
}

#[tokio::test]
async fn a_file_that_cannot_be_created_is_unavailable() {
    let dir = TempDir::new("store");
    let err = SqliteStore::open_path(dir.path().join("no/such/dir/otpgate.db"))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
}

// ---- group commit --------------------------------------------------------------------

/// Another process's write transaction on `path` (the CLI beside a server):
/// SQLite's write lock, held until `release`. While it is held the store's
/// writer waits in `begin immediate` and writes pile up behind it, so what
/// is queued meanwhile goes into one batch.
struct WriteLock(sqlx::SqliteConnection);

impl WriteLock {
    async fn take(path: &Path) -> Self {
        use sqlx::Connection;
        let mut conn = sqlx::SqliteConnection::connect(&format!("sqlite://{}", path.display()))
            .await
            .unwrap();
        sqlx::query("begin immediate")
            .execute(&mut conn)
            .await
            .unwrap();
        Self(conn)
    }

    async fn release(mut self) {
        sqlx::query("commit").execute(&mut self.0).await.unwrap();
    }
}

/// Time for spawned tasks to queue their writes (they need microseconds)
/// while the writer is stuck on a [`WriteLock`], well inside its 5 s busy
/// timeout.
async fn settle() {
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
}

fn delta(after: WriteStats, before: WriteStats) -> WriteStats {
    WriteStats {
        writes: after.writes - before.writes,
        commits: after.commits - before.commits,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_concurrent_sends_all_commit_and_are_there_after_reopening() {
    let (dir, store, c) = fresh_with_account(150, 50).await;
    let tasks: Vec<_> = (1..=200u32)
        .map(|n| {
            let s = store.clone();
            let req = send(u64::from(n), &c, &phone(n), T0);
            tokio::spawn(async move { s.verification_create(req).await })
        })
        .collect();
    let outcomes = futures::future::try_join_all(tasks).await.unwrap();
    for (n, o) in outcomes.iter().enumerate() {
        assert!(
            matches!(o, Ok(CreateOutcome::Created(_))),
            "send {n}: {o:?}"
        );
    }
    let stats = store.write_stats();
    assert_eq!(stats.writes, 201, "the account and 200 sends");
    assert!(stats.commits < 201, "no batching: {stats:?}");
    store.close().await;
    drop(store);

    let again = open(&dir.db()).await;
    for n in 1..=200u32 {
        let v = again
            .verification_get(&c, vid(u64::from(n)))
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("send {n} is not in the file"));
        assert_eq!(v.destination, phone(n));
        assert!(again.outbox_for_verification(v.id).await.unwrap().is_some());
    }
    assert_eq!(balance(&again, &c).await, (0, 0), "every send charged once");
    assert_eq!(again.outbox_depth().await.unwrap().queued, 200);
}

#[tokio::test]
async fn a_failing_or_refused_send_in_a_batch_leaves_no_trace_and_spares_the_others() {
    let (dir, store, c) = fresh_with_account(10, 0).await;
    account(&store, &cid(2), 0, 0).await;
    let pending = created(&store, send(1, &c, &phone(1), T0)).await;
    created(&store, send(42, &c, &phone(2), T0)).await;
    assert_eq!(balance(&store, &c).await, (8, 0));

    let lock = WriteLock::take(&dir.db()).await;
    // A first write takes the writer into `begin immediate`, where it waits.
    let s = store.clone();
    let plug = tokio::spawn(async move { s.account_add_credits(&cid(2), 0).await });
    settle().await;
    let before = store.write_stats();
    let batch = [
        // Collides on the id (every candidate taken): nothing of it stays,
        // and the sends after it in the batch are unaffected.
        send(42, &c, &phone(3), T0),
        // 506 for the pending one.
        send(100, &c, &phone(1), T0),
        send(101, &c, &phone(4), T0),
        // 402 for the other account.
        send(102, &cid(2), &phone(5), T0),
        send(103, &c, &phone(6), T0),
    ];
    let tasks: Vec<_> = batch
        .into_iter()
        .map(|req| {
            let s = store.clone();
            tokio::spawn(async move { s.verification_create(req).await })
        })
        .collect();
    settle().await;
    lock.release().await;
    plug.await.unwrap().unwrap();
    let results = futures::future::try_join_all(tasks).await.unwrap();
    assert_eq!(
        delta(store.write_stats(), before),
        WriteStats {
            writes: 6,
            commits: 2
        },
        "the plug alone, then the five sends in one transaction"
    );

    let mut results = results.into_iter();
    let conflict = results.next().unwrap();
    assert!(
        matches!(conflict, Err(StoreError::Conflict(_))),
        "{conflict:?}"
    );
    match results.next().unwrap() {
        Ok(CreateOutcome::AlreadyPending(v)) => assert_eq!(v, pending),
        other => panic!("expected 506, got {other:?}"),
    }
    assert!(matches!(
        results.next().unwrap(),
        Ok(CreateOutcome::Created(_))
    ));
    assert!(matches!(
        results.next().unwrap(),
        Ok(CreateOutcome::InsufficientBalance)
    ));
    assert!(matches!(
        results.next().unwrap(),
        Ok(CreateOutcome::Created(_))
    ));

    // Two sends charged; the colliding one charged nothing.
    assert_eq!(balance(&store, &c).await, (6, 0));
    assert_eq!(balance(&store, &cid(2)).await, (0, 0));
    let on = |n: u32| VerificationFilter {
        number: Some(phone(n).e164_digits()),
        ..Default::default()
    };
    assert!(
        store
            .verification_list(&c, &on(3), 10, 0)
            .await
            .unwrap()
            .is_empty(),
        "the colliding send left a row"
    );
    assert_eq!(
        verification(&store, &c, vid(42)).await.destination,
        phone(2),
        "the id's first owner is untouched"
    );
    for (id, present) in [(100, false), (101, true), (102, false), (103, true)] {
        assert_eq!(
            store
                .outbox_for_verification(vid(id))
                .await
                .unwrap()
                .is_some(),
            present,
            "outbox row of {id}"
        );
    }
}

#[tokio::test]
async fn concurrent_writes_share_commits_unless_batches_are_limited_to_one() {
    for max_batch in [MAX_BATCH, 1] {
        let dir = TempDir::new("store");
        let store = SqliteStore::open_path_with_max_batch(dir.db(), max_batch)
            .await
            .unwrap();
        let c = cid(1);
        account(&store, &c, 0, 0).await;
        let before = store.write_stats();
        store.account_add_credits(&c, 1).await.unwrap();
        assert_eq!(
            delta(store.write_stats(), before),
            WriteStats {
                writes: 1,
                commits: 1
            },
            "a lone write commits by itself"
        );

        let before = store.write_stats();
        let tasks: Vec<_> = (0..64)
            .map(|_| {
                let (s, c) = (store.clone(), c.clone());
                tokio::spawn(async move { s.account_add_credits(&c, 1).await })
            })
            .collect();
        futures::future::try_join_all(tasks)
            .await
            .unwrap()
            .into_iter()
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        // Each read-then-write saw the ones before it in its batch: no
        // update was lost.
        assert_eq!(balance(&store, &c).await, (65, 0));
        let d = delta(store.write_stats(), before);
        assert_eq!(d.writes, 64);
        if max_batch == 1 {
            assert_eq!(d.commits, 64, "max batch 1 commits every write alone");
        } else {
            assert!(d.commits < 64, "64 concurrent writes, {d:?}");
        }
    }
}

#[tokio::test]
async fn a_send_whose_caller_gave_up_before_it_began_is_not_written() {
    let (dir, store, c) = fresh_with_account(5, 0).await;
    let lock = WriteLock::take(&dir.db()).await;
    let s = store.clone();
    let plug = tokio::spawn(async move { s.account_add_credits(&cid(1), 0).await });
    settle().await;
    let s = store.clone();
    let req = send(7, &c, &phone(7), T0);
    let abandoned = tokio::spawn(async move { s.verification_create(req).await });
    settle().await;
    // The send is queued behind the plug, waiting for the writer (else the
    // test would prove nothing: a send never handed over is not written).
    assert_eq!(
        store.write_queue_len(),
        1,
        "the send is waiting for the writer"
    );
    assert!(!abandoned.is_finished());
    // A request timeout dropping the call while it waits for the writer.
    abandoned.abort();
    assert!(abandoned.await.unwrap_err().is_cancelled());
    lock.release().await;
    plug.await.unwrap().unwrap();
    // Queued after the abandoned send: once it is answered, that one has
    // been taken up (and skipped) too.
    store.account_add_credits(&c, 0).await.unwrap();
    assert_eq!(store.verification_get(&c, vid(7)).await.unwrap(), None);
    assert_eq!(balance(&store, &c).await, (5, 0));
}

/// A database file in a fresh directory as the build at schema 2 left it
/// (its migrations applied by sqlx's migrator), and a pool on it.
async fn schema_2_file() -> (TempDir, sqlx::SqlitePool) {
    let dir = TempDir::new("store");
    let pool = sqlite_at_schema(&dir.db(), 2).await;
    (dir, pool)
}

// ---- upgrades ------------------------------------------------------------------------------

#[tokio::test]
async fn a_database_made_at_schema_2_migrates_and_keeps_its_data() {
    // The schema as the build before the fraud defence left it: its two
    // migrations, recorded as sqlx records them, and a verification.
    let (dir, pool) = schema_2_file().await;
    sqlx::query(
        "insert into accounts (customer_id, password_hash, credits, test_credits, created_at)
         values (?1, 'x', 7, 0, ?2)",
    )
    .bind(cid(1).as_str())
    .bind(T0)
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query(
        "insert into verifications (id, customer_id, country_code, national, destination,
             flow_type, code_hash, otp_length, state, max_attempts, created_at, expires_at,
             transaction_id, cost, cost_test, delivery)
         values (42, ?1, 91, '9876543210', '919876543210', 'SMS', zeroblob(32), 4,
                 'pending', 5, ?2, ?3, 'tx', 1, 0, 'queued')",
    )
    .bind(cid(1).as_str())
    .bind(T0)
    .bind(T0 + 60_000)
    .execute(&pool)
    .await
    .unwrap();
    pool.close().await;

    let store = open_migrated(&dir.db()).await;
    let v = store.verification_get(&cid(1), vid(42)).await.unwrap();
    assert_eq!(v.map(|v| v.cost), Some(1), "the old verification is kept");
    assert_eq!(balance(&store, &cid(1)).await, (7, 0));
    created(&store, send(43, &cid(1), &phone(43), T0 + 1)).await;
    assert_eq!(balance(&store, &cid(1)).await, (6, 0));
}

// ---- upgrades ----------------------------------------------------------------------------

/// A file made by the build before the daily aggregate (schema 2) opens,
/// migrates, and its dashboard counts come back from the backfill.
#[tokio::test]
async fn a_schema_2_file_is_backfilled_into_the_daily_counts() {
    // Migrated as the earlier build did (sqlx's migrator, same SQL).
    let (dir, pool) = schema_2_file().await;
    {
        sqlx::query(
            "insert into accounts (customer_id, password_hash, credits, test_credits, created_at)
             values ('C-000000000000001', 'x', 10, 0, 0)",
        )
        .execute(&pool)
        .await
        .unwrap();
        for (id, at, state) in BEFORE_DAILY_COUNTS {
            sqlx::query(
                "insert into verifications (id, customer_id, country_code, national, destination,
                     flow_type, code_hash, otp_length, state, max_attempts, created_at,
                     expires_at, transaction_id, cost, cost_test, delivery)
                 values (?1, 'C-000000000000001', 91, '9876500001', '919876500001', 'SMS',
                     zeroblob(32), 4, ?3, 5, ?2, ?2 + 60000, 'tx', 1, 0, 'sent')",
            )
            .bind(id)
            .bind(at)
            .bind(state)
            .execute(&pool)
            .await
            .unwrap();
        }
        pool.close().await;
    }
    let store = open_migrated(&dir.db()).await;
    assert_backfilled_daily_counts(&store).await;
}

/// Retention deletes numbers from the file itself, not only from view:
/// deleted rows' bytes are overwritten (`secure_delete`), so after a
/// checkpoint the number is nowhere in the database file or its WAL.
#[tokio::test]
async fn a_purged_number_is_nowhere_in_the_file() {
    let (dir, store, c) = fresh_with_account(10, 0).await;
    // A number no other row holds.
    let to = otpgate_core::PhoneNumber::parse("91", "9812345678").unwrap();
    let v = created(&store, send(7, &c, &to, T0)).await;
    store
        .inbox_put(&otpgate_store::InboxEntry {
            customer_id: Some(c.clone()),
            destination: to.e164_digits(),
            text: "4821 is your code".into(),
            verification_id: Some(v.id),
            created_at: T0,
        })
        .await
        .unwrap();
    let file_holds = |needle: &[u8]| {
        ["otpgate.db", "otpgate.db-wal"].iter().any(|f| {
            std::fs::read(dir.path().join(f))
                .map(|bytes| bytes.windows(needle.len()).any(|w| w == needle))
                .unwrap_or(false)
        })
    };
    let checkpoint = || async {
        let opts = sqlx::sqlite::SqliteConnectOptions::new().filename(dir.db());
        let mut conn = sqlx::ConnectOptions::connect(&opts).await.unwrap();
        sqlx::query("pragma wal_checkpoint(truncate)")
            .execute(&mut conn)
            .await
            .unwrap();
    };
    checkpoint().await;
    assert!(
        file_holds(b"9812345678"),
        "the test looks for the wrong bytes"
    );
    let p = store.purge_before(T0 + DAY, 100).await.unwrap();
    assert_eq!((p.verifications, p.inbox), (1, 1));
    checkpoint().await;
    assert!(
        !file_holds(b"9812345678"),
        "the purged number is still in the file"
    );
}

/// Sustained sends: a checkpoint beside a busy writer never copies the
/// frames committed while it runs, and SQLite starts the WAL over only when
/// a write begins with every frame copied. Without the writer's help the
/// WAL grew by every page the sends wrote (about 50 MB a second on the
/// bench), for as long as they went on. Here it must stay near the point
/// at which the writer helps (16 MiB), while the sends write several times
/// that.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sustained_sends_keep_the_wal_bounded() {
    const SENDS: u32 = 12_000;
    const MIB: u64 = 1024 * 1024;
    let (dir, store, c) = fresh_with_account(i64::from(SENDS), 0).await;
    let wal = dir.db().with_extension("db-wal");
    let size = |p: &Path| std::fs::metadata(p).map_or(0, |m| m.len());
    // A long text makes each send a few pages, so the test writes a lot of
    // WAL in little time.
    let text = "7".repeat(8_000);
    let next = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(1));
    let senders: Vec<_> = (0..16)
        .map(|_| {
            let (store, c, text, next) = (store.clone(), c.clone(), text.clone(), next.clone());
            tokio::spawn(async move {
                loop {
                    let n = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if n > SENDS {
                        return;
                    }
                    let mut req = send(u64::from(n), &c, &phone(n), T0);
                    req.message_text.clone_from(&text);
                    created(&store, req).await;
                }
            })
        })
        .collect();
    let mut largest = 0;
    while !senders.iter().all(tokio::task::JoinHandle::is_finished) {
        largest = largest.max(size(&wal));
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    futures::future::try_join_all(senders).await.unwrap();
    largest = largest.max(size(&wal));
    let written = size(&dir.db()) + size(&wal);
    assert!(
        written > 90 * MIB,
        "the sends wrote only {} MiB",
        written / MIB
    );
    assert!(
        largest < 48 * MIB,
        "the WAL reached {} MiB while the sends wrote {} MiB",
        largest / MIB,
        written / MIB
    );
}
