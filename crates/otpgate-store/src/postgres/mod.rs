//! The PostgreSQL backend, for several otpgate nodes sharing one database.
//!
//! Every cross-request guarantee is a property of a transaction here, never
//! of a node's memory:
//! - a send locks its account row (`select … for update`) before it checks
//!   anything, so sends of one account serialise across all nodes and the
//!   506 check, the rate limits and the charge see each other's results;
//! - a validation writes with a conditional `update … where state =
//!   'pending' and wrong_attempts = $expected`: of racing writers exactly one
//!   changes the row;
//! - workers claim outbox rows with `for update skip locked`, so two nodes
//!   never lease one message, and a lease whose holder died expires.
//!
//! Availability: every connection runs with `statement_timeout`, the pool
//! gives up acquiring after `connect_timeout_ms`, and each operation as a
//! whole has a deadline, so a database that is down or partitioned yields
//! [`StoreError::Unavailable`] promptly instead of a hung request. The pool
//! tests connections before use and reconnects, so the store recovers by
//! itself once the database is back.

#[cfg(all(test, feature = "testkit"))]
mod checks_tests;
mod error;
mod events;
mod migrate;
mod rows;

use crate::shared::{
    self, EventRecordRow, attempts_detail, clip, created_detail, day_of, delivery_detail,
    email_key, event_record, event_record_columns, fill_days, id_i64, stats_days, to_u64,
};
use otpgate_core::fraud;
use otpgate_core::send;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use otpgate_core::{CustomerId, DeliveryStatus, VerificationId, VerificationState};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, PgConnection, Row};

pub use migrate::SCHEMA_VERSION;

use self::error::{db_err, timed_out};
use self::rows::{account_columns, outbox_columns, verification_columns};
use crate::{
    Account, AccountSettings, AccountStore, ChannelStats, ConversionRow, CreateOutcome, DailyStats,
    EventAttempt, EventBacklog, EventKind, EventRecord, EventStore, FraudBlock, FraudStore,
    InboxEntry, InboxStore, NewAccount, NewVerification, OutboxDepth, OutboxMessage, OutboxStore,
    OwnNumber, PendingEvent, Purged, SafeEntry, SendKind, SentInfo, StoreError, StoreResult,
    SystemStore, ValidationAction, Verification, VerificationFilter, VerificationStore, Webhook,
};

/// Connection settings of a [`PostgresStore`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PgOptions {
    /// Connections per node. Keep `nodes × pool_size` under the server's
    /// `max_connections`.
    pub pool_size: u32,
    /// Longest a single statement may run on the server (including waiting
    /// for a row lock) before PostgreSQL cancels it. 0 disables it, and with
    /// it the per-operation deadline.
    pub statement_timeout_ms: u64,
    /// Longest to wait for a connection (opening one included) before an
    /// operation fails as unavailable.
    pub connect_timeout_ms: u64,
}

impl Default for PgOptions {
    fn default() -> Self {
        Self {
            pool_size: 10,
            statement_timeout_ms: 5000,
            connect_timeout_ms: 3000,
        }
    }
}

/// [`Store`] on PostgreSQL. Cheap to clone (it is a pool handle).
#[derive(Clone)]
pub struct PostgresStore {
    pool: PgPool,
    /// The bound on a whole operation: acquiring a connection plus a couple
    /// of statements at their timeout. A backstop for what the server's
    /// timeout cannot catch (a connection that stops answering mid-query).
    op_deadline: Option<Duration>,
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Not the URL: it may hold a password.
        f.debug_struct("PostgresStore")
            .field("pool_size", &self.pool.options().get_max_connections())
            .finish_non_exhaustive()
    }
}

/// Parses a `postgres://` URL without echoing it (it may hold a password).
fn connect_options(url: &str) -> StoreResult<PgConnectOptions> {
    PgConnectOptions::from_str(url)
        .map_err(|_| StoreError::Internal("invalid PostgreSQL URL".into()))
}

/// Applies every pending migration to the database at `url` and returns
/// the schema version it is now at: for `otpgate migrate`, and for deploys
/// that migrate before rolling out nodes. ([`PostgresStore::connect`] also
/// migrates, so calling this first is optional.)
///
/// # Errors
/// [`StoreError::SchemaTooNew`] when the database was migrated by a newer
/// build; [`StoreError::Unavailable`] when it cannot be reached within the
/// default connect timeout.
pub async fn migrate(url: &str) -> StoreResult<i64> {
    let opts = connect_options(url)?;
    let connect_ms = PgOptions::default().connect_timeout_ms;
    let mut conn: PgConnection =
        tokio::time::timeout(Duration::from_millis(connect_ms), opts.connect())
            .await
            .map_err(|_| timed_out(connect_ms))?
            .map_err(db_err)?;
    let result = migrate::run(&mut conn).await;
    let _ = conn.close().await;
    result.map(|_| SCHEMA_VERSION)
}

impl PostgresStore {
    /// Connects, applies pending migrations (one node at a time, under an
    /// advisory lock) and returns the store.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] when the database cannot be reached in
    /// `connect_timeout_ms`; [`StoreError::SchemaTooNew`] when it was
    /// migrated by a newer build; [`StoreError::Internal`] for a malformed
    /// URL.
    pub async fn connect(url: &str, opts: PgOptions) -> StoreResult<Self> {
        let statement_timeout = opts.statement_timeout_ms.to_string();
        // An open transaction holds row locks (an account's, during a send).
        // A node that stops mid-transaction must not keep other nodes'
        // sends of that account waiting for longer than a few statements.
        let idle_tx_timeout = if opts.statement_timeout_ms == 0 {
            "0".to_owned()
        } else {
            opts.statement_timeout_ms.saturating_mul(4).to_string()
        };
        let connect_opts = connect_options(url)?.application_name("otpgate").options([
            ("statement_timeout", statement_timeout.as_str()),
            (
                "idle_in_transaction_session_timeout",
                idle_tx_timeout.as_str(),
            ),
        ]);
        let acquire = Duration::from_millis(opts.connect_timeout_ms.max(1));
        let pool = PgPoolOptions::new()
            .max_connections(opts.pool_size.max(1))
            .min_connections(0)
            .acquire_timeout(acquire)
            // Connections that died with the server are found and replaced
            // before use, which is how the store recovers after an outage.
            .test_before_acquire(true)
            .idle_timeout(Some(Duration::from_secs(300)))
            .connect_lazy_with(connect_opts);
        let op_deadline = (opts.statement_timeout_ms > 0).then(|| {
            Duration::from_millis(
                opts.connect_timeout_ms
                    .saturating_add(opts.statement_timeout_ms.saturating_mul(2))
                    .saturating_add(1000),
            )
        });
        let store = Self { pool, op_deadline };
        let mut conn = tokio::time::timeout(acquire + Duration::from_secs(1), store.pool.acquire())
            .await
            .map_err(|_| timed_out(opts.connect_timeout_ms))?
            .map_err(db_err)?;
        let before = migrate::run(&mut conn).await?;
        drop(conn);
        if before < SCHEMA_VERSION {
            tracing::info!(
                from = before,
                to = SCHEMA_VERSION,
                "database schema migrated"
            );
        }
        Ok(store)
    }

    /// The schema version the database is at.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] when the database cannot be reached.
    pub async fn schema_version(&self) -> StoreResult<i64> {
        self.guarded(async {
            let mut conn = self.pool.acquire().await.map_err(db_err)?;
            migrate::current(&mut conn).await
        })
        .await
    }

    /// Closes the pool's connections (on shutdown).
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// Runs one operation under the whole-operation deadline. If the deadline
    /// fires mid-commit the outcome is unknown to us, as with any network
    /// database; the caller reports 503 and the client's retry finds either
    /// nothing or the pending verification (506).
    async fn guarded<T>(&self, op: impl Future<Output = StoreResult<T>>) -> StoreResult<T> {
        match self.op_deadline {
            Some(d) => tokio::time::timeout(d, op).await.unwrap_or_else(|_| {
                Err(timed_out(u64::try_from(d.as_millis()).unwrap_or(u64::MAX)))
            }),
            None => op.await,
        }
    }

    /// Updates one account and returns it; [`StoreError::NotFound`] when it
    /// does not exist.
    async fn account_update(
        &self,
        query: sqlx::query::Query<'_, sqlx::Postgres, sqlx::postgres::PgArguments>,
    ) -> StoreResult<Account> {
        self.guarded(async {
            let row = query
                .fetch_optional(&self.pool)
                .await
                .map_err(db_err)?
                .ok_or(StoreError::NotFound)?;
            rows::account(&row)
        })
        .await
    }
}

