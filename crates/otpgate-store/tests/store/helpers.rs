//! Records the tests make and read: ids, numbers, accounts, sends.

use std::sync::Arc;

use otpgate_core::{CustomerId, PhoneNumber, VerificationId};
use otpgate_store::{
    CreateOutcome, NewAccount, NewVerification, OutboxMessage, SentInfo, Store, ValidationAction,
    Verification,
};
use tokio::sync::Barrier;

use crate::fixture::Node;

/// What the helpers make records through: a concrete store, or a test
/// database's [`Node`](crate::fixture::Node).
pub trait AsStore {
    fn as_store(&self) -> &dyn Store;
}

impl<S: Store> AsStore for S {
    fn as_store(&self) -> &dyn Store {
        self
    }
}

pub const T0: i64 = 1_764_100_000_000;
pub const DAY: i64 = 86_400_000;

/// The start of `T0`'s UTC day.
pub const DAY0: i64 = T0 - T0.rem_euclid(DAY);

/// Account 1's verifications in a database an earlier build made before the
/// daily counts, as (id, created at, state): two on `DAY0`, one of them
/// completed, and one completed the day after.
pub const BEFORE_DAILY_COUNTS: [(i64, i64, &str); 3] = [
    (1, DAY0 + 1, "completed"),
    (2, DAY0 + 2, "pending"),
    (3, DAY0 + DAY + 3, "completed"),
];

/// Asserts that account 1's daily counts came back from the rows of
/// [`BEFORE_DAILY_COUNTS`], and that those rows are all still there.
pub async fn assert_backfilled_daily_counts(store: &impl AsStore) {
    let stats = store
        .as_store()
        .daily_stats(&cid(1), DAY0, DAY0 + 2 * DAY)
        .await
        .unwrap();
    let counts: Vec<_> = stats.iter().map(|d| (d.sends, d.completed)).collect();
    assert_eq!(counts, [(2, 1), (1, 1)]);
    for (id, _, _) in BEFORE_DAILY_COUNTS {
        assert!(has_verification(store, &cid(1), vid(id.try_into().unwrap())).await);
    }
}

pub fn cid(n: u64) -> CustomerId {
    CustomerId::parse(&format!("C-{n:015X}")).unwrap()
}

pub fn vid(n: u64) -> VerificationId {
    VerificationId::new(n).unwrap()
}

/// An Indian mobile number; `n` picks the last digits.
pub fn phone(n: u32) -> PhoneNumber {
    PhoneNumber::parse("91", &format!("98765{n:05}")).unwrap()
}

/// Creates account `id` (no e-mail) with these balances, at `T0`.
pub async fn account(store: &impl AsStore, id: &CustomerId, credits: i64, test_credits: i64) {
    store
        .as_store()
        .account_create(NewAccount {
            customer_id: id.clone(),
            password_hash: "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA".into(),
            email: None,
            country: Some("IN".into()),
            credits,
            test_credits,
            settings: Default::default(),
            created_at: T0,
        })
        .await
        .unwrap();
}

/// Limits no test reaches unless it lowers one, and the plain send that
/// [`send`] builds on.
pub use otpgate_store::testkit::{plain_send, roomy_limits};

/// Send `id` (price 1, valid 60 s, five attempts) from `customer` to `to`.
pub fn send(id: u64, customer: &CustomerId, to: &PhoneNumber, now: i64) -> NewVerification {
    NewVerification {
        prefix: otpgate_core::fraud::prefix_of(&to.e164_digits(), to.country_code(), 4),
        ..plain_send(vid(id), customer, to, &format!("Your code is {id:04}"), now)
    }
}

/// Sends `req`, which must be created.
pub async fn created(store: &impl AsStore, req: NewVerification) -> Verification {
    match store.as_store().verification_create(req).await.unwrap() {
        CreateOutcome::Created(v) => v,
        other => panic!("expected Created, got {other:?}"),
    }
}

