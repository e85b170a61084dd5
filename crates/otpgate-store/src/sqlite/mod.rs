//! The SQLite backend: otpgate on one machine, in one file.
//!
//! SQLite lets one connection write at a time. Rather than let several
//! connections fight over that lock (and back off on `SQLITE_BUSY`), all
//! writes go to one task that owns the one write connection (`writer`): it
//! runs the writes queued at any moment in one transaction, each in its own
//! savepoint, and commits them with one fsync (group commit). Reads use a
//! separate pool and run beside the writer (WAL mode). Every write
//! transaction still starts with `begin immediate`, which takes the write
//! lock up front: another process on the same file (the CLI beside a running
//! server, a second node) then waits on the busy timeout instead of failing
//! half-way through a read-then-write.
//!
//! Each guarantee the contract puts on the store — 506, rate limits, charge
//! and outbox row in one commit (contract §2, §5), exactly-once completion
//! (§3), exclusive outbox leases — is one such write, which either commits
//! whole or leaves no trace.

mod events;
mod outbox;
mod rows;
mod send;
mod writer;

pub use writer::WriteStats;

use crate::shared::{
    self, EventRecordRow, attempts_detail, email_key, event_record, event_record_columns,
    fill_days, id_i64, settings_json, stats_days, to_u64,
};
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use futures::future::BoxFuture;
use otpgate_core::{CustomerId, DeliveryStatus, VerificationId};
use sqlx::SqlSafeStr;
use sqlx::migrate::{MigrateError, Migration, MigrationType, Migrator};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteSynchronous,
};

use crate::{
    Account, AccountSettings, AccountStore, ChannelStats, ConversionRow, CreateOutcome, DailyStats,
    EventAttempt, EventBacklog, EventKind, EventRecord, EventStore, FraudBlock, FraudStore,
    InboxEntry, InboxStore, NewAccount, NewVerification, OutboxDepth, OutboxMessage, OutboxStore,
    OwnNumber, PendingEvent, Purged, SafeEntry, SentInfo, StoreError, StoreResult, SystemStore,
    ValidationAction, Verification, VerificationFilter, VerificationStore, Webhook,
};
use rows::{account_columns, outbox_columns, verification_columns};

/// The schema, in order: (version, name, SQL). Embedded so the binary
/// carries its own schema; public so tests can make a database as an earlier
/// build did.
pub const MIGRATIONS: &[(i64, &str, &str)] = &[
    (
        1,
        "init",
        include_str!("../../migrations/sqlite/0001_init.sql"),
    ),
    (
        2,
        "outbox failed index",
        include_str!("../../migrations/sqlite/0002_outbox_failed_index.sql"),
    ),
    (
        3,
        "outbox steps",
        include_str!("../../migrations/sqlite/0003_outbox_steps.sql"),
    ),
    (
        4,
        "fraud defence",
        include_str!("../../migrations/sqlite/0004_fraud_defence.sql"),
    ),
    (
        5,
        "daily stats and retention",
        include_str!("../../migrations/sqlite/0005_daily_stats_retention.sql"),
    ),
    (
        6,
        "events",
        include_str!("../../migrations/sqlite/0006_events.sql"),
    ),
    (
        7,
        "schema parity",
        include_str!("../../migrations/sqlite/0007_schema_parity.sql"),
    ),
];

/// The schema version this build migrates to (the newest migration).
pub const SCHEMA_VERSION: i64 = 7;
const _: () = assert!(MIGRATIONS[MIGRATIONS.len() - 1].0 == SCHEMA_VERSION);

/// How long a statement waits for another process's write lock before the
/// store reports itself unavailable (503).
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a request waits for a connection of its pool, or for its write
/// to be taken up by the writer.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);
/// The most writes committed together. Past a few dozen the fsync is no
/// longer what a batch waits on, and a bound keeps one batch's transaction
/// (and the wait of the callers queued behind it) short.
pub const MAX_BATCH: usize = 128;
/// Read connections beside the one writer.
const READERS: u32 = 4;

/// The SQLite [`crate::Store`].
#[derive(Debug, Clone)]
pub struct SqliteStore {
    /// Runs every write, in batches, on `write_pool`'s connection.
    writer: writer::Writer,
    /// Exactly one connection, used by the writer task (and, before it
    /// starts, by migrations).
    write_pool: SqlitePool,
    /// Reads only; for an in-memory database, the write pool itself.
    reader: SqlitePool,
    /// An in-memory database: no files to restrict or scrub.
    memory: bool,
}

impl SqliteStore {
    /// Opens the database `location` names, creating the file if needed,
    /// and brings its schema up to date. `location` is a URL as the server's
    /// configuration writes it — `sqlite://path/to/otpgate.db`,
    /// `sqlite:otpgate.db`, `sqlite::memory:` (SQLx's query options such as
    /// `?mode=ro` apply) — or a plain file path.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] when the file cannot be opened or created
    /// or the URL cannot be read; [`StoreError::SchemaTooNew`] when a newer
    /// otpgate has migrated it.
    pub async fn open(location: &str) -> StoreResult<Self> {
        if !location.starts_with("sqlite:") {
            return Self::open_path(location).await;
        }
        let memory = location == "sqlite::memory:" || location.contains("mode=memory");
        // Read-only: nothing to create or restrict (the file is its owner's).
        let own_files = !memory && !location.contains("mode=ro");
        let opts = SqliteConnectOptions::from_str(location)
            .map_err(|e| StoreError::Unavailable(format!("bad SQLite URL: {e}")))?
            .create_if_missing(true);
        Self::build(opts, memory, own_files, MAX_BATCH).await
    }

    /// Opens (creating if needed) the database file at `path`; for paths
    /// that are not UTF-8.
    ///
    /// # Errors
    /// As [`SqliteStore::open`].
    pub async fn open_path(path: impl AsRef<Path>) -> StoreResult<Self> {
        Self::open_path_with_max_batch(path, MAX_BATCH).await
    }

