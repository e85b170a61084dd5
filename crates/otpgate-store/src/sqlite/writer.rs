//! Group commit: one task writes to SQLite for the whole store, and commits
//! many callers' writes with one fsync.
//!
//! Why: with `synchronous = FULL` every COMMIT waits for the disk to flush,
//! and SQLite lets one connection write at a time, so committing each write
//! on its own caps a busy server's sends per second at the disk's flush rate.
//! Here a caller hands its write to the writer task over a channel and awaits
//! the answer. The task takes whatever is queued at that moment (up to
//! `max_batch` writes; it never waits for more, so a lone write goes at once),
//! runs those writes one after another in one `begin immediate` transaction,
//! each inside its own SAVEPOINT, and then COMMITs once.
//!
//! What each caller is promised is what it was promised when every write
//! committed alone:
//! - A write that fails, or whose result says its changes must not stay (a
//!   send answered 506, 800 or 402), is rolled back to its savepoint. It
//!   leaves no trace, and the writes around it are unaffected.
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
//!   timeout (that caller gets `Unavailable`, as a pool timeout gave before).
//!
//! A batch of one write runs without a savepoint: the same statements a write
//! ran before group commit, so a lone caller waits no longer than it used to.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::future::BoxFuture;
use sqlx::pool::PoolConnection;
use sqlx::sqlite::SqliteConnection;
use sqlx::{Connection, Sqlite, SqlitePool};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::db;
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

#[derive(Debug, Default)]
struct Counters {
    writes: AtomicU64,
    commits: AtomicU64,
}

/// The store's handle on the writer task. Clones share the task, which ends
/// when the last clone is dropped.
#[derive(Debug, Clone)]
pub(super) struct Writer {
    queue: mpsc::Sender<Box<dyn Write>>,
    counters: Arc<Counters>,
    queue_timeout: Duration,
}

impl Writer {
    /// Starts the writer task on `pool`, the store's pool of exactly one
    /// write connection. It takes the connection for each batch rather than
    /// keeping it, so an in-memory store can read through the same pool
    /// between batches. `max_batch` 1 turns grouping off.
    pub(super) fn start(pool: SqlitePool, max_batch: usize, queue_timeout: Duration) -> Self {
        let max_batch = max_batch.max(1);
        let (queue, jobs) = mpsc::channel(max_batch * QUEUE_BATCHES);
        let counters = Arc::new(Counters::default());
        tokio::spawn(run(pool, jobs, max_batch, Arc::clone(&counters)));
        Self {
            queue,
            counters,
            queue_timeout,
        }
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
        F: for<'c> FnOnce(&'c mut SqliteConnection) -> BoxFuture<'c, StoreResult<T>>
            + Send
            + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let job = Box::new(Job {
            op,
            keep,
            reply,
            deadline: Instant::now() + self.queue_timeout,
        });
        self.queue
            .send_timeout(job, self.queue_timeout)
            .await
            .map_err(|_| StoreError::Unavailable("the SQLite writer is not keeping up".into()))?;
        // The task answers every job it receives; a dropped reply means the
        // task itself is gone (its runtime shut down) before running it.
        answer
            .await
            .unwrap_or_else(|_| Err(StoreError::Unavailable("the SQLite writer stopped".into())))
    }

    /// Jobs sent and not yet received by the writer task.
    pub(super) fn queued(&self) -> usize {
        self.queue.max_capacity() - self.queue.capacity()
    }

    pub(super) fn stats(&self) -> WriteStats {
        WriteStats {
            writes: self.counters.writes.load(Ordering::Relaxed),
            commits: self.counters.commits.load(Ordering::Relaxed),
        }
    }
}

/// A queued write with its result type erased, so one channel carries all.
trait Write: Send {
    /// Runs the write; its answer is held until the batch's fate is known.
    fn run<'c>(self: Box<Self>, conn: &'c mut SqliteConnection) -> BoxFuture<'c, Ran>;
    /// Answers without running: too late, or the batch failed before it.
    fn refuse(self: Box<Self>, error: &StoreError);
    fn deadline(&self) -> Instant;
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
}

