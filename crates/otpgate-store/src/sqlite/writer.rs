//! The store's threads: one writer thread that owns the one write
//! connection and commits many callers' writes with one fsync (group
//! commit), and a few reader connections used on tokio's blocking threads.
//!
//! Why a thread of its own, with plain synchronous SQLite calls: an async
//! driver hands every statement to a worker thread and back, and a send runs
//! about ten statements; under load those thread hops, not SQLite, were most
//! of the server's time. Here a caller hands its whole write (a closure over
//! the connection) to the writer thread once, and the thread runs it with
//! cached prepared statements: one hop per write instead of two per
//! statement, and one per batch for the thread itself.
//!
//! Why group commit: with `synchronous = FULL` every COMMIT waits for the
//! disk to flush, and SQLite lets one connection write at a time, so
//! committing each write on its own caps a busy server's sends per second at
//! the disk's flush rate. The thread takes whatever is queued at that moment
//! (up to `max_batch` writes; it never waits for more, so a lone write goes
//! at once), runs those writes one after another in one `begin immediate`
//! transaction, each inside its own SAVEPOINT (except the checked writes of
//! [`Writer::write_checked`], which write only what they keep), and then
//! COMMITs once.
//!
//! What each caller is promised is what it was promised when every write
//! committed alone:
//! - A write that fails, or whose result says its changes must not stay (a
//!   send answered 506, 800 or 402), is rolled back to its savepoint. It
//!   leaves no trace, and the writes around it are unaffected. A checked
//!   write that fails has written nothing; should one have written (a bug),
//!   its whole batch fails, as below, rather than keep half of it.
//! - No caller hears back before the COMMIT has returned, so no answer can
//!   report a write that a crash could still undo. If the batch fails, every
//!   caller in it gets that error and none of its writes is visible.
//! - The writes of a batch run in the order they were queued, and each sees
//!   the ones kept before it (same transaction), exactly as if they had
//!   committed one by one in that order.
//! - `begin immediate` still takes the file's write lock up front, so another
//!   process on the same file (the CLI beside a running server) waits on the
//!   busy timeout as before.
//! - Nothing is written for a caller who stopped waiting before its write
//!   began, or whose write waited in the queue longer than the acquire
//!   timeout (that caller gets `Unavailable`).
//!
//! A batch of one write runs without a savepoint.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rusqlite::types::FromSql;
use rusqlite::{Connection, Params, Row};
use tokio::sync::{Semaphore, mpsc, oneshot};

use crate::shared::fan_out;
use crate::{StoreError, StoreResult};

/// Writes queued beyond the batch being run before callers wait to enqueue:
/// a few batches' worth, so a burst is absorbed without unbounded memory.
const QUEUE_BATCHES: usize = 4;

/// How many writes the store has run and how many COMMITs that took. Their
/// ratio is the average batch; with group commit off they are equal.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriteStats {
    /// Writes run to completion (whatever their result).
    pub writes: u64,
    /// COMMITs that succeeded: one fsync each.
    pub commits: u64,
}

/// What the writer thread shares with its handles and the checkpointer.
#[derive(Debug, Default)]
struct Counters {
    writes: AtomicU64,
    commits: AtomicU64,
    /// Set by the checkpointer when the WAL has grown past
    /// [`RESTART_AFTER_FRAMES`]; the writer then checkpoints the little
    /// left before its next batch (see [`Writer::start_checkpointer`]).
    wal_full: AtomicBool,
    /// [`crate::AccountStore::account_changes`]: moved on by the store's
    /// account writes, and by every write transaction that finds the file
    /// changed by another connection since the writer's last one (the CLI
    /// beside a running server).
    account_changes: AtomicU64,
    /// `pragma data_version` at the writer's last transaction: it changes
    /// when another connection has committed, never for this one's own.
    data_version: std::sync::atomic::AtomicI64,
}

/// WAL frames (4 KiB pages each) past which the writer helps the WAL back
/// to its start: 16 MiB, a fraction of a second of the busiest sends
/// measured.
const RESTART_AFTER_FRAMES: i64 = 4096;

/// Frames a checkpoint pass may find to copy (1 MiB) for the checkpointer
/// to count as caught up, and ask for the writer's help: more, and it goes
/// again first (see [`Writer::start_checkpointer`]).
const HELP_TAIL_FRAMES: i64 = 256;

/// Passes the checkpointer makes back to back to catch up before it asks
/// for the writer's help anyway (a reader holding an old snapshot can keep
/// a pass from copying the newest frames).
const CATCH_UP_PASSES: u32 = 8;

/// What the writer thread is asked to do.
enum Task {
    Write(Box<dyn Write>),
    /// A read outside any transaction (an in-memory store has no other
    /// connection to read through).
    Read(Box<dyn FnOnce(&Connection) + Send>),
    /// Close the connection, then answer.
    Close(oneshot::Sender<()>),
}

