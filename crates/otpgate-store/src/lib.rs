//! otpgate's storage: the resource traits every backend implements
//! ([`AccountStore`], [`VerificationStore`], [`OutboxStore`], [`InboxStore`],
//! [`FraudStore`], [`EventStore`], [`SystemStore`]), [`Store`], which is all
//! of them, and the backends themselves (`sqlite` for one machine,
//! `postgres` for many nodes). A part of otpgate that needs only some
//! resources takes only their traits (delivery: the outbox and the inbox).
//!
//! Every guarantee of the contract that involves more than one request —
//! exactly-once completion, balances that never go negative, rate limits, the
//! outbox — is enforced inside the store, in one transaction per operation,
//! never in a node's memory. That is what lets several nodes share one
//! PostgreSQL and still give the answers one node would.
#![forbid(unsafe_code)]

mod model;
mod observed;
mod open;
pub mod postgres;
mod records;
mod shared;
pub mod sqlite;
#[cfg(feature = "testkit")]
pub mod testkit;

pub use model::*;
pub use observed::{Observed, Observer};
pub use open::{OpenError, open};

use async_trait::async_trait;
use otpgate_core::fraud::BlockScope;
use otpgate_core::{CustomerId, DeliveryStatus, VerificationId};

/// Errors any backend can return. Input errors never get here: the domain
/// types the trait takes were parsed and checked at the edge.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database could not be reached or timed out; nothing was written.
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    /// A row the operation needs does not exist (e.g. an unknown customerId
    /// for an admin operation).
    #[error("not found")]
    NotFound,
    /// A unique key collided (e.g. a generated id); the caller may retry with
    /// a fresh value.
    #[error("conflict: {0}")]
    Conflict(String),
    /// The database's schema is newer than this build knows.
    #[error("database schema version {found} is newer than this build's {known}")]
    SchemaTooNew { found: i64, known: i64 },
    /// Anything else: a bug or corrupted data. Logged with its chain, never
    /// shown to clients.
    #[error("storage error: {0}")]
    Internal(String),
}

pub type StoreResult<T> = Result<T, StoreError>;