/// The first key of the two-key advisory locks that serialise sends to one
/// prefix ("otpg" in ASCII); the second is the prefix's `hashtext`. Two-key
/// locks never collide with the one-key migration lock.
const PREFIX_LOCK_SPACE: i32 = 0x6f74_7067;

/// What the fraud defences weigh for this send (see `decide_send`), in one
/// statement; and whether the destination is one of the account's verified
/// numbers, and how many own-number sends it made in the last day.
async fn fraud_facts(
    tx: &mut PgConnection,
    req: &NewVerification,
    destination: &str,
) -> StoreResult<send::GuardFacts> {
    let now = req.created_at;
    let row = sqlx::query(
        "with acct as (
             select count(*) filter (where created_at > $3) as hour_n,
                    coalesce(sum(cost) filter (where created_at > $3), 0)::bigint as hour_c,
                    min(created_at) filter (where created_at > $3) as hour_oldest,
                    count(*) as day_n, coalesce(sum(cost), 0)::bigint as day_c,
                    min(created_at) as day_oldest
               from verifications where customer_id = $1 and created_at > $4
         ),
         pb as (select reason, strikes, blocked_until from fraud_blocks
                 where scope = 'prefix' and key = $5),
         cb as (select reason, strikes, blocked_until from fraud_blocks
                 where scope = 'country' and key = $6)
         select acct.*,
                (select count(*) from verifications
                  where destination = $7 and created_at > $4) as dest_n,
                (select min(created_at) from verifications
                  where destination = $7 and created_at > $4) as dest_oldest,
                exists (select 1 from safe_list
                         where left($7, length(entry)) = entry) as safe,
                (select reason from pb) as pb_reason,
                (select strikes from pb) as pb_strikes,
                (select blocked_until from pb) as pb_until,
                (select reason from cb) as cb_reason,
                (select strikes from cb) as cb_strikes,
                (select blocked_until from cb) as cb_until,
                (select count(*) from verifications
                  where prefix = $5
                    and created_at > greatest($8, coalesce((select blocked_until from pb), 0))
                ) as p_sent,
                (select count(*) from verifications
                  where prefix = $5 and state = $10
                    and created_at > greatest($8, coalesce((select blocked_until from pb), 0))
                ) as p_done,
                (select count(*) from verifications
                  where customer_id = $1 and country_code = $2 and prefix is not null
                    and created_at > greatest($9, coalesce((select blocked_until from cb), 0))
                ) as c_sent,
                (select count(*) from verifications
                  where customer_id = $1 and country_code = $2 and state = $10
                    and prefix is not null and created_at > greatest($9, coalesce((select blocked_until from cb), 0))
                ) as c_done,
                exists (select 1 from own_numbers
                         where customer_id = $1 and destination = $7
                           and verified_at is not null) as own_verified,
                (select count(*) from own_numbers
                  where customer_id = $1 and created_at > $4) as own_today
           from acct",
    )
    .bind(req.customer_id.as_str())
    .bind(i32::from(req.destination.country_code()))
    .bind(now - fraud::HOUR_MS)
    .bind(now - fraud::DAY_MS)
    .bind(&req.prefix)
    .bind(shared::block_key(req, fraud::BlockScope::Country))
    .bind(destination)
    .bind(now - req.fraud.prefix.window_ms)
    .bind(now - req.fraud.country.window_ms)
    .bind(VerificationState::Completed.as_str())
    .fetch_one(&mut *tx)
    .await
    .map_err(db_err)?;
    let get = |name: &str| -> StoreResult<i64> { row.try_get::<i64, _>(name).map_err(db_err) };
    let opt = |name: &str| -> StoreResult<Option<i64>> {
        row.try_get::<Option<i64>, _>(name).map_err(db_err)
    };
    let flag = |name: &str| -> StoreResult<bool> { row.try_get::<bool, _>(name).map_err(db_err) };
    let n = |name: &str| -> StoreResult<u32> { shared::count(get(name)?, "count") };
    let block = |reason: &str, strikes: &str, until: &str| -> StoreResult<_> {
        let reason: Option<String> = row.try_get(reason).map_err(db_err)?;
        let strikes: Option<i32> = row.try_get(strikes).map_err(db_err)?;
        Ok(match (reason, strikes, opt(until)?) {
            (Some(reason), Some(strikes), Some(until)) => Some(fraud::BlockRecord {
                until_ms: until,
                strikes: shared::count(i64::from(strikes), "strikes")?,
                reason,
            }),
            _ => None,
        })
    };
    let facts = fraud::SendFacts {
        price: req.price,
        account_hour: fraud::Usage {
            messages: n("hour_n")?,
            credits: get("hour_c")?,
            oldest_ms: opt("hour_oldest")?,
        },
        account_day: fraud::Usage {
            messages: n("day_n")?,
            credits: get("day_c")?,
            oldest_ms: opt("day_oldest")?,
        },
        destination_day: fraud::Usage {
            messages: n("dest_n")?,
            credits: 0,
            oldest_ms: opt("dest_oldest")?,
        },
        safe_listed: flag("safe")?,
        prefix_block: block("pb_reason", "pb_strikes", "pb_until")?,
        country_block: block("cb_reason", "cb_strikes", "cb_until")?,
        prefix: fraud::Conversion {
            sent: n("p_sent")?,
            completed: n("p_done")?,
        },
        country: fraud::Conversion {
            sent: n("c_sent")?,
            completed: n("c_done")?,
        },
    };
    Ok(send::GuardFacts {
        fraud: facts,
        own_verified: flag("own_verified")?,
        own_sent_today: n("own_today")?,
    })
}

/// `u32` counters are stored as `integer`; a value past its range (a
/// configuration of billions of attempts) is as good as unlimited.
fn int(n: u32) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

/// What a send's checks decided, before anything is written.
enum Checked {
    /// Boxed: a refusal is the rare, larger case.
    Refused(Box<CreateOutcome>),
    Charge {
        cost: i64,
        cost_test: i64,
        /// The guard counts this send (see `counted` in `create_checks`).
        counted: bool,
    },
}

fn refused(outcome: CreateOutcome) -> Checked {
    Checked::Refused(Box::new(outcome))
}

/// Everything the 506 check and the rate limits of contract §2 need, in
/// one statement: the round trips of a send are made while it holds its
/// account's lock, so each one costs every other send of the account too.
///
/// Its snapshot must be taken after the lock is granted (it is a statement
/// of its own, after `select … for update`): a statement that waited for
/// the lock itself would see only the locked row afresh, and these
/// subqueries as they were before the send it waited for committed.
///
/// One row: the pending verification's columns (all null when there is
/// none), then
/// - `recent`: sends of the account in the last second (see
///   [`CHECKS_COUNTING_RECENT`]);
/// - `number_block_at`: `created_at` of the `per_number_max`-th newest send
///   to the destination in its window; room opens when it leaves;
/// - `wrong_block_at`: `created_at` of the newest verification at which the
///   wrong codes of it and of those newer reach the budget; the budget frees
///   when it leaves the window. The window function's default frame takes
///   in peers (equal `created_at`), which changes no answer: the send time
///   that first reaches the budget is the same whichever order ties are in.
///   Wrong codes count by their verification's send time, as
///   `wrong_codes_since` counts them.
///
/// Parameters: customer, destination, now, per-number window start,
/// per-number offset, wrong-code window start, wrong-code budget, the
/// pending state's name (bound from the core).
macro_rules! checks_sql {
    ($recent:literal) => {
        concat!(
            "select pending.*, limits.*
               from (select ",
            $recent,
            " as recent,
                       (select created_at from verifications
                         where customer_id = $1 and destination = $2 and created_at > $4
                         order by created_at desc limit 1 offset $5
                       ) as number_block_at,
                       (select created_at
                          from (select created_at,
                                       sum(wrong_attempts) over (order by created_at desc)
                                           as wrong
                                  from verifications
                                 where customer_id = $1 and destination = $2
                                   and created_at > $6 and wrong_attempts > 0
                               ) newest_first
                         where wrong >= $7
                         order by created_at desc limit 1
                       ) as wrong_block_at
                    ) limits
               left join (select ",
            verification_columns!(),
            " from verifications
                           where customer_id = $1 and destination = $2 and state = $8
                             and expires_at > $3 and wrong_attempts < max_attempts
                           order by created_at desc, id desc limit 1
                         ) pending on true"
        )
    };
}

/// The checks for an account without a per-second limit.
const CHECKS: &str = checks_sql!("null::bigint");

/// The checks for an account with a per-second limit, which also count its
/// sends since `$9`. A statement of its own rather than a count that a
/// parameter switches off: PostgreSQL would price the count into that
/// statement's generic plan, find custom plans much cheaper, and so plan it
/// afresh on every send. Without the limit (the default) a send runs
/// [`CHECKS`], whose one cached plan serves every send.
const CHECKS_COUNTING_RECENT: &str = checks_sql!(
    "(select count(*) from verifications
       where customer_id = $1 and created_at > $9 and created_at <= $3)"
);