    /// As [`SqliteStore::open_path`], committing at most `max_batch` writes
    /// together (at least 1). `1` commits every write on its own, as
    /// before group commit: a baseline for benchmarks.
    ///
    /// # Errors
    /// As [`SqliteStore::open`].
    pub async fn open_path_with_max_batch(
        path: impl AsRef<Path>,
        max_batch: usize,
    ) -> StoreResult<Self> {
        let opts = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true);
        Self::build(opts, false, true, max_batch).await
    }

    /// A private database in memory, gone when the store is dropped; for
    /// tests and trials.
    ///
    /// # Errors
    /// As [`SqliteStore::open`].
    pub async fn in_memory() -> StoreResult<Self> {
        Self::open("sqlite::memory:").await
    }

    async fn build(
        opts: SqliteConnectOptions,
        memory: bool,
        own_files: bool,
        max_batch: usize,
    ) -> StoreResult<Self> {
        if own_files {
            restrict_files(opts.get_filename())?;
        }
        let opts = opts
            .foreign_keys(true)
            // Freed content (a delivered message's text, set to null) is
            // overwritten with zeros rather than left in free space.
            .pragma("secure_delete", "on")
            .busy_timeout(BUSY_TIMEOUT)
            // FULL: a commit is on disk before a send answers 200, so it
            // survives a power cut, not only a crash (contract §2).
            .synchronous(SqliteSynchronous::Full)
            // Deleted rows are overwritten with zeros, not only unlinked:
            // retention must remove phone numbers from the file itself, and
            // erased message texts (they held codes) must not linger in
            // free pages. It costs writes on deletes only.
            .pragma("secure_delete", "on");
        let writer_opts = if memory {
            opts.clone()
        } else {
            opts.clone().journal_mode(SqliteJournalMode::Wal)
        };
        let mut writer = SqlitePoolOptions::new()
            .max_connections(1)
            .acquire_timeout(ACQUIRE_TIMEOUT);
        if memory {
            // An in-memory database lives as long as its connection.
            writer = writer
                .min_connections(1)
                .idle_timeout(None)
                .max_lifetime(None);
        }
        // Switching a fresh file to WAL can meet another opener doing the
        // same, which SQLite reports as locked at once: try again briefly.
        let mut attempt = 0u64;
        let write_pool = loop {
            match writer.clone().connect_with(writer_opts.clone()).await {
                Err(e) if attempt < 40 && lost_race(&e.to_string()) => {
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(10 + attempt * 5)).await;
                }
                other => break other.map_err(db)?,
            }
        };
        migrate(&write_pool).await?;
        let reader = if memory {
            write_pool.clone()
        } else {
            SqlitePoolOptions::new()
                .max_connections(READERS)
                .acquire_timeout(ACQUIRE_TIMEOUT)
                .connect_with(opts)
                .await
                .map_err(db)?
        };
        let writer = writer::Writer::start(write_pool.clone(), max_batch, ACQUIRE_TIMEOUT);
        Ok(Self {
            writer,
            write_pool,
            reader,
            memory,
        })
    }

    /// The schema version the database is at: [`SCHEMA_VERSION`] once
    /// opened by this build.
    ///
    /// # Errors
    /// As any read.
    pub async fn schema_version(&self) -> StoreResult<i64> {
        sqlx::query_scalar("select coalesce(max(version), 0) from _sqlx_migrations where success")
            .fetch_one(&self.reader)
            .await
            .map_err(db)
    }

    /// How many writes this store has run, in how many commits.
    pub fn write_stats(&self) -> WriteStats {
        self.writer.stats()
    }

    /// Writes waiting in the writer's queue for a batch to take them up
    /// (a backlog gauge; tests use it to know a write is queued).
    pub fn write_queue_len(&self) -> usize {
        self.writer.queued()
    }

    /// Closes both pools, waiting for connections in use to come back.
    /// Writes after this fail as `Unavailable`.
    pub async fn close(&self) {
        self.reader.close().await;
        self.write_pool.close().await;
    }

    /// Runs `op` as one write of the writer's next batch, and keeps its
    /// changes if it succeeds.
    async fn write<T, F>(&self, op: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: for<'c> FnOnce(&'c mut SqliteConnection) -> BoxFuture<'c, StoreResult<T>>
            + Send
            + 'static,
    {
        self.writer.write(|_| true, op).await
    }
}

/// Creates the database file readable by its owner only (0600), or
/// restricts an existing one and its WAL and shared-memory files: they hold
/// the token signing secret, the code key and account password hashes.
/// SQLite creates the WAL and shared-memory files with the database file's
/// mode.
fn restrict_files(path: &Path) -> StoreResult<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        if path.as_os_str().is_empty() || path == Path::new(":memory:") {
            return Ok(());
        }
        if !path.exists() {
            std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o600)
                .open(path)
                .map_err(|e| {
                    StoreError::Unavailable(format!("cannot create {}: {e}", path.display()))
                })?;
        }
        for suffix in ["", "-wal", "-shm", "-journal"] {
            let mut p = path.as_os_str().to_owned();
            p.push(suffix);
            let p = std::path::PathBuf::from(p);
            if let Ok(m) = std::fs::metadata(&p)
                && m.permissions().mode() & 0o077 != 0
                // Only the file's owner may change its mode; a file of
                // someone else's is left to its owner, with a warning.
                && let Err(e) = std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600))
            {
                tracing::warn!(file = %p.display(), error = %e,
                    "could not restrict a database file to its owner");
            }
        }
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

async fn migrate(pool: &SqlitePool) -> StoreResult<()> {
    let migrations = MIGRATIONS
        .iter()
        .map(|&(version, description, sql)| {
            Migration::new(
                version,
                description.into(),
                MigrationType::Simple,
                sql.into_sql_str(),
                false,
            )
        })
        .collect();
    let migrator = Migrator::with_migrations(migrations);
    // SQLx takes no lock for SQLite migrations: processes opening a fresh
    // file together each see "not applied"; all but the first then fail on
    // `create table` once the first commits, or with SQLITE_BUSY when their
    // read transaction cannot be upgraded to a write (SQLite answers that at
    // once, without the busy timeout). The winner's migration is recorded,
    // so running again finds it applied and goes on.
    let mut result = migrator.run(pool).await;
    for attempt in 0..40u64 {
        match &result {
            Err(e) if lost_race(&e.to_string()) => {
                tokio::time::sleep(Duration::from_millis(10 + attempt * 5)).await;
                result = migrator.run(pool).await;
            }
            _ => break,
        }
    }
    match result {
        Ok(()) => Ok(()),
        Err(MigrateError::VersionMissing(found)) => {
            let newest: Option<i64> =
                sqlx::query_scalar("select max(version) from _sqlx_migrations")
                    .fetch_one(pool)
                    .await
                    .map_err(db)?;
            Err(StoreError::SchemaTooNew {
                found: newest.unwrap_or(found).max(found),
                known: SCHEMA_VERSION,
            })
        }
        Err(MigrateError::Execute(e)) => Err(db(e)),
        Err(e) => Err(StoreError::Internal(format!("migration failed: {e}"))),
    }
}

