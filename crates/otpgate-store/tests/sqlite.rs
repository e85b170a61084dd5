//! The SQLite backend against real database files, each test in a fresh
//! directory: the `Store` contract (contract §2–§5 as the store enforces
//! them), plus what only SQLite shows — reopening, schema versions, two
//! stores (a server and the CLI, or two processes) sharing one file, and
//! group commit (concurrent writes sharing one transaction and one fsync).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use otpgate_core::{
    CodeHash, CustomerId, DeliveryStatus, PhoneNumber, VerificationId, VerificationState,
};
use otpgate_store::sqlite::{MAX_BATCH, SCHEMA_VERSION, SqliteStore, WriteStats};
use otpgate_store::{
    AccountSettings, CreateOutcome, InboxEntry, NewAccount, NewVerification, SendLimits, SentInfo,
    Store, StoreError, ValidationAction, Verification, VerificationFilter,
};

const T0: i64 = 1_764_100_000_000;
const DAY: i64 = 86_400_000;

/// A directory removed when the test ends, so every test has its own file.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "otpgate-sqlite-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create a temporary directory");
        Self(dir)
    }

    fn db(&self) -> PathBuf {
        self.0.join("otpgate.db")
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

async fn open(path: &Path) -> SqliteStore {
    SqliteStore::open_path(path)
        .await
        .expect("open a fresh database")
}

async fn fresh() -> (TempDir, SqliteStore) {
    let dir = TempDir::new();
    let store = open(&dir.db()).await;
    (dir, store)
}

fn cid(n: u64) -> CustomerId {
    CustomerId::parse(&format!("C-{n:015X}")).unwrap()
}

fn vid(n: u64) -> VerificationId {
    VerificationId::new(n).unwrap()
}

/// An Indian mobile number; `n` picks the last digits.
fn phone(n: u32) -> PhoneNumber {
    PhoneNumber::parse("91", &format!("98765{n:05}")).unwrap()
}

async fn account(store: &impl Store, id: &CustomerId, credits: i64, test_credits: i64) {
    store
        .account_create(NewAccount {
            customer_id: id.clone(),
            password_hash: "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA".into(),
            email: None,
            country: Some("IN".into()),
            credits,
            test_credits,
            created_at: T0,
        })
        .await
        .unwrap();
}

fn roomy_limits() -> SendLimits {
    SendLimits {
        per_number_max: 1000,
        per_number_window_ms: 3_600_000,
        wrong_code_max: 1000,
        wrong_code_window_ms: 3_600_000,
        per_account_per_second: None,
    }
}

fn send(id: u64, customer: &CustomerId, to: &PhoneNumber, now: i64) -> NewVerification {
    NewVerification {
        id: vid(id),
        customer_id: customer.clone(),
        destination: to.clone(),
        flow_type: "SMS".into(),
        code_hash: CodeHash([7; 32]),
        otp_length: 4,
        max_attempts: 5,
        created_at: now,
        expires_at: now + 60_000,
        transaction_id: format!("tx-{id}"),
        price: 1,
        message_text: format!("Your code is {id:04}"),
        limits: roomy_limits(),
    }
}

async fn created(store: &impl Store, req: NewVerification) -> Verification {
    match store.verification_create(req).await.unwrap() {
        CreateOutcome::Created(v) => v,
        other => panic!("expected Created, got {other:?}"),
    }
}

async fn balance(store: &impl Store, id: &CustomerId) -> (i64, i64) {
    let a = store.account_get(id).await.unwrap().unwrap();
    (a.credits, a.test_credits)
}

// ---- opening, schema, secrets ---------------------------------------------

#[tokio::test]
async fn a_fresh_file_is_migrated_and_reopening_keeps_the_data() {
    let dir = TempDir::new();
    let store = open(&dir.db()).await;
    store.ping().await.unwrap();
    assert_eq!(store.backend(), "sqlite");
    assert_eq!(store.schema_version().await.unwrap(), SCHEMA_VERSION);
    let c = cid(1);
    account(&store, &c, 5, 0).await;
    let v = created(&store, send(42, &c, &phone(1), T0)).await;
    store.close().await;
    drop(store);

    let again = open(&dir.db()).await;
    assert_eq!(again.schema_version().await.unwrap(), SCHEMA_VERSION);
    assert_eq!(again.verification_get(&c, v.id).await.unwrap(), Some(v));
    assert_eq!(balance(&again, &c).await, (4, 0));
}

#[tokio::test]
async fn open_takes_the_servers_urls_and_plain_paths() {
    let dir = TempDir::new();
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
    let dir = TempDir::new();
    let err = SqliteStore::open_path(dir.0.join("no/such/dir/otpgate.db"))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
}

#[tokio::test]
async fn a_database_migrated_by_a_newer_build_is_refused() {
    let dir = TempDir::new();
    let store = open(&dir.db()).await;
    store.close().await;
    drop(store);
    {
        // What a later otpgate would leave behind: a migration this build
        // does not have.
        use sqlx::Connection;
        let mut conn = sqlx::SqliteConnection::connect(&format!("sqlite://{}", dir.db().display()))
            .await
            .unwrap();
        sqlx::query(
            "insert into _sqlx_migrations (version, description, success, checksum, execution_time)
             values (99, 'future', true, x'00', 0)",
        )
        .execute(&mut conn)
        .await
        .unwrap();
        conn.close().await.unwrap();
    }
    match SqliteStore::open_path(dir.db()).await {
        Err(StoreError::SchemaTooNew { found, known }) => {
            assert_eq!((found, known), (99, SCHEMA_VERSION));
        }
        other => panic!("expected SchemaTooNew, got {other:?}"),
    }
}

#[tokio::test]
async fn every_opener_of_a_secret_gets_the_first_candidate_stored() {
    let dir = TempDir::new();
    let a = open(&dir.db()).await;
    let b = open(&dir.db()).await;
    let tasks: Vec<_> = (0u8..16)
        .map(|i| {
            let s = if i % 2 == 0 { a.clone() } else { b.clone() };
            tokio::spawn(async move { s.secret_get_or_init("token", &[i; 32]).await.unwrap() })
        })
        .collect();
    let values: Vec<Vec<u8>> = futures::future::try_join_all(tasks).await.unwrap();
    assert!(values.windows(2).all(|w| w[0] == w[1]), "{values:?}");
    assert_eq!(values[0].len(), 32);
    assert_eq!(
        a.secret_get_or_init("token", b"other").await.unwrap(),
        values[0]
    );
    assert_eq!(a.secret_get_or_init("code", b"c").await.unwrap(), b"c");
}

// ---- accounts ---------------------------------------------------------------

#[tokio::test]
async fn accounts_round_trip_and_collide_on_id_and_email() {
    let (_dir, store) = fresh().await;
    let new = NewAccount {
        customer_id: cid(0xA),
        password_hash: "hash".into(),
        email: Some("Ärger@Example.com".into()),
        country: Some("IN".into()),
        credits: 7,
        test_credits: 3,
        created_at: T0,
    };
    let made = store.account_create(new.clone()).await.unwrap();
    assert_eq!(made.token_epoch, 0);
    assert!(!made.disabled);
    assert_eq!(
        store.account_get(&cid(0xA)).await.unwrap(),
        Some(made.clone())
    );
    assert_eq!(
        store.account_by_email("ärger@example.COM").await.unwrap(),
        Some(made.clone())
    );
    assert_eq!(
        store.account_by_email("other@example.com").await.unwrap(),
        None
    );
    assert_eq!(store.account_get(&cid(0xB)).await.unwrap(), None);

    let same_id = store.account_create(new.clone()).await.unwrap_err();
    assert!(matches!(same_id, StoreError::Conflict(_)), "{same_id:?}");
    let same_email = NewAccount {
        customer_id: cid(0xB),
        email: Some("ÄRGER@example.com".into()),
        ..new.clone()
    };
    let err = store.account_create(same_email).await.unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)), "{err:?}");
    assert_eq!(store.account_get(&cid(0xB)).await.unwrap(), None);
    // Accounts without an e-mail do not collide with each other.
    for n in [0xC, 0xD] {
        let a = NewAccount {
            customer_id: cid(n),
            email: None,
            ..new.clone()
        };
        store.account_create(a).await.unwrap();
    }
}