/// The writes of an accepted send, in one statement. The charge, the
/// outbox row and (for an account with a webhook) the `created` event hang off the inserted verification, so an id that is
/// already taken (`on conflict do nothing`) writes nothing at all; the
/// caller then reports a conflict and drops the transaction, as before.
const WRITE: &str = concat!(
    "with inserted as (
         insert into verifications (
             id, customer_id, country_code, national, destination, flow_type, code_hash,
             otp_length, state, wrong_attempts, max_attempts, created_at, expires_at,
             transaction_id, cost, cost_test, delivery
             , prefix
         ) values ($1, $2, $3, $4, $5, $6, $7, $8, 'pending', 0, $9, $10, $11, $12, $13,
                   $14, $19, $18)
         on conflict (id) do nothing
         returning ",
    verification_columns!(),
    "
     ),
     charged as (
         update accounts a
            set credits = a.credits - (i.cost - i.cost_test),
                test_credits = a.test_credits - i.cost_test
           from inserted i
          where a.customer_id = i.customer_id
     ),
     queued as (
         insert into outbox (
             verification_id, customer_id, step, address, lang, text, status, attempts,
             next_attempt_at, created_at, updated_at
         )
         select id, customer_id, 0, $16, $17, $15, 'queued', 0, created_at, created_at,
                created_at
           from inserted where $20
     ),
     own as (
         insert into own_numbers (verification_id, customer_id, destination, created_at)
         select id, customer_id, $5, created_at from inserted where $21
     ),
     evented as (
         insert into events (
             event_id, customer_id, verification_id, kind, detail, status, attempts,
             next_attempt_at, created_at, updated_at
         )
         select ",
    events::new_event_id!(),
    ", i.customer_id, i.id, 'verification.created', $22, 'pending', 0,
                i.created_at, i.created_at, i.created_at
           from inserted i join webhooks w on w.customer_id = i.customer_id
     ),
     counted as (
         insert into daily_stats (customer_id, day, sends, completed, created_at)
         select customer_id, $23, 1, 0, created_at from inserted
         on conflict (customer_id, day) do update set sends = daily_stats.sends + 1
     )
     select * from inserted"
);

impl PostgresStore {
    /// The checks of contract §2 and §5 in the order the [`Store`] trait
    /// documents, in two statements: the account row's lock, then
    /// `CHECKS`. The order of outcomes is decided here, from one row, so
    /// the SQL need not encode it.
    async fn create_checks(
        tx: &mut PgConnection,
        req: &NewVerification,
        destination: &str,
    ) -> StoreResult<Checked> {
        let now = req.created_at;
        let customer = req.customer_id.as_str();
        let limits = &req.limits;
        if req.price < 0 {
            // The server's price table is validated at start-up; a negative
            // price here is a bug, and would mint credit.
            return Err(StoreError::Internal("negative price".into()));
        }

        // The lock that serialises the sends of one account across nodes: a
        // statement of its own, as `checks_sql!` explains. The row it returns
        // is read afresh once the lock is granted, so the balance and the
        // disabled flag are current.
        let account: Option<(i64, i64, bool)> = sqlx::query_as(
            "select credits, test_credits, disabled from accounts
             where customer_id = $1 for update",
        )
        .bind(customer)
        .fetch_optional(&mut *tx)
        .await
        .map_err(db_err)?;
        let Some((credits, test_credits, false)) = account else {
            return Ok(refused(shared::refusal(
                send::Refused::AccountUnavailable,
                None,
                now,
            )?));
        };

        let number_window = limits.per_number_window_ms.max(0);
        let wrong_window = limits.wrong_code_window_ms.max(0);
        let counting = limits.per_account_per_second.is_some();
        let mut checks = sqlx::query(if counting {
            CHECKS_COUNTING_RECENT
        } else {
            CHECKS
        })
        .bind(customer)
        .bind(destination)
        .bind(now)
        .bind(now.saturating_sub(number_window))
        // A maximum of 0 refuses before this offset matters; `max(1)` only
        // keeps it legal.
        .bind(i64::from(limits.per_number_max.max(1)) - 1)
        .bind(now.saturating_sub(wrong_window))
        .bind(i64::from(limits.wrong_code_max))
        .bind(VerificationState::Pending.as_str());
        if counting {
            checks = checks.bind(now.saturating_sub(1000));
        }
        let row = checks.fetch_one(&mut *tx).await.map_err(db_err)?;

        // The core decides (`otpgate_core::send`); this only reads facts.
        let pending_id: Option<i64> = row.try_get("id").map_err(db_err)?;
        let pending = pending_id
            .is_some()
            .then(|| rows::verification(&row))
            .transpose()?;
        let recent: Option<i64> = if counting {
            row.try_get("recent").map_err(db_err)?
        } else {
            None
        };
        let gate = send::GateFacts {
            account: Some(send::Balance {
                credits,
                test_credits,
            }),
            pending: pending.is_some(),
            recent: recent.map(|n| u32::try_from(n).unwrap_or(u32::MAX)),
            number_block_at: row.try_get("number_block_at").map_err(db_err)?,
            wrong_block_at: row.try_get("wrong_block_at").map_err(db_err)?,
        };
        let terms = shared::terms(req);
        if let Err(r) = send::gate(&terms, &gate, now) {
            return Ok(refused(shared::refusal(r, pending, now)?));
        }

        // The fraud defences: caps, blocks and the conversion guard, read
        // under the account's lock (and the prefix's, below), so concurrent
        // sends on any node cannot overshoot a cap.
        let guard = if req.kind == SendKind::TestNumber {
            send::GuardFacts::default()
        } else {
            // Sends to one prefix from different accounts serialise here, so
            // the prefix guard and the per-number cap hold across accounts
            // too. Always taken after the account's row lock, never before:
            // no two sends can wait on each other in a cycle. A statement of
            // its own, so the facts below are read after it is granted.
            sqlx::query("select pg_advisory_xact_lock($1, hashtext($2))")
                .bind(PREFIX_LOCK_SPACE)
                .bind(&req.prefix)
                .execute(&mut *tx)
                .await
                .map_err(db_err)?;
            fraud_facts(tx, req, destination).await?
        };
        // The balance is the locked row's, so no other send can spend it in
        // between.
        match send::decide(&terms, &gate, &guard, now) {
            Ok(c) => Ok(Checked::Charge {
                cost: c.cost,
                cost_test: c.cost_test,
                counted: c.counted,
            }),
            Err(send::Refused::Block(b)) => {
                sqlx::query(
                    "insert into fraud_blocks (scope, key, reason, strikes, blocked_until,
                                               lifted_at, created_at, updated_at)
                     values ($1, $2, $3, $4, $5, null, $6, $6)
                     on conflict (scope, key) do update
                        set reason = excluded.reason, strikes = excluded.strikes,
                            blocked_until = excluded.blocked_until, lifted_at = null,
                            updated_at = excluded.updated_at",
                )
                .bind(b.scope.as_str())
                .bind(shared::block_key(req, b.scope))
                .bind(&b.reason)
                .bind(int(b.strikes))
                .bind(b.until_ms)
                .bind(now)
                .execute(&mut *tx)
                .await
                .map_err(db_err)?;
                Ok(refused(shared::refusal(
                    send::Refused::Block(b),
                    None,
                    now,
                )?))
            }
            Err(r) => Ok(refused(shared::refusal(r, None, now)?)),
        }
    }

    async fn create_in(
        tx: &mut PgConnection,
        req: &NewVerification,
    ) -> StoreResult<Result<Verification, CreateOutcome>> {
        let destination = req.destination.e164_digits();
        let (cost, cost_test, counted) = match Self::create_checks(tx, req, &destination).await? {
            Checked::Refused(outcome) => return Ok(Err(*outcome)),
            Checked::Charge {
                cost,
                cost_test,
                counted,
            } => (cost, cost_test, counted),
        };
        // The first candidate id not yet taken: a taken one writes nothing
        // (`on conflict do nothing`) and leaves the transaction usable.
        let candidates = std::iter::once((req.id, &req.code_hash))
            .chain(req.spare_ids.iter().map(|(i, h)| (*i, h)));
        let mut stored = None;
        for (id, code_hash) in candidates {
            let row = sqlx::query(WRITE)
                .bind(id_i64(id))
                .bind(req.customer_id.as_str())
                .bind(i32::from(req.destination.country_code()))
                .bind(req.destination.national())
                .bind(&destination)
                .bind(&req.flow_type)
                .bind(&code_hash.0[..])
                .bind(i16::from(req.otp_length))
                .bind(int(req.max_attempts))
                .bind(req.created_at)
                .bind(req.expires_at)
                .bind(&req.transaction_id)
                .bind(cost)
                .bind(cost_test)
                .bind(&req.message_text)
                .bind(&req.address)
                .bind(&req.lang)
                .bind(counted.then_some(&req.prefix))
                .bind(if req.kind == SendKind::TestNumber {
                    "sent"
                } else {
                    "queued"
                })
                // A test number's message never leaves the server: no outbox row.
                .bind(req.kind != SendKind::TestNumber)
                .bind(matches!(req.kind, SendKind::OwnNumber { .. }))
                .bind(created_detail(req))
                .bind(day_of(req.created_at))
                .fetch_optional(&mut *tx)
                .await
                .map_err(db_err)?;
            if let Some(row) = row {
                stored = Some((id, row));
                break;
            }
        }
        let Some((id, row)) = stored else {
            return Err(StoreError::Conflict(
                "every candidate verification id is taken".into(),
            ));
        };
        // A test number's message (and any fallback step) never leaves the
        // server.
        let fallbacks = if req.kind == SendKind::TestNumber {
            &[][..]
        } else {
            &req.fallbacks[..]
        };
        for (i, f) in fallbacks.iter().enumerate() {
            sqlx::query(
                "insert into outbox (
                     verification_id, customer_id, step, flow_type, address, lang, text,
                     status, attempts, next_attempt_at, created_at, updated_at
                 ) values ($1, $2, $3, $4, $5, $6, $7, 'queued', 0, $8, $9, $9)",
            )
            .bind(id_i64(id))
            .bind(req.customer_id.as_str())
            .bind(i32::try_from(i + 1).unwrap_or(i32::MAX))
            .bind(&f.flow_type)
            .bind(&f.address)
            .bind(&req.lang)
            .bind(&f.text)
            .bind(f.due_at)
            .bind(req.created_at)
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
        }
        Ok(Ok(rows::verification(&row)?))
    }
}

