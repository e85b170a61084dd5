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

mod batch;
mod changes;
#[cfg(all(test, feature = "testkit"))]
mod checks_tests;
mod error;
mod events;
mod migrate;
mod outbox;
mod rows;
mod run;
mod send;

use crate::shared::{
    self, EventRecordRow, attempts_detail, email_key, event_record, event_record_columns,
    fill_days, id_i64, stats_days, to_u64,
};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use otpgate_core::{CustomerId, DeliveryStatus, VerificationId};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, PgConnection, Row};

pub use migrate::{SCHEMA_VERSION, migrations};

use self::error::{db_err, timed_out};
use self::rows::{account_columns, verification_columns};
use self::run::{PgQuery, all, exec, one, opt, scalar, tuple};
use crate::{
    Account, AccountSettings, AccountStore, ChannelStats, ConversionRow, CreateOutcome, DailyStats,
    EventAttempt, EventBacklog, EventRecord, EventStore, FraudBlock, FraudStore, InboxEntry,
    InboxStore, NewAccount, NewVerification, OutboxLease, OutboxMessage, OwnNumber, PendingEvent,
    Purged, SafeEntry, StoreError, StoreResult, SystemStore, ValidationAction, Verification,
    VerificationFilter, VerificationStore, Webhook,
};

/// `update accounts set SET where customer_id = $1`, the row back as an
/// [`Account`]: `update_account!(self, id, "SET", $2, $3…)`.
macro_rules! update_account {
    ($store:ident, $id:expr, $set:literal $(, $bind:expr)* $(,)?) => {
        $store
            .account_update(
                sqlx::query(concat!(
                    "update accounts set ",
                    $set,
                    " where customer_id = $1 returning ",
                    account_columns!()
                ))
                .bind($id.as_str())
                $(.bind($bind))*,
            )
            .await
    };
}

/// The part of `verification_apply`'s statement that cancels the held
/// fallback steps of the verification `v` it changed (whose id is `$1`), if
/// that is now done (completed, or out of attempts): their code is not to be
/// sent any more.
macro_rules! cancel_held_if_done {
    () => {
        "held as (
             update outbox o
                set status = 'cancelled', text = null, lease_owner = null,
                    lease_until = null, updated_at = $4
               from v
              where v.done and o.verification_id = v.id and o.status = 'queued'
                -- The id as a value ($1, the verification's): its steps are
                -- found by key, not by a scan of every queued row.
                and o.verification_id = $1
                -- Not one in flight: see `cancel_queued` in `outbox`.
                and (o.lease_owner is null or o.lease_until <= $4)
         ),"
    };
}

/// The end of `verification_apply`'s statement: queues the event `$kind`
/// (detail `$5`) of the verification `v` it changed, if that is now done and
/// its account has a webhook, and counts the rows changed.
macro_rules! event_if_done {
    ($kind:literal) => {
        concat!(
            "e as (
                 insert into events (event_id, customer_id, verification_id, kind, detail,
                                     status, attempts, next_attempt_at, created_at, updated_at)
                 select ",
            events::new_event_id!(),
            ", v.customer_id, v.id, '",
            $kind,
            "', $5, 'pending', 0, $4, $4, $4
                   from v join webhooks w on w.customer_id = v.customer_id
                  where v.done
                 on conflict do nothing
             )
             select count(*) from v"
        )
    };
}

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

/// [`crate::Store`] on PostgreSQL. Cheap to clone (it is a pool handle).
#[derive(Clone)]
pub struct PostgresStore {
    pool: PgPool,
    /// The bound on a whole operation: acquiring a connection plus a couple
    /// of statements at their timeout. A backstop for what the server's
    /// timeout cannot catch (a connection that stops answering mid-query).
    op_deadline: Option<Duration>,
    /// The node's sends, grouped by account into shared transactions.
    sends: batch::Batcher,
    /// Account changes heard of (see [`AccountStore::account_changes`]).
    accounts: Arc<changes::AccountChanges>,
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
            .connect_lazy_with(connect_opts.clone());
        let op_deadline = (opts.statement_timeout_ms > 0).then(|| {
            Duration::from_millis(
                opts.connect_timeout_ms
                    .saturating_add(opts.statement_timeout_ms.saturating_mul(2))
                    .saturating_add(1000),
            )
        });
        // Half the pool for sends, the rest for everything else; one send
        // queue has one connection in use at a time.
        let sends = batch::Batcher::start(&pool, usize::try_from(opts.pool_size / 2).unwrap_or(1));
        let store = Self {
            pool,
            op_deadline,
            sends,
            accounts: Arc::new(changes::AccountChanges::new(
                PgPoolOptions::new()
                    .max_connections(1)
                    .acquire_timeout(acquire)
                    .connect_lazy_with(connect_opts),
            )),
        };
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

