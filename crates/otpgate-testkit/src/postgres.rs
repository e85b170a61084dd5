//! A throwaway PostgreSQL server for tests: `initdb` into
//! a fresh temporary directory, a server on 127.0.0.1 at a free port (and a
//! unix socket inside that directory), a new database per test, and
//! everything stopped and removed on drop.
//!
//! PostgreSQL refuses to run as root, and the tests here run as root, so the
//! server processes run as the `postgres` system user (through `runuser`)
//! over a directory handed to it. When the process is not root they run as
//! whoever it is.
//!
//! A test process can die without running destructors (a panic across a
//! `static`, an abort, a kill). The server is a daemon that would outlive it,
//! so each server gets a small watchdog shell that stops it and removes its
//! directory once the process that started it is gone.
//!
//! Blocking: these functions run external programs and wait for them (a
//! start takes a second or two). From async code, call them where blocking a
//! runtime thread is acceptable (a test's own runtime) or in
//! `spawn_blocking`.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Why a throwaway server could not be had.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TestkitError {
    /// `initdb`, `pg_ctl`, `postgres` or `createdb` is not installed.
    #[error(
        "PostgreSQL server binaries (initdb, pg_ctl, postgres, createdb) not found in \
         $OTPGATE_PG_BIN, /usr/lib/postgresql/*/bin, /usr/local/bin or PATH; \
         `apt-get install postgresql` is needed"
    )]
    Missing,
    /// The binaries are there but something failed; the text says what,
    /// with the server log's tail where there is one.
    #[error("throwaway PostgreSQL: {0}")]
    Failed(String),
}

impl TestkitError {
    /// Whether the failure is only that PostgreSQL is not installed (which
    /// a plain `cargo test` may skip; see [`crate::require_services`]).
    pub fn is_missing(&self) -> bool {
        matches!(self, Self::Missing)
    }
}

pub use crate::require_services;

/// One throwaway PostgreSQL server. See the module documentation.
pub struct TempPostgres {
    bin: PathBuf,
    root: PathBuf,
    data: PathBuf,
    socket_dir: PathBuf,
    log: PathBuf,
    port: u16,
    /// `Some("postgres")` when the server must run as another user.
    run_as: Option<String>,
    running: AtomicBool,
    next_db: AtomicU64,
    watchdog: Mutex<Option<Child>>,
}

impl std::fmt::Debug for TempPostgres {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TempPostgres")
            .field("root", &self.root)
            .field("port", &self.port)
            .field("running", &self.running.load(Ordering::SeqCst))
            .finish_non_exhaustive()
    }
}

const USER: &str = "postgres";

impl TempPostgres {
    /// Initialises and starts a new server.
    ///
    /// # Errors
    /// [`TestkitError::Missing`] when PostgreSQL is not installed;
    /// [`TestkitError::Failed`] when `initdb` or the start fails.
    pub fn start_new() -> Result<Self, TestkitError> {
        let bin = find_bin_dir().ok_or(TestkitError::Missing)?;
        let root = fresh_dir()?;
        let run_as = if is_root(&root) {
            Some(USER.to_owned())
        } else {
            None
        };
        if run_as.is_some() {
            chown_to(&root, USER)?;
        }
        let socket_dir = root.join("sock");
        std::fs::create_dir(&socket_dir).map_err(|e| failed("create socket dir", e))?;
        if run_as.is_some() {
            chown_to(&socket_dir, USER)?;
        }
        let mut pg = Self {
            data: root.join("data"),
            log: root.join("server.log"),
            socket_dir,
            root,
            bin,
            port: 0,
            run_as,
            running: AtomicBool::new(false),
            next_db: AtomicU64::new(0),
            watchdog: Mutex::new(None),
        };
        // From here on, `pg`'s Drop cleans up whatever happens.
        pg.spawn_watchdog();
        pg.initdb()?;
        // A free port can be taken by someone else between finding and
        // binding it; try a few.
        let mut last = None;
        for _ in 0..5 {
            pg.port = free_port()?;
            pg.write_conf()?;
            match pg.start() {
                Ok(()) => return Ok(pg),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| TestkitError::Failed("could not start".into())))
    }

