//! Flushes the WAL to disk on a thread of its own, and only then answers
//! the callers of the batches it covers: the writer goes on with its next
//! batch meanwhile.
//!
//! Why: with `synchronous = FULL` SQLite fsyncs the WAL inside COMMIT, on
//! the writer's thread, which then sits idle for the flush (about 3 ms on
//! this machine's disk, a quarter to a third of every batch's time under
//! load) while the next callers queue. Here the writer's connection runs
//! with `synchronous = NORMAL`, which in WAL mode writes a commit's frames
//! without flushing them, and this thread flushes the WAL file by its own
//! handle. One flush covers every batch committed before it started, so a
//! flush overlaps the next batch's work instead of following it.
//!
//! What stays as it was: no caller hears back before the WAL frames of its
//! write, and of every write committed before it, are fsync'd; batches are
//! answered in the order they committed; a checkpoint still fsyncs the WAL
//! before it copies any frame into the database file (SQLite does that at
//! `NORMAL` too), so a frame is never dropped from the WAL before it is on
//! disk in one place or the other.
//!
//! What changes: another connection may read a committed write a few
//! milliseconds before it is flushed. A power cut in that window takes the
//! write back (a crash of the process does not: the frames are in the
//! kernel's cache), and its caller never had an answer; a read in that
//! window may have shown it. No write's answer depends on a write that was
//! not flushed by then, since every answer waits for a flush that covers
//! all earlier commits.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::thread::JoinHandle;

use crate::{StoreError, StoreResult};

/// Answers a caller: with its write's own result if the batch's transaction
/// ended well, else with the batch's error.
pub(super) type Reply = Box<dyn FnOnce(Result<(), &StoreError>) + Send>;

/// A batch that has ended, whose callers are still to hear back.
pub(super) struct Ended {
    /// Whether it committed (its writes must be on disk before the answer).
    pub(super) committed: bool,
    /// How its transaction ended.
    pub(super) outcome: StoreResult<()>,
    pub(super) replies: Vec<Reply>,
}

impl Ended {
    /// Answers every caller; `flushed` is whether the flush covering this
    /// batch worked (it matters only if the batch committed).
    pub(super) fn answer(self, flushed: Result<(), &StoreError>) {
        let outcome = match (&self.outcome, flushed) {
            (Err(e), _) => Err(e),
            (Ok(()), Err(e)) if self.committed => Err(e),
            _ => Ok(()),
        };
        for reply in self.replies {
            reply(outcome);
        }
    }
}

/// Flushes whatever the writer has written to disk.
pub(super) type Flush = Box<dyn FnMut() -> std::io::Result<()> + Send>;

/// The flushing thread's handle. Dropping it (or [`Syncer::finish`]) lets
/// the thread answer what is queued and end.
pub(super) struct Syncer {
    queue: Option<mpsc::Sender<Ended>>,
    thread: Option<JoinHandle<()>>,
}

impl Syncer {
    /// Starts the thread; it calls `flush` once for every run of batches
    /// that reached it while the previous flush was under way.
    pub(super) fn start(mut flush: Flush) -> StoreResult<Self> {
        let (queue, ended) = mpsc::channel::<Ended>();
        let thread = std::thread::Builder::new()
            .name("otpgate-sqlite-sync".into())
            .spawn(move || {
                while let Ok(first) = ended.recv() {
                    let mut batches = vec![first];
                    batches.extend(ended.try_iter());
                    let flushed = if batches.iter().any(|b| b.committed) {
                        flush().map_err(|e| {
                            tracing::error!(error = %e, "cannot flush the SQLite WAL to disk");
                            StoreError::Unavailable(format!(
                                "the write could not be flushed to disk: {e}"
                            ))
                        })
                    } else {
                        Ok(())
                    };
                    for b in batches {
                        b.answer(flushed.as_ref().map(|_| ()));
                    }
                }
            })
            .map_err(|e| {
                StoreError::Unavailable(format!("cannot start the SQLite sync thread: {e}"))
            })?;
        Ok(Self {
            queue: Some(queue),
            thread: Some(thread),
        })
    }

    /// Hands an ended batch over; its callers hear back after the next
    /// flush.
    pub(super) fn pass(&self, ended: Ended) {
        let Some(queue) = &self.queue else {
            return ended.answer(Err(&super::writer::stopped()));
        };
        if let Err(mpsc::SendError(ended)) = queue.send(ended) {
            ended.answer(Err(&super::writer::stopped()));
        }
    }