#[tokio::test]
async fn accounts_list_newest_first_in_pages() {
    let (_dir, store) = fresh().await;
    for n in 1..=5u64 {
        store
            .account_create(NewAccount {
                customer_id: cid(n),
                password_hash: "h".into(),
                email: None,
                country: None,
                credits: 0,
                test_credits: 0,
                created_at: T0 + i64::try_from(n).unwrap(),
            })
            .await
            .unwrap();
    }
    let ids =
        |v: Vec<otpgate_store::Account>| v.into_iter().map(|a| a.customer_id).collect::<Vec<_>>();
    assert_eq!(
        ids(store.account_list(2, 0).await.unwrap()),
        vec![cid(5), cid(4)]
    );
    assert_eq!(
        ids(store.account_list(2, 2).await.unwrap()),
        vec![cid(3), cid(2)]
    );
    assert_eq!(ids(store.account_list(10, 4).await.unwrap()), vec![cid(1)]);
}

#[tokio::test]
async fn credits_are_added_and_removed_but_never_below_zero() {
    let (_dir, store) = fresh().await;
    let c = cid(1);
    account(&store, &c, 10, 2).await;
    assert_eq!(store.account_add_credits(&c, 5).await.unwrap().credits, 15);
    assert_eq!(store.account_add_credits(&c, -4).await.unwrap().credits, 11);
    let floored = store.account_add_credits(&c, -100).await.unwrap();
    assert_eq!((floored.credits, floored.test_credits), (0, 2));
    assert_eq!(
        store
            .account_add_credits(&c, i64::MAX)
            .await
            .unwrap()
            .credits,
        i64::MAX
    );
    assert_eq!(
        store
            .account_add_credits(&c, i64::MAX)
            .await
            .unwrap()
            .credits,
        i64::MAX
    );
    assert!(matches!(
        store.account_add_credits(&cid(2), 1).await,
        Err(StoreError::NotFound)
    ));
}

#[tokio::test]
async fn password_changes_and_revocations_bump_the_token_epoch() {
    let (_dir, store) = fresh().await;
    let c = cid(1);
    account(&store, &c, 0, 0).await;
    let a = store.account_set_password(&c, "new-hash").await.unwrap();
    assert_eq!((a.password_hash.as_str(), a.token_epoch), ("new-hash", 1));
    assert_eq!(
        store.account_revoke_tokens(&c).await.unwrap().token_epoch,
        2
    );
    assert_eq!(store.account_get(&c).await.unwrap().unwrap().token_epoch, 2);
    assert!(store.account_set_disabled(&c, true).await.unwrap().disabled);
    assert!(store.account_get(&c).await.unwrap().unwrap().disabled);
    assert!(
        !store
            .account_set_disabled(&c, false)
            .await
            .unwrap()
            .disabled
    );

    let settings = AccountSettings {
        brand_name: Some("Acme".into()),
        default_timeout_secs: Some(120),
        default_otp_length: Some(6),
        allowed_country_codes: Some(vec![91, 44]),
        per_number_send_limit: Some(3),
    };
    assert_eq!(
        store
            .account_set_settings(&c, &settings)
            .await
            .unwrap()
            .settings,
        settings
    );
    assert_eq!(
        store.account_get(&c).await.unwrap().unwrap().settings,
        settings
    );

    let missing = cid(2);
    assert!(matches!(
        store.account_set_password(&missing, "h").await,
        Err(StoreError::NotFound)
    ));
    assert!(matches!(
        store.account_revoke_tokens(&missing).await,
        Err(StoreError::NotFound)
    ));
    assert!(matches!(
        store.account_set_disabled(&missing, true).await,
        Err(StoreError::NotFound)
    ));
    assert!(matches!(
        store.account_set_settings(&missing, &settings).await,
        Err(StoreError::NotFound)
    ));
}