    /// Sends waiting for their account's next transaction on this node (a
    /// backlog gauge; tests use it to know a send is queued).
    pub fn send_queue_len(&self) -> usize {
        self.sends.queued()
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

    /// Runs an `update accounts … returning` of one account (see
    /// `update_account!`) and returns it; [`StoreError::NotFound`] when it
    /// does not exist. Every node is told (see [`changes`]), whatever the
    /// outcome: a change that committed before an error must not go unheard.
    async fn account_update(&self, query: PgQuery<'_>) -> StoreResult<Account> {
        let result = self
            .guarded(opt(&self.pool, query, rows::account))
            .await
            .and_then(|a| a.ok_or(StoreError::NotFound));
        self.accounts.changed(&self.pool).await;
        result
    }
}

#[async_trait]
impl SystemStore for PostgresStore {
    async fn ping(&self) -> StoreResult<()> {
        self.guarded(exec(&self.pool, sqlx::query("select 1")))
            .await
            .map(|_| ())
    }

    fn backend(&self) -> &'static str {
        "postgres"
    }

    async fn secret_get_or_init(&self, name: &str, candidate: &[u8]) -> StoreResult<Vec<u8>> {
        self.guarded(async {
            // The first node's candidate wins; everyone reads the winner.
            // created_at is the database's clock: there is no caller clock
            // here, and the value is informational.
            let insert = sqlx::query(
                "insert into secrets (name, value, created_at)
                 values ($1, $2, (extract(epoch from clock_timestamp()) * 1000)::bigint)
                 on conflict (name) do nothing",
            );
            exec(&self.pool, insert.bind(name).bind(candidate)).await?;
            let select = sqlx::query("select value from secrets where name = $1");
            one(&self.pool, select.bind(name), scalar).await
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
            let doomed = sqlx::query(
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
            );
            let del = |query: PgQuery<'static>| query.bind(cutoff).bind(i64::from(max));
            let (verifications, outbox, gone_events): (i64, i64, i64) =
                one(&self.pool, del(doomed), tuple).await?;
            let inbox = sqlx::query(
                "delete from inbox where id in
                     (select id from inbox where created_at < $1
                       order by created_at, id limit $2 for update skip locked)",
            );
            let inbox = exec(&self.pool, del(inbox)).await?;
            // Events older than the cutoff whose verification is already
            // gone: an event never outlives retention either.
            let old_events = sqlx::query(
                "delete from events where id in
                     (select id from events where created_at < $1
                       order by created_at, id limit $2 for update skip locked)",
            );
            let old_events = exec(&self.pool, del(old_events)).await?;
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
    fn account_changes(&self) -> u64 {
        self.accounts.current()
    }

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
            .bind(crate::shared::settings_json(&new.settings)?);
            one(&self.pool, row, rows::account)
                .await
                .map_err(shared::account_conflict)
        })
        .await
    }

    async fn account_get(&self, id: &CustomerId) -> StoreResult<Option<Account>> {
        let sql = concat!(
            "select ",
            account_columns!(),
            " from accounts where customer_id = $1"
        );
        let query = sqlx::query(sql).bind(id.as_str());
        self.guarded(opt(&self.pool, query, rows::account)).await
    }

    async fn account_by_email(&self, email: &str) -> StoreResult<Option<Account>> {
        let sql = concat!(
            "select ",
            account_columns!(),
            " from accounts where email_key = $1"
        );
        let query = sqlx::query(sql).bind(email_key(email));
        self.guarded(opt(&self.pool, query, rows::account)).await
    }

    async fn account_list(&self, limit: u32, offset: u32) -> StoreResult<Vec<Account>> {
        let sql = concat!(
            "select ",
            account_columns!(),
            " from accounts order by created_at desc, customer_id desc
              limit $1 offset $2"
        );
        let query = sqlx::query(sql)
            .bind(i64::from(limit))
            .bind(i64::from(offset));
        self.guarded(all(&self.pool, query, rows::account)).await
    }

    async fn account_add_credits(&self, id: &CustomerId, credits: i64) -> StoreResult<Account> {
        // In numeric, so neither a huge grant nor a huge removal overflows:
        // the result is clamped to [0, i64::MAX].
        update_account!(
            self,
            id,
            "credits = least(greatest(credits::numeric + $2, 0), 9223372036854775807)::bigint",
            credits
        )
    }

