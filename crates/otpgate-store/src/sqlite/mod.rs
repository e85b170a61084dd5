//! The SQLite backend: otpgate on one machine, in one file.
//!
//! SQLite lets one connection write at a time. Rather than let several
//! connections fight over that lock (and back off on `SQLITE_BUSY`), all
//! writes go to one thread that owns the one write connection (`writer`):
//! it runs the writes queued at any moment in one transaction, each in its
//! own savepoint, and commits them with one fsync (group commit). Each write
//! is a synchronous closure over the connection with cached prepared
//! statements, handed to the thread once. Reads use a few separate
//! connections on tokio's blocking threads and run beside the writer (WAL
//! mode). Every write transaction still starts with `begin immediate`,
//! which takes the write lock up front: another process on the same file
//! (the CLI beside a running server, a second node) then waits on the busy
//! timeout instead of failing half-way through a read-then-write.
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
    fill_days, id_i64, settings_json, stats_days,
};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use otpgate_core::{CustomerId, DeliveryStatus, VerificationId};
use rusqlite::config::DbConfig;
use rusqlite::{Connection, OpenFlags, params};
use sha2::{Digest, Sha384};

use crate::{
    Account, AccountSettings, AccountStore, ChannelStats, ConversionRow, CreateOutcome, DailyStats,
    EventAttempt, EventBacklog, EventKind, EventRecord, EventStore, FraudBlock, FraudStore,
    InboxEntry, InboxStore, NewAccount, NewVerification, OutboxLease, OutboxMessage, OwnNumber,
    PendingEvent, Purged, SafeEntry, StoreError, StoreResult, SystemStore, ValidationAction,
    Verification, VerificationFilter, VerificationStore, Webhook,
};
use rows::{account_columns, verification_columns};
use writer::{Readers, all, exec, one, opt, sq, tuple};

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
    (
        8,
        "destination index",
        include_str!("../../migrations/sqlite/0008_destination_index.sql"),
    ),
    (
        9,
        "daily completions",
        include_str!("../../migrations/sqlite/0009_daily_completions.sql"),
    ),
];

/// The schema version this build migrates to (the newest migration).
pub const SCHEMA_VERSION: i64 = 9;
const _: () = assert!(MIGRATIONS[MIGRATIONS.len() - 1].0 == SCHEMA_VERSION);

/// How long a statement waits for another process's write lock before the
/// store reports itself unavailable (503).
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a request waits for a reader connection, or for its write to be
/// taken up by the writer.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);
/// The most writes committed together. Past a few dozen the fsync is no
/// longer what a batch waits on, and a bound keeps one batch's transaction
/// (and the wait of the callers queued behind it) short.
pub const MAX_BATCH: usize = 128;
/// Read connections beside the one writer.
const READERS: usize = 4;
/// Prepared statements each connection keeps (the store has about 80).
const STATEMENT_CACHE: usize = 128;
/// How often the checkpointer copies the WAL into the database file.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(100);

/// The SQLite [`crate::Store`].
#[derive(Debug, Clone)]
pub struct SqliteStore {
    /// Runs every write, in batches, on the write connection's thread.
    writer: writer::Writer,
    /// Reads; `None` for an in-memory database, read through the writer.
    readers: Option<Arc<Readers>>,
    /// An in-memory database: no files to restrict or scrub.
    memory: bool,
    /// Stops the checkpointer thread when the last clone is dropped or the
    /// store is closed; `None` without a WAL (in memory, read-only).
    checkpointer: Option<Arc<std::sync::Mutex<Option<std::sync::mpsc::Sender<()>>>>>,
}

/// Where a store's database is.
struct Location {
    /// `None`: in memory.
    path: Option<PathBuf>,
    read_only: bool,
}

impl Location {
    /// A URL as the server's configuration writes it: `sqlite://FILE`,
    /// `sqlite:FILE`, `sqlite::memory:`, with `?mode=ro|rw|rwc|memory`.
    fn parse(url: &str) -> StoreResult<Self> {
        let bad = |why: &str| StoreError::Unavailable(format!("bad SQLite URL {url:?}: {why}"));
        let rest = url
            .strip_prefix("sqlite:")
            .ok_or_else(|| bad("no sqlite: scheme"))?;
        let rest = rest.strip_prefix("//").unwrap_or(rest);
        let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
        let mut location = Self {
            path: (path != ":memory:").then(|| PathBuf::from(path)),
            read_only: false,
        };
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            match pair {
                "mode=ro" => location.read_only = true,
                "mode=rw" | "mode=rwc" => {}
                "mode=memory" => location.path = None,
                other => return Err(bad(&format!("unknown option {other}"))),
            }
        }
        if location.path.as_deref() == Some(Path::new("")) {
            return Err(bad("no file name"));
        }
        Ok(location)
    }

    /// A new connection, set up as every connection of the store is.
    fn connect(&self, wal: bool) -> StoreResult<Connection> {
        let conn = match &self.path {
            None => Connection::open_in_memory(),
            Some(path) => {
                let mut flags = OpenFlags::SQLITE_OPEN_NO_MUTEX;
                flags |= if self.read_only {
                    OpenFlags::SQLITE_OPEN_READ_ONLY
                } else {
                    OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE
                };
                Connection::open_with_flags(path, flags)
            }
        }
        .map_err(|e| StoreError::Unavailable(format!("cannot open the SQLite database: {e}")))?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(sq)?;
        conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
        // The query planner's stability guarantee: a plan never depends on
        // a bound value. Without it SQLite reads the value bound to
        // `limit ?` while planning, so binding that parameter again expires
        // the cached statement and every run parses and plans it anew (the
        // outbox's and the event queue's claims, the inbox list: 8% of the
        // writer's time during flows, measured). otpgate runs no ANALYZE, so
        // no plan loses statistics by it.
        conn.set_db_config(DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG, true)
            .map_err(sq)?;
        conn.execute_batch(
            // FULL: a commit is on disk before a send answers 200, so it
            // survives a power cut, not only a crash (contract §2).
            // secure_delete: deleted rows and freed content (a delivered
            // message's text, set to null) are overwritten with zeros, not
            // only unlinked: retention must remove phone numbers from the
            // file itself, and erased texts (they held codes) must not
            // linger in free pages. It costs writes on deletes only.
            // temp_store memory: a savepoint's sub-journal (the writer runs
            // each write of a batch in one) and a statement's journal hold
            // the pages' earlier content, codes included; in memory they
            // never reach a temporary file, and cost no system call per
            // page (they were most of the writer's writes, measured).
            "pragma foreign_keys = on; pragma synchronous = full; pragma secure_delete = on;
             pragma temp_store = memory;",
        )
        .map_err(sq)?;
        if wal && self.path.is_some() && !self.read_only {
            let _mode: String = conn
                .query_row("pragma journal_mode = wal", [], |r| r.get(0))
                .map_err(sq)?;
        }
        Ok(conn)
    }
}