impl<T, F> Write for Job<T, F>
where
    T: Send + 'static,
    F: for<'c> FnOnce(&'c mut SqliteConnection) -> BoxFuture<'c, StoreResult<T>> + Send + 'static,
{
    fn run<'c>(self: Box<Self>, conn: &'c mut SqliteConnection) -> BoxFuture<'c, Ran> {
        let Job {
            op, keep, reply, ..
        } = *self;
        Box::pin(async move {
            if reply.is_closed() {
                // The caller stopped waiting (a request timed out) before its
                // write began; as when it gave up waiting for the pool,
                // nothing is written.
                return Ran {
                    kept: false,
                    reply: Box::new(|_| {}),
                };
            }
            let result = op(conn).await;
            let kept = matches!(&result, Ok(value) if keep(value));
            Ran {
                kept,
                reply: Box::new(move |batch| {
                    // A caller that has gone away no longer needs the answer.
                    let _ = reply.send(batch.map_err(fan_out).and(result));
                }),
            }
        })
    }

    fn refuse(self: Box<Self>, error: &StoreError) {
        let _ = self.reply.send(Err(fan_out(error)));
    }

    fn deadline(&self) -> Instant {
        self.deadline
    }
}

/// The batch's error as each of its callers gets it. A key collision at
/// commit time is not any one caller's, so only `Unavailable` keeps its kind.
fn fan_out(e: &StoreError) -> StoreError {
    match e {
        StoreError::Unavailable(m) => StoreError::Unavailable(m.clone()),
        other => StoreError::Internal(other.to_string()),
    }
}

/// The writer task: one batch at a time until every [`Writer`] is dropped.
async fn run(
    pool: SqlitePool,
    mut queue: mpsc::Receiver<Box<dyn Write>>,
    max_batch: usize,
    counters: Arc<Counters>,
) {
    let mut jobs = Vec::with_capacity(max_batch);
    // `recv_many` waits for one job, then takes whatever else is queued
    // already, up to the limit, without waiting for more.
    while queue.recv_many(&mut jobs, max_batch).await > 0 {
        let now = Instant::now();
        let (late, ready): (Vec<_>, Vec<_>) = jobs.drain(..).partition(|j| j.deadline() <= now);
        let timed_out = StoreError::Unavailable("the SQLite writer was busy too long".into());
        for job in late {
            job.refuse(&timed_out);
        }
        if !ready.is_empty() {
            batch(&pool, ready, &counters).await;
        }
    }
}