    async fn account_set_password(
        &self,
        id: &CustomerId,
        password_hash: &str,
    ) -> StoreResult<Account> {
        update_account!(
            self,
            id,
            "password_hash = $2, token_epoch = token_epoch + 1",
            password_hash
        )
    }

    async fn account_revoke_tokens(&self, id: &CustomerId) -> StoreResult<Account> {
        update_account!(self, id, "token_epoch = token_epoch + 1")
    }

    async fn account_set_disabled(&self, id: &CustomerId, disabled: bool) -> StoreResult<Account> {
        update_account!(self, id, "disabled = $2", disabled)
    }

    async fn account_set_settings(
        &self,
        id: &CustomerId,
        settings: &AccountSettings,
    ) -> StoreResult<Account> {
        let json = crate::shared::settings_json(settings)?;
        update_account!(self, id, "settings = $2::jsonb", json)
    }
}

#[async_trait]
impl VerificationStore for PostgresStore {
    async fn verification_create(&self, req: NewVerification) -> StoreResult<CreateOutcome> {
        let (outcome, _) = self.guarded(self.sends.create(req, None)).await?;
        Ok(outcome)
    }

    async fn verification_create_leased(
        &self,
        req: NewVerification,
        lease: OutboxLease,
    ) -> StoreResult<(CreateOutcome, Option<OutboxMessage>)> {
        self.guarded(self.sends.create(req, Some(lease))).await
    }

    async fn verification_get(
        &self,
        customer: &CustomerId,
        id: VerificationId,
    ) -> StoreResult<Option<Verification>> {
        let sql = concat!(
            "select ",
            verification_columns!(),
            " from verifications where id = $1 and customer_id = $2"
        );
        let query = sqlx::query(sql).bind(id_i64(id)).bind(customer.as_str());
        self.guarded(opt(&self.pool, query, rows::verification))
            .await
    }