/// One retention batch, in one write: the oldest `max` verifications
/// created before `cutoff`, their outbox rows first (they reference them),
/// then inbox rows. Both deletes of verifications pick the same rows: the
/// same ordered query inside one transaction.
async fn purge(conn: &mut SqliteConnection, cutoff: i64, max: u32) -> StoreResult<Purged> {
    let outbox = sqlx::query(
        "delete from outbox where verification_id in
             (select id from verifications where created_at < ?1
              order by created_at, id limit ?2)",
    )
    .bind(cutoff)
    .bind(max)
    .execute(&mut *conn)
    .await
    .map_err(db)?
    .rows_affected();
    // Own-number records reference their verification (and hold the number).
    sqlx::query(
        "delete from own_numbers where verification_id in
             (select id from verifications where created_at < ?1
              order by created_at, id limit ?2)",
    )
    .bind(cutoff)
    .bind(max)
    .execute(&mut *conn)
    .await
    .map_err(db)?;
    // Their events (webhook deliveries name the verification), before the
    // verifications the selection reads.
    let mut events = sqlx::query(
        "delete from events where verification_id in
             (select id from verifications where created_at < ?1
              order by created_at, id limit ?2)",
    )
    .bind(cutoff)
    .bind(max)
    .execute(&mut *conn)
    .await
    .map_err(db)?
    .rows_affected();
    let verifications = sqlx::query(
        "delete from verifications where id in
             (select id from verifications where created_at < ?1
              order by created_at, id limit ?2)",
    )
    .bind(cutoff)
    .bind(max)
    .execute(&mut *conn)
    .await
    .map_err(db)?
    .rows_affected();
    let inbox = sqlx::query(
        "delete from inbox where id in
             (select id from inbox where created_at < ?1 order by created_at, id limit ?2)",
    )
    .bind(cutoff)
    .bind(max)
    .execute(&mut *conn)
    .await
    .map_err(db)?
    .rows_affected();
    // Events older than the cutoff whose verification is already gone (or
    // not yet swept): an event never outlives retention either.
    events += sqlx::query(
        "delete from events where id in
             (select id from events where created_at < ?1 order by created_at, id limit ?2)",
    )
    .bind(cutoff)
    .bind(max)
    .execute(&mut *conn)
    .await
    .map_err(db)?
    .rows_affected();
    Ok(Purged {
        verifications,
        outbox,
        inbox,
        events,
    })
}

/// Whether an error opening a fresh file is another opener having got there
/// first, so trying again will succeed. A migration that can run twice (a
/// table rebuild, as 3 is) fails only when its version is recorded; that
/// insert is in the migration's own transaction, so the loser's run was
/// rolled back whole.
fn lost_race(message: &str) -> bool {
    // `duplicate column name`: an `alter table … add column` another
    // opener's migration already applied. A migration whose statements all
    // succeed a second time (a table rebuilt under a new name) fails only on
    // recording its version; its transaction, and so the repeat, rolls back.
    message.contains("already exists")
        || message.contains("database is locked")
        || message.contains("duplicate column name")
        || message.contains("UNIQUE constraint failed: _sqlx_migrations.version")
}

/// Maps a SQLx error to the store's: faults of reaching the database become
/// `Unavailable` (503: nothing was written), key collisions `Conflict`, the
/// rest `Internal`.
pub(crate) fn db(e: sqlx::Error) -> StoreError {
    use sqlx::Error as E;
    match &e {
        E::PoolTimedOut | E::PoolClosed | E::WorkerCrashed | E::Io(_) => {
            StoreError::Unavailable(e.to_string())
        }
        E::Database(d) if d.is_unique_violation() => StoreError::Conflict(d.message().to_owned()),
        E::Database(d) => {
            // Primary result codes (the low byte of the extended code) that
            // mean the file could not be used, not that the statement was
            // wrong: BUSY, LOCKED, NOMEM, READONLY, IOERR, FULL, CANTOPEN.
            let primary = d
                .code()
                .and_then(|c| c.parse::<i32>().ok())
                .map(|c| c & 0xff);
            if matches!(primary, Some(5 | 6 | 7 | 8 | 10 | 13 | 14)) {
                StoreError::Unavailable(e.to_string())
            } else {
                StoreError::Internal(e.to_string())
            }
        }
        _ => StoreError::Internal(e.to_string()),
    }
}

/// The account an `update accounts … returning` statement changed, or
/// `NotFound` when it matched none.
fn updated(row: Result<Option<sqlx::sqlite::SqliteRow>, sqlx::Error>) -> StoreResult<Account> {
    row.map_err(db)?
        .as_ref()
        .map(rows::account)
        .transpose()?
        .ok_or(StoreError::NotFound)
}

#[async_trait]
impl SystemStore for SqliteStore {
    async fn ping(&self) -> StoreResult<()> {
        sqlx::query("select 1")
            .execute(&self.reader)
            .await
            .map_err(db)?;
        Ok(())
    }

    fn backend(&self) -> &'static str {
        "sqlite"
    }

    async fn secret_get_or_init(&self, name: &str, candidate: &[u8]) -> StoreResult<Vec<u8>> {
        let (name, candidate) = (name.to_owned(), candidate.to_vec());
        self.write(move |conn| {
            Box::pin(async move {
                // The trait passes no clock and the time is only informational
                // here, so the database's own clock stamps it.
                sqlx::query(
                    "insert into secrets (name, value, created_at)
                     values (?1, ?2, cast(unixepoch('subsec') * 1000 as integer))
                     on conflict (name) do nothing",
                )
                .bind(&name)
                .bind(candidate)
                .execute(&mut *conn)
                .await
                .map_err(db)?;
                sqlx::query_scalar("select value from secrets where name = ?1")
                    .bind(&name)
                    .fetch_one(&mut *conn)
                    .await
                    .map_err(db)
            })
        })
        .await
    }

    async fn purge_before(&self, cutoff: i64, max: u32) -> StoreResult<Purged> {
        self.write(move |conn| Box::pin(async move { purge(conn, cutoff, max).await }))
            .await
    }

    async fn scrub(&self) -> StoreResult<()> {
        if self.memory {
            return Ok(());
        }
        // On a reader connection: the checkpoint takes the write lock itself
        // (waiting on the busy timeout) and leaves the writer's batching
        // alone. `TRUNCATE` empties the WAL, where old page images (texts
        // since set to null) would otherwise linger until overwritten.
        let (busy, _, _): (i64, i64, i64) = sqlx::query_as("pragma wal_checkpoint(truncate)")
            .fetch_one(&self.reader)
            .await
            .map_err(db)?;
        if busy != 0 {
            return Err(StoreError::Unavailable(
                "the WAL checkpoint was blocked by a reader; it is retried".into(),
            ));
        }
        Ok(())
    }
}