#[async_trait]
impl SystemStore for PostgresStore {
    async fn ping(&self) -> StoreResult<()> {
        self.guarded(async {
            sqlx::query("select 1")
                .execute(&self.pool)
                .await
                .map_err(db_err)?;
            Ok(())
        })
        .await
    }

    fn backend(&self) -> &'static str {
        "postgres"
    }

    async fn secret_get_or_init(&self, name: &str, candidate: &[u8]) -> StoreResult<Vec<u8>> {
        self.guarded(async {
            // The first node's candidate wins; everyone reads the winner.
            // created_at is the database's clock: there is no caller clock
            // here, and the value is informational.
            sqlx::query(
                "insert into secrets (name, value, created_at)
                 values ($1, $2, (extract(epoch from clock_timestamp()) * 1000)::bigint)
                 on conflict (name) do nothing",
            )
            .bind(name)
            .bind(candidate)
            .execute(&self.pool)
            .await
            .map_err(db_err)?;
            sqlx::query_scalar("select value from secrets where name = $1")
                .bind(name)
                .fetch_one(&self.pool)
                .await
                .map_err(db_err)
        })
        .await
    }

    async fn purge_before(&self, cutoff: i64, max: u32) -> StoreResult<Purged> {
        self.guarded(async {
            // `skip locked`: another node sweeping at the same moment takes
            // other rows instead of waiting for these. The outbox rows go in
            // the same statement as the verifications they reference (the
            // foreign key is checked at its end), as do own-number records.
            // Their events (webhook deliveries) go with them too.
            let (verifications, outbox, gone_events): (i64, i64, i64) = sqlx::query_as(
                "with doomed as (
                     select id from verifications where created_at < $1
                      order by created_at, id limit $2
                      for update skip locked
                 ),
                 gone_outbox as (
                     delete from outbox o using doomed d where o.verification_id = d.id
                     returning 1
                 ),
                 gone_own as (
                     delete from own_numbers n using doomed d where n.verification_id = d.id
                 ),
                 gone_events as (
                     delete from events e using doomed d where e.verification_id = d.id
                     returning 1
                 ),
                 gone as (
                     delete from verifications v using doomed d where v.id = d.id
                     returning 1
                 )
                 select (select count(*) from gone), (select count(*) from gone_outbox),
                        (select count(*) from gone_events)",
            )
            .bind(cutoff)
            .bind(i64::from(max))
            .fetch_one(&self.pool)
            .await
            .map_err(db_err)?;
            let inbox = sqlx::query(
                "delete from inbox where id in
                     (select id from inbox where created_at < $1
                       order by created_at, id limit $2 for update skip locked)",
            )
            .bind(cutoff)
            .bind(i64::from(max))
            .execute(&self.pool)
            .await
            .map_err(db_err)?
            .rows_affected();
            // Events older than the cutoff whose verification is already
            // gone: an event never outlives retention either.
            let old_events = sqlx::query(
                "delete from events where id in
                     (select id from events where created_at < $1
                       order by created_at, id limit $2 for update skip locked)",
            )
            .bind(cutoff)
            .bind(i64::from(max))
            .execute(&self.pool)
            .await
            .map_err(db_err)?
            .rows_affected();
            Ok(Purged {
                verifications: to_u64(verifications),
                outbox: to_u64(outbox),
                inbox,
                events: to_u64(gone_events) + old_events,
            })
        })
        .await
    }

    async fn scrub(&self) -> StoreResult<()> {
        // A server database's files are its operator's to manage.
        Ok(())
    }
}

#[async_trait]
impl AccountStore for PostgresStore {
    async fn account_create(&self, new: NewAccount) -> StoreResult<Account> {
        self.guarded(async {
            let row = sqlx::query(concat!(
                "insert into accounts (
                    customer_id, password_hash, email, email_key, country, credits,
                    test_credits, token_epoch, disabled, settings, created_at
                 ) values ($1, $2, $3, $4, $5, $6, $7, 0, false, $9::jsonb, $8)
                 returning ",
                account_columns!()
            ))
            .bind(new.customer_id.as_str())
            .bind(&new.password_hash)
            .bind(&new.email)
            .bind(new.email.as_deref().map(email_key))
            .bind(&new.country)
            .bind(new.credits)
            .bind(new.test_credits)
            .bind(new.created_at)
            .bind(crate::shared::settings_json(&new.settings)?)
            .fetch_one(&self.pool)
            .await
            .map_err(|e| match db_err(e) {
                StoreError::Conflict(msg) if msg.contains("email_key") => {
                    StoreError::Conflict("e-mail already in use".into())
                }
                StoreError::Conflict(_) => StoreError::Conflict("customerId already exists".into()),
                other => other,
            })?;
            rows::account(&row)
        })
        .await
    }

    async fn account_get(&self, id: &CustomerId) -> StoreResult<Option<Account>> {
        self.guarded(async {
            let row = sqlx::query(concat!(
                "select ",
                account_columns!(),
                " from accounts where customer_id = $1"
            ))
            .bind(id.as_str())
            .fetch_optional(&self.pool)
            .await
            .map_err(db_err)?;
            row.as_ref().map(rows::account).transpose()
        })
        .await
    }

    async fn account_by_email(&self, email: &str) -> StoreResult<Option<Account>> {
        self.guarded(async {
            let row = sqlx::query(concat!(
                "select ",
                account_columns!(),
                " from accounts where email_key = $1"
            ))
            .bind(email_key(email))
            .fetch_optional(&self.pool)
            .await
            .map_err(db_err)?;
            row.as_ref().map(rows::account).transpose()
        })
        .await
    }

    async fn account_list(&self, limit: u32, offset: u32) -> StoreResult<Vec<Account>> {
        self.guarded(async {
            let rows = sqlx::query(concat!(
                "select ",
                account_columns!(),
                " from accounts order by created_at desc, customer_id desc
                  limit $1 offset $2"
            ))
            .bind(i64::from(limit))
            .bind(i64::from(offset))
            .fetch_all(&self.pool)
            .await
            .map_err(db_err)?;
            rows.iter().map(rows::account).collect()
        })
        .await
    }

    async fn account_add_credits(&self, id: &CustomerId, credits: i64) -> StoreResult<Account> {
        // In numeric, so neither a huge grant nor a huge removal overflows:
        // the result is clamped to [0, i64::MAX].
        self.account_update(
            sqlx::query(concat!(
                "update accounts
                 set credits = least(greatest(credits::numeric + $2, 0),
                                     9223372036854775807)::bigint
                 where customer_id = $1 returning ",
                account_columns!()
            ))
            .bind(id.as_str())
            .bind(credits),
        )
        .await
    }

    async fn account_set_password(
        &self,
        id: &CustomerId,
        password_hash: &str,
    ) -> StoreResult<Account> {
        self.account_update(
            sqlx::query(concat!(
                "update accounts set password_hash = $2, token_epoch = token_epoch + 1
                 where customer_id = $1 returning ",
                account_columns!()
            ))
            .bind(id.as_str())
            .bind(password_hash),
        )
        .await
    }

    async fn account_revoke_tokens(&self, id: &CustomerId) -> StoreResult<Account> {
        self.account_update(
            sqlx::query(concat!(
                "update accounts set token_epoch = token_epoch + 1
                 where customer_id = $1 returning ",
                account_columns!()
            ))
            .bind(id.as_str()),
        )
        .await
    }

    async fn account_set_disabled(&self, id: &CustomerId, disabled: bool) -> StoreResult<Account> {
        self.account_update(
            sqlx::query(concat!(
                "update accounts set disabled = $2 where customer_id = $1 returning ",
                account_columns!()
            ))
            .bind(id.as_str())
            .bind(disabled),
        )
        .await
    }

    async fn account_set_settings(
        &self,
        id: &CustomerId,
        settings: &AccountSettings,
    ) -> StoreResult<Account> {
        let json = serde_json::to_string(settings)
            .map_err(|e| StoreError::Internal(format!("encode settings: {e}")))?;
        self.account_update(
            sqlx::query(concat!(
                "update accounts set settings = $2::jsonb where customer_id = $1 returning ",
                account_columns!()
            ))
            .bind(id.as_str())
            .bind(json),
        )
        .await
    }
}