    /// One server per test process, started on first use and shared by
    /// every test that asks (each takes its own [`fresh_database`]). The
    /// watchdog stops it when the process exits.
    ///
    /// [`fresh_database`]: TempPostgres::fresh_database
    ///
    /// # Errors
    /// As [`TempPostgres::start_new`], remembered for later callers.
    pub fn shared() -> Result<&'static Self, TestkitError> {
        static SHARED: OnceLock<Result<TempPostgres, TestkitError>> = OnceLock::new();
        SHARED
            .get_or_init(Self::start_new)
            .as_ref()
            .map_err(Clone::clone)
    }

    /// The TCP port the server listens on (the same after a restart).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The directory holding the server's unix socket.
    pub fn socket_dir(&self) -> &Path {
        &self.socket_dir
    }

    /// URL of the `postgres` maintenance database.
    pub fn admin_url(&self) -> String {
        self.url_for("postgres")
    }

    /// URL of database `db` on this server.
    pub fn url_for(&self, db: &str) -> String {
        format!("postgres://{USER}@127.0.0.1:{}/{db}", self.port)
    }

    /// Creates a new, empty database and returns its URL.
    ///
    /// # Panics
    /// When the server cannot create it (it is stopped, or broken); a test
    /// cannot go on without its database. [`TempPostgres::try_fresh_database`]
    /// returns the error instead.
    pub fn fresh_database(&self) -> String {
        match self.try_fresh_database() {
            Ok(url) => url,
            Err(e) => panic!("{e}"),
        }
    }

    /// Creates a new, empty database and returns its URL.
    ///
    /// # Errors
    /// [`TestkitError::Failed`] with `createdb`'s complaint.
    pub fn try_fresh_database(&self) -> Result<String, TestkitError> {
        let n = self.next_db.fetch_add(1, Ordering::SeqCst);
        let name = format!("otpgate_test_{}_{n}", std::process::id());
        let out = Command::new(self.bin.join("createdb"))
            .args(["-h", "127.0.0.1", "-p"])
            .arg(self.port.to_string())
            .args(["-U", USER, "-T", "template0", &name])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| failed("run createdb", e))?;
        if !out.status.success() {
            return Err(TestkitError::Failed(format!(
                "createdb {name}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Ok(self.url_for(&name))
    }

    /// Starts the server (again) on the same port and data directory, and
    /// waits until it accepts connections. A no-op when it is running.
    ///
    /// # Errors
    /// [`TestkitError::Failed`] with the log's tail when it does not start.
    pub fn start(&self) -> Result<(), TestkitError> {
        if self.running.load(Ordering::SeqCst) {
            return Ok(());
        }
        let out = self
            .server_command("pg_ctl")
            .arg("-D")
            .arg(&self.data)
            .arg("-l")
            .arg(&self.log)
            .args(["-w", "-t", "60", "start"])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| failed("run pg_ctl start", e))?;
        if !out.status.success() {
            // pg_ctl may leave a half-started postmaster behind.
            self.pg_ctl_stop();
            return Err(TestkitError::Failed(format!(
                "pg_ctl start on port {}: {}\n--- server log ---\n{}",
                self.port,
                String::from_utf8_lossy(&out.stderr).trim(),
                self.log_tail()
            )));
        }
        self.running.store(true, Ordering::SeqCst);
        // pg_ctl -w waits for the postmaster's "ready" mark; make sure the
        // TCP listener answers too before telling the caller.
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if Instant::now() > deadline {
                return Err(TestkitError::Failed(format!(
                    "server started but port {} does not answer\n{}",
                    self.port,
                    self.log_tail()
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    /// Stops the server at once, as a crash would (`pg_ctl stop -m
    /// immediate`): connections drop, nothing is flushed, and the next
    /// [`start`](TempPostgres::start) recovers from the WAL.
    pub fn stop(&self) {
        if self.running.swap(false, Ordering::SeqCst) {
            self.pg_ctl_stop();
        }
    }

    /// Whether the server was last started (and not stopped since).
    pub fn is_running(&self) -> bool {
        self.running.load(Ordering::SeqCst)
    }

    /// The last lines of the server's log, for failure messages.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    fn pg_ctl_stop(&self) {
        let _ = self
            .server_command("pg_ctl")
            .arg("-D")
            .arg(&self.data)
            .args(["-m", "immediate", "-w", "-t", "30", "stop"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }

    fn initdb(&self) -> Result<(), TestkitError> {
        // Trust authentication: the server only listens on loopback and a
        // socket inside a directory only its user can enter.
        let out = self
            .server_command("initdb")
            .arg("-D")
            .arg(&self.data)
            .args(["-U", USER, "--auth=trust", "--encoding=UTF8", "--locale=C"])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| failed("run initdb", e))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(TestkitError::Failed(format!(
                "initdb: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )))
        }
    }

    /// Appends this instance's settings to `postgresql.conf`; later lines
    /// win, so a retry on another port simply appends again.
    fn write_conf(&self) -> Result<(), TestkitError> {
        use std::io::Write;
        let conf = format!(
            "\n# otpgate testkit\n\
             listen_addresses = '127.0.0.1'\n\
             port = {port}\n\
             unix_socket_directories = '{sock}'\n\
             fsync = on\n\
             synchronous_commit = on\n\
             max_connections = 300\n\
             shared_buffers = 32MB\n\
             log_min_messages = warning\n",
            port = self.port,
            sock = self.socket_dir.display()
        );
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(self.data.join("postgresql.conf"))
            .map_err(|e| failed("open postgresql.conf", e))?;
        f.write_all(conf.as_bytes())
            .map_err(|e| failed("write postgresql.conf", e))
    }

    /// A command for one of the server programs, as the server's user.
    fn server_command(&self, program: &str) -> Command {
        let path = self.bin.join(program);
        match &self.run_as {
            Some(user) => {
                let mut c = Command::new("runuser");
                c.args(["-u", user, "--"]).arg(path);
                c
            }
            None => Command::new(path),
        }
    }

    /// Stops the server and removes the directory once this process is
    /// gone, in case it goes without running `Drop`.
    fn spawn_watchdog(&self) {
        let stop = match &self.run_as {
            Some(user) => format!("runuser -u {user} -- \"$3\"/pg_ctl"),
            None => "\"$3\"/pg_ctl".to_owned(),
        };
        let script = format!(
            "while kill -0 \"$1\" 2>/dev/null; do sleep 1; done; \
             {stop} -D \"$2\"/data -m immediate stop >/dev/null 2>&1; rm -rf \"$2\""
        );
        let child = Command::new("sh")
            .arg("-c")
            .arg(script)
            .arg("otpgate-pg-watchdog")
            .arg(std::process::id().to_string())
            .arg(&self.root)
            .arg(&self.bin)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        if let Ok(child) = child
            && let Ok(mut w) = self.watchdog.lock()
        {
            *w = Some(child);
        }
    }
}

impl Drop for TempPostgres {
    fn drop(&mut self) {
        // Whether or not it was started: a failed start can leave a
        // postmaster behind.
        self.pg_ctl_stop();
        let _ = std::fs::remove_dir_all(&self.root);
        if let Ok(mut w) = self.watchdog.lock()
            && let Some(mut child) = w.take()
        {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Where the server programs are: `$OTPGATE_PG_BIN`, Debian's versioned
/// directories (newest first), `/usr/local/bin`, then `PATH`.
fn find_bin_dir() -> Option<PathBuf> {
    let complete = |dir: &Path| {
        ["initdb", "pg_ctl", "postgres", "createdb"]
            .iter()
            .all(|p| dir.join(p).is_file())
    };
    let mut candidates = Vec::new();
    if let Some(dir) = std::env::var_os("OTPGATE_PG_BIN") {
        candidates.push(PathBuf::from(dir));
    }
    if let Ok(entries) = std::fs::read_dir("/usr/lib/postgresql") {
        let mut versions: Vec<(u32, PathBuf)> = entries
            .filter_map(Result::ok)
            .filter_map(|e| {
                let v = e.file_name().to_str()?.parse::<u32>().ok()?;
                Some((v, e.path().join("bin")))
            })
            .collect();
        versions.sort_by_key(|v| std::cmp::Reverse(v.0));
        candidates.extend(versions.into_iter().map(|(_, p)| p));
    }
    candidates.push(PathBuf::from("/usr/local/bin"));
    if let Some(path) = std::env::var_os("PATH") {
        candidates.extend(std::env::split_paths(&path));
    }
    candidates.into_iter().find(|d| complete(d)).map(|d| {
        // /usr/local/bin/pg_ctl may be a link into a versioned directory;
        // use that directory so all programs come from one version.
        std::fs::canonicalize(d.join("pg_ctl"))
            .ok()
            .and_then(|p| p.parent().map(Path::to_path_buf))
            .filter(|p| complete(p))
            .unwrap_or(d)
    })
}

fn fresh_dir() -> Result<PathBuf, TestkitError> {
    let dir = crate::unique_temp_path("pg");
    std::fs::create_dir(&dir).map_err(|e| failed("create temp dir", e))?;
    Ok(dir)
}

/// Whether this process runs as root: a directory it just made is owned by
/// its effective user id.
fn is_root(fresh: &Path) -> bool {
    std::fs::metadata(fresh).is_ok_and(|m| m.uid() == 0)
}

fn chown_to(path: &Path, user: &str) -> Result<(), TestkitError> {
    let id = |flag: &str| -> Result<u32, TestkitError> {
        let out = Command::new("id")
            .args([flag, user])
            .output()
            .map_err(|e| failed("run id", e))?;
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .map_err(|_| {
                TestkitError::Failed(format!(
                    "running as root needs a `{user}` system user (apt-get install postgresql \
                     creates it)"
                ))
            })
    };
    std::os::unix::fs::chown(path, Some(id("-u")?), Some(id("-g")?))
        .map_err(|e| failed("chown temp dir", e))
}

fn free_port() -> Result<u16, TestkitError> {
    crate::try_free_port().map_err(|e| failed("find a free port", e))
}

fn failed(what: &str, e: std::io::Error) -> TestkitError {
    TestkitError::Failed(format!("{what}: {e}"))
}