#[async_trait]
impl AccountStore for SqliteStore {
    async fn account_create(&self, new: NewAccount) -> StoreResult<Account> {
        let settings = new.settings.clone();
        let settings_text = settings_json(&settings)?;
        let row = new.clone();
        let result = self
            .write(move |conn| {
                Box::pin(async move {
                    sqlx::query(
                        "insert into accounts (customer_id, password_hash, email, email_key,
                                               country, credits, test_credits, settings,
                                               created_at)
                         values (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                    )
                    .bind(row.customer_id.as_str())
                    .bind(&row.password_hash)
                    .bind(&row.email)
                    .bind(row.email.as_deref().map(email_key))
                    .bind(&row.country)
                    .bind(row.credits)
                    .bind(row.test_credits)
                    .bind(settings_text)
                    .bind(row.created_at)
                    .execute(&mut *conn)
                    .await
                    .map_err(db)
                })
            })
            .await;
        match result {
            Ok(_) => {}
            Err(StoreError::Conflict(msg)) if msg.contains("email_key") => {
                return Err(StoreError::Conflict("e-mail already in use".into()));
            }
            Err(StoreError::Conflict(_)) => {
                return Err(StoreError::Conflict("customerId already exists".into()));
            }
            Err(e) => return Err(e),
        }
        Ok(Account {
            customer_id: new.customer_id,
            password_hash: new.password_hash,
            email: new.email,
            country: new.country,
            credits: new.credits,
            test_credits: new.test_credits,
            token_epoch: 0,
            disabled: false,
            settings,
            created_at: new.created_at,
        })
    }

    async fn account_get(&self, id: &CustomerId) -> StoreResult<Option<Account>> {
        sqlx::query(concat!(
            "select ",
            account_columns!(),
            " from accounts where customer_id = ?1"
        ))
        .bind(id.as_str())
        .fetch_optional(&self.reader)
        .await
        .map_err(db)?
        .as_ref()
        .map(rows::account)
        .transpose()
    }

    async fn account_by_email(&self, email: &str) -> StoreResult<Option<Account>> {
        sqlx::query(concat!(
            "select ",
            account_columns!(),
            " from accounts where email_key = ?1"
        ))
        .bind(email_key(email))
        .fetch_optional(&self.reader)
        .await
        .map_err(db)?
        .as_ref()
        .map(rows::account)
        .transpose()
    }

    async fn account_list(&self, limit: u32, offset: u32) -> StoreResult<Vec<Account>> {
        sqlx::query(concat!(
            "select ",
            account_columns!(),
            " from accounts order by created_at desc, customer_id desc limit ?1 offset ?2"
        ))
        .bind(limit)
        .bind(offset)
        .fetch_all(&self.reader)
        .await
        .map_err(db)?
        .iter()
        .map(rows::account)
        .collect()
    }

    async fn account_add_credits(&self, id: &CustomerId, credits: i64) -> StoreResult<Account> {
        // Read, add in Rust, write: SQLite's `+` turns an overflow into a
        // REAL, where Rust saturates; being one write keeps the read and the
        // write together.
        let id = id.clone();
        self.write(move |conn| {
            Box::pin(async move {
                let balance: Option<i64> =
                    sqlx::query_scalar("select credits from accounts where customer_id = ?1")
                        .bind(id.as_str())
                        .fetch_optional(&mut *conn)
                        .await
                        .map_err(db)?;
                let balance = balance.ok_or(StoreError::NotFound)?;
                let row = sqlx::query(concat!(
                    "update accounts set credits = ?2 where customer_id = ?1 returning ",
                    account_columns!()
                ))
                .bind(id.as_str())
                .bind(balance.saturating_add(credits).max(0))
                .fetch_one(&mut *conn)
                .await
                .map_err(db)?;
                rows::account(&row)
            })
        })
        .await
    }

    async fn account_set_password(
        &self,
        id: &CustomerId,
        password_hash: &str,
    ) -> StoreResult<Account> {
        let (id, password_hash) = (id.clone(), password_hash.to_owned());
        self.write(move |conn| {
            Box::pin(async move {
                let row = sqlx::query(concat!(
                    "update accounts set password_hash = ?2, token_epoch = token_epoch + 1
                     where customer_id = ?1 returning ",
                    account_columns!()
                ))
                .bind(id.as_str())
                .bind(password_hash)
                .fetch_optional(&mut *conn)
                .await;
                updated(row)
            })
        })
        .await
    }

    async fn account_revoke_tokens(&self, id: &CustomerId) -> StoreResult<Account> {
        let id = id.clone();
        self.write(move |conn| {
            Box::pin(async move {
                let row = sqlx::query(concat!(
                    "update accounts set token_epoch = token_epoch + 1
                     where customer_id = ?1 returning ",
                    account_columns!()
                ))
                .bind(id.as_str())
                .fetch_optional(&mut *conn)
                .await;
                updated(row)
            })
        })
        .await
    }

    async fn account_set_disabled(&self, id: &CustomerId, disabled: bool) -> StoreResult<Account> {
        let id = id.clone();
        self.write(move |conn| {
            Box::pin(async move {
                let row = sqlx::query(concat!(
                    "update accounts set disabled = ?2 where customer_id = ?1 returning ",
                    account_columns!()
                ))
                .bind(id.as_str())
                .bind(disabled)
                .fetch_optional(&mut *conn)
                .await;
                updated(row)
            })
        })
        .await
    }

    async fn account_set_settings(
        &self,
        id: &CustomerId,
        settings: &AccountSettings,
    ) -> StoreResult<Account> {
        let (id, settings) = (id.clone(), settings_json(settings)?);
        self.write(move |conn| {
            Box::pin(async move {
                let row = sqlx::query(concat!(
                    "update accounts set settings = ?2 where customer_id = ?1 returning ",
                    account_columns!()
                ))
                .bind(id.as_str())
                .bind(settings)
                .fetch_optional(&mut *conn)
                .await;
                updated(row)
            })
        })
        .await
    }
}