impl SqliteStore {
    /// Opens the database `location` names, creating the file if needed,
    /// and brings its schema up to date. `location` is a URL as the server's
    /// configuration writes it — `sqlite://path/to/otpgate.db`,
    /// `sqlite:otpgate.db`, `sqlite::memory:` (`?mode=ro` opens read-only)
    /// — or a plain file path.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] when the file cannot be opened or created
    /// or the URL cannot be read; [`StoreError::SchemaTooNew`] when a newer
    /// otpgate has migrated it.
    pub async fn open(location: &str) -> StoreResult<Self> {
        if !location.starts_with("sqlite:") {
            return Self::open_path(location).await;
        }
        Self::build(Location::parse(location)?, MAX_BATCH).await
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
        let location = Location {
            path: Some(path.as_ref().to_owned()),
            read_only: false,
        };
        Self::build(location, max_batch).await
    }

    /// A private database in memory, gone when the store is dropped; for
    /// tests and trials.
    ///
    /// # Errors
    /// As [`SqliteStore::open`].
    pub async fn in_memory() -> StoreResult<Self> {
        Self::open("sqlite::memory:").await
    }

    async fn build(location: Location, max_batch: usize) -> StoreResult<Self> {
        // Opening and migrating block on the file (and on other openers'
        // locks): off the async threads.
        tokio::task::spawn_blocking(move || Self::build_blocking(location, max_batch))
            .await
            .map_err(|e| StoreError::Internal(format!("opening SQLite failed: {e}")))?
    }

    fn build_blocking(location: Location, max_batch: usize) -> StoreResult<Self> {
        let memory = location.path.is_none();
        if let Some(path) = &location.path
            && !location.read_only
        {
            restrict_files(path)?;
        }
        // Switching a fresh file to WAL can meet another opener doing the
        // same, which SQLite reports as locked at once: try again briefly.
        let mut attempt = 0u64;
        let conn = loop {
            match location.connect(true) {
                Err(e) if attempt < 40 && lost_race(&e.to_string()) => {
                    attempt += 1;
                    std::thread::sleep(Duration::from_millis(10 + attempt * 5));
                }
                other => break other?,
            }
        };
        migrate(&conn)?;
        let checkpointing = !(memory || location.read_only);
        if checkpointing {
            // The checkpointer thread checkpoints instead (see there). A
            // WAL that a burst made long is cut back to 64 MiB when it
            // starts over.
            conn.execute_batch(
                "pragma wal_autocheckpoint = 0; pragma journal_size_limit = 67108864",
            )
            .map_err(sq)?;
        }
        let checkpoint_conn = checkpointing.then(|| location.connect(false)).transpose()?;
        let readers = (!memory)
            .then(|| Readers::new(READERS, ACQUIRE_TIMEOUT, move || location.connect(false)));
        let writer = writer::Writer::start(conn, max_batch, ACQUIRE_TIMEOUT)?;
        let checkpointer = match checkpoint_conn {
            Some(c) => {
                let stop = writer.start_checkpointer(c, CHECKPOINT_EVERY)?;
                Some(Arc::new(std::sync::Mutex::new(Some(stop))))
            }
            None => None,
        };
        Ok(Self {
            writer,
            readers,
            memory,
            checkpointer,
        })
    }

    /// The schema version the database is at: [`SCHEMA_VERSION`] once
    /// opened by this build.
    ///
    /// # Errors
    /// As any read.
    pub async fn schema_version(&self) -> StoreResult<i64> {
        self.read(|c| {
            one(
                c,
                "select coalesce(max(version), 0) from _sqlx_migrations where success",
                [],
            )
        })
        .await
    }