// ---- sends --------------------------------------------------------------------

#[tokio::test]
async fn a_send_charges_test_credits_first_and_queues_its_message() {
    let (_dir, store) = fresh().await;
    let c = cid(1);
    account(&store, &c, 5, 1).await;
    let mut req = send(42, &c, &phone(1), T0);
    req.price = 3;
    let v = created(&store, req).await;
    assert_eq!((v.cost, v.cost_test), (3, 1));
    assert_eq!(v.state, VerificationState::Pending);
    assert_eq!(v.delivery, DeliveryStatus::Queued);
    assert_eq!(balance(&store, &c).await, (3, 0));
    assert_eq!(store.verification_get(&c, vid(42)).await.unwrap(), Some(v));

    let msg = store
        .outbox_for_verification(vid(42))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(msg.text.as_deref(), Some("Your code is 0042"));
    assert_eq!(msg.status, DeliveryStatus::Queued);
    assert_eq!((msg.attempts, msg.next_attempt_at), (0, T0));
    assert_eq!(msg.destination, phone(1));
    assert_eq!(msg.customer_id, c);
    assert_eq!(msg.expires_at, T0 + 60_000);
}

#[tokio::test]
async fn a_send_without_enough_credits_stores_and_charges_nothing() {
    let (_dir, store) = fresh().await;
    let c = cid(1);
    account(&store, &c, 1, 1).await;
    let mut req = send(42, &c, &phone(1), T0);
    req.price = 3;
    assert!(matches!(
        store.verification_create(req).await.unwrap(),
        CreateOutcome::InsufficientBalance
    ));
    assert_eq!(balance(&store, &c).await, (1, 1));
    assert_eq!(store.verification_get(&c, vid(42)).await.unwrap(), None);
    assert_eq!(store.outbox_for_verification(vid(42)).await.unwrap(), None);
    // Exactly the balance is enough.
    let mut req = send(43, &c, &phone(1), T0);
    req.price = 2;
    created(&store, req).await;
    assert_eq!(balance(&store, &c).await, (0, 0));
}

#[tokio::test]
async fn unknown_and_disabled_accounts_cannot_send() {
    let (_dir, store) = fresh().await;
    assert!(matches!(
        store
            .verification_create(send(1, &cid(1), &phone(1), T0))
            .await
            .unwrap(),
        CreateOutcome::AccountUnavailable
    ));
    account(&store, &cid(2), 5, 0).await;
    store.account_set_disabled(&cid(2), true).await.unwrap();
    assert!(matches!(
        store
            .verification_create(send(2, &cid(2), &phone(1), T0))
            .await
            .unwrap(),
        CreateOutcome::AccountUnavailable
    ));
    assert_eq!(balance(&store, &cid(2)).await, (5, 0));
}

#[tokio::test]
async fn a_send_while_one_is_pending_returns_it_and_a_resend_after_it_ends_creates_one() {
    let (_dir, store) = fresh().await;
    let c = cid(1);
    account(&store, &c, 100, 0).await;
    let to = phone(1);
    let first = created(&store, send(1, &c, &to, T0)).await;
    match store
        .verification_create(send(2, &c, &to, T0 + 19_000))
        .await
        .unwrap()
    {
        CreateOutcome::AlreadyPending(v) => assert_eq!(v, first),
        other => panic!("expected 506, got {other:?}"),
    }
    assert_eq!(balance(&store, &c).await, (99, 0));
    assert_eq!(store.verification_get(&c, vid(2)).await.unwrap(), None);
    // Another destination, or another account's, is not blocked.
    created(&store, send(3, &c, &phone(2), T0 + 19_000)).await;
    account(&store, &cid(2), 1, 0).await;
    created(&store, send(4, &cid(2), &to, T0 + 19_000)).await;

    // Expired: a resend creates a new one.
    let second = created(&store, send(5, &c, &to, T0 + 60_000)).await;
    // Completed: likewise.
    assert!(
        store
            .verification_apply(&c, second.id, 0, ValidationAction::Complete, T0 + 61_000)
            .await
            .unwrap()
    );
    let third = created(&store, send(6, &c, &to, T0 + 62_000)).await;
    // Dead (all attempts wrong): likewise.
    for n in 0..5 {
        assert!(
            store
                .verification_apply(&c, third.id, n, ValidationAction::Wrong, T0 + 63_000)
                .await
                .unwrap()
        );
    }
    created(&store, send(7, &c, &to, T0 + 64_000)).await;
}