/// The store's handle on the writer thread. Clones share the thread, which
/// ends (closing its connection) when the last clone is dropped or on
/// [`Writer::close`].
#[derive(Debug, Clone)]
pub(super) struct Writer {
    queue: mpsc::Sender<Task>,
    counters: Arc<Counters>,
    queue_timeout: Duration,
}

impl Writer {
    /// Starts the writer thread on `conn`. `max_batch` 1 turns grouping off.
    pub(super) fn start(
        conn: Connection,
        max_batch: usize,
        queue_timeout: Duration,
    ) -> StoreResult<Self> {
        let max_batch = max_batch.max(1);
        let (queue, tasks) = mpsc::channel(max_batch * QUEUE_BATCHES);
        let counters = Arc::new(Counters::default());
        let c = Arc::clone(&counters);
        std::thread::Builder::new()
            .name("otpgate-sqlite-writer".into())
            .spawn(move || run(&conn, tasks, max_batch, &c))
            .map_err(|e| StoreError::Unavailable(format!("cannot start the SQLite writer: {e}")))?;
        Ok(Self {
            queue,
            counters,
            queue_timeout,
        })
    }

    /// Runs `op` in the writer's next batch and returns its result once the
    /// batch has committed. `keep` tells from an `Ok` result whether the
    /// op's changes stay; an `Err` never keeps them.
    ///
    /// # Errors
    /// The op's own error; or, if its batch could not commit, the batch's
    /// error (`Unavailable`, else `Internal`), with nothing of it written.
    pub(super) async fn write<T, F>(&self, keep: fn(&T) -> bool, op: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> StoreResult<T> + Send + 'static,
    {
        self.enqueue(keep, op, true).await
    }

    /// As [`Writer::write`], for an op that changes nothing unless its
    /// result is kept (it decides before it writes), so that in a batch it
    /// runs without a savepoint of its own.
    ///
    /// Why: a savepoint makes SQLite copy every page a write touches into
    /// its sub-journal first. In the send benchmark the savepoints took 8%
    /// of the server's CPU samples (13% of the writer thread's); with the
    /// send, the validation and the delivery checked, 1% (perf, dwarf).
    ///
    /// What is checked rather than trusted: if such an op does change rows
    /// and then is not kept (an error after its first write: a bug, or a
    /// constraint it did not foresee), it cannot be undone alone, so its
    /// whole batch is rolled back and every caller in it is answered
    /// `Unavailable`, with nothing written, as for any failed batch.
    pub(super) async fn write_checked<T, F>(&self, keep: fn(&T) -> bool, op: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> StoreResult<T> + Send + 'static,
    {
        self.enqueue(keep, op, false).await
    }

    async fn enqueue<T, F>(&self, keep: fn(&T) -> bool, op: F, savepoint: bool) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> StoreResult<T> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let job = Job {
            op,
            keep,
            reply,
            deadline: Instant::now() + self.queue_timeout,
            savepoint,
        };
        self.send(Task::Write(Box::new(job))).await?;
        answer.await.unwrap_or_else(|_| Err(stopped()))
    }

    /// Runs `op` on the writer's connection between batches.
    pub(super) async fn read<T, F>(&self, op: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> StoreResult<T> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        self.send(Task::Read(Box::new(move |conn| {
            let _ = reply.send(op(conn));
        })))
        .await?;
        answer.await.unwrap_or_else(|_| Err(stopped()))
    }

    /// Closes the write connection, once the writes queued before have run.
    pub(super) async fn close(&self) {
        let (ack, done) = oneshot::channel();
        if self.send(Task::Close(ack)).await.is_ok() {
            let _ = done.await;
        }
    }

    async fn send(&self, task: Task) -> StoreResult<()> {
        self.queue
            .send_timeout(task, self.queue_timeout)
            .await
            .map_err(|e| match e {
                mpsc::error::SendTimeoutError::Timeout(_) => {
                    StoreError::Unavailable("the SQLite writer is not keeping up".into())
                }
                mpsc::error::SendTimeoutError::Closed(_) => stopped(),
            })
    }

    /// Tasks sent and not yet received by the writer thread.
    pub(super) fn queued(&self) -> usize {
        self.queue.max_capacity() - self.queue.capacity()
    }

    /// [`crate::AccountStore::account_changes`].
    pub(super) fn account_changes(&self) -> u64 {
        self.counters.account_changes.load(Ordering::Acquire)
    }

    /// Moves [`crate::AccountStore::account_changes`] on: for an account
    /// write of the store's own, once it has ended.
    pub(super) fn account_changed(&self) {
        self.counters.account_changes.fetch_add(1, Ordering::AcqRel);
    }

    pub(super) fn stats(&self) -> WriteStats {
        WriteStats {
            writes: self.counters.writes.load(Ordering::Relaxed),
            commits: self.counters.commits.load(Ordering::Relaxed),
        }
    }
}

fn stopped() -> StoreError {
    StoreError::Unavailable("the SQLite store is closed".into())
}

/// Reader connections, each used by one blocking thread at a time; opened
/// as needed, at most `max` at once.
pub(super) struct Readers {
    idle: Mutex<Vec<Connection>>,
    permits: Arc<Semaphore>,
    open: Box<dyn Fn() -> StoreResult<Connection> + Send + Sync>,
    timeout: Duration,
}

impl std::fmt::Debug for Readers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Readers")
            .field("free", &self.permits.available_permits())
            .finish_non_exhaustive()
    }
}