#[async_trait]
impl VerificationStore for PostgresStore {
    async fn verification_create(&self, req: NewVerification) -> StoreResult<CreateOutcome> {
        self.guarded(async {
            let mut tx = self.pool.begin().await.map_err(db_err)?;
            match Self::create_in(&mut tx, &req).await? {
                Ok(v) => {
                    tx.commit().await.map_err(db_err)?;
                    Ok(CreateOutcome::Created(v))
                }
                Err(
                    refused @ CreateOutcome::Blocked {
                        new_block: Some(_), ..
                    },
                ) => {
                    // The block this send triggered is kept; nothing else
                    // was written.
                    tx.commit().await.map_err(db_err)?;
                    Ok(refused)
                }
                Err(refused) => {
                    // Release the account lock now rather than when the
                    // pool gets round to it.
                    tx.rollback().await.map_err(db_err)?;
                    Ok(refused)
                }
            }
        })
        .await
    }

    async fn verification_get(
        &self,
        customer: &CustomerId,
        id: VerificationId,
    ) -> StoreResult<Option<Verification>> {
        self.guarded(async {
            let row = sqlx::query(concat!(
                "select ",
                verification_columns!(),
                " from verifications where id = $1 and customer_id = $2"
            ))
            .bind(id_i64(id))
            .bind(customer.as_str())
            .fetch_optional(&self.pool)
            .await
            .map_err(db_err)?;
            row.as_ref().map(rows::verification).transpose()
        })
        .await
    }

    async fn verification_apply(
        &self,
        customer: &CustomerId,
        id: VerificationId,
        expected_wrong_attempts: u32,
        action: ValidationAction,
        now: i64,
    ) -> StoreResult<bool> {
        let Ok(expected) = i32::try_from(expected_wrong_attempts) else {
            // No stored row can have that many.
            return Ok(false);
        };
        // One statement each, so the verification's write, the held
        // fallback steps' cancellation, the day's count and the event happen
        // together or not at all: a completed verification's held steps are
        // not needed, one killed by this wrong code must not have its code
        // sent again, and `completed` (or `failed`, on the wrong code that
        // spends the last attempt) is queued for the account's webhook.
        let (sql, detail) = match action {
            ValidationAction::Complete => (
                concat!(
                    "with v as (
                         update verifications set state = 'completed', completed_at = $4
                          where id = $1 and customer_id = $2 and state = 'pending'
                            and wrong_attempts = $3
                         returning id, customer_id, created_at, true as done
                     ),
                     held as (
                         update outbox o
                            set status = 'cancelled', text = null, lease_owner = null,
                                lease_until = null, updated_at = $4
                           from v
                          where v.done and o.verification_id = v.id and o.status = 'queued'
                     ),
                     counted as (
                         insert into daily_stats (customer_id, day, sends, completed, created_at)
                         select customer_id, floor(created_at::numeric / 86400000)::bigint, 0, 1,
                                $4
                           from v
                         on conflict (customer_id, day) do update
                            set completed = daily_stats.completed + 1
                     ),
                     e as (
                         insert into events (event_id, customer_id, verification_id, kind,
                                             detail, status, attempts, next_attempt_at,
                                             created_at, updated_at)
                         select ",
                    events::new_event_id!(),
                    ", v.customer_id, v.id, 'verification.completed', $5, 'pending', 0,
                                $4, $4, $4
                           from v join webhooks w on w.customer_id = v.customer_id
                         on conflict do nothing
                     )
                     select count(*) from v"
                ),
                "{}".to_owned(),
            ),
            ValidationAction::Wrong => (
                concat!(
                    "with v as (
                         update verifications set wrong_attempts = wrong_attempts + 1
                          where id = $1 and customer_id = $2 and state = 'pending'
                            and wrong_attempts = $3
                         returning id, customer_id, wrong_attempts >= max_attempts as done
                     ),
                     held as (
                         update outbox o
                            set status = 'cancelled', text = null, lease_owner = null,
                                lease_until = null, updated_at = $4
                           from v
                          where v.done and o.verification_id = v.id and o.status = 'queued'
                     ),
                     e as (
                         insert into events (event_id, customer_id, verification_id, kind,
                                             detail, status, attempts, next_attempt_at,
                                             created_at, updated_at)
                         select ",
                    events::new_event_id!(),
                    ", v.customer_id, v.id, 'verification.failed', $5, 'pending', 0,
                                $4, $4, $4
                           from v join webhooks w on w.customer_id = v.customer_id
                          where v.done
                         on conflict do nothing
                     )
                     select count(*) from v"
                ),
                attempts_detail(),
            ),
        };
        self.guarded(async {
            let n: i64 = sqlx::query_scalar(sql)
                .bind(id_i64(id))
                .bind(customer.as_str())
                .bind(expected)
                .bind(now)
                .bind(detail)
                .fetch_one(&self.pool)
                .await
                .map_err(db_err)?;
            Ok(n == 1)
        })
        .await
    }

    async fn wrong_codes_since(
        &self,
        customer: &CustomerId,
        destination_e164: &str,
        since: i64,
    ) -> StoreResult<u32> {
        self.guarded(async {
            let n: i64 = sqlx::query_scalar(
                "select coalesce(sum(wrong_attempts), 0)::bigint from verifications
                 where customer_id = $1 and destination = $2 and created_at >= $3",
            )
            .bind(customer.as_str())
            .bind(destination_e164)
            .bind(since)
            .fetch_one(&self.pool)
            .await
            .map_err(db_err)?;
            Ok(u32::try_from(n.max(0)).unwrap_or(u32::MAX))
        })
        .await
    }

    async fn verification_list(
        &self,
        customer: &CustomerId,
        filter: &VerificationFilter,
        limit: u32,
        offset: u32,
    ) -> StoreResult<Vec<Verification>> {
        self.guarded(async {
            // strpos, not like: the filter is user input and % or _ in it
            // must match literally.
            let rows = sqlx::query(concat!(
                "select ",
                verification_columns!(),
                " from verifications
                  where customer_id = $1
                    and ($2::text is null or strpos(destination, $2) > 0)
                    and ($3::text is null or state = $3)
                    and ($4::bigint is null or created_at >= $4)
                    and ($5::bigint is null or created_at < $5)
                  order by created_at desc, id desc
                  limit $6 offset $7"
            ))
            .bind(customer.as_str())
            .bind(filter.number.as_deref())
            .bind(filter.state.map(|s| s.as_str()))
            .bind(filter.since)
            .bind(filter.until)
            .bind(i64::from(limit))
            .bind(i64::from(offset))
            .fetch_all(&self.pool)
            .await
            .map_err(db_err)?;
            rows.iter().map(rows::verification).collect()
        })
        .await
    }

    async fn daily_stats(
        &self,
        customer: &CustomerId,
        since: i64,
        until: i64,
    ) -> StoreResult<Vec<DailyStats>> {
        let Some((first_day, last_day)) = stats_days(since, until) else {
            return Ok(Vec::new());
        };
        self.guarded(async {
            // Completions are counted on the day of their send, so a day's
            // `completed` never exceeds its `sends` (a conversion rate), as
            // on SQLite.
            let found: Vec<(i64, i64, i64)> = sqlx::query_as(
                "select day, sends, completed from daily_stats
                  where customer_id = $1 and day >= $2 and day <= $3
                  order by day",
            )
            .bind(customer.as_str())
            .bind(first_day)
            .bind(last_day)
            .fetch_all(&self.pool)
            .await
            .map_err(db_err)?;
            Ok(fill_days(first_day, last_day, found))
        })
        .await
    }

    async fn channel_stats(
        &self,
        customer: &CustomerId,
        since: i64,
        until: i64,
    ) -> StoreResult<Vec<ChannelStats>> {
        self.guarded(async {
            // Messages a worker tried; one that failed before any channel
            // took it is counted under "" so failures are not lost from the
            // totals (as on SQLite).
            let rows: Vec<(String, i64, i64, i64)> = sqlx::query_as(
                "select coalesce(channel, '') as ch, count(*),
                        count(*) filter (where status = any($4)),
                        count(*) filter (where status = any($5))
                   from outbox
                  where customer_id = $1 and created_at >= $2 and created_at < $3
                    and attempts > 0
                  group by ch order by ch",
            )
            .bind(customer.as_str())
            .bind(since)
            .bind(until)
            .bind(shared::status_names(&DeliveryStatus::SUCCEEDED))
            .bind(shared::status_names(&DeliveryStatus::FINAL_FAILURES))
            .fetch_all(&self.pool)
            .await
            .map_err(db_err)?;
            Ok(rows
                .into_iter()
                .map(|(channel, attempted, succeeded, failed)| ChannelStats {
                    channel,
                    attempted: to_u64(attempted),
                    succeeded: to_u64(succeeded),
                    failed: to_u64(failed),
                })
                .collect())
        })
        .await
    }
}