#[tokio::test]
async fn the_per_number_limit_refuses_until_the_oldest_send_leaves_the_window() {
    let (_dir, store) = fresh().await;
    let c = cid(1);
    account(&store, &c, 100, 0).await;
    let to = phone(1);
    let limits = SendLimits {
        per_number_max: 3,
        per_number_window_ms: 60_000,
        ..roomy_limits()
    };
    for (n, at) in [(1, T0), (2, T0 + 1_000), (3, T0 + 2_000)] {
        let mut req = send(n, &c, &to, at);
        req.limits = limits;
        let v = created(&store, req).await;
        // Completed, so the next send is not a 506.
        store
            .verification_apply(&c, v.id, 0, ValidationAction::Complete, at)
            .await
            .unwrap();
    }
    let mut req = send(4, &c, &to, T0 + 2_500);
    req.limits = limits;
    match store.verification_create(req.clone()).await.unwrap() {
        CreateOutcome::RateLimited { retry_after_secs } => assert_eq!(retry_after_secs, 58),
        other => panic!("expected 800, got {other:?}"),
    }
    assert_eq!(balance(&store, &c).await, (97, 0));
    // Another number is unaffected.
    let mut other = send(5, &c, &phone(2), T0 + 2_500);
    other.limits = limits;
    created(&store, other).await;
    // The first send leaves the window at T0 + 60s.
    req.created_at = T0 + 59_999;
    req.expires_at = req.created_at + 60_000;
    match store.verification_create(req.clone()).await.unwrap() {
        CreateOutcome::RateLimited { retry_after_secs } => assert_eq!(retry_after_secs, 1),
        other => panic!("expected 800, got {other:?}"),
    }
    req.created_at = T0 + 60_000;
    req.expires_at = req.created_at + 60_000;
    created(&store, req).await;
}

#[tokio::test]
async fn the_per_account_rate_limit_counts_sends_in_the_last_second() {
    let (_dir, store) = fresh().await;
    let c = cid(1);
    account(&store, &c, 100, 0).await;
    let limits = SendLimits {
        per_account_per_second: Some(2),
        ..roomy_limits()
    };
    let mut n = 0;
    let mut try_send = |at: i64| {
        n += 1;
        let mut req = send(n, &c, &phone(u32::try_from(n).unwrap()), at);
        req.limits = limits;
        req
    };
    created(&store, try_send(T0)).await;
    created(&store, try_send(T0 + 500)).await;
    assert!(matches!(
        store.verification_create(try_send(T0 + 999)).await.unwrap(),
        CreateOutcome::RateLimited {
            retry_after_secs: 1
        }
    ));
    created(&store, try_send(T0 + 1_000)).await;
    assert_eq!(balance(&store, &c).await, (97, 0));
}

#[tokio::test]
async fn wrong_codes_count_across_verifications_and_a_spent_budget_refuses_sends() {
    let (_dir, store) = fresh().await;
    let c = cid(1);
    account(&store, &c, 100, 0).await;
    let to = phone(1);
    let limits = SendLimits {
        wrong_code_max: 4,
        wrong_code_window_ms: 600_000,
        ..roomy_limits()
    };
    // Two wrong codes on each of two verifications, a minute apart.
    for (n, at) in [(1u64, T0), (2, T0 + 60_000)] {
        let mut req = send(n, &c, &to, at);
        req.limits = limits;
        let v = created(&store, req).await;
        for w in 0..2 {
            assert!(
                store
                    .verification_apply(&c, v.id, w, ValidationAction::Wrong, at + 1)
                    .await
                    .unwrap()
            );
        }
        store
            .verification_apply(&c, v.id, 2, ValidationAction::Complete, at + 2)
            .await
            .unwrap();
    }
    let dest = to.e164_digits();
    assert_eq!(store.wrong_codes_since(&c, &dest, T0).await.unwrap(), 4);
    assert_eq!(store.wrong_codes_since(&c, &dest, T0 + 1).await.unwrap(), 2);
    assert_eq!(
        store.wrong_codes_since(&cid(2), &dest, T0).await.unwrap(),
        0
    );
    assert_eq!(store.wrong_codes_since(&c, "441234", T0).await.unwrap(), 0);

    let mut req = send(3, &c, &to, T0 + 120_000);
    req.limits = limits;
    match store.verification_create(req.clone()).await.unwrap() {
        // Under budget again once the first verification's two leave the
        // window, at T0 + 600 s.
        CreateOutcome::RateLimited { retry_after_secs } => assert_eq!(retry_after_secs, 480),
        other => panic!("expected 800, got {other:?}"),
    }
    req.created_at = T0 + 600_000;
    req.expires_at = req.created_at + 60_000;
    created(&store, req).await;
}

#[tokio::test]
async fn a_verification_id_taken_is_a_conflict_that_charges_nothing() {
    let (_dir, store) = fresh().await;
    let c = cid(1);
    account(&store, &c, 5, 0).await;
    created(&store, send(42, &c, &phone(1), T0)).await;
    let err = store
        .verification_create(send(42, &c, &phone(2), T0))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)), "{err:?}");
    assert_eq!(balance(&store, &c).await, (4, 0));
    // The store is usable after the rolled-back transaction.
    created(&store, send(43, &c, &phone(2), T0)).await;
}

#[tokio::test]
async fn another_accounts_verification_is_indistinguishable_from_none() {
    let (_dir, store) = fresh().await;
    account(&store, &cid(1), 5, 0).await;
    account(&store, &cid(2), 5, 0).await;
    created(&store, send(42, &cid(1), &phone(1), T0)).await;
    assert_eq!(
        store.verification_get(&cid(2), vid(42)).await.unwrap(),
        None
    );
    assert_eq!(
        store.verification_get(&cid(1), vid(43)).await.unwrap(),
        None
    );
    assert!(
        !store
            .verification_apply(&cid(2), vid(42), 0, ValidationAction::Complete, T0)
            .await
            .unwrap()
    );
    assert_eq!(
        store
            .verification_get(&cid(1), vid(42))
            .await
            .unwrap()
            .unwrap()
            .state,
        VerificationState::Pending
    );
}

// ---- validation ------------------------------------------------------------------