/// Declares the resource traits from one list of signatures, and with them
/// [`Observed`]'s implementation of each, which times every operation for
/// an [`Observer`] (so a new operation is timed without a line more). An
/// operation marked `=> hook` also calls the observer's `hook` with its
/// result and arguments. Methods that are not `async` (and not timed) stand
/// in a leading `sync { … }` block.
macro_rules! resource_traits {
    ($(
        $(#[$tmeta:meta])*
        pub trait $trait:ident {
            $(sync { $($(#[$smeta:meta])* fn $sname:ident(&self) -> $sret:ty;)* })?
            $(
                $(#[$meta:meta])*
                async fn $name:ident(&self $(, $arg:ident: $ty:ty)* $(,)?) -> $ret:ty
                    $(=> $hook:ident)?;
            )*
        }
    )*) => {$(
        $(#[$tmeta])*
        #[async_trait]
        pub trait $trait: Send + Sync + 'static {
            $($($(#[$smeta])* fn $sname(&self) -> $sret;)*)?
            $($(#[$meta])* async fn $name(&self $(, $arg: $ty)*) -> $ret;)*
        }

        #[async_trait]
        impl<O: Observer> $trait for Observed<O> {
            $($(fn $sname(&self) -> $sret {
                self.inner.$sname()
            })*)?
            $(async fn $name(&self $(, $arg: $ty)*) -> $ret {
                resource_traits!(@timed self, $name, [$($hook)?], ($($arg),*))
            })*
        }
    )*};
    (@timed $self:ident, $name:ident, [], ($($arg:ident),*)) => {{
        let start = std::time::Instant::now();
        let r = $self.inner.$name($($arg),*).await;
        $self.observer.operation(stringify!($name), start.elapsed(), r.is_ok());
        r
    }};
    (@timed $self:ident, $name:ident, [$hook:ident], ($($arg:ident),*)) => {{
        let start = std::time::Instant::now();
        let r = $self.inner.$name($($arg),*).await;
        $self.observer.operation(stringify!($name), start.elapsed(), r.is_ok());
        $self.observer.$hook(&r, $($arg),*);
        r
    }};
}

// Timestamps are milliseconds since the Unix epoch, passed in by the caller
// (who owns the clock), so tests can move time. The signatures stand on
// one or two lines each: this list is their one written copy.
resource_traits! {
    /// The store as a whole: its backend, liveness, server-wide secrets,
    /// retention and scrubbing.
    pub trait SystemStore {
        sync {
            /// Which backend this is (`sqlite`, `postgres`), for logs and `/readyz`.
            fn backend(&self) -> &'static str;
        }
        /// `/readyz`: the database answers a trivial query.
        async fn ping(&self) -> StoreResult<()>;
        /// Returns the secret stored under `name`, storing `candidate` first if
        /// there is none yet. Every node that calls this with its own random
        /// candidate ends up with the same value.
        async fn secret_get_or_init(&self, name: &str, candidate: &[u8]) -> StoreResult<Vec<u8>>;
        /// Deletes at most `max` verifications created before `cutoff` (their
        /// outbox rows with them) and at most `max` inbox rows created before
        /// it; the daily aggregates stay. Safe to run on several nodes at once
        /// (each deletes what it finds; rows another node is deleting are
        /// skipped). Callers repeat while a full batch came back.
        async fn purge_before(&self, cutoff: i64, max: u32) -> StoreResult<Purged>;
        /// Moves what overwritten and deleted rows (delivered messages' texts)
        /// left behind out of the store's files. SQLite: a `TRUNCATE`
        /// checkpoint, after which the WAL is empty (deleted content is zeroed
        /// in the database file by `secure_delete`). Elsewhere a no-op: a
        /// server database's files are its operator's to manage.
        async fn scrub(&self) -> StoreResult<()>;
    }

    /// Accounts: credentials, balances, settings.
    pub trait AccountStore {
        sync {
            /// A number that moves on whenever an account's password, token
            /// epoch, disabled flag, settings or paid credits may have
            /// changed: through this store at once; through another process
            /// or node as soon as the backend hears of it (PostgreSQL: a
            /// notification from the node that changed it; SQLite: the next
            /// write transaction sees another process's commit). An account
            /// read while it had one value may be used again while it still
            /// has it (the server's `account_cache`). It never goes back.
            fn account_changes(&self) -> u64;
        }
        /// Creates an account. [`StoreError::Conflict`] if the id exists.
        async fn account_create(&self, new: NewAccount) -> StoreResult<Account>;
        async fn account_get(&self, id: &CustomerId) -> StoreResult<Option<Account>>;
        /// The account with this e-mail (case-insensitive), for console log-in.
        async fn account_by_email(&self, email: &str) -> StoreResult<Option<Account>>;
        /// Newest first.
        async fn account_list(&self, limit: u32, offset: u32) -> StoreResult<Vec<Account>>;
        /// Adds (or with a negative amount removes, never below zero) paid
        /// credits. [`StoreError::NotFound`] for an unknown account.
        async fn account_add_credits(&self, id: &CustomerId, credits: i64) -> StoreResult<Account>;
        /// Replaces the password hash and bumps `token_epoch`, which revokes
        /// every token issued before.
        async fn account_set_password(&self, id: &CustomerId, password_hash: &str)
            -> StoreResult<Account>;
        /// Bumps `token_epoch` without a password change.
        async fn account_revoke_tokens(&self, id: &CustomerId) -> StoreResult<Account>;
        async fn account_set_disabled(&self, id: &CustomerId, disabled: bool)
            -> StoreResult<Account>;
        async fn account_set_settings(&self, id: &CustomerId, settings: &AccountSettings)
            -> StoreResult<Account>;
    }

    /// Verifications: the send (contract §2, §5), validation (§3), and the
    /// console's log and statistics.
    pub trait VerificationStore {
        /// Contract §2 and §5 in one transaction: refuses with 506 while a
        /// verification to the same destination is pending, applies the rate
        /// limits, charges (test credits first) without going below zero, stores
        /// the verification and queues its message in the outbox. Either all of
        /// that is durable when this returns `Created`, or none of it happened.
        async fn verification_create(&self, req: NewVerification) -> StoreResult<CreateOutcome>;
        /// As [`VerificationStore::verification_create`], with the first
        /// step's message stored already leased to `lease.worker` (attempt 1),
        /// in the same transaction; on `Created` it comes back as that
        /// worker's claim would have returned it. The sending node's worker
        /// delivers it at once, without a claim of its own: one write and one
        /// commit fewer per message. A backend may store the message
        /// unleased and return `None` (its workers then claim it as usual).
        async fn verification_create_leased(&self, req: NewVerification, lease: OutboxLease)
            -> StoreResult<(CreateOutcome, Option<OutboxMessage>)>;
        /// One verification of one account; `None` for an unknown id and for
        /// another account's id alike (505 must not tell them apart).
        async fn verification_get(&self, customer: &CustomerId, id: VerificationId)
            -> StoreResult<Option<Verification>>;
        /// A validation's read, in one: [`VerificationStore::verification_get`],
        /// and with it the wrong codes its account entered for its
        /// destination, over all its verifications created since
        /// `wrong_since`.
        async fn verification_to_validate(&self, customer: &CustomerId, id: VerificationId, wrong_since: i64)
            -> StoreResult<Option<(Verification, u32)>>;
        /// Applies a validation's result if, and only if, the verification is
        /// still pending with exactly `expected_wrong_attempts` wrong attempts.
        /// Returns whether it applied; a `false` means another validation raced
        /// this one, and the caller re-reads and decides again. This conditional
        /// write is what makes completion exactly-once.
        async fn verification_apply(&self,
            customer: &CustomerId, id: VerificationId, expected_wrong_attempts: u32, action: ValidationAction, now: i64)
            -> StoreResult<bool>;
        /// The account's verifications, newest first, for the console's log.
        async fn verification_list(&self,
            customer: &CustomerId, filter: &VerificationFilter, limit: u32, offset: u32)
            -> StoreResult<Vec<Verification>>;
        /// Sends and completions per UTC day, oldest first, for every day that
        /// overlaps `[since, until)` (whole days: the counts are kept per day),
        /// days without sends included as zero rows. Read from the daily
        /// aggregate the store maintains, so days whose verifications retention
        /// has deleted keep their counts.
        async fn daily_stats(&self, customer: &CustomerId, since: i64, until: i64)
            -> StoreResult<Vec<DailyStats>>;
        /// Delivery outcomes per channel over `[since, until)`.
        async fn channel_stats(&self, customer: &CustomerId, since: i64, until: i64)
            -> StoreResult<Vec<ChannelStats>>;
    }

    /// The outbox: messages waiting for a channel, the leases workers hold on
    /// them, their results and delivery receipts.
    pub trait OutboxStore {
        /// Leases up to `max` messages that are queued and due (`next_attempt_at
        /// <= now`), or whose earlier lease expired (its holder died), to
        /// `worker` until `now + lease_ms`. Two workers never hold one message.
        async fn outbox_claim(&self, worker: &str, max: u32, lease_ms: i64, now: i64)
            -> StoreResult<Vec<OutboxMessage>>;
        /// A gateway accepted the message: mark it sent, keep the gateway's
        /// message id, erase the text (it holds the code). Ignored (returns
        /// `false`) if `worker` no longer holds the lease.
        async fn outbox_sent(&self, message_id: i64, worker: &str, sent: &SentInfo, now: i64)
            -> StoreResult<bool>;
        /// As [`OutboxStore::outbox_sent`], for a message that the
        /// development inbox delivers: `entry` is stored in the same
        /// transaction, and only if the sent mark is (one write, and no
        /// second copy of the message should a crash fall between them).
        async fn outbox_sent_to_inbox(&self,
            message_id: i64, worker: &str, sent: &SentInfo, entry: &InboxEntry, now: i64)
            -> StoreResult<bool>;
        /// A transient failure: release the lease and try again at
        /// `next_attempt_at`, recording the error.
        async fn outbox_retry(&self,
            message_id: i64, worker: &str, next_attempt_at: i64, error: &str, now: i64)
            -> StoreResult<bool>;
        /// A permanent failure, or validity ran out: the message is failed, its
        /// text erased, its verification failed (700 on validate) and its charge
        /// refunded, in one transaction.
        async fn outbox_failed(&self, message_id: i64, worker: &str, error: &str, now: i64)
            -> StoreResult<bool>;
        /// A delivery receipt from `channel` for the gateway's `gateway_id`.
        /// Returns when the matched message was accepted (its `created_at`, for
        /// the receipt latency metric), or `None` when no message matched. A
        /// `Delivered` receipt writes the `verification.delivered` event, a
        /// final failure the `verification.failed` one, in the same transaction.
        async fn outbox_receipt(&self,
            channel: &str, gateway_id: &str, status: DeliveryStatus, detail: &str, now: i64)
            -> StoreResult<Option<i64>> => receipt;
        /// Messages by state, for health and metrics.
        async fn outbox_depth(&self) -> StoreResult<OutboxDepth>;
        /// The outbox row of a verification's first step (for tests, the
        /// console and support).
        async fn outbox_for_verification(&self, id: VerificationId)
            -> StoreResult<Option<OutboxMessage>>;
        /// Every outbox row of a verification, one per step of its workflow,
        /// in step order (the console's log shows each attempt and its channel).
        async fn outbox_attempts(&self, id: VerificationId) -> StoreResult<Vec<OutboxMessage>>;
    }

    /// The development `inbox` channel's messages.
    pub trait InboxStore {
        /// Stores a message the development `inbox` channel "delivered".
        async fn inbox_put(&self, msg: &InboxEntry) -> StoreResult<()>;
        /// Newest first; only `customer`'s messages and only those to `to`
        /// (E.164 digits), where given.
        async fn inbox_list(&self, customer: Option<&CustomerId>, to: Option<&str>, limit: u32)
            -> StoreResult<Vec<InboxEntry>>;
        /// Deletes the inbox messages stored before `before_ms` (their
        /// retention is over); returns how many.
        async fn inbox_purge(&self, before_ms: i64) -> StoreResult<u64>;
    }

    /// The fraud defences' records: blocks, the safe list, own numbers, and
    /// the conversion report.
    pub trait FraudStore {
        /// Blocks whose `until` lies after `now`, latest first (at most `limit`).
        async fn fraud_blocks_active(&self, now: i64, limit: u32) -> StoreResult<Vec<FraudBlock>>;
        /// Ends an active block now; counting for the guard restarts from now.
        /// Returns whether a block was active.
        async fn fraud_block_lift(&self, scope: BlockScope, key: &str, now: i64)
            -> StoreResult<bool>;
        async fn safe_list(&self) -> StoreResult<Vec<SafeEntry>>;
        /// Adds (or renotes) an entry of E.164 digits.
        async fn safe_list_add(&self, entry: &str, note: &str, now: i64) -> StoreResult<()>;
        async fn safe_list_remove(&self, entry: &str) -> StoreResult<bool>;
        /// The account's verified own numbers, oldest first.
        async fn own_numbers(&self, customer: &CustomerId) -> StoreResult<Vec<OwnNumber>>;
        /// Marks the own-number verification `id` as proved, if it is the
        /// account's, was sent as one ([`SendKind::OwnNumber`]) and is completed.
        async fn own_number_confirm(&self, customer: &CustomerId, id: VerificationId, now: i64)
            -> StoreResult<bool>;
        async fn own_number_remove(&self, customer: &CustomerId, destination: &str)
            -> StoreResult<bool>;
        /// Sends and completions since `since` by dialing code and by prefix,
        /// the `limit` with the most sends of each.
        async fn conversion_report(&self, since: i64, limit: u32)
            -> StoreResult<(Vec<ConversionRow>, Vec<ConversionRow>)>;
    }

    /// Webhooks and their events.
    ///
    /// An event row is written in the same transaction as the change that
    /// causes it (send, validation, delivery failure, receipt), and only for
    /// an account that has a webhook at that moment, so a crash can lose
    /// neither. Each (verification, kind) has at most one event.
    pub trait EventStore {
        async fn webhook_get(&self, customer: &CustomerId) -> StoreResult<Option<Webhook>>;
        /// Sets (or replaces) the account's endpoint and secret.
        /// [`StoreError::NotFound`] for an unknown account.
        async fn webhook_set(&self, customer: &CustomerId, url: &str, secret: &str, now: i64)
            -> StoreResult<Webhook>;
        /// Removes the account's endpoint; events still queued are dropped when
        /// a worker next picks them up.
        async fn webhook_delete(&self, customer: &CustomerId) -> StoreResult<()>;
        /// Leases up to `max` due pending events to `worker` until
        /// `now + lease_ms`, as [`OutboxStore::outbox_claim`] does for messages.
        async fn events_claim(&self, worker: &str, max: u32, lease_ms: i64, now: i64)
            -> StoreResult<Vec<PendingEvent>>;
        /// Records an attempt's result; ignored (`false`) unless `worker` still
        /// holds the lease.
        async fn event_record(&self, id: i64, worker: &str, attempt: &EventAttempt, now: i64)
            -> StoreResult<bool>;
        /// Writes `verification.expired` for every verification that has a
        /// `verification.created` event, expired since the last sweep (up to
        /// `now`) and was neither completed nor failed. Safe to run on several
        /// nodes at once. Returns how many events it wrote.
        async fn events_sweep_expired(&self, now: i64) -> StoreResult<u64>;
        /// The account's events, newest first (the console's deliveries page).
        async fn event_list(&self, customer: &CustomerId, limit: u32)
            -> StoreResult<Vec<EventRecord>>;
        /// Pending events, for metrics.
        async fn event_backlog(&self) -> StoreResult<EventBacklog>;
    }
}

/// What delivery (`otpgate-sms`) needs: the outbox and the inbox.
pub trait DeliveryStore: OutboxStore + InboxStore {}

impl<T: OutboxStore + InboxStore> DeliveryStore for T {}

/// Every resource: what the server and the tools that own a database take
/// (`Arc<dyn Store>`). Implemented for everything that implements the
/// resources; a part that needs fewer takes `Arc<dyn DeliveryStore>`,
/// `Arc<dyn OutboxStore>` and the like, to which an `Arc<dyn Store>`
/// converts.
pub trait Store:
    SystemStore + AccountStore + VerificationStore + DeliveryStore + FraudStore + EventStore
{
}

impl<T> Store for T where
    T: SystemStore + AccountStore + VerificationStore + DeliveryStore + FraudStore + EventStore
{
}

/// The resource traits, unnamed: `use otpgate_store::prelude::*;` lets code
/// call any operation on a `dyn Store` (a trait's methods are callable only
/// where the trait is in scope).
pub mod prelude {
    pub use crate::{
        AccountStore as _, DeliveryStore, EventStore as _, FraudStore as _, InboxStore as _,
        OutboxStore as _, Store, SystemStore as _, VerificationStore as _,
    };
}