#[async_trait]
impl VerificationStore for SqliteStore {
    async fn verification_create(&self, req: NewVerification) -> StoreResult<CreateOutcome> {
        // Only a `Created` keeps its changes (contract §2: a refused send
        // charges nothing), and a refusal that recorded the block it
        // triggered (which charged nothing either); the other refusals
        // decide before writing, and rolling them back keeps that true
        // whatever `send::create` becomes.
        let created = |o: &CreateOutcome| {
            matches!(
                o,
                CreateOutcome::Created(_)
                    | CreateOutcome::Blocked {
                        new_block: Some(_),
                        ..
                    }
            )
        };
        self.writer
            .write(created, move |conn| Box::pin(send::create(conn, req)))
            .await
    }

    async fn verification_get(
        &self,
        customer: &CustomerId,
        id: VerificationId,
    ) -> StoreResult<Option<Verification>> {
        sqlx::query(concat!(
            "select ",
            verification_columns!(),
            " from verifications where id = ?1 and customer_id = ?2"
        ))
        .bind(id_i64(id))
        .bind(customer.as_str())
        .fetch_optional(&self.reader)
        .await
        .map_err(db)?
        .as_ref()
        .map(rows::verification)
        .transpose()
    }

    async fn verification_apply(
        &self,
        customer: &CustomerId,
        id: VerificationId,
        expected_wrong_attempts: u32,
        action: ValidationAction,
        now: i64,
    ) -> StoreResult<bool> {
        // One conditional update: of racing validations that read the same
        // row, only the first to write still finds its condition true
        // (contract §3: exactly one 200).
        let customer = customer.clone();
        self.write(move |conn| {
            Box::pin(async move {
                // The event of the change commits with it: `completed`, or
                // `failed` on the wrong code that spends the last attempt.
                let query = match action {
                    ValidationAction::Complete => sqlx::query_as(
                        "update verifications set state = 'completed', completed_at = ?4
                         where id = ?1 and customer_id = ?2 and state = 'pending'
                           and wrong_attempts = ?3
                         returning wrong_attempts, max_attempts",
                    )
                    .bind(id_i64(id))
                    .bind(customer.as_str())
                    .bind(expected_wrong_attempts)
                    .bind(now),
                    ValidationAction::Wrong => sqlx::query_as(
                        "update verifications set wrong_attempts = wrong_attempts + 1
                         where id = ?1 and customer_id = ?2 and state = 'pending'
                           and wrong_attempts = ?3
                         returning wrong_attempts, max_attempts",
                    )
                    .bind(id_i64(id))
                    .bind(customer.as_str())
                    .bind(expected_wrong_attempts),
                };
                let done: Option<(i64, i64)> =
                    query.fetch_optional(&mut *conn).await.map_err(db)?;
                let Some((wrong, max)) = done else {
                    return Ok(false);
                };
                match action {
                    ValidationAction::Complete => {
                        // Counted on the day of its send, in the same write.
                        sqlx::query(
                            "insert into daily_stats (customer_id, day, sends, completed, created_at)
                             select customer_id,
                                    (created_at - ((created_at % 86400000) + 86400000) % 86400000)
                                        / 86400000,
                                    0, 1, ?2
                               from verifications where id = ?1
                             on conflict (customer_id, day) do update
                                set completed = completed + 1",
                        )
                        .bind(id_i64(id))
                        .bind(now)
                        .execute(&mut *conn)
                        .await
                        .map_err(db)?;
                        // Fallback steps still held carry the code: not needed.
                        outbox::cancel_queued(conn, id_i64(id), now).await?;
                        events::emit(conn, id_i64(id), EventKind::Completed, "{}", now).await?;
                    }
                    ValidationAction::Wrong => {
                        // A verification just killed by wrong codes must not
                        // have its code sent again by a held step.
                        outbox::cancel_queued_if_dead(conn, id_i64(id), now).await?;
                        if wrong >= max {
                            let d = attempts_detail();
                            events::emit(conn, id_i64(id), EventKind::Failed, &d, now).await?;
                        }
                    }
                }
                Ok(true)
            })
        })
        .await
    }

    async fn wrong_codes_since(
        &self,
        customer: &CustomerId,
        destination_e164: &str,
        since: i64,
    ) -> StoreResult<u32> {
        let n: i64 = sqlx::query_scalar(
            "select coalesce(sum(wrong_attempts), 0) from verifications
             where customer_id = ?1 and destination = ?2 and created_at >= ?3",
        )
        .bind(customer.as_str())
        .bind(destination_e164)
        .bind(since)
        .fetch_one(&self.reader)
        .await
        .map_err(db)?;
        Ok(u32::try_from(n).unwrap_or(u32::MAX))
    }

    async fn verification_list(
        &self,
        customer: &CustomerId,
        filter: &VerificationFilter,
        limit: u32,
        offset: u32,
    ) -> StoreResult<Vec<Verification>> {
        // `instr`, not `like`: a number filter holding `%` or `_` must match
        // itself, not act as a pattern.
        sqlx::query(concat!(
            "select ",
            verification_columns!(),
            " from verifications
             where customer_id = ?1
               and (?2 is null or instr(destination, ?2) > 0)
               and (?3 is null or state = ?3)
               and (?4 is null or created_at >= ?4)
               and (?5 is null or created_at < ?5)
             order by created_at desc, id desc
             limit ?6 offset ?7"
        ))
        .bind(customer.as_str())
        .bind(filter.number.as_deref())
        .bind(filter.state.map(|s| s.as_str()))
        .bind(filter.since)
        .bind(filter.until)
        .bind(limit)
        .bind(offset)
        .fetch_all(&self.reader)
        .await
        .map_err(db)?
        .iter()
        .map(rows::verification)
        .collect()
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
        // `completed` never exceeds its `sends` (a conversion rate).
        let found: Vec<(i64, i64, i64)> = sqlx::query_as(
            "select day, sends, completed from daily_stats
             where customer_id = ?1 and day >= ?2 and day <= ?3
             order by day",
        )
        .bind(customer.as_str())
        .bind(first_day)
        .bind(last_day)
        .fetch_all(&self.reader)
        .await
        .map_err(db)?;
        Ok(fill_days(first_day, last_day, found))
    }