#[tokio::test]
async fn apply_writes_only_on_the_expected_attempt_count() {
    let (_dir, store) = fresh().await;
    let c = cid(1);
    account(&store, &c, 5, 0).await;
    let v = created(&store, send(42, &c, &phone(1), T0)).await;
    let apply = |n, action| store.verification_apply(&c, v.id, n, action, T0 + 5_000);
    assert!(apply(0, ValidationAction::Wrong).await.unwrap());
    // A validation that read 0 wrong attempts lost the race.
    assert!(!apply(0, ValidationAction::Wrong).await.unwrap());
    assert!(!apply(0, ValidationAction::Complete).await.unwrap());
    assert!(apply(1, ValidationAction::Complete).await.unwrap());
    assert!(!apply(1, ValidationAction::Complete).await.unwrap());
    assert!(!apply(1, ValidationAction::Wrong).await.unwrap());
    let done = store.verification_get(&c, v.id).await.unwrap().unwrap();
    assert_eq!(done.state, VerificationState::Completed);
    assert_eq!(
        (done.wrong_attempts, done.completed_at),
        (1, Some(T0 + 5_000))
    );
}

#[tokio::test]
async fn of_many_concurrent_completions_across_two_stores_exactly_one_wins() {
    let dir = TempDir::new();
    let a = open(&dir.db()).await;
    let b = open(&dir.db()).await;
    let c = cid(1);
    account(&a, &c, 100, 0).await;
    for round in 0..5u64 {
        let v = created(
            &a,
            send(
                100 + round,
                &c,
                &phone(1),
                T0 + 70_000 * i64::try_from(round).unwrap(),
            ),
        )
        .await;
        let tasks: Vec<_> = (0..24)
            .map(|i| {
                let s = if i % 2 == 0 { a.clone() } else { b.clone() };
                let c = c.clone();
                tokio::spawn(async move {
                    s.verification_apply(&c, v.id, 0, ValidationAction::Complete, T0)
                        .await
                        .unwrap()
                })
            })
            .collect();
        let won = futures::future::try_join_all(tasks)
            .await
            .unwrap()
            .into_iter()
            .filter(|w| *w)
            .count();
        assert_eq!(won, 1, "round {round}");
    }
}

// ---- balances under concurrency ---------------------------------------------------

#[tokio::test]
async fn concurrent_sends_from_two_stores_never_overdraw_the_balance() {
    let dir = TempDir::new();
    let a = Arc::new(open(&dir.db()).await);
    let b = Arc::new(open(&dir.db()).await);
    let c = cid(1);
    account(&*a, &c, 7, 3).await;
    let tasks: Vec<_> = (1..=40u32)
        .map(|n| {
            let s = if n % 2 == 0 { a.clone() } else { b.clone() };
            let req = send(u64::from(n), &c, &phone(n), T0);
            tokio::spawn(async move { s.verification_create(req).await.unwrap() })
        })
        .collect();
    let outcomes = futures::future::try_join_all(tasks).await.unwrap();
    let made = outcomes
        .iter()
        .filter(|o| matches!(o, CreateOutcome::Created(_)))
        .count();
    let broke = outcomes
        .iter()
        .filter(|o| matches!(o, CreateOutcome::InsufficientBalance))
        .count();
    assert_eq!((made, broke), (10, 30));
    assert_eq!(balance(&*a, &c).await, (0, 0));
    assert_eq!(a.outbox_depth().await.unwrap().queued, 10);
}

// ---- the console's views ----------------------------------------------------------