/// Runs `jobs` in one transaction; answers each caller once it has ended.
async fn batch(pool: &SqlitePool, jobs: Vec<Box<dyn Write>>, counters: &Counters) {
    let mut conn = match pool.acquire().await {
        Ok(conn) => conn,
        Err(e) => {
            let e = db(e);
            jobs.into_iter().for_each(|j| j.refuse(&e));
            return;
        }
    };
    let grouped = jobs.len() > 1;
    let mut jobs = jobs.into_iter();
    let mut ran = Vec::with_capacity(jobs.len());
    let ended = transaction(&mut conn, grouped, &mut jobs, &mut ran).await;
    match &ended {
        Ok(true) => {
            counters.commits.fetch_add(1, Ordering::Relaxed);
        }
        Ok(false) => {}
        Err(e) => {
            jobs.for_each(|j| j.refuse(e));
            settle(&mut conn).await;
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
async fn transaction(
    conn: &mut SqliteConnection,
    grouped: bool,
    jobs: &mut impl Iterator<Item = Box<dyn Write>>,
    ran: &mut Vec<Ran>,
) -> StoreResult<bool> {
    let mut tx = conn.begin_with("begin immediate").await.map_err(db)?;
    for job in jobs.by_ref() {
        if !grouped {
            // Alone: the transaction itself is the write's, committed or
            // rolled back below by its own result.
            ran.push(job.run(&mut tx).await);
            continue;
        }
        let mut savepoint = match tx.begin().await {
            Ok(sp) => sp,
            Err(e) => {
                let e = db(e);
                job.refuse(&e);
                return Err(e);
            }
        };
        let r = job.run(&mut savepoint).await;
        let kept = r.kept;
        ran.push(r);
        // If SQLite rolled the whole transaction back on its own (it does on
        // I/O errors and a full disk), the savepoint is gone and this fails:
        // the batch ends here rather than run later writes outside any
        // transaction.
        if kept {
            savepoint.commit().await.map_err(db)?;
        } else {
            savepoint.rollback().await.map_err(db)?;
        }
    }
    if ran.iter().any(|r| r.kept) {
        tx.commit().await.map_err(db)?;
        Ok(true)
    } else {
        tx.rollback().await.map_err(db)?;
        Ok(false)
    }
}

/// After a failed batch, makes sure the connection is out of its
/// transaction. When SQLite has already rolled back by itself, sqlx's own
/// rollback fails and sqlx goes on counting the connection as inside a
/// transaction, which would refuse every later `begin immediate`; such a
/// connection is closed, and the pool opens a fresh one for the next batch.
async fn settle(conn: &mut PoolConnection<Sqlite>) {
    // The rollbacks queued by the dropped transaction run before this ping
    // (the connection runs its commands in order), so the check below sees
    // their outcome.
    let _ = conn.ping().await;
    if conn.is_in_transaction() {
        conn.close_on_drop();
    }
}

#[cfg(test)]
mod tests {
    //! Batches built by hand, so what shares a transaction does not depend
    //! on timing. The store's own tests (`tests/store/sqlite_only.rs`) cover batching
    //! through the public API.

    use std::path::PathBuf;
    use std::sync::atomic::AtomicU32;

    use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};

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

    /// A one-connection pool on a fresh file with a table `t` and a table
    /// `child` whose key to `t` is checked only at COMMIT.
    async fn pool() -> (Scratch, SqlitePool) {
        static N: AtomicU32 = AtomicU32::new(0);
        let path = std::env::temp_dir().join(format!(
            "otpgate-writer-{}-{}.db",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let scratch = Scratch(path);
        let opts = SqliteConnectOptions::new()
            .filename(&scratch.0)
            .create_if_missing(true)
            .foreign_keys(true)
            .journal_mode(SqliteJournalMode::Wal);
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(opts)
            .await
            .unwrap();
        sqlx::raw_sql(
            "create table t (id integer primary key);
             create table child (id integer primary key,
                 t_id integer not null references t (id) deferrable initially deferred);",
        )
        .execute(&pool)
        .await
        .unwrap();
        (scratch, pool)
    }

    type Answer = oneshot::Receiver<StoreResult<()>>;

    /// A write running `sql`, kept if it succeeds.
    fn job(sql: &'static str) -> (Box<dyn Write>, Answer) {
        boxed(move |conn| {
            Box::pin(async move {
                sqlx::raw_sql(sql).execute(conn).await.map_err(db)?;
                Ok(())
            })
        })
    }

    /// As [`Writer::write`] queues a write, minus the queue.
    fn boxed<F>(op: F) -> (Box<dyn Write>, Answer)
    where
        F: for<'c> FnOnce(&'c mut SqliteConnection) -> BoxFuture<'c, StoreResult<()>>
            + Send
            + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let job = Job {
            op,
            keep: |_| true,
            reply,
            deadline: Instant::now() + Duration::from_secs(60),
        };
        (Box::new(job), answer)
    }

    async fn run_batch(
        pool: &SqlitePool,
        sqls: &[&'static str],
    ) -> (Vec<StoreResult<()>>, WriteStats) {
        let (jobs, answers): (Vec<_>, Vec<_>) = sqls.iter().map(|s| job(s)).unzip();
        let counters = Counters::default();
        batch(pool, jobs, &counters).await;
        let mut results = Vec::new();
        for a in answers {
            results.push(a.await.expect("every job is answered"));
        }
        let stats = WriteStats {
            writes: counters.writes.load(Ordering::Relaxed),
            commits: counters.commits.load(Ordering::Relaxed),
        };
        (results, stats)
    }

    async fn ids(pool: &SqlitePool) -> Vec<i64> {
        sqlx::query_scalar("select id from t order by id")
            .fetch_all(pool)
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn each_write_in_a_batch_keeps_or_undoes_only_itself() {
        let (_f, pool) = pool().await;
        let (results, stats) = run_batch(
            &pool,
            &[
                "insert into t values (1)",
                // Writes a row, then fails: its savepoint takes the row back.
                "insert into t values (2); insert into t values (1)",
                "insert into t values (3)",
            ],
        )
        .await;
        assert!(results[0].is_ok() && results[2].is_ok(), "{results:?}");
        assert!(
            matches!(results[1], Err(StoreError::Conflict(_))),
            "{results:?}"
        );
        assert_eq!(ids(&pool).await, [1, 3]);
        assert_eq!(
            stats,
            WriteStats {
                writes: 3,
                commits: 1
            }
        );
    }

    #[tokio::test]
    async fn a_batch_whose_commit_fails_answers_everyone_with_the_error_and_leaves_nothing() {
        let (_f, pool) = pool().await;
        let (results, stats) = run_batch(
            &pool,
            &[
                "insert into t values (1)",
                // Passes as a statement; the deferred key fails the COMMIT.
                "insert into child values (1, 99)",
                "insert into t values (2)",
            ],
        )
        .await;
        for r in &results {
            assert!(matches!(r, Err(StoreError::Internal(_))), "{results:?}");
        }
        assert!(
            ids(&pool).await.is_empty(),
            "nothing of the batch is visible"
        );
        assert_eq!(stats.commits, 0);
        // The connection was taken out of the failed transaction: the next
        // batch commits.
        let (results, stats) = run_batch(&pool, &["insert into t values (3)"]).await;
        assert!(results[0].is_ok(), "{results:?}");
        assert_eq!((ids(&pool).await, stats.commits), (vec![3], 1));
    }

    #[tokio::test]
    async fn a_batch_whose_transaction_sqlite_ended_stops_and_the_connection_is_replaced() {
        let (_f, pool) = pool().await;
        let (results, stats) = run_batch(
            &pool,
            &[
                "insert into t values (1)",
                // What SQLite does by itself on an I/O error or a full disk:
                // the whole transaction is gone, savepoints with it.
                "rollback",
                // Must not run: outside any transaction it would commit on
                // its own while its caller hears of a failure.
                "insert into t values (2)",
            ],
        )
        .await;
        for r in &results {
            assert!(r.is_err(), "{results:?}");
        }
        assert_eq!(stats.writes, 2, "the write after the loss never ran");
        assert!(ids(&pool).await.is_empty());
        // sqlx still counted that connection as in a transaction; a fresh
        // one takes its place and writes again.
        let (results, _) = run_batch(&pool, &["insert into t values (4)"]).await;
        assert!(results[0].is_ok(), "{results:?}");
        assert_eq!(ids(&pool).await, [4]);
    }

    #[tokio::test]
    async fn a_lone_write_that_fails_is_rolled_back_and_answered_with_its_own_error() {
        let (_f, pool) = pool().await;
        let (results, stats) = run_batch(
            &pool,
            &["insert into t values (5); insert into t values (5)"],
        )
        .await;
        assert!(
            matches!(results[0], Err(StoreError::Conflict(_))),
            "{results:?}"
        );
        assert!(ids(&pool).await.is_empty());
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
        let (_f, pool) = pool().await;
        // A zero timeout: every write is late by the time the task sees it.
        let writer = Writer::start(pool.clone(), 8, Duration::ZERO);
        let result = writer
            .write(
                |_| true,
                |conn| {
                    Box::pin(async move {
                        sqlx::query("insert into t values (1)")
                            .execute(conn)
                            .await
                            .map_err(db)?;
                        Ok(())
                    })
                },
            )
            .await;
        assert!(
            matches!(result, Err(StoreError::Unavailable(_))),
            "{result:?}"
        );
        assert!(ids(&pool).await.is_empty());
        assert_eq!(writer.stats(), WriteStats::default());
    }
}