impl Readers {
    pub(super) fn new(
        max: usize,
        timeout: Duration,
        open: impl Fn() -> StoreResult<Connection> + Send + Sync + 'static,
    ) -> Arc<Self> {
        Arc::new(Self {
            idle: Mutex::new(Vec::new()),
            permits: Arc::new(Semaphore::new(max)),
            open: Box::new(open),
            timeout,
        })
    }

    /// Runs `op` on a reader connection on a blocking thread.
    pub(super) async fn read<T, F>(self: &Arc<Self>, op: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> StoreResult<T> + Send + 'static,
    {
        let permit = tokio::time::timeout(self.timeout, Arc::clone(&self.permits).acquire_owned())
            .await
            .map_err(|_| StoreError::Unavailable("no SQLite reader free".into()))?
            .map_err(|_| stopped())?;
        let me = Arc::clone(self);
        tokio::task::spawn_blocking(move || {
            let conn = me.take().map_or_else(|| (me.open)(), Ok)?;
            let result = op(&conn);
            me.put_back(conn);
            drop(permit);
            result
        })
        .await
        .map_err(|e| StoreError::Internal(format!("a SQLite read failed: {e}")))?
    }

    /// Runs `op`, a lookup of a few rows by key, on the calling thread with
    /// an idle reader connection; with none idle, as [`Readers::read`].
    ///
    /// Why: such a lookup takes microseconds in SQLite, while handing it to
    /// a blocking thread and back cost more than the lookup itself. On the
    /// validate phase of the bench those hops (spawn, condvar waits, futex
    /// wakes) were about a third of the request threads' time, for three
    /// such reads a validate. A WAL reader never waits for the writer, so
    /// the calling thread is held only for the lookup.
    pub(super) async fn read_point<T, F>(self: &Arc<Self>, op: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> StoreResult<T> + Send + 'static,
    {
        let Ok(permit) = Arc::clone(&self.permits).try_acquire_owned() else {
            return self.read(op).await;
        };
        let Some(conn) = self.take() else {
            // None opened yet, or all in use: open one where blocking is
            // expected.
            drop(permit);
            return self.read(op).await;
        };
        let result = op(&conn);
        self.put_back(conn);
        drop(permit);
        result
    }

    fn take(&self) -> Option<Connection> {
        self.idle.lock().ok()?.pop()
    }

    /// Returns a connection after use to the idle ones.
    fn put_back(&self, conn: Connection) {
        if let Ok(mut idle) = self.idle.lock() {
            idle.push(conn);
        }
    }

    /// Closes the idle connections and refuses reads from now on.
    pub(super) fn close(&self) {
        self.permits.close();
        if let Ok(mut idle) = self.idle.lock() {
            idle.clear();
        }
    }
}

impl Writer {
    /// Copies committed pages from the WAL into the database file on a
    /// thread of its own, every `every`, until the returned sender is
    /// dropped.
    ///
    /// Why a thread: SQLite otherwise checkpoints inside the COMMIT that
    /// fills the WAL past 1,000 pages, on the writer's thread: under load
    /// that is several times a second, each copying megabytes and fsyncing
    /// the file while every queued write waits. A passive checkpoint waits
    /// for no reader or writer, so here it runs beside the writer (whose own
    /// automatic checkpoint is off); a commit is durable once its WAL frames
    /// are fsync'd, as before.
    ///
    /// Why the writer still helps: SQLite starts the WAL over from its
    /// beginning only when a write begins with every frame copied, and a
    /// checkpoint beside a busy writer never copies the frames committed
    /// while it ran. Under sustained sends the WAL grew by about 50 MB a
    /// second, without bound, each new frame costing the kernel a fresh
    /// page. So when a checkpoint leaves the WAL longer than
    /// [`RESTART_AFTER_FRAMES`], the writer checkpoints once itself before
    /// its next batch: only the frames since, with no writer beside it,
    /// after which its write can start the WAL over.
    ///
    /// Every write waits while the writer helps, so the help is asked for
    /// only once this thread has caught up: while a pass finds more than
    /// [`HELP_TAIL_FRAMES`] frames to copy it goes again at once (at most
    /// [`CATCH_UP_PASSES`] times), each pass copying what came during the
    /// last, so the writer is left the frames of a short pass only. Asked
    /// for after passes 100 ms apart, the help had 100 ms of frames to copy
    /// and fsync, which stalled every write for 5–25 ms (more as the file
    /// grew), about every 300 ms under the bench's sends: the sends' p99.
    pub(super) fn start_checkpointer(
        &self,
        conn: Connection,
        every: Duration,
    ) -> StoreResult<std::sync::mpsc::Sender<()>> {
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let shared = Arc::clone(&self.counters);
        std::thread::Builder::new()
            .name("otpgate-sqlite-checkpoint".into())
            .spawn(move || {
                let mut pace = CatchUp::default();
                // Every `every`, or at once while catching up, until told
                // to stop.
                while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                    stopped.recv_timeout(pace.pause(every))
                {
                    match checkpoint(&conn) {
                        Some((frames, copied)) => {
                            if pace.passed(frames, copied) {
                                shared.wal_full.store(true, Ordering::Relaxed);
                            }
                        }
                        None => pace.failed(),
                    }
                }
            })
            .map_err(|e| {
                StoreError::Unavailable(format!("cannot start the SQLite checkpointer: {e}"))
            })?;
        Ok(stop)
    }
}

/// The checkpointer's pace: when it goes again, and when it asks for the
/// writer's help (see [`Writer::start_checkpointer`]).
#[derive(Debug, Default)]
struct CatchUp {
    /// Frames the last pass left copied.
    copied_before: i64,
    /// Passes run back to back since the last that asked for help or found
    /// the WAL short.
    passes: u32,
}

impl CatchUp {
    /// How long to wait before the next pass: `every`, or not at all while
    /// catching up.
    fn pause(&self, every: Duration) -> Duration {
        if self.passes == 0 {
            every
        } else {
            Duration::ZERO
        }
    }

    /// Takes a pass's result, the WAL's frames and how many of them are
    /// copied; whether to ask for the writer's help now.
    fn passed(&mut self, frames: i64, copied: i64) -> bool {
        // What this pass found to copy: the frames since the last one (all
        // of them once the WAL has started over).
        let found = if frames >= self.copied_before {
            frames - self.copied_before
        } else {
            frames
        };
        self.copied_before = copied;
        let help = frames > RESTART_AFTER_FRAMES
            && (found <= HELP_TAIL_FRAMES || self.passes >= CATCH_UP_PASSES);
        self.passes = if frames > RESTART_AFTER_FRAMES && !help {
            self.passes + 1
        } else {
            0
        };
        help
    }

    /// A pass failed (and was logged): the next waits its turn.
    fn failed(&mut self) {
        self.passes = 0;
    }
}

/// A passive checkpoint on `conn`; the frames the WAL holds after it and
/// how many of them are copied into the database file, or `None` (logged)
/// if it failed: the next one tries again.
fn checkpoint(conn: &Connection) -> Option<(i64, i64)> {
    conn.query_row("pragma wal_checkpoint(passive)", [], |r| {
        Ok((r.get(1)?, r.get(2)?))
    })
    .inspect_err(|e| tracing::warn!(error = %e, "SQLite WAL checkpoint failed; it is retried"))
    .ok()
}

/// Maps a SQLite error to the store's: faults of reaching the database
/// become `Unavailable` (503: nothing was written), key collisions
/// `Conflict`, the rest `Internal`.
pub(crate) fn sq(e: rusqlite::Error) -> StoreError {
    use rusqlite::ErrorCode as C;
    match e.sqlite_error_code() {
        Some(
            C::DatabaseBusy
            | C::DatabaseLocked
            | C::OutOfMemory
            | C::ReadOnly
            | C::SystemIoFailure
            | C::DiskFull
            | C::CannotOpen,
        ) => StoreError::Unavailable(e.to_string()),
        Some(C::ConstraintViolation)
            if matches!(
                e.sqlite_error().map(|f| f.extended_code),
                Some(
                    rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE
                        | rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY
                )
            ) =>
        {
            StoreError::Conflict(e.to_string())
        }
        _ => StoreError::Internal(e.to_string()),
    }
}

/// Runs `sql` (a cached statement); the rows it changed.
pub(super) fn exec(c: &Connection, sql: &str, p: impl Params) -> StoreResult<usize> {
    c.prepare_cached(sql)
        .and_then(|mut s| s.execute(p))
        .map_err(sq)
}

/// The first row of `sql`, read by `f`, if there is one.
pub(super) fn opt<T>(
    c: &Connection,
    sql: &str,
    p: impl Params,
    f: impl FnOnce(&Row<'_>) -> StoreResult<T>,
) -> StoreResult<Option<T>> {
    let mut s = c.prepare_cached(sql).map_err(sq)?;
    let mut rows = s.query(p).map_err(sq)?;
    rows.next().map_err(sq)?.map(f).transpose()
}

/// Every row of `sql`, each read by `f`.
pub(super) fn all<T>(
    c: &Connection,
    sql: &str,
    p: impl Params,
    mut f: impl FnMut(&Row<'_>) -> StoreResult<T>,
) -> StoreResult<Vec<T>> {
    let mut s = c.prepare_cached(sql).map_err(sq)?;
    let mut rows = s.query(p).map_err(sq)?;
    let mut out = Vec::new();
    while let Some(r) = rows.next().map_err(sq)? {
        out.push(f(r)?);
    }
    Ok(out)
}

/// The one value of the first row of `sql` (an error if there is none).
pub(super) fn one<T: FromSql>(c: &Connection, sql: &str, p: impl Params) -> StoreResult<T> {
    c.prepare_cached(sql)
        .and_then(|mut s| s.query_row(p, |r| r.get(0)))
        .map_err(sq)
}

/// A row as a tuple of its columns.
pub(super) fn tuple<T>(r: &Row<'_>) -> StoreResult<T>
where
    T: for<'a> TryFrom<&'a Row<'a>, Error = rusqlite::Error>,
{
    T::try_from(r).map_err(sq)
}

/// A queued write with its result type erased, so one channel carries all.
trait Write: Send {
    /// Runs the write; its answer is held until the batch's fate is known.
    fn run(self: Box<Self>, conn: &Connection) -> Ran;
    /// Answers without running: too late, or the batch failed before it.
    fn refuse(self: Box<Self>, error: &StoreError);
    fn deadline(&self) -> Instant;
    /// Whether it runs in a savepoint of its own when batched (see
    /// [`Writer::write_checked`]).
    fn savepoint(&self) -> bool;
}

/// Answers a caller: with its write's own result if the batch's transaction
/// ended well, else with the batch's error.
type Reply = Box<dyn FnOnce(Result<(), &StoreError>) + Send>;

/// A write that ran.
struct Ran {
    /// Whether its changes stay (savepoint released) or were undone.
    kept: bool,
    reply: Reply,
}

struct Job<T, F> {
    op: F,
    keep: fn(&T) -> bool,
    reply: oneshot::Sender<StoreResult<T>>,
    deadline: Instant,
    savepoint: bool,
}

impl<T, F> Write for Job<T, F>
where
    T: Send + 'static,
    F: FnOnce(&Connection) -> StoreResult<T> + Send + 'static,
{
    fn run(self: Box<Self>, conn: &Connection) -> Ran {
        let Job {
            op, keep, reply, ..
        } = *self;
        if reply.is_closed() {
            // The caller stopped waiting (a request timed out) before its
            // write began: nothing is written.
            return Ran {
                kept: false,
                reply: Box::new(|_| {}),
            };
        }
        let result = op(conn);
        let kept = matches!(&result, Ok(value) if keep(value));
        Ran {
            kept,
            reply: Box::new(move |batch| {
                // A caller that has gone away no longer needs the answer.
                let _ = reply.send(batch.map_err(fan_out).and(result));
            }),
        }
    }

    fn refuse(self: Box<Self>, error: &StoreError) {
        let _ = self.reply.send(Err(fan_out(error)));
    }

    fn deadline(&self) -> Instant {
        self.deadline
    }

    fn savepoint(&self) -> bool {
        self.savepoint
    }
}

/// The writer thread: takes what is queued, in order; consecutive writes
/// (up to `max_batch`) share a batch; a read or a close runs once the batch
/// before it has ended.
fn run(conn: &Connection, mut queue: mpsc::Receiver<Task>, max_batch: usize, counters: &Counters) {
    let mut jobs: Vec<Box<dyn Write>> = Vec::with_capacity(max_batch);
    while let Some(first) = queue.blocking_recv() {
        let mut next = Some(first);
        while let Some(task) = next {
            match task {
                Task::Write(job) => jobs.push(job),
                Task::Read(read) => {
                    batch(conn, std::mem::take(&mut jobs), counters);
                    read(conn);
                }
                Task::Close(ack) => {
                    batch(conn, std::mem::take(&mut jobs), counters);
                    // Refuse what is still queued; the connection closes
                    // when the thread returns.
                    queue.close();
                    while let Ok(task) = queue.try_recv() {
                        if let Task::Write(job) = task {
                            job.refuse(&stopped());
                        }
                    }
                    let _ = ack.send(());
                    return;
                }
            }
            if jobs.len() >= max_batch {
                batch(conn, std::mem::take(&mut jobs), counters);
            }
            next = queue.try_recv().ok();
        }
        batch(conn, std::mem::take(&mut jobs), counters);
    }
}

/// Runs `jobs` in one transaction; answers each caller once it has ended.
fn batch(conn: &Connection, jobs: Vec<Box<dyn Write>>, counters: &Counters) {
    let now = Instant::now();
    let (late, ready): (Vec<_>, Vec<_>) = jobs.into_iter().partition(|j| j.deadline() <= now);
    if !late.is_empty() {
        let timed_out = StoreError::Unavailable("the SQLite writer was busy too long".into());
        late.into_iter().for_each(|j| j.refuse(&timed_out));
    }
    if ready.is_empty() {
        return;
    }
    if counters.wal_full.swap(false, Ordering::Relaxed) {
        checkpoint(conn);
    }
    let grouped = ready.len() > 1;
    let mut jobs = ready.into_iter();
    let mut ran = Vec::with_capacity(jobs.len());
    let ended = transaction(conn, grouped, &mut jobs, &mut ran, counters);
    match &ended {
        Ok(true) => {
            counters.commits.fetch_add(1, Ordering::Relaxed);
        }
        Ok(false) => {}
        Err(e) => {
            jobs.for_each(|j| j.refuse(e));
            // Out of whatever is left of the transaction, so the next batch
            // can begin.
            if !conn.is_autocommit() {
                let _ = conn.execute_batch("rollback");
            }
        }
    }
    let writes = u64::try_from(ran.len()).unwrap_or(u64::MAX);
    counters.writes.fetch_add(writes, Ordering::Relaxed);
    // Only now, with the COMMIT returned (or the batch rolled back), does
    // any caller hear back.
    let ended = ended.as_ref().map(|_| ());
    for r in ran {
        (r.reply)(ended);
    }
}

/// One batch's transaction: `Ok(true)` if it committed, `Ok(false)` if no
/// write kept anything and it was rolled back. A job taken from `jobs` is
/// either run (into `ran`) or refused here; the caller refuses the rest.
fn transaction(
    conn: &Connection,
    grouped: bool,
    jobs: &mut impl Iterator<Item = Box<dyn Write>>,
    ran: &mut Vec<Ran>,
    counters: &Counters,
) -> StoreResult<bool> {
    exec(conn, "begin immediate", [])?;
    // Another process's commit (say, the CLI disabling an account) is seen
    // here, with the write lock held: whatever the server keeps of accounts
    // in memory is to be read again. It reads the WAL's header, which the
    // `begin` has just read anyway.
    let version: i64 = one(conn, "pragma data_version", [])?;
    if counters.data_version.swap(version, Ordering::AcqRel) != version {
        counters.account_changes.fetch_add(1, Ordering::AcqRel);
    }
    for job in jobs.by_ref() {
        let guarded = grouped && job.savepoint();
        if guarded && let Err(e) = exec(conn, "savepoint w", []) {
            job.refuse(&e);
            return Err(e);
        }
        let changes = conn.total_changes();
        let r = job.run(conn);
        let kept = r.kept;
        ran.push(r);
        // SQLite rolls the whole transaction back on its own on I/O errors
        // and a full disk: the batch ends here rather than run later writes
        // outside any transaction.
        if conn.is_autocommit() {
            return Err(StoreError::Unavailable(
                "SQLite ended the write transaction".into(),
            ));
        }
        if grouped && !guarded && !kept && conn.total_changes() != changes {
            // A checked write changed rows and is not kept: only undoing
            // the whole batch takes them back (see `Writer::write_checked`).
            tracing::warn!("a write failed after it had written: its batch is rolled back");
            return Err(StoreError::Unavailable(
                "a write in the same batch failed; nothing was written".into(),
            ));
        }
        if guarded {
            if kept {
                exec(conn, "release w", [])?;
            } else {
                exec(conn, "rollback to w", [])?;
                exec(conn, "release w", [])?;
            }
        }
    }
    if ran.iter().any(|r| r.kept) {
        exec(conn, "commit", [])?;
        Ok(true)
    } else {
        exec(conn, "rollback", [])?;
        Ok(false)
    }
}

#[cfg(test)]
mod tests {
    //! Batches built by hand, so what shares a transaction does not depend
    //! on timing. The store's own tests (`tests/store/sqlite_only.rs`) cover
    //! batching through the public API.

    use std::path::PathBuf;
    use std::sync::atomic::AtomicU32;

    use super::*;

    /// A database file of its own, removed (with its WAL) when dropped.
    struct Scratch(PathBuf);

    impl Drop for Scratch {
        fn drop(&mut self) {
            for suffix in ["", "-wal", "-shm"] {
                let mut p = self.0.clone().into_os_string();
                p.push(suffix);
                let _ = std::fs::remove_file(p);
            }
        }
    }

    /// A connection on a fresh file with a table `t` and a table `child`
    /// whose key to `t` is checked only at COMMIT.
    fn conn() -> (Scratch, Connection) {
        static N: AtomicU32 = AtomicU32::new(0);
        let path = std::env::temp_dir().join(format!(
            "otpgate-writer-{}-{}.db",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let scratch = Scratch(path);
        let conn = Connection::open(&scratch.0).unwrap();
        conn.execute_batch(
            "pragma foreign_keys = on; pragma journal_mode = wal;
             create table t (id integer primary key);
             create table child (id integer primary key,
                 t_id integer not null references t (id) deferrable initially deferred);",
        )
        .unwrap();
        (scratch, conn)
    }

    type Answer = oneshot::Receiver<StoreResult<()>>;

    /// A write running `sql`, kept if it succeeds.
    /// `sql` prefixed `checked: ` runs as [`Writer::write_checked`] would.
    fn job(sql: &'static str) -> (Box<dyn Write>, Answer) {
        let (savepoint, sql) = match sql.strip_prefix("checked: ") {
            Some(rest) => (false, rest),
            None => (true, sql),
        };
        let (reply, answer) = oneshot::channel();
        let job = Job {
            op: move |conn: &Connection| conn.execute_batch(sql).map_err(sq),
            keep: |_| true,
            reply,
            deadline: Instant::now() + Duration::from_secs(60),
            savepoint,
        };
        (Box::new(job), answer)
    }

    fn run_batch(conn: &Connection, sqls: &[&'static str]) -> (Vec<StoreResult<()>>, WriteStats) {
        let (jobs, answers): (Vec<_>, Vec<_>) = sqls.iter().map(|s| job(s)).unzip();
        let counters = Counters::default();
        batch(conn, jobs, &counters);
        let results = answers
            .into_iter()
            .map(|mut a| a.try_recv().expect("every job is answered"))
            .collect();
        let stats = WriteStats {
            writes: counters.writes.load(Ordering::Relaxed),
            commits: counters.commits.load(Ordering::Relaxed),
        };
        (results, stats)
    }

    fn ids(conn: &Connection) -> Vec<i64> {
        all(conn, "select id from t order by id", [], |r| {
            r.get(0).map_err(sq)
        })
        .unwrap()
    }

    #[test]
    fn each_write_in_a_batch_keeps_or_undoes_only_itself() {
        let (_f, conn) = conn();
        let (results, stats) = run_batch(
            &conn,
            &[
                "insert into t values (1)",
                // Writes a row, then fails: its savepoint takes the row back.
                "insert into t values (2); insert into t values (1)",
                "insert into t values (3)",
            ],
        );
        assert!(results[0].is_ok() && results[2].is_ok(), "{results:?}");
        assert!(
            matches!(results[1], Err(StoreError::Conflict(_))),
            "{results:?}"
        );
        assert_eq!(ids(&conn), [1, 3]);
        assert_eq!(
            stats,
            WriteStats {
                writes: 3,
                commits: 1
            }
        );
    }

    #[test]
    fn a_checked_write_that_fails_before_writing_undoes_only_itself() {
        let (_f, conn) = conn();
        let (results, stats) = run_batch(
            &conn,
            &[
                "checked: insert into t values (1)",
                // Fails on its first statement: nothing of it to undo.
                "checked: insert into t values (1)",
                "checked: insert into t values (2)",
            ],
        );
        assert!(results[0].is_ok() && results[2].is_ok(), "{results:?}");
        assert!(
            matches!(results[1], Err(StoreError::Conflict(_))),
            "{results:?}"
        );
        assert_eq!(ids(&conn), [1, 2]);
        assert_eq!(stats.commits, 1);
    }

    #[test]
    fn a_checked_write_that_fails_after_writing_undoes_its_whole_batch() {
        let (_f, conn) = conn();
        let (results, stats) = run_batch(
            &conn,
            &[
                "insert into t values (1)",
                // Writes a row, then fails: without a savepoint only the
                // batch's rollback takes the row back.
                "checked: insert into t values (2); insert into t values (1)",
                // Never runs: the batch has ended.
                "insert into t values (3)",
            ],
        );
        for r in &results {
            assert!(matches!(r, Err(StoreError::Unavailable(_))), "{results:?}");
        }
        assert!(ids(&conn).is_empty(), "nothing of the batch is visible");
        assert_eq!((stats.writes, stats.commits), (2, 0));
        let (results, _) = run_batch(&conn, &["checked: insert into t values (4)"]);
        assert!(results[0].is_ok(), "{results:?}");
        assert_eq!(ids(&conn), [4]);
    }

    #[test]
    fn a_batch_whose_commit_fails_answers_everyone_with_the_error_and_leaves_nothing() {
        let (_f, conn) = conn();
        let (results, stats) = run_batch(
            &conn,
            &[
                "insert into t values (1)",
                // Passes as a statement; the deferred key fails the COMMIT.
                "insert into child values (1, 99)",
                "insert into t values (2)",
            ],
        );
        for r in &results {
            assert!(matches!(r, Err(StoreError::Internal(_))), "{results:?}");
        }
        assert!(ids(&conn).is_empty(), "nothing of the batch is visible");
        assert_eq!(stats.commits, 0);
        // The connection was taken out of the failed transaction: the next
        // batch commits.
        let (results, stats) = run_batch(&conn, &["insert into t values (3)"]);
        assert!(results[0].is_ok(), "{results:?}");
        assert_eq!((ids(&conn), stats.commits), (vec![3], 1));
    }

    #[test]
    fn a_batch_whose_transaction_sqlite_ended_stops_and_the_next_one_writes() {
        let (_f, conn) = conn();
        let (results, stats) = run_batch(
            &conn,
            &[
                "insert into t values (1)",
                // What SQLite does by itself on an I/O error or a full disk:
                // the whole transaction is gone, savepoints with it.
                "rollback",
                // Must not run: outside any transaction it would commit on
                // its own while its caller hears of a failure.
                "insert into t values (2)",
            ],
        );
        for r in &results {
            assert!(r.is_err(), "{results:?}");
        }
        assert_eq!(stats.writes, 2, "the write after the loss never ran");
        assert!(ids(&conn).is_empty());
        let (results, _) = run_batch(&conn, &["insert into t values (4)"]);
        assert!(results[0].is_ok(), "{results:?}");
        assert_eq!(ids(&conn), [4]);
    }

    #[test]
    fn a_lone_write_that_fails_is_rolled_back_and_answered_with_its_own_error() {
        let (_f, conn) = conn();
        let (results, stats) = run_batch(
            &conn,
            &["insert into t values (5); insert into t values (5)"],
        );
        assert!(
            matches!(results[0], Err(StoreError::Conflict(_))),
            "{results:?}"
        );
        assert!(ids(&conn).is_empty());
        assert_eq!(
            stats,
            WriteStats {
                writes: 1,
                commits: 0
            }
        );
    }

    #[tokio::test]
    async fn a_write_that_waited_past_the_timeout_is_refused_without_running() {
        let (f, conn) = conn();
        // A zero timeout: every write is late by the time the thread sees it.
        let writer = Writer::start(conn, 8, Duration::ZERO).unwrap();
        let result = writer
            .write(
                |_| true,
                |conn| exec(conn, "insert into t values (1)", []).map(|_| ()),
            )
            .await;
        assert!(
            matches!(result, Err(StoreError::Unavailable(_))),
            "{result:?}"
        );
        assert_eq!(writer.stats(), WriteStats::default());
        writer.close().await;
        assert!(ids(&Connection::open(&f.0).unwrap()).is_empty());
    }

    #[test]
    fn the_checkpointer_asks_for_help_only_once_a_pass_finds_little_to_copy() {
        let every = Duration::from_millis(100);
        let mut pace = CatchUp::default();
        // A short WAL: no help, the next pass in its turn.
        assert!(!pace.passed(1_000, 1_000));
        assert_eq!(pace.pause(every), every);
        // Long, and this pass copied much: again at once, no help yet.
        assert!(!pace.passed(6_000, 6_000));
        assert_eq!(pace.pause(every), Duration::ZERO);
        // The next pass found only what came during the last: help.
        assert!(pace.passed(6_000 + HELP_TAIL_FRAMES, 6_000 + HELP_TAIL_FRAMES));
        assert_eq!(pace.pause(every), every);
        // The WAL started over and is long again, shorter than before: what
        // the pass found is all of it, so no help yet.
        assert!(!pace.passed(5_000, 5_000));
        assert_eq!(pace.pause(every), Duration::ZERO);
        // Short after it started over: nothing to do.
        assert!(!pace.passed(300, 300));
        assert_eq!(pace.pause(every), every);
    }

    #[test]
    fn a_checkpointer_that_cannot_catch_up_asks_for_help_anyway() {
        let mut pace = CatchUp::default();
        let mut frames = RESTART_AFTER_FRAMES;
        for pass in 0..CATCH_UP_PASSES {
            // Each pass finds more than the tail (a busy writer, or a
            // reader keeping the newest frames from being copied).
            frames += 2 * HELP_TAIL_FRAMES;
            assert!(!pace.passed(frames, frames - 100), "help at pass {pass}");
            assert_eq!(pace.pause(Duration::from_millis(100)), Duration::ZERO);
        }
        frames += 2 * HELP_TAIL_FRAMES;
        assert!(pace.passed(frames, frames), "no help after the last pass");
        // A failed pass: the next waits its turn.
        assert!(!pace.passed(frames + 4 * HELP_TAIL_FRAMES, frames));
        pace.failed();
        assert_eq!(
            pace.pause(Duration::from_millis(100)),
            Duration::from_millis(100)
        );
    }
}