/// Sends `req`, which a rate limit must refuse (800): its retry-after, in
/// seconds.
pub async fn rate_limited(store: &impl AsStore, req: NewVerification) -> u64 {
    match store.as_store().verification_create(req).await.unwrap() {
        CreateOutcome::RateLimited { retry_after_secs } => retry_after_secs,
        other => panic!("expected 800, got {other:?}"),
    }
}

/// Verification `id` of `customer`, which must exist.
pub async fn verification(
    store: &impl AsStore,
    customer: &CustomerId,
    id: VerificationId,
) -> Verification {
    store
        .as_store()
        .verification_get(customer, id)
        .await
        .unwrap()
        .unwrap_or_else(|| panic!("{customer:?} has no verification {}", id.get()))
}

/// Whether `customer` can read a verification `id`.
pub async fn has_verification(
    store: &impl AsStore,
    customer: &CustomerId,
    id: VerificationId,
) -> bool {
    store
        .as_store()
        .verification_get(customer, id)
        .await
        .unwrap()
        .is_some()
}

/// Runs `task(node, i)` for every `i` in `0..n`, task `i` on node
/// `i % nodes.len()`, each in its own tokio task and all released together
/// by one barrier, so the races between nodes are real. Their results, in
/// the order of `i`.
pub async fn at_once<T, F, Fut>(nodes: &[Node], n: usize, task: F) -> Vec<T>
where
    F: Fn(Node, usize) -> Fut,
    Fut: Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    let barrier = Arc::new(Barrier::new(n));
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let (barrier, work) = (barrier.clone(), task(nodes[i % nodes.len()].clone(), i));
            tokio::spawn(async move {
                barrier.wait().await;
                work.await
            })
        })
        .collect();
    futures::future::try_join_all(tasks).await.unwrap()
}

/// Completes `customer`'s verification `id`, whose caller read `wrong`
/// wrong attempts, at `at`; whether the write applied.
pub async fn completes(
    store: &impl AsStore,
    customer: &CustomerId,
    id: VerificationId,
    wrong: u32,
    at: i64,
) -> bool {
    store
        .as_store()
        .verification_apply(customer, id, wrong, ValidationAction::Complete, at)
        .await
        .unwrap()
}

/// Paid and test credits of `id`.
pub async fn balance(store: &impl AsStore, id: &CustomerId) -> (i64, i64) {
    let a = store.as_store().account_get(id).await.unwrap().unwrap();
    (a.credits, a.test_credits)
}

/// Account 1 with `n` queued messages (verification ids 1..=n, each to its
/// own number), created at `T0`, and exactly the credits they cost.
pub async fn queued(store: &impl AsStore, n: u32) -> CustomerId {
    let c = cid(1);
    account(store, &c, i64::from(n), 0).await;
    for i in 1..=n {
        created(store, send(u64::from(i), &c, &phone(i), T0)).await;
    }
    c
}

/// How long the tests' outbox claims lease their messages.
pub const LEASE: i64 = 30_000;

/// What a worker records of a message `channel` took, under the gateway's
/// id `gateway`.
pub fn sent_info(channel: &str, gateway: &str) -> SentInfo {
    SentInfo {
        channel: channel.into(),
        gateway_id: Some(gateway.into()),
    }
}

/// `worker` claims up to `max` messages due at `now`, for [`LEASE`].
pub async fn claim(store: &impl AsStore, worker: &str, max: u32, now: i64) -> Vec<OutboxMessage> {
    store
        .as_store()
        .outbox_claim(worker, max, LEASE, now)
        .await
        .unwrap()
}

/// The outbox row of verification `id`, which must have one.
pub async fn outbox_row(store: &impl AsStore, id: u64) -> OutboxMessage {
    store
        .as_store()
        .outbox_for_verification(vid(id))
        .await
        .unwrap()
        .unwrap_or_else(|| panic!("verification {id} has no outbox row"))
}