#[tokio::test]
async fn the_log_filters_by_number_state_and_time_newest_first() {
    let (_dir, store) = fresh().await;
    let c = cid(1);
    account(&store, &c, 100, 0).await;
    account(&store, &cid(2), 100, 0).await;
    for n in 1..=6u32 {
        let at = T0 + i64::from(n) * 1_000;
        let v = created(&store, send(u64::from(n), &c, &phone(n), at)).await;
        if n % 2 == 0 {
            store
                .verification_apply(&c, v.id, 0, ValidationAction::Complete, at)
                .await
                .unwrap();
        }
    }
    created(&store, send(99, &cid(2), &phone(1), T0)).await;
    let ids = |vs: Vec<Verification>| vs.iter().map(|v| v.id.get()).collect::<Vec<_>>();
    let all = VerificationFilter::default();
    assert_eq!(
        ids(store.verification_list(&c, &all, 10, 0).await.unwrap()),
        [6, 5, 4, 3, 2, 1]
    );
    assert_eq!(
        ids(store.verification_list(&c, &all, 2, 1).await.unwrap()),
        [5, 4]
    );
    let completed = VerificationFilter {
        state: Some(VerificationState::Completed),
        ..Default::default()
    };
    assert_eq!(
        ids(store
            .verification_list(&c, &completed, 10, 0)
            .await
            .unwrap()),
        [6, 4, 2]
    );
    let window = VerificationFilter {
        since: Some(T0 + 2_000),
        until: Some(T0 + 5_000),
        ..Default::default()
    };
    assert_eq!(
        ids(store.verification_list(&c, &window, 10, 0).await.unwrap()),
        [4, 3, 2]
    );
    let number = VerificationFilter {
        number: Some("00003".into()),
        ..Default::default()
    };
    assert_eq!(
        ids(store.verification_list(&c, &number, 10, 0).await.unwrap()),
        [3]
    );
    // A pattern character is matched as itself, not as a wildcard.
    let pattern = VerificationFilter {
        number: Some("%".into()),
        ..Default::default()
    };
    assert!(
        store
            .verification_list(&c, &pattern, 10, 0)
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn daily_stats_cover_every_day_in_range_including_empty_ones() {
    let (_dir, store) = fresh().await;
    let c = cid(1);
    account(&store, &c, 100, 0).await;
    let day0 = T0 - T0.rem_euclid(DAY);
    // Day 0: three sends, one completed; day 1: none; day 2: one, completed
    // the day after (counted on its send's day).
    let sends = [
        (1u32, day0 + 10, true),
        (2, day0 + 20, false),
        (3, day0 + DAY - 1, false),
        (4, day0 + 2 * DAY + 5, true),
    ];
    for (n, at, complete) in sends {
        let v = created(&store, send(u64::from(n), &c, &phone(n), at)).await;
        if complete {
            store
                .verification_apply(&c, v.id, 0, ValidationAction::Complete, at + DAY)
                .await
                .unwrap();
        }
    }
    let stats = store
        .daily_stats(&c, day0 + 5, day0 + 3 * DAY)
        .await
        .unwrap();
    let rows: Vec<_> = stats
        .iter()
        .map(|d| (d.day_start, d.sends, d.completed))
        .collect();
    assert_eq!(
        rows,
        [(day0, 3, 1), (day0 + DAY, 0, 0), (day0 + 2 * DAY, 1, 1)]
    );
    // `since` inside day 0 leaves out sends before it.
    let later = store.daily_stats(&c, day0 + 15, day0 + DAY).await.unwrap();
    assert_eq!((later.len(), later[0].sends), (1, 2));
    assert!(store.daily_stats(&c, day0, day0).await.unwrap().is_empty());
    assert_eq!(
        store.daily_stats(&cid(2), day0, day0 + DAY).await.unwrap()[0].sends,
        0
    );
    // An absurd range is cut to its latest ten years instead of exhausting memory.
    let huge = store
        .daily_stats(&c, i64::MIN / 2, day0 + 3 * DAY)
        .await
        .unwrap();
    assert_eq!(huge.len(), 3660);
    assert_eq!(huge.last().unwrap().day_start, day0 + 2 * DAY);
    // The ends of the timeline neither panic nor overflow.
    let first = store.daily_stats(&c, i64::MIN, i64::MIN + 1).await.unwrap();
    assert_eq!((first.len(), first[0].sends), (1, 0));
    let last = store.daily_stats(&c, i64::MAX - 1, i64::MAX).await.unwrap();
    assert_eq!((last.len(), last[0].sends), (1, 0));
}

// ---- the outbox ----------------------------------------------------------------------

/// An account with `n` queued messages (verification ids 1..=n), created at T0.
async fn queued(store: &SqliteStore, n: u32) -> CustomerId {
    let c = cid(1);
    account(store, &c, i64::from(n), 0).await;
    for i in 1..=n {
        created(store, send(u64::from(i), &c, &phone(i), T0)).await;
    }
    c
}

#[tokio::test]
async fn a_claim_leases_due_messages_to_one_worker_until_the_lease_expires() {
    let (_dir, store) = fresh().await;
    queued(&store, 3).await;
    assert!(
        store
            .outbox_claim("w1", 10, 30_000, T0 - 1)
            .await
            .unwrap()
            .is_empty(),
        "not due yet"
    );
    let first = store.outbox_claim("w1", 2, 30_000, T0).await.unwrap();
    let ids: Vec<u64> = first.iter().map(|m| m.verification_id.get()).collect();
    assert_eq!(ids, [1, 2]);
    assert!(first.iter().all(|m| m.attempts == 1 && m.text.is_some()));
    let depth = store.outbox_depth().await.unwrap();
    assert_eq!((depth.queued, depth.in_flight), (1, 2));

    let second = store.outbox_claim("w2", 10, 30_000, T0 + 1).await.unwrap();
    assert_eq!(second.len(), 1);
    assert_eq!(second[0].verification_id.get(), 3);
    assert!(
        store
            .outbox_claim("w2", 10, 30_000, T0 + 29_999)
            .await
            .unwrap()
            .is_empty()
    );

    // w1 died: its leases expire and w2 takes them, on a second attempt.
    let taken = store
        .outbox_claim("w2", 10, 30_000, T0 + 30_000)
        .await
        .unwrap();
    assert_eq!(taken.len(), 2);
    assert!(taken.iter().all(|m| m.attempts == 2));
    // w1's late results are ignored.
    let info = SentInfo {
        channel: "inbox".into(),
        gateway_id: Some("g1".into()),
    };
    assert!(
        !store
            .outbox_sent(taken[0].id, "w1", &info, T0 + 30_001)
            .await
            .unwrap()
    );
    assert!(
        !store
            .outbox_retry(taken[0].id, "w1", T0 + 40_000, "x", T0 + 30_001)
            .await
            .unwrap()
    );
    assert!(
        !store
            .outbox_failed(taken[0].id, "w1", "x", T0 + 30_001)
            .await
            .unwrap()
    );
    assert!(
        store
            .outbox_sent(taken[0].id, "w2", &info, T0 + 30_001)
            .await
            .unwrap()
    );
}

#[tokio::test]
async fn concurrent_claims_from_two_stores_never_share_a_message() {
    let dir = TempDir::new();
    let a = open(&dir.db()).await;
    let b = open(&dir.db()).await;
    queued(&a, 60).await;
    let tasks: Vec<_> = (0..12)
        .map(|w| {
            let s = if w % 2 == 0 { a.clone() } else { b.clone() };
            tokio::spawn(async move {
                // Bounded: 60 messages take at most 60 non-empty claims,
                // unless some are handed out twice.
                let mut mine = Vec::new();
                for _ in 0..=60 {
                    let got = s
                        .outbox_claim(&format!("w{w}"), 3, 30_000, T0)
                        .await
                        .unwrap();
                    if got.is_empty() {
                        break;
                    }
                    mine.extend(got.into_iter().map(|m| m.id));
                }
                mine
            })
        })
        .collect();
    let mut all: Vec<i64> = futures::future::try_join_all(tasks)
        .await
        .unwrap()
        .into_iter()
        .flatten()
        .collect();
    assert_eq!(all.len(), 60);
    all.sort_unstable();
    all.dedup();
    assert_eq!(all.len(), 60, "a message was leased twice");
}

#[tokio::test]
async fn a_sent_message_loses_its_text_and_receipts_update_its_verification() {
    let (_dir, store) = fresh().await;
    let c = queued(&store, 1).await;
    let msg = store
        .outbox_claim("w", 1, 30_000, T0)
        .await
        .unwrap()
        .remove(0);
    let info = SentInfo {
        channel: "smpp-a".into(),
        gateway_id: Some("gw-77".into()),
    };
    assert!(
        store
            .outbox_sent(msg.id, "w", &info, T0 + 10)
            .await
            .unwrap()
    );
    assert!(
        !store
            .outbox_sent(msg.id, "w", &info, T0 + 11)
            .await
            .unwrap(),
        "recorded twice"
    );
    let row = store
        .outbox_for_verification(vid(1))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(row.text, None);
    assert_eq!(row.status, DeliveryStatus::Sent);
    assert_eq!(
        (row.channel.as_deref(), row.gateway_id.as_deref()),
        (Some("smpp-a"), Some("gw-77"))
    );
    let v = store.verification_get(&c, vid(1)).await.unwrap().unwrap();
    assert_eq!(v.delivery, DeliveryStatus::Sent);
    assert_eq!(v.channel.as_deref(), Some("smpp-a"));
    // Sent messages are never claimed again.
    assert!(
        store
            .outbox_claim("w", 10, 30_000, T0 + 100_000)
            .await
            .unwrap()
            .is_empty()
    );

    assert!(
        !store
            .outbox_receipt("smpp-b", "gw-77", DeliveryStatus::Delivered, "", T0)
            .await
            .unwrap()
    );
    assert!(
        !store
            .outbox_receipt("smpp-a", "gw-78", DeliveryStatus::Delivered, "", T0)
            .await
            .unwrap()
    );
    assert!(
        store
            .outbox_receipt(
                "smpp-a",
                "gw-77",
                DeliveryStatus::Delivered,
                "DELIVRD",
                T0 + 20
            )
            .await
            .unwrap()
    );
    let v = store.verification_get(&c, vid(1)).await.unwrap().unwrap();
    assert_eq!(v.delivery, DeliveryStatus::Delivered);
    assert_eq!(v.delivery_detail.as_deref(), Some("DELIVRD"));
    assert_eq!(v.state, VerificationState::Pending);
    assert_eq!(
        store
            .outbox_for_verification(vid(1))
            .await
            .unwrap()
            .unwrap()
            .status,
        DeliveryStatus::Delivered
    );
}

#[tokio::test]
async fn a_retry_releases_the_lease_until_the_next_attempt_is_due() {
    let (_dir, store) = fresh().await;
    let c = queued(&store, 1).await;
    let msg = store
        .outbox_claim("w", 1, 30_000, T0)
        .await
        .unwrap()
        .remove(0);
    assert!(
        store
            .outbox_retry(msg.id, "w", T0 + 2_000, "smpp-a: timeout", T0 + 5)
            .await
            .unwrap()
    );
    let depth = store.outbox_depth().await.unwrap();
    assert_eq!((depth.queued, depth.in_flight), (1, 0));
    assert!(
        store
            .outbox_claim("w", 1, 30_000, T0 + 1_999)
            .await
            .unwrap()
            .is_empty()
    );
    let again = store
        .outbox_claim("w2", 1, 30_000, T0 + 2_000)
        .await
        .unwrap()
        .remove(0);
    assert_eq!(again.attempts, 2);
    assert_eq!(again.last_error.as_deref(), Some("smpp-a: timeout"));
    assert_eq!(again.text, msg.text);
    let v = store.verification_get(&c, vid(1)).await.unwrap().unwrap();
    assert_eq!(v.delivery_detail.as_deref(), Some("smpp-a: timeout"));
    assert_eq!(v.delivery, DeliveryStatus::Queued);
}

#[tokio::test]
async fn a_failed_message_fails_its_verification_and_refunds_it_once() {
    let (_dir, store) = fresh().await;
    let c = cid(1);
    account(&store, &c, 3, 1).await;
    let mut req = send(1, &c, &phone(1), T0);
    req.price = 2;
    created(&store, req).await;
    assert_eq!(balance(&store, &c).await, (2, 0));
    let msg = store
        .outbox_claim("w", 1, 30_000, T0)
        .await
        .unwrap()
        .remove(0);
    let long_error = "x".repeat(10_000);
    assert!(
        store
            .outbox_failed(msg.id, "w", &long_error, T0 + 1)
            .await
            .unwrap()
    );
    assert!(
        !store
            .outbox_failed(msg.id, "w", "again", T0 + 2)
            .await
            .unwrap()
    );
    assert_eq!(
        balance(&store, &c).await,
        (3, 1),
        "refunded to where it came from"
    );
    let v = store.verification_get(&c, vid(1)).await.unwrap().unwrap();
    assert_eq!(v.state, VerificationState::Failed);
    assert_eq!(v.delivery, DeliveryStatus::Failed);
    assert_eq!((v.cost, v.cost_test), (0, 0));
    let row = store
        .outbox_for_verification(vid(1))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(row.text, None, "the code is erased");
    assert!(row.last_error.unwrap().len() <= 500, "errors are clipped");
    assert_eq!(store.outbox_depth().await.unwrap().failed, 1);
    // A failed verification is no longer pending: a resend creates one.
    created(&store, send(2, &c, &phone(1), T0 + 3)).await;
    // The completion of a failed verification does not apply.
    assert!(
        !store
            .verification_apply(&c, vid(1), 0, ValidationAction::Complete, T0 + 4)
            .await
            .unwrap()
    );
}

#[tokio::test]
async fn an_undeliverable_receipt_refunds_a_pending_verification_once_but_not_a_completed_one() {
    let (_dir, store) = fresh().await;
    let c = queued(&store, 2).await;
    store.account_add_credits(&c, 10).await.unwrap();
    let msgs = store.outbox_claim("w", 2, 30_000, T0).await.unwrap();
    for (m, gw) in msgs.iter().zip(["g1", "g2"]) {
        let info = SentInfo {
            channel: "http".into(),
            gateway_id: Some(gw.into()),
        };
        assert!(store.outbox_sent(m.id, "w", &info, T0 + 1).await.unwrap());
    }
    assert_eq!(balance(&store, &c).await, (10, 0));
    // Verification 2 completed: its code evidently arrived.
    assert!(
        store
            .verification_apply(&c, vid(2), 0, ValidationAction::Complete, T0 + 2)
            .await
            .unwrap()
    );
    for _ in 0..2 {
        for gw in ["g1", "g2"] {
            assert!(
                store
                    .outbox_receipt("http", gw, DeliveryStatus::Undeliverable, "UNDELIV", T0 + 3)
                    .await
                    .unwrap()
            );
        }
    }
    assert_eq!(
        balance(&store, &c).await,
        (11, 0),
        "only the pending one, once"
    );
    let one = store.verification_get(&c, vid(1)).await.unwrap().unwrap();
    assert_eq!(
        (one.state, one.delivery),
        (VerificationState::Failed, DeliveryStatus::Undeliverable)
    );
    let two = store.verification_get(&c, vid(2)).await.unwrap().unwrap();
    assert_eq!((two.state, two.cost), (VerificationState::Completed, 1));
    assert_eq!(two.delivery, DeliveryStatus::Undeliverable);
    // Undeliverable is a delivery outcome, not a message the outbox gave up on.
    assert_eq!(store.outbox_depth().await.unwrap().failed, 0);
}

#[tokio::test]
async fn channel_stats_count_outcomes_per_channel() {
    let (_dir, store) = fresh().await;
    let c = queued(&store, 4).await;
    let msgs = store.outbox_claim("w", 4, 30_000, T0).await.unwrap();
    let sent = |gw: &str| SentInfo {
        channel: "smpp".into(),
        gateway_id: Some(gw.into()),
    };
    store
        .outbox_sent(msgs[0].id, "w", &sent("a"), T0)
        .await
        .unwrap();
    store
        .outbox_sent(msgs[1].id, "w", &sent("b"), T0)
        .await
        .unwrap();
    store
        .outbox_receipt("smpp", "b", DeliveryStatus::Rejected, "REJECTD", T0)
        .await
        .unwrap();
    store
        .outbox_failed(msgs[2].id, "w", "permanent", T0)
        .await
        .unwrap();
    // msgs[3] is still in flight: attempted, neither outcome yet.
    let stats = store.channel_stats(&c, T0, T0 + 1).await.unwrap();
    let rows: Vec<_> = stats
        .iter()
        .map(|s| (s.channel.as_str(), s.attempted, s.succeeded, s.failed))
        .collect();
    assert_eq!(rows, [("", 2, 0, 1), ("smpp", 2, 1, 1)]);
    assert!(
        store
            .channel_stats(&c, T0 + 1, T0 + 2)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        store
            .channel_stats(&cid(2), T0, T0 + 1)
            .await
            .unwrap()
            .is_empty()
    );
}

// ---- the inbox channel -------------------------------------------------------------

#[tokio::test]
async fn the_inbox_lists_newest_first_filtered_by_account_and_number() {
    let (_dir, store) = fresh().await;
    let entry = |c: Option<u64>, to: &str, at: i64| InboxEntry {
        customer_id: c.map(cid),
        destination: to.into(),
        text: format!("code at {at}"),
        verification_id: Some(vid(u64::try_from(at - T0 + 1).unwrap())),
        created_at: at,
    };
    let all = [
        entry(Some(1), "919876500001", T0),
        entry(Some(1), "919876500002", T0 + 1),
        entry(Some(2), "919876500001", T0 + 2),
        entry(None, "919876500001", T0 + 3),
    ];
    for e in &all {
        store.inbox_put(e).await.unwrap();
    }
    assert_eq!(
        store.inbox_list(None, None, 10).await.unwrap(),
        [
            all[3].clone(),
            all[2].clone(),
            all[1].clone(),
            all[0].clone()
        ]
    );
    assert_eq!(
        store.inbox_list(None, None, 1).await.unwrap(),
        [all[3].clone()]
    );
    assert_eq!(
        store.inbox_list(Some(&cid(1)), None, 10).await.unwrap(),
        [all[1].clone(), all[0].clone()]
    );
    assert_eq!(
        store
            .inbox_list(Some(&cid(1)), Some("919876500001"), 10)
            .await
            .unwrap(),
        [all[0].clone()]
    );
    assert_eq!(
        store
            .inbox_list(None, Some("919876500001"), 10)
            .await
            .unwrap(),
        [all[3].clone(), all[2].clone(), all[0].clone()]
    );
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
    let dir = TempDir::new();
    let store = open(&dir.db()).await;
    let c = cid(1);
    account(&store, &c, 150, 50).await;
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
    let dir = TempDir::new();
    let store = open(&dir.db()).await;
    let c = cid(1);
    account(&store, &c, 10, 0).await;
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
        // Charges, then collides on the id: its charge must be undone.
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

    // Two sends charged; the colliding one's charge was rolled back.
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
        store
            .verification_get(&c, vid(42))
            .await
            .unwrap()
            .unwrap()
            .destination,
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
        let dir = TempDir::new();
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
    let dir = TempDir::new();
    let store = open(&dir.db()).await;
    let c = cid(1);
    account(&store, &c, 5, 0).await;
    let lock = WriteLock::take(&dir.db()).await;
    let s = store.clone();
    let plug = tokio::spawn(async move { s.account_add_credits(&cid(1), 0).await });
    settle().await;
    let s = store.clone();
    let req = send(7, &c, &phone(7), T0);
    let abandoned = tokio::spawn(async move { s.verification_create(req).await });
    settle().await;
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