#[async_trait]
impl OutboxStore for PostgresStore {
    async fn outbox_claim(
        &self,
        worker: &str,
        max: u32,
        lease_ms: i64,
        now: i64,
    ) -> StoreResult<Vec<OutboxMessage>> {
        if max == 0 {
            return Ok(Vec::new());
        }
        self.guarded(async {
            // `skip locked`: rows another node is claiming right now are
            // passed over instead of waited for, and each row's predicate is
            // re-checked once locked, so a row claimed and committed by
            // someone else in the meantime is not taken twice.
            let rows = sqlx::query(concat!(
                "with due as (
                     select id from outbox
                      where status = 'queued' and next_attempt_at <= $1
                        and (lease_until is null or lease_until <= $1)
                      order by next_attempt_at, id
                      limit $2
                      for update skip locked
                 )
                 update outbox o
                    set lease_owner = $3, lease_until = $4, attempts = o.attempts + 1,
                        updated_at = $1
                   from due, verifications v
                  where o.id = due.id and v.id = o.verification_id
                 returning ",
                outbox_columns!()
            ))
            .bind(now)
            .bind(i64::from(max))
            .bind(worker)
            .bind(now.saturating_add(lease_ms.max(0)))
            .fetch_all(&self.pool)
            .await
            .map_err(db_err)?;
            let mut out = rows
                .iter()
                .map(rows::outbox_message)
                .collect::<StoreResult<Vec<_>>>()?;
            out.sort_by_key(|m| (m.next_attempt_at, m.id));
            Ok(out)
        })
        .await
    }

    async fn outbox_sent(
        &self,
        message_id: i64,
        worker: &str,
        sent: &SentInfo,
        now: i64,
    ) -> StoreResult<bool> {
        self.guarded(async {
            // One statement: the outbox row (only while `worker` still holds
            // it) and its verification change together or not at all.
            let changed: Option<i64> = sqlx::query_scalar(
                "with o as (
                     update outbox
                        set status = 'sent', text = null, channel = $3, gateway_id = $4,
                            lease_owner = null, lease_until = null, updated_at = $5
                      where id = $1 and lease_owner = $2 and status = 'queued'
                      returning verification_id, step
                 ),
                 -- A later step went out: an earlier one still retrying is
                 -- not needed any more.
                 earlier as (
                     update outbox x
                        set status = 'cancelled', text = null, lease_owner = null,
                            lease_until = null, updated_at = $5
                       from o
                      where x.verification_id = o.verification_id and x.status = 'queued'
                        and x.step < o.step
                 )
                 update verifications v
                    set delivery = 'sent', channel = $3, gateway_id = $4
                   from o where v.id = o.verification_id
                 returning v.id",
            )
            .bind(message_id)
            .bind(worker)
            .bind(&sent.channel)
            .bind(&sent.gateway_id)
            .bind(now)
            .fetch_optional(&self.pool)
            .await
            .map_err(db_err)?;
            Ok(changed.is_some())
        })
        .await
    }

    async fn outbox_retry(
        &self,
        message_id: i64,
        worker: &str,
        next_attempt_at: i64,
        error: &str,
        now: i64,
    ) -> StoreResult<bool> {
        let error = clip(error);
        self.guarded(async {
            // The last error is also shown on the verification (console,
            // support) while the message waits for its next attempt.
            let changed: Option<i64> = sqlx::query_scalar(
                "with o as (
                     update outbox
                        set lease_owner = null, lease_until = null, next_attempt_at = $3,
                            last_error = $4, updated_at = $5
                      where id = $1 and lease_owner = $2 and status = 'queued'
                      returning verification_id
                 )
                 update verifications v set delivery_detail = $4
                   from o where v.id = o.verification_id
                 returning v.id",
            )
            .bind(message_id)
            .bind(worker)
            .bind(next_attempt_at)
            .bind(error)
            .bind(now)
            .fetch_optional(&self.pool)
            .await
            .map_err(db_err)?;
            Ok(changed.is_some())
        })
        .await
    }

    async fn outbox_failed(
        &self,
        message_id: i64,
        worker: &str,
        error: &str,
        now: i64,
    ) -> StoreResult<bool> {
        let error = clip(error);
        self.guarded(async {
            let mut tx = self.pool.begin().await.map_err(db_err)?;
            // The queued -> failed transition happens once, so the refund
            // does too.
            let verification: Option<i64> = sqlx::query_scalar(
                "update outbox
                    set status = 'failed', text = null, last_error = $3,
                        lease_owner = null, lease_until = null, updated_at = $4
                  where id = $1 and lease_owner = $2 and status = 'queued'
                  returning verification_id",
            )
            .bind(message_id)
            .bind(worker)
            .bind(error)
            .bind(now)
            .fetch_optional(&mut *tx)
            .await
            .map_err(db_err)?;
            let Some(verification) = verification else {
                tx.rollback().await.map_err(db_err)?;
                return Ok(false);
            };
            step_failed(
                &mut tx,
                verification,
                message_id,
                DeliveryStatus::Failed,
                error,
                now,
            )
            .await?;
            tx.commit().await.map_err(db_err)?;
            Ok(true)
        })
        .await
    }

    async fn outbox_receipt(
        &self,
        channel: &str,
        gateway_id: &str,
        status: DeliveryStatus,
        detail: &str,
        now: i64,
    ) -> StoreResult<Option<i64>> {
        let detail = clip(detail);
        // A receipt saying "queued" tells nothing new about the message's
        // fate: its detail is kept, its status is not moved backwards.
        let new_status = (status != DeliveryStatus::Queued).then(|| status.as_str());
        let permanent = status.is_final_failure();
        self.guarded(async {
            let mut tx = self.pool.begin().await.map_err(db_err)?;
            let matched: Vec<(i64, i64, i64)> = sqlx::query_as(
                "update outbox set status = coalesce($3, status), updated_at = $4
                  where channel = $1 and gateway_id = $2
                  returning verification_id, id, created_at",
            )
            .bind(channel)
            .bind(gateway_id)
            .bind(new_status)
            .bind(now)
            .fetch_all(&mut *tx)
            .await
            .map_err(db_err)?;
            for &(verification, message_id, _) in &matched {
                if permanent {
                    step_failed(&mut tx, verification, message_id, status, detail, now).await?;
                } else {
                    if status == DeliveryStatus::Delivered {
                        // The code arrived: the workflow's later steps must
                        // not go.
                        cancel_queued(&mut tx, verification, now).await?;
                        let d = delivery_detail(None, status, detail);
                        events::emit(&mut tx, verification, EventKind::Delivered, &d, now).await?;
                    }
                    sqlx::query(
                        "update verifications
                            set delivery = coalesce($2, delivery), delivery_detail = $3
                          where id = $1",
                    )
                    .bind(verification)
                    .bind(new_status)
                    .bind(detail)
                    .execute(&mut *tx)
                    .await
                    .map_err(db_err)?;
                }
            }
            tx.commit().await.map_err(db_err)?;
            Ok(matched.first().map(|&(_, _, accepted_at)| accepted_at))
        })
        .await
    }

    async fn outbox_depth(&self) -> StoreResult<OutboxDepth> {
        self.guarded(async {
            let (queued, in_flight, failed, oldest): (i64, i64, i64, Option<i64>) = sqlx::query_as(
                "select count(*) filter (where status = 'queued' and lease_owner is null),
                        count(*) filter (where status = 'queued' and lease_owner is not null),
                        count(*) filter (where status = 'failed'),
                        min(created_at) filter (where status = 'queued')
                   from outbox",
            )
            .fetch_one(&self.pool)
            .await
            .map_err(db_err)?;
            Ok(OutboxDepth {
                queued: to_u64(queued),
                in_flight: to_u64(in_flight),
                failed: to_u64(failed),
                oldest_queued_at: oldest,
            })
        })
        .await
    }

    async fn outbox_for_verification(
        &self,
        id: VerificationId,
    ) -> StoreResult<Option<OutboxMessage>> {
        self.guarded(async {
            let row = sqlx::query(concat!(
                "select ",
                outbox_columns!(),
                " from outbox o join verifications v on v.id = o.verification_id
                  where o.verification_id = $1 and o.step = 0"
            ))
            .bind(id_i64(id))
            .fetch_optional(&self.pool)
            .await
            .map_err(db_err)?;
            row.as_ref().map(rows::outbox_message).transpose()
        })
        .await
    }

    async fn outbox_attempts(&self, id: VerificationId) -> StoreResult<Vec<OutboxMessage>> {
        self.guarded(async {
            let rows = sqlx::query(concat!(
                "select ",
                outbox_columns!(),
                " from outbox o join verifications v on v.id = o.verification_id
                  where o.verification_id = $1 order by o.step"
            ))
            .bind(id_i64(id))
            .fetch_all(&self.pool)
            .await
            .map_err(db_err)?;
            rows.iter().map(rows::outbox_message).collect()
        })
        .await
    }
}