    async fn channel_stats(
        &self,
        customer: &CustomerId,
        since: i64,
        until: i64,
    ) -> StoreResult<Vec<ChannelStats>> {
        // A message that failed before any channel took it has no channel;
        // it is counted under "" so failures are not lost from the totals.
        let found: Vec<(String, i64, i64, i64)> = sqlx::query_as(
            "select coalesce(o.channel, '') as channel, count(*),
                    sum(o.status in (select value from json_each(?4))),
                    sum(o.status in (select value from json_each(?5)))
             from outbox o
             where o.customer_id = ?1 and o.created_at >= ?2 and o.created_at < ?3
               and o.attempts > 0
             group by 1 order by 1",
        )
        .bind(customer.as_str())
        .bind(since)
        .bind(until)
        .bind(shared::status_names_json(&DeliveryStatus::SUCCEEDED))
        .bind(shared::status_names_json(&DeliveryStatus::FINAL_FAILURES))
        .fetch_all(&self.reader)
        .await
        .map_err(db)?;
        Ok(found
            .into_iter()
            .map(|(channel, attempted, succeeded, failed)| ChannelStats {
                channel,
                attempted: to_u64(attempted),
                succeeded: to_u64(succeeded),
                failed: to_u64(failed),
            })
            .collect())
    }
}