    async fn verification_to_validate(
        &self,
        customer: &CustomerId,
        id: VerificationId,
        wrong_since: i64,
    ) -> StoreResult<Option<(Verification, u32)>> {
        let sql = concat!(
            "select ",
            verification_columns!(),
            ", (select coalesce(sum(w.wrong_attempts), 0) from verifications w
                 where w.customer_id = $2 and w.destination = verifications.destination
                   and w.created_at >= $3)::bigint as wrong_codes
             from verifications where id = $1 and customer_id = $2"
        );
        let query = sqlx::query(sql)
            .bind(id_i64(id))
            .bind(customer.as_str())
            .bind(wrong_since);
        self.guarded(opt(&self.pool, query, |row| {
            let wrong: i64 = row.try_get("wrong_codes").map_err(db_err)?;
            Ok((
                rows::verification(row)?,
                u32::try_from(wrong.max(0)).unwrap_or(u32::MAX),
            ))
        }))
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
                     ),",
                    cancel_held_if_done!(),
                    "counted as (
                         insert into daily_completions (customer_id, day, shard, completed)
                         select customer_id, floor(created_at::numeric / 86400000)::bigint,
                                (id & 15)::smallint, 1
                           from v
                         on conflict (customer_id, day, shard) do update
                            set completed = daily_completions.completed + 1
                     ),",
                    event_if_done!("verification.completed")
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
                     ),",
                    cancel_held_if_done!(),
                    event_if_done!("verification.failed")
                ),
                attempts_detail(),
            ),
        };
        let query = sqlx::query(sql)
            .bind(id_i64(id))
            .bind(customer.as_str())
            .bind(expected)
            .bind(now)
            .bind(detail);
        let n: i64 = self.guarded(one(&self.pool, query, scalar)).await?;
        Ok(n == 1)
    }

    async fn verification_list(
        &self,
        customer: &CustomerId,
        filter: &VerificationFilter,
        limit: u32,
        offset: u32,
    ) -> StoreResult<Vec<Verification>> {
        // strpos, not like: the filter is user input and % or _ in it must
        // match literally.
        let query = sqlx::query(concat!(
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
        .bind(i64::from(offset));
        self.guarded(all(&self.pool, query, rows::verification))
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
        // Completions are counted on the day of their send, so a day's
        // `completed` never exceeds its `sends` (a conversion rate), as on
        // SQLite; since schema 8 in `daily_completions`, spread over shards.
        let query = sqlx::query(
            "select day, sum(sends)::bigint, sum(completed)::bigint
               from (select day, sends, completed from daily_stats
                      where customer_id = $1 and day >= $2 and day <= $3
                     union all
                     select day, 0, completed from daily_completions
                      where customer_id = $1 and day >= $2 and day <= $3) d
              group by day order by day",
        )
        .bind(customer.as_str())
        .bind(first_day)
        .bind(last_day);
        let found = self.guarded(all(&self.pool, query, tuple)).await?;
        Ok(fill_days(first_day, last_day, found))
    }

    async fn channel_stats(
        &self,
        customer: &CustomerId,
        since: i64,
        until: i64,
    ) -> StoreResult<Vec<ChannelStats>> {
        // Messages a worker tried; one that failed before any channel took
        // it is counted under "" so failures are not lost from the totals
        // (as on SQLite).
        let query = sqlx::query(
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
        .bind(shared::status_names(&DeliveryStatus::FINAL_FAILURES));
        let found = self.guarded(all(&self.pool, query, tuple)).await?;
        Ok(found.into_iter().map(shared::channel_stats).collect())
    }
}

#[async_trait]
impl InboxStore for PostgresStore {
    async fn inbox_put(&self, msg: &InboxEntry) -> StoreResult<()> {
        self.guarded(inbox_insert(&self.pool, msg)).await
    }

    async fn inbox_list(
        &self,
        customer: Option<&CustomerId>,
        to: Option<&str>,
        limit: u32,
    ) -> StoreResult<Vec<InboxEntry>> {
        self.guarded(async {
            // By number, a plain `destination = $2` so that the planner
            // takes the destination index (see the SQLite store).
            let sql = if to.is_some() {
                "select customer_id, destination, text, verification_id, created_at
                   from inbox
                  where destination = $2 and ($1::text is null or customer_id = $1)
                  order by created_at desc, id desc
                  limit $3"
            } else {
                "select customer_id, destination, text, verification_id, created_at
                   from inbox
                  where ($1::text is null or customer_id = $1)
                    -- $2 (no number) is bound either way: named so that it
                    -- has a type.
                    and ($2::text is null)
                  order by created_at desc, id desc
                  limit $3"
            };
            let rows = sqlx::query(sql)
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
        let query = sqlx::query("delete from inbox where created_at < $1").bind(before_ms);
        self.guarded(exec(&self.pool, query)).await
    }
}

#[async_trait]
impl FraudStore for PostgresStore {
    async fn fraud_blocks_active(&self, now: i64, limit: u32) -> StoreResult<Vec<FraudBlock>> {
        // `strikes` is an integer (i32) here, widened to the row the
        // backends share.
        let query = sqlx::query(
            "select scope, key, reason, strikes::bigint, blocked_until, lifted_at, created_at
                   from fraud_blocks where blocked_until > $1
                  order by updated_at desc limit $2",
        )
        .bind(now)
        .bind(i64::from(limit));
        let found = self.guarded(all(&self.pool, query, tuple)).await?;
        found.into_iter().map(shared::fraud_block).collect()
    }

    async fn fraud_block_lift(
        &self,
        scope: otpgate_core::fraud::BlockScope,
        key: &str,
        now: i64,
    ) -> StoreResult<bool> {
        let query = sqlx::query(
            "update fraud_blocks
                set blocked_until = $3, lifted_at = $3, updated_at = $3
              where scope = $1 and key = $2 and blocked_until > $3",
        )
        .bind(scope.as_str())
        .bind(key)
        .bind(now);
        Ok(self.guarded(exec(&self.pool, query)).await? > 0)
    }

    async fn safe_list(&self) -> StoreResult<Vec<SafeEntry>> {
        let query = sqlx::query("select entry, note, created_at from safe_list order by entry");
        let found = self.guarded(all(&self.pool, query, tuple)).await?;
        Ok(found.into_iter().map(shared::safe_entry).collect())
    }

    async fn safe_list_add(&self, entry: &str, note: &str, now: i64) -> StoreResult<()> {
        let query = sqlx::query(
            "insert into safe_list (entry, note, created_at) values ($1, $2, $3)
             on conflict (entry) do update set note = excluded.note",
        )
        .bind(entry)
        .bind(note)
        .bind(now);
        self.guarded(exec(&self.pool, query)).await.map(|_| ())
    }

    async fn safe_list_remove(&self, entry: &str) -> StoreResult<bool> {
        let query = sqlx::query("delete from safe_list where entry = $1").bind(entry);
        Ok(self.guarded(exec(&self.pool, query)).await? > 0)
    }

    async fn own_numbers(&self, customer: &CustomerId) -> StoreResult<Vec<OwnNumber>> {
        let query = sqlx::query(
            "select destination, min(verified_at) from own_numbers
              where customer_id = $1 and verified_at is not null
              group by destination order by 2",
        )
        .bind(customer.as_str());
        let found = self.guarded(all(&self.pool, query, tuple)).await?;
        Ok(found.into_iter().map(shared::own_number).collect())
    }

    async fn own_number_confirm(
        &self,
        customer: &CustomerId,
        id: VerificationId,
        now: i64,
    ) -> StoreResult<bool> {
        let query = sqlx::query(
            "update own_numbers set verified_at = $3
              where verification_id = $1 and customer_id = $2 and verified_at is null
                and exists (select 1 from verifications v
                             where v.id = $1 and v.state = 'completed')",
        )
        .bind(id_i64(id))
        .bind(customer.as_str())
        .bind(now);
        Ok(self.guarded(exec(&self.pool, query)).await? > 0)
    }

    async fn own_number_remove(
        &self,
        customer: &CustomerId,
        destination: &str,
    ) -> StoreResult<bool> {
        // The rows stay (they count against the day's own-number sends);
        // only the proof is withdrawn.
        let query = sqlx::query(
            "update own_numbers set verified_at = null
              where customer_id = $1 and destination = $2 and verified_at is not null",
        )
        .bind(customer.as_str())
        .bind(destination);
        Ok(self.guarded(exec(&self.pool, query)).await? > 0)
    }

    async fn conversion_report(
        &self,
        since: i64,
        limit: u32,
    ) -> StoreResult<(Vec<ConversionRow>, Vec<ConversionRow>)> {
        let by_country = sqlx::query(
            "select country_code::bigint, count(*), count(*) filter (where state = 'completed')
               from verifications where created_at > $1
              group by country_code order by 2 desc, 1 limit $2",
        );
        let by_prefix = sqlx::query(
            "select prefix, count(*), count(*) filter (where state = 'completed')
               from verifications where created_at > $1 and prefix is not null
              group by prefix order by 2 desc, 1 limit $2",
        );
        let period = |query: PgQuery<'static>| query.bind(since).bind(i64::from(limit));
        self.guarded(async {
            let by_country = all(&self.pool, period(by_country), tuple).await?;
            let by_prefix = all(&self.pool, period(by_prefix), tuple).await?;
            Ok(shared::conversion_rows(by_country, by_prefix))
        })
        .await
    }
}

#[async_trait]
impl EventStore for PostgresStore {
    async fn webhook_get(&self, customer: &CustomerId) -> StoreResult<Option<Webhook>> {
        let query = sqlx::query(
            "select customer_id, url, secret, created_at, updated_at from webhooks
              where customer_id = $1",
        )
        .bind(customer.as_str());
        let row = self.guarded(opt(&self.pool, query, tuple)).await?;
        row.map(shared::webhook).transpose()
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
        let query =
            sqlx::query("delete from webhooks where customer_id = $1").bind(customer.as_str());
        self.guarded(exec(&self.pool, query)).await.map(|_| ())
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
        let query = sqlx::query(concat!(
            "select ",
            event_record_columns!(),
            " from events where customer_id = $1
              order by created_at desc, id desc limit $2"
        ))
        .bind(customer.as_str())
        .bind(i64::from(limit));
        let found: Vec<EventRecordRow> = self.guarded(all(&self.pool, query, tuple)).await?;
        found.into_iter().map(event_record).collect()
    }

    async fn event_backlog(&self) -> StoreResult<EventBacklog> {
        let query =
            sqlx::query("select count(*), min(created_at) from events where status = 'pending'");
        let found = self.guarded(one(&self.pool, query, tuple)).await?;
        Ok(shared::event_backlog(found))
    }
}

/// Stores one message the development inbox delivered.
async fn inbox_insert<'c>(on: impl sqlx::PgExecutor<'c>, msg: &InboxEntry) -> StoreResult<()> {
    let query = sqlx::query(
        "insert into inbox (customer_id, destination, text, verification_id, created_at)
         values ($1, $2, $3, $4, $5)",
    )
    .bind(msg.customer_id.as_ref().map(CustomerId::as_str))
    .bind(&msg.destination)
    .bind(&msg.text)
    .bind(msg.verification_id.map(id_i64))
    .bind(msg.created_at);
    exec(on, query).await.map(|_| ())
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