#[async_trait]
impl InboxStore for PostgresStore {
    async fn inbox_put(&self, msg: &InboxEntry) -> StoreResult<()> {
        self.guarded(async {
            sqlx::query(
                "insert into inbox (customer_id, destination, text, verification_id, created_at)
                 values ($1, $2, $3, $4, $5)",
            )
            .bind(msg.customer_id.as_ref().map(CustomerId::as_str))
            .bind(&msg.destination)
            .bind(&msg.text)
            .bind(msg.verification_id.map(id_i64))
            .bind(msg.created_at)
            .execute(&self.pool)
            .await
            .map_err(db_err)?;
            Ok(())
        })
        .await
    }

    async fn inbox_list(
        &self,
        customer: Option<&CustomerId>,
        to: Option<&str>,
        limit: u32,
    ) -> StoreResult<Vec<InboxEntry>> {
        self.guarded(async {
            let rows = sqlx::query(
                "select customer_id, destination, text, verification_id, created_at
                   from inbox
                  where ($1::text is null or customer_id = $1)
                    and ($2::text is null or destination = $2)
                  order by created_at desc, id desc
                  limit $3",
            )
            .bind(customer.map(CustomerId::as_str))
            .bind(to)
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await
            .map_err(db_err)?;
            rows.iter().map(rows::inbox_entry).collect()
        })
        .await
    }

    async fn inbox_purge(&self, before_ms: i64) -> StoreResult<u64> {
        self.guarded(async {
            let r = sqlx::query("delete from inbox where created_at < $1")
                .bind(before_ms)
                .execute(&self.pool)
                .await
                .map_err(db_err)?;
            Ok(r.rows_affected())
        })
        .await
    }
}

#[async_trait]
impl FraudStore for PostgresStore {
    async fn fraud_blocks_active(&self, now: i64, limit: u32) -> StoreResult<Vec<FraudBlock>> {
        self.guarded(async {
            let found: Vec<(String, String, String, i32, i64, Option<i64>, i64)> = sqlx::query_as(
                "select scope, key, reason, strikes, blocked_until, lifted_at, created_at
                       from fraud_blocks where blocked_until > $1
                      order by updated_at desc limit $2",
            )
            .bind(now)
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await
            .map_err(db_err)?;
            found
                .into_iter()
                .map(
                    |(scope, key, reason, strikes, until, lifted_at, created_at)| {
                        Ok(FraudBlock {
                            scope: shared::scope(&scope)?,
                            key,
                            reason,
                            strikes: shared::count(i64::from(strikes), "strikes")?,
                            until,
                            lifted_at,
                            created_at,
                        })
                    },
                )
                .collect()
        })
        .await
    }

    async fn fraud_block_lift(
        &self,
        scope: otpgate_core::fraud::BlockScope,
        key: &str,
        now: i64,
    ) -> StoreResult<bool> {
        self.guarded(async {
            let done = sqlx::query(
                "update fraud_blocks
                    set blocked_until = $3, lifted_at = $3, updated_at = $3
                  where scope = $1 and key = $2 and blocked_until > $3",
            )
            .bind(scope.as_str())
            .bind(key)
            .bind(now)
            .execute(&self.pool)
            .await
            .map_err(db_err)?;
            Ok(done.rows_affected() > 0)
        })
        .await
    }

    async fn safe_list(&self) -> StoreResult<Vec<SafeEntry>> {
        self.guarded(async {
            let found: Vec<(String, String, i64)> =
                sqlx::query_as("select entry, note, created_at from safe_list order by entry")
                    .fetch_all(&self.pool)
                    .await
                    .map_err(db_err)?;
            Ok(found
                .into_iter()
                .map(|(entry, note, created_at)| SafeEntry {
                    entry,
                    note,
                    created_at,
                })
                .collect())
        })
        .await
    }

    async fn safe_list_add(&self, entry: &str, note: &str, now: i64) -> StoreResult<()> {
        self.guarded(async {
            sqlx::query(
                "insert into safe_list (entry, note, created_at) values ($1, $2, $3)
                 on conflict (entry) do update set note = excluded.note",
            )
            .bind(entry)
            .bind(note)
            .bind(now)
            .execute(&self.pool)
            .await
            .map_err(db_err)?;
            Ok(())
        })
        .await
    }

    async fn safe_list_remove(&self, entry: &str) -> StoreResult<bool> {
        self.guarded(async {
            let done = sqlx::query("delete from safe_list where entry = $1")
                .bind(entry)
                .execute(&self.pool)
                .await
                .map_err(db_err)?;
            Ok(done.rows_affected() > 0)
        })
        .await
    }

    async fn own_numbers(&self, customer: &CustomerId) -> StoreResult<Vec<OwnNumber>> {
        self.guarded(async {
            let found: Vec<(String, i64)> = sqlx::query_as(
                "select destination, min(verified_at) from own_numbers
                  where customer_id = $1 and verified_at is not null
                  group by destination order by 2",
            )
            .bind(customer.as_str())
            .fetch_all(&self.pool)
            .await
            .map_err(db_err)?;
            Ok(found
                .into_iter()
                .map(|(destination, verified_at)| OwnNumber {
                    destination,
                    verified_at,
                })
                .collect())
        })
        .await
    }

    async fn own_number_confirm(
        &self,
        customer: &CustomerId,
        id: VerificationId,
        now: i64,
    ) -> StoreResult<bool> {
        self.guarded(async {
            let done = sqlx::query(
                "update own_numbers set verified_at = $3
                  where verification_id = $1 and customer_id = $2 and verified_at is null
                    and exists (select 1 from verifications v
                                 where v.id = $1 and v.state = 'completed')",
            )
            .bind(id_i64(id))
            .bind(customer.as_str())
            .bind(now)
            .execute(&self.pool)
            .await
            .map_err(db_err)?;
            Ok(done.rows_affected() > 0)
        })
        .await
    }

    async fn own_number_remove(
        &self,
        customer: &CustomerId,
        destination: &str,
    ) -> StoreResult<bool> {
        self.guarded(async {
            // The rows stay (they count against the day's own-number sends);
            // only the proof is withdrawn.
            let done = sqlx::query(
                "update own_numbers set verified_at = null
                  where customer_id = $1 and destination = $2 and verified_at is not null",
            )
            .bind(customer.as_str())
            .bind(destination)
            .execute(&self.pool)
            .await
            .map_err(db_err)?;
            Ok(done.rows_affected() > 0)
        })
        .await
    }