    /// A send, leased or not.
    async fn create(
        &self,
        req: NewVerification,
        lease: Option<OutboxLease>,
    ) -> StoreResult<(CreateOutcome, Option<OutboxMessage>)> {
        // Only a `Created` keeps its changes (contract §2: a refused send
        // charges nothing), and a refusal that recorded the block it
        // triggered (which charged nothing either); the other refusals
        // decide before writing, and rolling them back keeps that true
        // whatever `send::create` becomes.
        let created = |(o, _): &(CreateOutcome, Option<OutboxMessage>)| {
            matches!(
                o,
                CreateOutcome::Created(_)
                    | CreateOutcome::Blocked {
                        new_block: Some(_),
                        ..
                    }
            )
        };
        // Checked, not savepointed: `send::create` writes only once it has
        // decided to keep what it writes.
        self.writer
            .write_checked(created, move |c| send::create(c, &req, lease.as_ref()))
            .await
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

    /// Closes the connections, after the writes queued before this.
    /// Reads and writes after this fail as `Unavailable`.
    pub async fn close(&self) {
        if let Some(r) = &self.readers {
            r.close();
        }
        if let Some(c) = &self.checkpointer
            && let Ok(mut stop) = c.lock()
        {
            stop.take();
        }
        self.writer.close().await;
    }

    /// Runs `op` as one write of the writer's next batch, and keeps its
    /// changes if it succeeds.
    async fn write<T, F>(&self, op: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> StoreResult<T> + Send + 'static,
    {
        self.writer.write(|_| true, op).await
    }

    /// As [`SqliteStore::write`], for an op that writes nothing before it
    /// can fail (see `Writer::write_checked`): in a batch it runs without a
    /// savepoint of its own.
    async fn write_checked<T, F>(&self, op: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> StoreResult<T> + Send + 'static,
    {
        self.writer.write_checked(|_| true, op).await
    }

    /// Runs `op` on a reader connection (in memory: on the writer's,
    /// between batches).
    async fn read<T, F>(&self, op: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> StoreResult<T> + Send + 'static,
    {
        match &self.readers {
            Some(r) => r.read(op).await,
            None => self.writer.read(op).await,
        }
    }

    /// As [`SqliteStore::read`], for a lookup of a few rows by key, which
    /// runs on the calling thread when a reader is idle (see
    /// [`Readers::read_point`]).
    async fn read_point<T, F>(&self, op: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> StoreResult<T> + Send + 'static,
    {
        match &self.readers {
            Some(r) => r.read_point(op).await,
            None => self.writer.read(op).await,
        }
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

/// The versions recorded in `_sqlx_migrations` (empty before the first).
fn applied(conn: &Connection) -> StoreResult<Vec<i64>> {
    let exists: i64 = one(
        conn,
        "select count(*) from sqlite_master where type = 'table' and name = '_sqlx_migrations'",
        [],
    )?;
    if exists == 0 {
        return Ok(Vec::new());
    }
    all(
        conn,
        "select version from _sqlx_migrations where success order by version",
        [],
        |r| rows::get(r, "version"),
    )
}

/// Brings the schema up to date. Migrations are recorded in
/// `_sqlx_migrations` as earlier builds (which migrated through SQLx)
/// recorded them, checksum included, so a database of any earlier build
/// opens. The pending ones run in one `begin immediate` transaction, after
/// looking again under the write lock: processes opening a fresh file
/// together wait for each other (busy timeout), and each migration runs
/// once.
fn migrate(conn: &Connection) -> StoreResult<()> {
    let too_new = |found: &[i64]| match found.iter().max() {
        Some(&newest) if newest > SCHEMA_VERSION => Err(StoreError::SchemaTooNew {
            found: newest,
            known: SCHEMA_VERSION,
        }),
        _ => Ok(()),
    };
    let done = applied(conn)?;
    too_new(&done)?;
    if MIGRATIONS.iter().all(|(v, _, _)| done.contains(v)) {
        return Ok(());
    }
    conn.execute_batch("begin immediate").map_err(sq)?;
    let result = (|| {
        conn.execute_batch(
            "create table if not exists _sqlx_migrations (
                 version bigint primary key,
                 description text not null,
                 installed_on timestamp not null default current_timestamp,
                 success boolean not null,
                 checksum blob not null,
                 execution_time bigint not null
             )",
        )
        .map_err(sq)?;
        let done = applied(conn)?;
        too_new(&done)?;
        for &(version, description, sql) in MIGRATIONS {
            if done.contains(&version) {
                continue;
            }
            let started = std::time::Instant::now();
            conn.execute_batch(sql).map_err(|e| {
                StoreError::Internal(format!("migration {version} ({description}) failed: {e}"))
            })?;
            let nanos = i64::try_from(started.elapsed().as_nanos()).unwrap_or(i64::MAX);
            exec(
                conn,
                "insert into _sqlx_migrations (version, description, success, checksum,
                                               execution_time)
                 values (?1, ?2, true, ?3, ?4)",
                params![version, description, &Sha384::digest(sql)[..], nanos],
            )?;
        }
        Ok(())
    })();
    match result {
        Ok(()) => conn.execute_batch("commit").map_err(sq),
        Err(e) => {
            let _ = conn.execute_batch("rollback");
            Err(e)
        }
    }
}

/// One retention batch, in one write: the oldest `max` verifications
/// created before `cutoff`, their outbox rows first (they reference them),
/// then inbox rows. Both deletes of verifications pick the same rows: the
/// same ordered query inside one transaction.
fn purge(conn: &Connection, cutoff: i64, max: u32) -> StoreResult<Purged> {
    let del = |sql: &str| exec(conn, sql, params![cutoff, max]).map(count);
    let outbox = del("delete from outbox where verification_id in
             (select id from verifications where created_at < ?1
              order by created_at, id limit ?2)")?;
    // Own-number records reference their verification (and hold the number).
    del("delete from own_numbers where verification_id in
             (select id from verifications where created_at < ?1
              order by created_at, id limit ?2)")?;
    // Their events (webhook deliveries name the verification), before the
    // verifications the selection reads.
    let mut events = del("delete from events where verification_id in
             (select id from verifications where created_at < ?1
              order by created_at, id limit ?2)")?;
    let verifications = del("delete from verifications where id in
             (select id from verifications where created_at < ?1
              order by created_at, id limit ?2)")?;
    let inbox = del("delete from inbox where id in
             (select id from inbox where created_at < ?1 order by created_at, id limit ?2)")?;
    // Events older than the cutoff whose verification is already gone (or
    // not yet swept): an event never outlives retention either.
    events += del("delete from events where id in
             (select id from events where created_at < ?1 order by created_at, id limit ?2)")?;
    Ok(Purged {
        verifications,
        outbox,
        inbox,
        events,
    })
}

/// The statement that leases the due rows of `$table` (those in status
/// `$status`, due, and not leased or leased past its expiry), oldest due
/// first, returning their ids; its parameters are those of [`Lease`].
macro_rules! lease_due {
    ($table:literal, $status:literal) => {
        concat!(
            "update ",
            $table,
            " set lease_owner = ?1, lease_until = ?2 + ?3, attempts = attempts + 1,
                 updated_at = ?2
             where id in (select id from ",
            $table,
            " where status = '",
            $status,
            "' and next_attempt_at <= ?2
                 and (lease_until is null or lease_until <= ?2)
               order by next_attempt_at, id limit ?4)
             returning id"
        )
    };
}
use lease_due;

/// A claim of the outbox's or the event queue's due rows, for `worker`
/// until `now + lease_ms`: a conditional update, as the one writer makes
/// each claim the only one running.
struct Lease {
    worker: String,
    max: u32,
    lease_ms: i64,
    now: i64,
}

impl Lease {
    fn new(worker: &str, max: u32, lease_ms: i64, now: i64) -> Self {
        Self {
            worker: worker.to_owned(),
            max,
            lease_ms,
            now,
        }
    }

    /// Runs `due` (a [`lease_due!`] statement), then reads the leased rows
    /// back with `read`, which takes their ids as a JSON array for
    /// `json_each` (`returning` cannot join).
    fn take<T>(
        &self,
        conn: &Connection,
        due: &str,
        read: &str,
        decode: impl FnMut(&rusqlite::Row<'_>) -> StoreResult<T>,
    ) -> StoreResult<Vec<T>> {
        let ids: Vec<i64> = all(
            conn,
            due,
            params![self.worker, self.now, self.lease_ms, self.max],
            |r| rows::get(r, "id"),
        )?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let ids = serde_json::to_string(&ids).map_err(|e| StoreError::Internal(e.to_string()))?;
        all(conn, read, [ids], decode)
    }
}

/// Rows a statement changed, as the store counts them.
fn count(n: usize) -> u64 {
    u64::try_from(n).unwrap_or(u64::MAX)
}

/// Whether an error opening a fresh file is another opener having got there
/// first, so trying again will succeed.
fn lost_race(message: &str) -> bool {
    message.contains("database is locked")
}

/// `update accounts set SET where customer_id = ?1`, in one write, the row
/// back as an [`Account`] (see [`updated`]): `update_account!(self, id,
/// "SET", ?2)`, as on PostgreSQL.
macro_rules! update_account {
    ($store:ident, $id:expr, $set:literal $(, $value:expr)? $(,)?) => {{
        let params = ($id.as_str().to_owned(), $($value,)?);
        let _changed = $store.account_changed();
        $store
            .write(move |c| {
                updated(
                    c,
                    concat!(
                        "update accounts set ",
                        $set,
                        " where customer_id = ?1 returning ",
                        account_columns!()
                    ),
                    params,
                )
            })
            .await
    }};
}

impl SqliteStore {
    /// Moves [`AccountStore::account_changes`] on when dropped: after the
    /// account write it is held across has ended, whatever its outcome, so
    /// no account read before that write's COMMIT is used again.
    fn account_changed(&self) -> ChangeMark<'_> {
        ChangeMark(&self.writer)
    }
}

/// See [`SqliteStore::account_changed`].
struct ChangeMark<'a>(&'a writer::Writer);

impl Drop for ChangeMark<'_> {
    fn drop(&mut self) {
        self.0.account_changed();
    }
}

/// The account an `update accounts … returning` statement changed, or
/// `NotFound` when it matched none.
fn updated(conn: &Connection, sql: &str, p: impl rusqlite::Params) -> StoreResult<Account> {
    opt(conn, sql, p, rows::account)?.ok_or(StoreError::NotFound)
}

#[async_trait]
impl SystemStore for SqliteStore {
    async fn ping(&self) -> StoreResult<()> {
        self.read(|c| one::<i64>(c, "select 1", []).map(|_| ()))
            .await
    }

    fn backend(&self) -> &'static str {
        "sqlite"
    }

    async fn secret_get_or_init(&self, name: &str, candidate: &[u8]) -> StoreResult<Vec<u8>> {
        let (name, candidate) = (name.to_owned(), candidate.to_vec());
        self.write(move |c| {
            // The trait passes no clock and the time is only informational
            // here, so the database's own clock stamps it.
            exec(
                c,
                "insert into secrets (name, value, created_at)
                 values (?1, ?2, cast(unixepoch('subsec') * 1000 as integer))
                 on conflict (name) do nothing",
                params![name, candidate],
            )?;
            one(c, "select value from secrets where name = ?1", [name])
        })
        .await
    }

    async fn purge_before(&self, cutoff: i64, max: u32) -> StoreResult<Purged> {
        self.write(move |c| purge(c, cutoff, max)).await
    }

    async fn scrub(&self) -> StoreResult<()> {
        if self.memory {
            return Ok(());
        }
        // On a reader connection: the checkpoint takes the write lock itself
        // (waiting on the busy timeout) and leaves the writer's batching
        // alone. `TRUNCATE` empties the WAL, where old page images (texts
        // since set to null) would otherwise linger until overwritten.
        let (busy, _, _): (i64, i64, i64) = self
            .read(|c| {
                opt(c, "pragma wal_checkpoint(truncate)", [], tuple)?
                    .ok_or_else(|| StoreError::Internal("no checkpoint result".into()))
            })
            .await?;
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
    fn account_changes(&self) -> u64 {
        self.writer.account_changes()
    }

    async fn account_create(&self, new: NewAccount) -> StoreResult<Account> {
        let settings = new.settings.clone();
        let settings_text = settings_json(&settings)?;
        let row = new.clone();
        let result = self
            .write(move |c| {
                exec(
                    c,
                    "insert into accounts (customer_id, password_hash, email, email_key,
                                           country, credits, test_credits, settings,
                                           created_at)
                     values (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                    params![
                        row.customer_id.as_str(),
                        row.password_hash,
                        row.email,
                        row.email.as_deref().map(email_key),
                        row.country,
                        row.credits,
                        row.test_credits,
                        settings_text,
                        row.created_at
                    ],
                )
            })
            .await;
        result.map_err(shared::account_conflict)?;
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
        let id = id.clone();
        self.read_point(move |c| {
            opt(
                c,
                concat!(
                    "select ",
                    account_columns!(),
                    " from accounts where customer_id = ?1"
                ),
                [id.as_str()],
                rows::account,
            )
        })
        .await
    }

    async fn account_by_email(&self, email: &str) -> StoreResult<Option<Account>> {
        let key = email_key(email);
        self.read(move |c| {
            opt(
                c,
                concat!(
                    "select ",
                    account_columns!(),
                    " from accounts where email_key = ?1"
                ),
                [key],
                rows::account,
            )
        })
        .await
    }

    async fn account_list(&self, limit: u32, offset: u32) -> StoreResult<Vec<Account>> {
        self.read(move |c| {
            all(
                c,
                concat!(
                    "select ",
                    account_columns!(),
                    " from accounts order by created_at desc, customer_id desc limit ?1 offset ?2"
                ),
                [limit, offset],
                rows::account,
            )
        })
        .await
    }

    async fn account_add_credits(&self, id: &CustomerId, credits: i64) -> StoreResult<Account> {
        // Read, add in Rust, write: SQLite's `+` turns an overflow into a
        // REAL, where Rust saturates; being one write keeps the read and the
        // write together.
        let id = id.clone();
        let _changed = self.account_changed();
        self.write(move |c| {
            let balance: i64 = opt(
                c,
                "select credits from accounts where customer_id = ?1",
                [id.as_str()],
                |r| rows::get(r, "credits"),
            )?
            .ok_or(StoreError::NotFound)?;
            updated(
                c,
                concat!(
                    "update accounts set credits = ?2 where customer_id = ?1 returning ",
                    account_columns!()
                ),
                params![id.as_str(), balance.saturating_add(credits).max(0)],
            )
        })
        .await
    }

    async fn account_set_password(
        &self,
        id: &CustomerId,
        password_hash: &str,
    ) -> StoreResult<Account> {
        update_account!(
            self,
            id,
            "password_hash = ?2, token_epoch = token_epoch + 1",
            password_hash.to_owned()
        )
    }

    async fn account_revoke_tokens(&self, id: &CustomerId) -> StoreResult<Account> {
        update_account!(self, id, "token_epoch = token_epoch + 1")
    }

    async fn account_set_disabled(&self, id: &CustomerId, disabled: bool) -> StoreResult<Account> {
        update_account!(self, id, "disabled = ?2", disabled)
    }

    async fn account_set_settings(
        &self,
        id: &CustomerId,
        settings: &AccountSettings,
    ) -> StoreResult<Account> {
        update_account!(self, id, "settings = ?2", settings_json(settings)?)
    }
}

#[async_trait]
impl VerificationStore for SqliteStore {
    async fn verification_create(&self, req: NewVerification) -> StoreResult<CreateOutcome> {
        self.create(req, None).await.map(|(o, _)| o)
    }

    async fn verification_create_leased(
        &self,
        req: NewVerification,
        lease: OutboxLease,
    ) -> StoreResult<(CreateOutcome, Option<OutboxMessage>)> {
        self.create(req, Some(lease)).await
    }

    async fn verification_get(
        &self,
        customer: &CustomerId,
        id: VerificationId,
    ) -> StoreResult<Option<Verification>> {
        let customer = customer.clone();
        self.read_point(move |c| {
            opt(
                c,
                concat!(
                    "select ",
                    verification_columns!(),
                    " from verifications where id = ?1 and customer_id = ?2"
                ),
                params![id_i64(id), customer.as_str()],
                rows::verification,
            )
        })
        .await
    }

    async fn verification_to_validate(
        &self,
        customer: &CustomerId,
        id: VerificationId,
        wrong_since: i64,
    ) -> StoreResult<Option<(Verification, u32)>> {
        let customer = customer.clone();
        self.read_point(move |c| {
            opt(
                c,
                concat!(
                    "select ",
                    verification_columns!(),
                    ", (select coalesce(sum(w.wrong_attempts), 0) from verifications w
                         where w.customer_id = ?2 and w.destination = verifications.destination
                           and w.created_at >= ?3) as wrong_codes
                     from verifications where id = ?1 and customer_id = ?2"
                ),
                params![id_i64(id), customer.as_str(), wrong_since],
                |r| {
                    let wrong: i64 = r.get("wrong_codes").map_err(sq)?;
                    Ok((
                        rows::verification(r)?,
                        u32::try_from(wrong).unwrap_or(u32::MAX),
                    ))
                },
            )
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
        // One conditional update: of racing validations that read the same
        // row, only the first to write still finds its condition true
        // (contract §3: exactly one 200).
        // Checked (`SqliteStore::write_checked`): nothing is written before
        // the conditional update, and nothing after it fails but a fault.
        let customer = customer.clone();
        self.write_checked(move |c| {
            let vid = id_i64(id);
            // The event of the change commits with it: `completed`, or
            // `failed` on the wrong code that spends the last attempt.
            let done: Option<(i64, i64)> = match action {
                ValidationAction::Complete => opt(
                    c,
                    "update verifications set state = 'completed', completed_at = ?4
                     where id = ?1 and customer_id = ?2 and state = 'pending'
                       and wrong_attempts = ?3
                     returning wrong_attempts, max_attempts",
                    params![vid, customer.as_str(), expected_wrong_attempts, now],
                    tuple,
                )?,
                ValidationAction::Wrong => opt(
                    c,
                    "update verifications set wrong_attempts = wrong_attempts + 1
                     where id = ?1 and customer_id = ?2 and state = 'pending'
                       and wrong_attempts = ?3
                     returning wrong_attempts, max_attempts",
                    params![vid, customer.as_str(), expected_wrong_attempts],
                    tuple,
                )?,
            };
            let Some((wrong, max)) = done else {
                return Ok(false);
            };
            match action {
                ValidationAction::Complete => {
                    // Counted on the day of its send, in the same write.
                    exec(
                        c,
                        "insert into daily_completions (customer_id, day, shard, completed)
                         select customer_id,
                                (created_at - ((created_at % 86400000) + 86400000) % 86400000)
                                    / 86400000,
                                0, 1
                           from verifications where id = ?1
                         on conflict (customer_id, day, shard) do update
                            set completed = completed + 1",
                        [vid],
                    )?;
                    // Fallback steps still held carry the code: not needed.
                    outbox::cancel_queued(c, vid, now)?;
                    events::emit(c, vid, EventKind::Completed, "{}", now)?;
                }
                ValidationAction::Wrong => {
                    if wrong >= max {
                        // A verification just killed by wrong codes must
                        // not have its code sent again by a held step.
                        outbox::cancel_queued(c, vid, now)?;
                        events::emit(c, vid, EventKind::Failed, &attempts_detail(), now)?;
                    }
                }
            }
            Ok(true)
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
        let (customer, filter) = (customer.clone(), filter.clone());
        // `instr`, not `like`: a number filter holding `%` or `_` must match
        // itself, not act as a pattern.
        self.read(move |c| {
            all(
                c,
                concat!(
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
                ),
                params![
                    customer.as_str(),
                    filter.number,
                    filter.state.map(|s| s.as_str()),
                    filter.since,
                    filter.until,
                    limit,
                    offset
                ],
                rows::verification,
            )
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
        let customer = customer.clone();
        // Completions are counted on the day of their send, so a day's
        // `completed` never exceeds its `sends` (a conversion rate).
        let found: Vec<(i64, i64, i64)> = self
            .read(move |c| {
                all(
                    c,
                    "select day, sum(sends), sum(completed)
                       from (select day, sends, completed from daily_stats
                              where customer_id = ?1 and day >= ?2 and day <= ?3
                             union all
                             select day, 0, completed from daily_completions
                              where customer_id = ?1 and day >= ?2 and day <= ?3)
                      group by day order by day",
                    params![customer.as_str(), first_day, last_day],
                    tuple,
                )
            })
            .await?;
        Ok(fill_days(first_day, last_day, found))
    }

    async fn channel_stats(
        &self,
        customer: &CustomerId,
        since: i64,
        until: i64,
    ) -> StoreResult<Vec<ChannelStats>> {
        let customer = customer.clone();
        // A message that failed before any channel took it has no channel;
        // it is counted under "" so failures are not lost from the totals.
        let found: Vec<(String, i64, i64, i64)> = self
            .read(move |c| {
                all(
                    c,
                    "select coalesce(o.channel, '') as channel, count(*),
                            sum(o.status in (select value from json_each(?4))),
                            sum(o.status in (select value from json_each(?5)))
                     from outbox o
                     where o.customer_id = ?1 and o.created_at >= ?2 and o.created_at < ?3
                       and o.attempts > 0
                     group by 1 order by 1",
                    params![
                        customer.as_str(),
                        since,
                        until,
                        shared::status_names_json(&DeliveryStatus::SUCCEEDED),
                        shared::status_names_json(&DeliveryStatus::FINAL_FAILURES)
                    ],
                    tuple,
                )
            })
            .await?;
        Ok(found.into_iter().map(shared::channel_stats).collect())
    }
}

#[async_trait]
impl InboxStore for SqliteStore {
    async fn inbox_put(&self, msg: &InboxEntry) -> StoreResult<()> {
        let msg = msg.clone();
        self.write(move |c| inbox_insert(c, &msg)).await
    }

    async fn inbox_list(
        &self,
        customer: Option<&CustomerId>,
        to: Option<&str>,
        limit: u32,
    ) -> StoreResult<Vec<InboxEntry>> {
        let (customer, to) = (customer.cloned(), to.map(str::to_owned));
        // By number, a plain `destination = ?` so that the planner takes
        // the destination index: `(?2 is null or destination = ?2)` cannot
        // use it, and scanning the whole inbox newest first for one number
        // cost a full scan per lookup (what `otpgate inbox --to` and the
        // bench's flows poll).
        let sql = if to.is_some() {
            "select customer_id, destination, text, verification_id, created_at from inbox
             where destination = ?2 and (?1 is null or customer_id = ?1)
             order by created_at desc, id desc limit ?3"
        } else {
            "select customer_id, destination, text, verification_id, created_at from inbox
             where (?1 is null or customer_id = ?1)
             order by created_at desc, id desc limit ?3"
        };
        self.read(move |c| {
            all(
                c,
                sql,
                params![customer.as_ref().map(CustomerId::as_str), to, limit],
                rows::inbox_entry,
            )
        })
        .await
    }

    async fn inbox_purge(&self, before_ms: i64) -> StoreResult<u64> {
        self.write(move |c| {
            exec(c, "delete from inbox where created_at < ?1", [before_ms]).map(count)
        })
        .await
    }
}

#[async_trait]
impl FraudStore for SqliteStore {
    async fn fraud_blocks_active(&self, now: i64, limit: u32) -> StoreResult<Vec<FraudBlock>> {
        let found: Vec<shared::FraudBlockRow> = self
            .read(move |c| {
                all(
                    c,
                    "select scope, key, reason, strikes, blocked_until, lifted_at, created_at
                       from fraud_blocks where blocked_until > ?1
                      order by updated_at desc limit ?2",
                    params![now, limit],
                    tuple,
                )
            })
            .await?;
        found.into_iter().map(shared::fraud_block).collect()
    }

    async fn fraud_block_lift(
        &self,
        scope: otpgate_core::fraud::BlockScope,
        key: &str,
        now: i64,
    ) -> StoreResult<bool> {
        let key = key.to_owned();
        self.write(move |c| {
            exec(
                c,
                "update fraud_blocks
                    set blocked_until = ?3, lifted_at = ?3, updated_at = ?3
                  where scope = ?1 and key = ?2 and blocked_until > ?3",
                params![scope.as_str(), key, now],
            )
            .map(|n| n > 0)
        })
        .await
    }

    async fn safe_list(&self) -> StoreResult<Vec<SafeEntry>> {
        let found: Vec<(String, String, i64)> = self
            .read(|c| {
                all(
                    c,
                    "select entry, note, created_at from safe_list order by entry",
                    [],
                    tuple,
                )
            })
            .await?;
        Ok(found.into_iter().map(shared::safe_entry).collect())
    }

    async fn safe_list_add(&self, entry: &str, note: &str, now: i64) -> StoreResult<()> {
        let (entry, note) = (entry.to_owned(), note.to_owned());
        self.write(move |c| {
            exec(
                c,
                "insert into safe_list (entry, note, created_at) values (?1, ?2, ?3)
                 on conflict (entry) do update set note = excluded.note",
                params![entry, note, now],
            )
            .map(|_| ())
        })
        .await
    }

    async fn safe_list_remove(&self, entry: &str) -> StoreResult<bool> {
        let entry = entry.to_owned();
        self.write(move |c| {
            exec(c, "delete from safe_list where entry = ?1", [entry]).map(|n| n > 0)
        })
        .await
    }

    async fn own_numbers(&self, customer: &CustomerId) -> StoreResult<Vec<OwnNumber>> {
        let customer = customer.clone();
        let found: Vec<(String, i64)> = self
            .read(move |c| {
                all(
                    c,
                    "select destination, min(verified_at) from own_numbers
                      where customer_id = ?1 and verified_at is not null
                      group by destination order by 2",
                    [customer.as_str()],
                    tuple,
                )
            })
            .await?;
        Ok(found.into_iter().map(shared::own_number).collect())
    }

    async fn own_number_confirm(
        &self,
        customer: &CustomerId,
        id: VerificationId,
        now: i64,
    ) -> StoreResult<bool> {
        let customer = customer.clone();
        self.write(move |c| {
            exec(
                c,
                "update own_numbers set verified_at = ?3
                  where verification_id = ?1 and customer_id = ?2 and verified_at is null
                    and exists (select 1 from verifications v
                                 where v.id = ?1 and v.state = 'completed')",
                params![id_i64(id), customer.as_str(), now],
            )
            .map(|n| n > 0)
        })
        .await
    }

    async fn own_number_remove(
        &self,
        customer: &CustomerId,
        destination: &str,
    ) -> StoreResult<bool> {
        let (customer, destination) = (customer.clone(), destination.to_owned());
        self.write(move |c| {
            // The rows stay (they count against the day's own-number
            // sends); only the proof is withdrawn.
            exec(
                c,
                "update own_numbers set verified_at = null
                  where customer_id = ?1 and destination = ?2 and verified_at is not null",
                params![customer.as_str(), destination],
            )
            .map(|n| n > 0)
        })
        .await
    }

    async fn conversion_report(
        &self,
        since: i64,
        limit: u32,
    ) -> StoreResult<(Vec<ConversionRow>, Vec<ConversionRow>)> {
        type Rows<K> = Vec<(K, i64, i64)>;
        let (by_country, by_prefix): (Rows<i64>, Rows<String>) = self
            .read(move |c| {
                let by_country = all(
                    c,
                    "select country_code, count(*), sum(state = 'completed') from verifications
                      where created_at > ?1 group by country_code order by 2 desc, 1 limit ?2",
                    params![since, limit],
                    tuple,
                )?;
                let by_prefix = all(
                    c,
                    "select prefix, count(*), sum(state = 'completed') from verifications
                      where created_at > ?1 and prefix is not null
                      group by prefix order by 2 desc, 1 limit ?2",
                    params![since, limit],
                    tuple,
                )?;
                Ok((by_country, by_prefix))
            })
            .await?;
        Ok(shared::conversion_rows(by_country, by_prefix))
    }
}

#[async_trait]
impl EventStore for SqliteStore {
    async fn webhook_get(&self, customer: &CustomerId) -> StoreResult<Option<Webhook>> {
        let customer = customer.clone();
        let row: Option<shared::WebhookRow> = self
            .read(move |c| {
                opt(
                    c,
                    "select customer_id, url, secret, created_at, updated_at from webhooks
                     where customer_id = ?1",
                    [customer.as_str()],
                    tuple,
                )
            })
            .await?;
        row.map(shared::webhook).transpose()
    }

    async fn webhook_set(
        &self,
        customer: &CustomerId,
        url: &str,
        secret: &str,
        now: i64,
    ) -> StoreResult<Webhook> {
        let (customer, url, secret) = (customer.clone(), url.to_owned(), secret.to_owned());
        self.write(move |c| events::set_webhook(c, customer.as_str(), &url, &secret, now))
            .await
    }

    async fn webhook_delete(&self, customer: &CustomerId) -> StoreResult<()> {
        let customer = customer.clone();
        self.write(move |c| {
            exec(
                c,
                "delete from webhooks where customer_id = ?1",
                [customer.as_str()],
            )
            .map(|_| ())
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
        let lease = Lease::new(worker, max, lease_ms, now);
        self.write(move |c| events::claim(c, &lease)).await
    }

    async fn event_record(
        &self,
        id: i64,
        worker: &str,
        attempt: &EventAttempt,
        now: i64,
    ) -> StoreResult<bool> {
        let (worker, attempt) = (worker.to_owned(), attempt.clone());
        self.write(move |c| events::record(c, id, &worker, &attempt, now))
            .await
    }

    async fn events_sweep_expired(&self, now: i64) -> StoreResult<u64> {
        self.write(move |c| events::sweep_expired(c, now)).await
    }

    async fn event_list(&self, customer: &CustomerId, limit: u32) -> StoreResult<Vec<EventRecord>> {
        let customer = customer.clone();
        let rows: Vec<EventRecordRow> = self
            .read(move |c| {
                all(
                    c,
                    concat!(
                        "select ",
                        event_record_columns!(),
                        " from events where customer_id = ?1
                         order by created_at desc, id desc limit ?2"
                    ),
                    params![customer.as_str(), limit],
                    tuple,
                )
            })
            .await?;
        rows.into_iter().map(event_record).collect()
    }

    async fn event_backlog(&self) -> StoreResult<EventBacklog> {
        let found = self
            .read(|c| {
                opt(
                    c,
                    "select count(*), min(created_at) from events where status = 'pending'",
                    [],
                    tuple,
                )
                .map(Option::unwrap_or_default)
            })
            .await?;
        Ok(shared::event_backlog(found))
    }
}

/// Stores one message the development inbox delivered.
fn inbox_insert(c: &Connection, msg: &InboxEntry) -> StoreResult<()> {
    exec(
        c,
        "insert into inbox (customer_id, destination, text, verification_id, created_at)
         values (?1, ?2, ?3, ?4, ?5)",
        params![
            msg.customer_id.as_ref().map(CustomerId::as_str),
            msg.destination,
            msg.text,
            msg.verification_id.map(id_i64),
            msg.created_at
        ],
    )
    .map(|_| ())
}

#[cfg(test)]
mod upgrade_tests {
    use super::*;
    use crate::{OutboxStore, SentInfo};
    use sqlx::SqlSafeStr;
    use sqlx::migrate::{Migration, MigrationType, Migrator};
    use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};

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

#[cfg(test)]
mod connection_tests {
    use super::*;
    use rusqlite::StatementStatus;

    /// Binding a new `limit` to a cached statement keeps its plan: SQLite
    /// otherwise expires the statement and parses it again on every run
    /// (the claims of the outbox and the event queue bind their limit).
    #[test]
    fn a_new_limit_does_not_make_a_cached_statement_parse_again() {
        let memory = Location {
            path: None,
            read_only: false,
        };
        let conn = memory.connect(false).unwrap();
        conn.execute_batch("create table t (x integer); insert into t values (1), (2), (3);")
            .unwrap();
        for limit in 1..=3_i64 {
            let mut s = conn
                .prepare_cached("select x from t order by x limit ?1")
                .unwrap();
            let n = s
                .query_map([limit], |r| r.get::<_, i64>(0))
                .unwrap()
                .count();
            assert_eq!(i64::try_from(n).unwrap(), limit);
            assert_eq!(
                s.get_status(StatementStatus::RePrepare),
                0,
                "run {limit} prepared the statement again"
            );
        }
    }
}