    /// Waits until every batch handed over has been answered.
    pub(super) fn finish(&mut self) {
        drop(self.queue.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Syncer {
    fn drop(&mut self) {
        self.finish();
    }
}

/// A database's WAL file, flushed through a handle of its own.
pub(super) struct WalFile {
    path: PathBuf,
    dir: PathBuf,
    /// The open file and its inode.
    open: Option<(File, u64)>,
}

impl WalFile {
    /// The WAL of the database file at `db`, as SQLite names it.
    pub(super) fn of(db: &Path) -> Self {
        let mut path = db.as_os_str().to_owned();
        path.push("-wal");
        let dir = db
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
            .to_owned();
        Self {
            path: path.into(),
            dir,
            open: None,
        }
    }

    /// fsyncs the WAL file.
    ///
    /// SQLite keeps the WAL file while any connection has the database open
    /// (the store's stay open), so one handle serves for the store's life.
    /// Should the file at the WAL's name ever be another one, the handle is
    /// opened again, so it is never a stale file that gets flushed.
    pub(super) fn flush(&mut self) -> std::io::Result<()> {
        let now = inode(&std::fs::metadata(&self.path)?);
        let file = match &self.open {
            Some((file, ino)) if *ino == now => file,
            _ => {
                let file = File::open(&self.path)?;
                let ino = inode(&file.metadata()?);
                // SQLite fsyncs the directory after creating a WAL only
                // when it flushes the WAL itself: its name must survive a
                // power cut as its content does.
                File::open(&self.dir)?.sync_all()?;
                &self.open.insert((file, ino)).0
            }
        };
        file.sync_all()
    }
}

#[cfg(unix)]
fn inode(m: &std::fs::Metadata) -> u64 {
    std::os::unix::fs::MetadataExt::ino(m)
}

#[cfg(not(unix))]
fn inode(_: &std::fs::Metadata) -> u64 {
    0
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    /// Records the callers' answers in the order they arrive.
    fn batch(committed: bool, names: &[&'static str], log: &Arc<Mutex<Vec<String>>>) -> Ended {
        let replies = names
            .iter()
            .map(|&name| {
                let log = Arc::clone(log);
                Box::new(move |r: Result<(), &StoreError>| {
                    log.lock()
                        .unwrap()
                        .push(format!("{name}:{}", if r.is_ok() { "ok" } else { "err" }));
                }) as Reply
            })
            .collect();
        Ended {
            committed,
            outcome: Ok(()),
            replies,
        }
    }

    #[test]
    fn no_caller_hears_back_before_the_flush_that_covers_its_commit() {
        let log = Arc::new(Mutex::new(Vec::new()));
        // The flush blocks until the test lets it go.
        let (go, wait) = mpsc::channel::<()>();
        let (started, flushing) = mpsc::channel::<()>();
        let flushes = Arc::new(Mutex::new(0));
        let counted = Arc::clone(&flushes);
        let mut syncer = Syncer::start(Box::new(move || {
            *counted.lock().unwrap() += 1;
            started.send(()).unwrap();
            wait.recv().unwrap();
            Ok(())
        }))
        .unwrap();
        syncer.pass(batch(true, &["a"], &log));
        flushing.recv().unwrap();
        // While the first flush is under way, two more batches end (the
        // writer is not held up): they wait for a flush of their own.
        syncer.pass(batch(true, &["b", "c"], &log));
        syncer.pass(batch(false, &["d"], &log));
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert!(log.lock().unwrap().is_empty(), "answered before a flush");
        go.send(()).unwrap();
        flushing.recv().unwrap();
        assert_eq!(*log.lock().unwrap(), ["a:ok"]);
        go.send(()).unwrap();
        syncer.finish();
        assert_eq!(*log.lock().unwrap(), ["a:ok", "b:ok", "c:ok", "d:ok"]);
        assert_eq!(*flushes.lock().unwrap(), 2, "one flush for b, c and d");
    }

    #[test]
    fn a_failed_flush_fails_the_committed_batches_it_covered_only() {
        let log = Arc::new(Mutex::new(Vec::new()));
        let (go, wait) = mpsc::channel::<()>();
        let mut syncer = Syncer::start(Box::new(move || {
            wait.recv().unwrap();
            Err(std::io::Error::other("disk gone"))
        }))
        .unwrap();
        syncer.pass(batch(true, &["a"], &log));
        syncer.pass(batch(false, &["b"], &log));
        go.send(()).unwrap();
        syncer.finish();
        let mut answers = log.lock().unwrap().clone();
        answers.sort();
        // `b` wrote nothing; whether it shared `a`'s flush or not, it has
        // nothing to lose.
        assert_eq!(answers, ["a:err", "b:ok"]);
    }

    #[test]
    fn the_flush_follows_the_file_at_the_wal_name() {
        let dir = std::env::temp_dir().join(format!("otpgate-durable-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let db = dir.join("x.db");
        let mut wal = WalFile::of(&db);
        assert!(wal.flush().is_err(), "no WAL yet is an error, not a no-op");
        std::fs::write(dir.join("x.db-wal"), b"one").unwrap();
        wal.flush().unwrap();
        let first = wal.open.as_ref().unwrap().1;
        // Another file takes the name: the next flush is of that one.
        std::fs::write(dir.join("new"), b"two").unwrap();
        std::fs::rename(dir.join("new"), dir.join("x.db-wal")).unwrap();
        wal.flush().unwrap();
        let second = wal.open.as_ref().unwrap().1;
        assert_ne!(first, second);
        assert_eq!(
            second,
            inode(&std::fs::metadata(dir.join("x.db-wal")).unwrap())
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