    async fn conversion_report(
        &self,
        since: i64,
        limit: u32,
    ) -> StoreResult<(Vec<ConversionRow>, Vec<ConversionRow>)> {
        self.guarded(async {
            let by_country: Vec<(i32, i64, i64)> = sqlx::query_as(
                "select country_code, count(*), count(*) filter (where state = 'completed')
                   from verifications where created_at > $1
                  group by country_code order by 2 desc, 1 limit $2",
            )
            .bind(since)
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await
            .map_err(db_err)?;
            let by_prefix: Vec<(String, i64, i64)> = sqlx::query_as(
                "select prefix, count(*), count(*) filter (where state = 'completed')
                   from verifications where created_at > $1 and prefix is not null
                  group by prefix order by 2 desc, 1 limit $2",
            )
            .bind(since)
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await
            .map_err(db_err)?;
            Ok((
                by_country
                    .into_iter()
                    .map(|(cc, sent, completed)| ConversionRow {
                        key: cc.to_string(),
                        sent: to_u64(sent),
                        completed: to_u64(completed),
                    })
                    .collect(),
                by_prefix
                    .into_iter()
                    .map(|(key, sent, completed)| ConversionRow {
                        key,
                        sent: to_u64(sent),
                        completed: to_u64(completed),
                    })
                    .collect(),
            ))
        })
        .await
    }
}

#[async_trait]
impl EventStore for PostgresStore {
    async fn webhook_get(&self, customer: &CustomerId) -> StoreResult<Option<Webhook>> {
        self.guarded(async {
            let row: Option<events::WebhookRow> = sqlx::query_as(
                "select customer_id, url, secret, created_at, updated_at from webhooks
                  where customer_id = $1",
            )
            .bind(customer.as_str())
            .fetch_optional(&self.pool)
            .await
            .map_err(db_err)?;
            row.map(events::webhook).transpose()
        })
        .await
    }

    async fn webhook_set(
        &self,
        customer: &CustomerId,
        url: &str,
        secret: &str,
        now: i64,
    ) -> StoreResult<Webhook> {
        self.guarded(async {
            let mut conn = self.pool.acquire().await.map_err(db_err)?;
            events::set_webhook(&mut conn, customer.as_str(), url, secret, now).await
        })
        .await
    }

    async fn webhook_delete(&self, customer: &CustomerId) -> StoreResult<()> {
        self.guarded(async {
            sqlx::query("delete from webhooks where customer_id = $1")
                .bind(customer.as_str())
                .execute(&self.pool)
                .await
                .map_err(db_err)?;
            Ok(())
        })
        .await
    }

    async fn events_claim(
        &self,
        worker: &str,
        max: u32,
        lease_ms: i64,
        now: i64,
    ) -> StoreResult<Vec<PendingEvent>> {
        if max == 0 {
            return Ok(Vec::new());
        }
        self.guarded(async {
            let mut conn = self.pool.acquire().await.map_err(db_err)?;
            events::claim(&mut conn, worker, max, lease_ms, now).await
        })
        .await
    }

    async fn event_record(
        &self,
        id: i64,
        worker: &str,
        attempt: &EventAttempt,
        now: i64,
    ) -> StoreResult<bool> {
        self.guarded(async {
            let mut conn = self.pool.acquire().await.map_err(db_err)?;
            events::record(&mut conn, id, worker, attempt, now).await
        })
        .await
    }

    async fn events_sweep_expired(&self, now: i64) -> StoreResult<u64> {
        self.guarded(async {
            let mut tx = self.pool.begin().await.map_err(db_err)?;
            let n = events::sweep_expired(&mut tx, now).await?;
            tx.commit().await.map_err(db_err)?;
            Ok(n)
        })
        .await
    }

    async fn event_list(&self, customer: &CustomerId, limit: u32) -> StoreResult<Vec<EventRecord>> {
        self.guarded(async {
            let rows: Vec<EventRecordRow> = sqlx::query_as(concat!(
                "select ",
                event_record_columns!(),
                " from events where customer_id = $1
                  order by created_at desc, id desc limit $2"
            ))
            .bind(customer.as_str())
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await
            .map_err(db_err)?;
            rows.into_iter().map(event_record).collect()
        })
        .await
    }

    async fn event_backlog(&self) -> StoreResult<EventBacklog> {
        self.guarded(async {
            let (pending, oldest): (i64, Option<i64>) = sqlx::query_as(
                "select count(*), min(created_at) from events where status = 'pending'",
            )
            .fetch_one(&self.pool)
            .await
            .map_err(db_err)?;
            Ok(EventBacklog {
                pending: to_u64(pending),
                oldest_at: oldest,
            })
        })
        .await
    }
}

/// Step `message_id` of `verification` will not deliver: wake the next held
/// step of its workflow, and fail the verification only when no step is left
/// that could still bring the code (the verdict is
/// [`crate::shared::step_failed`], shared with SQLite).
async fn step_failed(
    tx: &mut PgConnection,
    verification: i64,
    message_id: i64,
    delivery: DeliveryStatus,
    detail: &str,
    now: i64,
) -> StoreResult<()> {
    let steps: Vec<(i64, i32, String)> =
        sqlx::query_as("select id, step, status from outbox where verification_id = $1 for update")
            .bind(verification)
            .fetch_all(&mut *tx)
            .await
            .map_err(db_err)?;
    let mut this = 0;
    let mut others = Vec::with_capacity(steps.len());
    for (id, step, status) in steps {
        let step = crate::shared::count(step.into(), "step")?;
        if id == message_id {
            this = step;
        } else {
            others.push((id, step, crate::shared::delivery(&status)?));
        }
    }
    let verdict = crate::shared::step_failed(this, &others);
    if let Some(next) = verdict.wake {
        sqlx::query(
            "update outbox set next_attempt_at = least(next_attempt_at, $2), updated_at = $2
              where id = $1 and status = 'queued'",
        )
        .bind(next)
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(db_err)?;
    }
    if verdict.fail_verification {
        fail_and_refund(tx, verification, delivery, detail, now).await
    } else {
        sqlx::query("update verifications set delivery_detail = $2 where id = $1")
            .bind(verification)
            .bind(detail)
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
        Ok(())
    }
}

/// The rest of a workflow became unnecessary: every step of `verification`
/// still queued is cancelled and its text erased.
async fn cancel_queued(tx: &mut PgConnection, verification: i64, now: i64) -> StoreResult<()> {
    sqlx::query(
        "update outbox
            set status = 'cancelled', text = null, lease_owner = null, lease_until = null,
                updated_at = $2
          where verification_id = $1 and status = 'queued'",
    )
    .bind(verification)
    .bind(now)
    .execute(&mut *tx)
    .await
    .map_err(db_err)?;
    Ok(())
}

/// The message will never arrive: a pending verification fails (700 on
/// validate) and its charge goes back where it came from (contract §5),
/// once: a second failure finds it no longer pending. A verification already
/// completed keeps its state and its charge, since its code evidently
/// arrived.
async fn fail_and_refund(
    tx: &mut PgConnection,
    verification: i64,
    delivery: DeliveryStatus,
    detail: &str,
    now: i64,
) -> StoreResult<()> {
    // Locked and read first: the update below zeroes the cost, and the
    // refund needs it as it was.
    let (customer, state, cost, cost_test): (String, String, i64, i64) = sqlx::query_as(
        "select customer_id, state, cost, cost_test from verifications
          where id = $1 for update",
    )
    .bind(verification)
    .fetch_one(&mut *tx)
    .await
    .map_err(db_err)?;
    let state = VerificationState::parse(&state).ok_or_else(|| shared::corrupt("state"))?;
    let send::Undeliverable::FailAndRefund(refund) =
        send::undeliverable(state, send::Charged { cost, cost_test })
    else {
        sqlx::query("update verifications set delivery = $2, delivery_detail = $3 where id = $1")
            .bind(verification)
            .bind(delivery.as_str())
            .bind(detail)
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
        return Ok(());
    };
    sqlx::query(
        "update verifications
            set state = $4, cost = 0, cost_test = 0, delivery = $2,
                delivery_detail = $3
          where id = $1",
    )
    .bind(verification)
    .bind(delivery.as_str())
    .bind(detail)
    .bind(VerificationState::Failed.as_str())
    .execute(&mut *tx)
    .await
    .map_err(db_err)?;
    if !refund.is_empty() {
        sqlx::query(
            "update accounts
                set test_credits = test_credits + $2, credits = credits + $3
              where customer_id = $1",
        )
        .bind(customer)
        .bind(refund.test_credits)
        .bind(refund.credits)
        .execute(&mut *tx)
        .await
        .map_err(db_err)?;
    }
    let d = delivery_detail(Some("undeliverable"), delivery, detail);
    events::emit(tx, verification, EventKind::Failed, &d, now).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_options_are_the_documented_ones() {
        let o = PgOptions::default();
        assert_eq!(
            (o.pool_size, o.statement_timeout_ms, o.connect_timeout_ms),
            (10, 5000, 3000)
        );
    }
}