#[async_trait]
impl OutboxStore for SqliteStore {
    async fn outbox_claim(
        &self,
        worker: &str,
        max: u32,
        lease_ms: i64,
        now: i64,
    ) -> StoreResult<Vec<OutboxMessage>> {
        let worker = worker.to_owned();
        self.write(move |conn| {
            Box::pin(async move { outbox::claim(conn, &worker, max, lease_ms, now).await })
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
        let (worker, sent) = (worker.to_owned(), sent.clone());
        self.write(move |conn| {
            Box::pin(async move { outbox::sent(conn, message_id, &worker, &sent, now).await })
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
        let (worker, error) = (worker.to_owned(), error.to_owned());
        self.write(move |conn| {
            Box::pin(async move {
                outbox::retry(conn, message_id, &worker, next_attempt_at, &error, now).await
            })
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
        let (worker, error) = (worker.to_owned(), error.to_owned());
        self.write(move |conn| {
            Box::pin(async move { outbox::failed(conn, message_id, &worker, &error, now).await })
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
        let (channel, gateway_id, detail) =
            (channel.to_owned(), gateway_id.to_owned(), detail.to_owned());
        self.write(move |conn| {
            Box::pin(async move {
                outbox::receipt(conn, &channel, &gateway_id, status, &detail, now).await
            })
        })
        .await
    }

    async fn outbox_depth(&self) -> StoreResult<OutboxDepth> {
        // The trait passes no clock, so "in flight" means "has a lease
        // holder": a dead worker's expired lease counts until it is claimed
        // again.
        let (queued, in_flight, oldest): (i64, i64, Option<i64>) = sqlx::query_as(
            "select coalesce(sum(lease_owner is null), 0),
                    coalesce(sum(lease_owner is not null), 0), min(created_at)
             from outbox where status = 'queued'",
        )
        .fetch_one(&self.reader)
        .await
        .map_err(db)?;
        // Failed in the outbox: given up by a worker (or a receipt saying
        // so); a message a gateway took and a receipt later called
        // undeliverable is a delivery outcome, counted in channel stats.
        let failed: i64 = sqlx::query_scalar("select count(*) from outbox where status = 'failed'")
            .fetch_one(&self.reader)
            .await
            .map_err(db)?;
        Ok(OutboxDepth {
            queued: to_u64(queued),
            in_flight: to_u64(in_flight),
            failed: to_u64(failed),
            oldest_queued_at: oldest,
        })
    }

    async fn outbox_for_verification(
        &self,
        id: VerificationId,
    ) -> StoreResult<Option<OutboxMessage>> {
        sqlx::query(concat!(
            "select ",
            outbox_columns!(),
            " from outbox o join verifications v on v.id = o.verification_id
             where o.verification_id = ?1 and o.step = 0"
        ))
        .bind(id_i64(id))
        .fetch_optional(&self.reader)
        .await
        .map_err(db)?
        .as_ref()
        .map(rows::outbox_message)
        .transpose()
    }

    async fn outbox_attempts(&self, id: VerificationId) -> StoreResult<Vec<OutboxMessage>> {
        sqlx::query(concat!(
            "select ",
            outbox_columns!(),
            " from outbox o join verifications v on v.id = o.verification_id
             where o.verification_id = ?1 order by o.step"
        ))
        .bind(id_i64(id))
        .fetch_all(&self.reader)
        .await
        .map_err(db)?
        .iter()
        .map(rows::outbox_message)
        .collect()
    }
}

#[async_trait]
impl InboxStore for SqliteStore {
    async fn inbox_put(&self, msg: &InboxEntry) -> StoreResult<()> {
        let msg = msg.clone();
        self.write(move |conn| {
            Box::pin(async move {
                sqlx::query(
                    "insert into inbox (customer_id, destination, text, verification_id,
                                        created_at)
                     values (?1, ?2, ?3, ?4, ?5)",
                )
                .bind(msg.customer_id.as_ref().map(CustomerId::as_str))
                .bind(&msg.destination)
                .bind(&msg.text)
                .bind(msg.verification_id.map(id_i64))
                .bind(msg.created_at)
                .execute(&mut *conn)
                .await
                .map_err(db)?;
                Ok(())
            })
        })
        .await
    }

    async fn inbox_list(
        &self,
        customer: Option<&CustomerId>,
        to: Option<&str>,
        limit: u32,
    ) -> StoreResult<Vec<InboxEntry>> {
        sqlx::query(
            "select customer_id, destination, text, verification_id, created_at from inbox
             where (?1 is null or customer_id = ?1) and (?2 is null or destination = ?2)
             order by created_at desc, id desc limit ?3",
        )
        .bind(customer.map(CustomerId::as_str))
        .bind(to)
        .bind(limit)
        .fetch_all(&self.reader)
        .await
        .map_err(db)?
        .iter()
        .map(rows::inbox_entry)
        .collect()
    }

    async fn inbox_purge(&self, before_ms: i64) -> StoreResult<u64> {
        self.write(move |conn| {
            Box::pin(async move {
                let r = sqlx::query("delete from inbox where created_at < ?1")
                    .bind(before_ms)
                    .execute(&mut *conn)
                    .await
                    .map_err(db)?;
                Ok(r.rows_affected())
            })
        })
        .await
    }
}

#[async_trait]
impl FraudStore for SqliteStore {
    async fn fraud_blocks_active(&self, now: i64, limit: u32) -> StoreResult<Vec<FraudBlock>> {
        let found: Vec<(String, String, String, i64, i64, Option<i64>, i64)> = sqlx::query_as(
            "select scope, key, reason, strikes, blocked_until, lifted_at, created_at
               from fraud_blocks where blocked_until > ?1
              order by updated_at desc limit ?2",
        )
        .bind(now)
        .bind(limit)
        .fetch_all(&self.reader)
        .await
        .map_err(db)?;
        found
            .into_iter()
            .map(
                |(scope, key, reason, strikes, until, lifted_at, created_at)| {
                    Ok(FraudBlock {
                        scope: shared::scope(&scope)?,
                        key,
                        reason,
                        strikes: shared::count(strikes, "strikes")?,
                        until,
                        lifted_at,
                        created_at,
                    })
                },
            )
            .collect()
    }

    async fn fraud_block_lift(
        &self,
        scope: otpgate_core::fraud::BlockScope,
        key: &str,
        now: i64,
    ) -> StoreResult<bool> {
        let key = key.to_owned();
        self.write(move |conn| {
            Box::pin(async move {
                let done = sqlx::query(
                    "update fraud_blocks
                        set blocked_until = ?3, lifted_at = ?3, updated_at = ?3
                      where scope = ?1 and key = ?2 and blocked_until > ?3",
                )
                .bind(scope.as_str())
                .bind(key)
                .bind(now)
                .execute(&mut *conn)
                .await
                .map_err(db)?;
                Ok(done.rows_affected() > 0)
            })
        })
        .await
    }

    async fn safe_list(&self) -> StoreResult<Vec<SafeEntry>> {
        let found: Vec<(String, String, i64)> =
            sqlx::query_as("select entry, note, created_at from safe_list order by entry")
                .fetch_all(&self.reader)
                .await
                .map_err(db)?;
        Ok(found
            .into_iter()
            .map(|(entry, note, created_at)| SafeEntry {
                entry,
                note,
                created_at,
            })
            .collect())
    }

    async fn safe_list_add(&self, entry: &str, note: &str, now: i64) -> StoreResult<()> {
        let (entry, note) = (entry.to_owned(), note.to_owned());
        self.write(move |conn| {
            Box::pin(async move {
                sqlx::query(
                    "insert into safe_list (entry, note, created_at) values (?1, ?2, ?3)
                     on conflict (entry) do update set note = excluded.note",
                )
                .bind(entry)
                .bind(note)
                .bind(now)
                .execute(&mut *conn)
                .await
                .map_err(db)?;
                Ok(())
            })
        })
        .await
    }

    async fn safe_list_remove(&self, entry: &str) -> StoreResult<bool> {
        let entry = entry.to_owned();
        self.write(move |conn| {
            Box::pin(async move {
                let done = sqlx::query("delete from safe_list where entry = ?1")
                    .bind(entry)
                    .execute(&mut *conn)
                    .await
                    .map_err(db)?;
                Ok(done.rows_affected() > 0)
            })
        })
        .await
    }

    async fn own_numbers(&self, customer: &CustomerId) -> StoreResult<Vec<OwnNumber>> {
        let found: Vec<(String, i64)> = sqlx::query_as(
            "select destination, min(verified_at) from own_numbers
              where customer_id = ?1 and verified_at is not null
              group by destination order by 2",
        )
        .bind(customer.as_str())
        .fetch_all(&self.reader)
        .await
        .map_err(db)?;
        Ok(found
            .into_iter()
            .map(|(destination, verified_at)| OwnNumber {
                destination,
                verified_at,
            })
            .collect())
    }

    async fn own_number_confirm(
        &self,
        customer: &CustomerId,
        id: VerificationId,
        now: i64,
    ) -> StoreResult<bool> {
        let customer = customer.clone();
        self.write(move |conn| {
            Box::pin(async move {
                let done = sqlx::query(
                    "update own_numbers set verified_at = ?3
                      where verification_id = ?1 and customer_id = ?2 and verified_at is null
                        and exists (select 1 from verifications v
                                     where v.id = ?1 and v.state = 'completed')",
                )
                .bind(id_i64(id))
                .bind(customer.as_str())
                .bind(now)
                .execute(&mut *conn)
                .await
                .map_err(db)?;
                Ok(done.rows_affected() > 0)
            })
        })
        .await
    }

    async fn own_number_remove(
        &self,
        customer: &CustomerId,
        destination: &str,
    ) -> StoreResult<bool> {
        let (customer, destination) = (customer.clone(), destination.to_owned());
        self.write(move |conn| {
            Box::pin(async move {
                // The rows stay (they count against the day's own-number
                // sends); only the proof is withdrawn.
                let done = sqlx::query(
                    "update own_numbers set verified_at = null
                      where customer_id = ?1 and destination = ?2 and verified_at is not null",
                )
                .bind(customer.as_str())
                .bind(destination)
                .execute(&mut *conn)
                .await
                .map_err(db)?;
                Ok(done.rows_affected() > 0)
            })
        })
        .await
    }

    async fn conversion_report(
        &self,
        since: i64,
        limit: u32,
    ) -> StoreResult<(Vec<ConversionRow>, Vec<ConversionRow>)> {
        let by_country: Vec<(i64, i64, i64)> = sqlx::query_as(
            "select country_code, count(*), sum(state = 'completed') from verifications
              where created_at > ?1 group by country_code order by 2 desc, 1 limit ?2",
        )
        .bind(since)
        .bind(limit)
        .fetch_all(&self.reader)
        .await
        .map_err(db)?;
        let by_prefix: Vec<(String, i64, i64)> = sqlx::query_as(
            "select prefix, count(*), sum(state = 'completed') from verifications
              where created_at > ?1 and prefix is not null
              group by prefix order by 2 desc, 1 limit ?2",
        )
        .bind(since)
        .bind(limit)
        .fetch_all(&self.reader)
        .await
        .map_err(db)?;
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
    }
}

#[async_trait]
impl EventStore for SqliteStore {
    async fn webhook_get(&self, customer: &CustomerId) -> StoreResult<Option<Webhook>> {
        let row: Option<events::WebhookRow> = sqlx::query_as(
            "select customer_id, url, secret, created_at, updated_at from webhooks
             where customer_id = ?1",
        )
        .bind(customer.as_str())
        .fetch_optional(&self.reader)
        .await
        .map_err(db)?;
        row.map(events::webhook).transpose()
    }

    async fn webhook_set(
        &self,
        customer: &CustomerId,
        url: &str,
        secret: &str,
        now: i64,
    ) -> StoreResult<Webhook> {
        let (customer, url, secret) = (customer.clone(), url.to_owned(), secret.to_owned());
        self.write(move |conn| {
            Box::pin(async move {
                events::set_webhook(conn, customer.as_str(), &url, &secret, now).await
            })
        })
        .await
    }

    async fn webhook_delete(&self, customer: &CustomerId) -> StoreResult<()> {
        let customer = customer.clone();
        self.write(move |conn| {
            Box::pin(async move {
                sqlx::query("delete from webhooks where customer_id = ?1")
                    .bind(customer.as_str())
                    .execute(&mut *conn)
                    .await
                    .map_err(db)?;
                Ok(())
            })
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
        let worker = worker.to_owned();
        self.write(move |conn| {
            Box::pin(async move { events::claim(conn, &worker, max, lease_ms, now).await })
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
        let (worker, attempt) = (worker.to_owned(), attempt.clone());
        self.write(move |conn| {
            Box::pin(async move { events::record(conn, id, &worker, &attempt, now).await })
        })
        .await
    }

    async fn events_sweep_expired(&self, now: i64) -> StoreResult<u64> {
        self.write(move |conn| Box::pin(async move { events::sweep_expired(conn, now).await }))
            .await
    }

    async fn event_list(&self, customer: &CustomerId, limit: u32) -> StoreResult<Vec<EventRecord>> {
        let rows: Vec<EventRecordRow> = sqlx::query_as(concat!(
            "select ",
            event_record_columns!(),
            " from events where customer_id = ?1
             order by created_at desc, id desc limit ?2"
        ))
        .bind(customer.as_str())
        .bind(limit)
        .fetch_all(&self.reader)
        .await
        .map_err(db)?;
        rows.into_iter().map(event_record).collect()
    }

    async fn event_backlog(&self) -> StoreResult<EventBacklog> {
        let (pending, oldest): (i64, Option<i64>) =
            sqlx::query_as("select count(*), min(created_at) from events where status = 'pending'")
                .fetch_one(&self.reader)
                .await
                .map_err(db)?;
        Ok(EventBacklog {
            pending: to_u64(pending),
            oldest_at: oldest,
        })
    }
}

#[cfg(test)]
mod upgrade_tests {
    use super::*;

    /// A database migrated by a build before fallback steps (schema 2), with
    /// a queued and a sent message, opens under this build: the rows keep
    /// their ids, become step 0 of the verification's flow, and the queued
    /// one is still claimed and sent.
    #[tokio::test]
    async fn a_schema_2_database_keeps_its_outbox_rows_as_first_steps() {
        let dir = std::env::temp_dir().join(format!(
            "otpgate-upgrade-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos())
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("old.db");
        {
            let opts = SqliteConnectOptions::new()
                .filename(&path)
                .create_if_missing(true)
                .foreign_keys(true);
            let pool = SqlitePoolOptions::new()
                .max_connections(1)
                .connect_with(opts)
                .await
                .unwrap();
            let old = MIGRATIONS[..2]
                .iter()
                .map(|&(version, description, sql)| {
                    Migration::new(
                        version,
                        description.into(),
                        MigrationType::Simple,
                        sql.into_sql_str(),
                        false,
                    )
                })
                .collect();
            Migrator::with_migrations(old).run(&pool).await.unwrap();
            sqlx::raw_sql(
                "insert into accounts (customer_id, password_hash, credits, test_credits, created_at)
                     values ('C-000000000000001', 'x', 5, 0, 1);
                 insert into verifications (id, customer_id, country_code, national, destination,
                     flow_type, code_hash, otp_length, state, max_attempts, created_at, expires_at,
                     transaction_id, cost, cost_test, delivery)
                     values (7, 'C-000000000000001', 91, '9876543210', '919876543210', 'SMS', x'00', 4,
                             'pending', 5, 1000, 9999999999999, 't7', 1, 0, 'queued'),
                            (8, 'C-000000000000001', 91, '9876543211', '919876543211', 'WHATSAPP', x'00', 4,
                             'pending', 5, 1000, 9999999999999, 't8', 1, 0, 'sent');
                 insert into outbox (id, verification_id, text, status, next_attempt_at,
                                     created_at, updated_at)
                     values (41, 7, 'code 1234', 'queued', 1000, 1000, 1000);
                 insert into outbox (id, verification_id, text, status, next_attempt_at, channel,
                                     gateway_id, created_at, updated_at)
                     values (42, 8, null, 'sent', 1000, 'wa', 'wamid.X', 1000, 1000);",
            )
            .execute(&pool)
            .await
            .unwrap();
            pool.close().await;
        }
        let store = SqliteStore::open_path(&path).await.unwrap();
        assert_eq!(store.schema_version().await.unwrap(), SCHEMA_VERSION);
        let sent = store
            .outbox_for_verification(VerificationId::parse("8").unwrap())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            (
                sent.id,
                sent.step,
                sent.flow_type.as_str(),
                sent.gateway_id.as_deref()
            ),
            (42, 0, "WHATSAPP", Some("wamid.X"))
        );
        let claimed = store.outbox_claim("w", 10, 1000, 2000).await.unwrap();
        assert_eq!(claimed.len(), 1);
        assert_eq!(
            (
                claimed[0].id,
                claimed[0].step,
                claimed[0].flow_type.as_str()
            ),
            (41, 0, "SMS")
        );
        assert_eq!(claimed[0].text.as_deref(), Some("code 1234"));
        let info = SentInfo {
            channel: "sms".into(),
            gateway_id: Some("g".into()),
        };
        assert!(store.outbox_sent(41, "w", &info, 2001).await.unwrap());
        // New rows continue the old ids.
        let attempts = store
            .outbox_attempts(VerificationId::parse("7").unwrap())
            .await
            .unwrap();
        assert_eq!(attempts.len(), 1);
        assert_eq!(attempts[0].status, otpgate_core::DeliveryStatus::Sent);
        drop(store);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
