//! Shared support for otpgate's tests, used as a dev-dependency by every
//! test crate: [`TempDir`], [`free_port`], [`require_services`] and
//! [`skip_or_fail`], a throwaway PostgreSQL ([`postgres`]), the SMSC
//! simulator ([`sim`]), child processes that log ([`process`]), a console
//! user without a browser ([`console`]), JSON
//! answers ([`http`]), what Kannel does to a callback URL ([`kannel`]) and
//! the channel tables tests configure ([`settings`]).
//!
//! It depends on no otpgate crate, so any crate's tests can use it without
//! a dev-dependency cycle; what needs otpgate's own types stays with the
//! tests of the crate that owns them.
#![forbid(unsafe_code)]

pub mod console;
pub mod http;
pub mod kannel;
pub mod postgres;
pub mod process;
pub mod settings;
pub mod sim;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

pub use postgres::{TempPostgres, TestkitError};

/// Whether tests must fail rather than skip when a service is missing
/// (`OTPGATE_REQUIRE_SERVICES` set to anything but empty or `0`; CI sets 1).
pub fn require_services() -> bool {
    std::env::var("OTPGATE_REQUIRE_SERVICES").is_ok_and(|v| !v.is_empty() && v != "0")
}

/// `None` after printing `SKIPPED <test>: <why>` when a service is missing
/// and services are optional; a panic naming the test when they are
/// required (CI).
///
/// # Panics
/// When [`require_services`] holds.
pub fn skip_or_fail<T>(test: &str, why: impl std::fmt::Display) -> Option<T> {
    assert!(!require_services(), "{test}: {why}");
    skipped(test, why);
    None
}

/// Prints `SKIPPED <test>: <why>` straight to stdout: the harness captures
/// `println!` of a test that passes, and a skip must be seen.
pub fn skipped(test: &str, why: impl std::fmt::Display) {
    use std::io::Write;
    let _ = writeln!(std::io::stdout(), "SKIPPED {test}: {why}");
}

/// A directory of its own for one test, removed (with all in it) on drop.
#[derive(Debug)]
pub struct TempDir(pub PathBuf);

/// A path under the system's temporary directory that no other test of any
/// process has used: `otpgate-<tag>-<pid>-<n>-<nanos>`.
pub(crate) fn unique_temp_path(tag: &str) -> PathBuf {
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    std::env::temp_dir().join(format!(
        "otpgate-{tag}-{}-{}-{nanos}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ))
}

impl TempDir {
    /// A new empty directory under the system's temporary directory, named
    /// `otpgate-<tag>-<pid>-<n>-<nanos>` so that neither parallel tests nor
    /// a leftover from an earlier run can share it.
    ///
    /// # Panics
    /// When the directory cannot be created.
    pub fn new(tag: &str) -> Self {
        let dir = unique_temp_path(tag);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create a temporary directory");
        Self(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    /// Writes `contents` to file `name` in it; the file's path.
    ///
    /// # Panics
    /// When the file cannot be written.
    pub fn write(&self, name: &str, contents: impl AsRef<[u8]>) -> PathBuf {
        let path = self.join(name);
        std::fs::write(&path, contents).unwrap_or_else(|e| panic!("write {name}: {e}"));
        path
    }

    /// The database file tests use in it (`otpgate.db`).
    pub fn db(&self) -> PathBuf {
        self.join("otpgate.db")
    }

    /// `sqlite://` URL of [`TempDir::db`].
    pub fn sqlite_url(&self) -> String {
        format!("sqlite://{}", self.db().display())
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A port on 127.0.0.1 nothing listened on a moment ago (bound, read,
/// released). Another process may take it before the caller binds it: use
/// port 0 where the program under test can report what it bound.
///
/// # Panics
/// When no ephemeral port can be bound.
pub fn free_port() -> u16 {
    try_free_port().expect("bind an ephemeral port")
}

/// [`free_port`] for callers that report the error themselves.
///
/// # Errors
/// When no ephemeral port can be bound.
pub fn try_free_port() -> std::io::Result<u16> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
}

/// The workspace root (tools, target, README), from this crate's manifest.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}
