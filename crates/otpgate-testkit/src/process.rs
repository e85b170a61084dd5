//! Child processes tests start and watch: a program whose stderr is kept
//! line by line (and echoed with `OTPGATE_TEST_SERVER_LOG=1`), killed on
//! drop, that can be waited on for a line (`address=http://…`, which
//! `otpgate serve` logs once it listens) or stopped gracefully for its whole
//! log; and a run to exit under a deadline.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// A running child whose stderr is collected. See the module documentation.
pub struct Logged {
    pub child: Child,
    log: Arc<Mutex<Vec<String>>>,
    /// The thread copying stderr into `log`; it ends when the child exits.
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Logged {
    /// Spawns `cmd` with stdout discarded and stderr collected.
    ///
    /// # Panics
    /// When the program cannot be started.
    pub fn spawn(cmd: &mut Command) -> Self {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("start {:?}: {e}", cmd.get_program()));
        let stderr = child.stderr.take().expect("stderr");
        let log: Arc<Mutex<Vec<String>>> = Arc::default();
        let sink = log.clone();
        let echo = std::env::var_os("OTPGATE_TEST_SERVER_LOG").is_some();
        // Read on a thread so a chatty child can never block on a full pipe.
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if echo {
                    eprintln!("[child] {line}");
                }
                sink.lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push(line);
            }
        });
        Self {
            child,
            log,
            reader: Some(reader),
        }
    }

    /// Every line logged so far.
    pub fn log_text(&self) -> String {
        self.log
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .join("\n")
    }

    /// The first value `find` takes from a logged line, waiting up to
    /// `limit` for it.
    ///
    /// # Panics
    /// When no line gives one in time, or the child exits first.
    pub fn wait_line<T>(&mut self, limit: Duration, find: impl Fn(&str) -> Option<T>) -> T {
        let deadline = Instant::now() + limit;
        let mut seen = 0;
        loop {
            let lines: Vec<String> = {
                let log = self.log.lock().unwrap_or_else(PoisonError::into_inner);
                log[seen..].to_vec()
            };
            seen += lines.len();
            if let Some(v) = lines.iter().find_map(|l| find(l)) {
                return v;
            }
            let exited = self.child.try_wait().ok().flatten();
            assert!(
                exited.is_none() && Instant::now() < deadline,
                "{} before logging what the test waits for (set \
                 OTPGATE_TEST_SERVER_LOG=1 to see its log):\n{}",
                exited.map_or("timed out".to_owned(), |s| format!("exited ({s})")),
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits for `otpgate serve`'s `address=http://…` line; the URL.
    pub fn wait_for_address(&mut self, limit: Duration) -> String {
        self.wait_line(limit, listening_address)
    }

    /// Stops the child with SIGTERM (a graceful shutdown, so it writes out
    /// its last lines), waits for it to exit and its stderr to reach its
    /// end, and returns everything it logged.
    ///
    /// # Panics
    /// When it does not exit within 20 s.
    pub fn stop_and_log(mut self) -> String {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.child.try_wait().ok().flatten().is_none() {
            assert!(
                Instant::now() < deadline,
                "the child did not exit on SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        if let Some(r) = self.reader.take() {
            r.join().expect("log reader");
        }
        self.log_text()
    }
}

impl Drop for Logged {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The URL in a line `… address=http://127.0.0.1:PORT …`.
pub fn listening_address(line: &str) -> Option<String> {
    let i = line.find("address=http://")?;
    Some(
        line[i + "address=".len()..]
            .chars()
            .take_while(|c| !c.is_whitespace())
            .collect(),
    )
}

/// Runs `cmd` until it exits (killed after `limit`); its exit code and
/// everything it wrote to stderr.
///
/// # Panics
/// When it does not exit in time.
pub fn run_to_exit(cmd: &mut Command, limit: Duration) -> (Option<i32>, String) {
    let mut run = Logged::spawn(cmd);
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(s) = run.child.try_wait().expect("wait for the child") {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "{:?} did not exit within {limit:?}",
            cmd.get_args().collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    if let Some(r) = run.reader.take() {
        let _ = r.join();
    }
    (status.code(), run.log_text())
}

/// Runs `cmd` to completion and returns its stdout.
///
/// # Panics
/// When it cannot run or exits unsuccessfully (its stderr in the message).
pub fn output_ok(cmd: &mut Command) -> Vec<u8> {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("run {:?}: {e}", cmd.get_program()));
    assert!(
        out.status.success(),
        "{:?} {:?} failed: {}",
        cmd.get_program(),
        cmd.get_args().collect::<Vec<_>>(),
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// `cmd` without any of the caller's `OTPGATE_` variables (so a developer's
/// environment cannot change what a test sees).
pub fn without_otpgate_env(cmd: &mut Command) -> &mut Command {
    for (k, _) in std::env::vars() {
        if k.starts_with("OTPGATE_") {
            cmd.env_remove(k);
        }
    }
    cmd
}
