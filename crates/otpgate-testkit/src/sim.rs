//! The SMSC simulator (`tools/smsc-sim`, an SMPP 3.4 server on the npm
//! package `smpp`) as a child process: every event it prints is kept in
//! order (a test can ask afterwards which `submit_sm` arrived when: the `t`
//! field, milliseconds since the epoch), and switches can be flipped on its
//! stdin while channels are bound to it. Killed on drop.
//!
//! The reader is a thread, not a task, so the simulator serves sync tests,
//! `#[tokio::test]` on one thread and multi-threaded runtimes alike; waits
//! come as `async` (for tests whose runtime also runs the code under test)
//! and blocking (for tests that drive a separate process).

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::sync::Notify;

use crate::skip_or_fail;

/// The bind credentials the simulator accepts unless told otherwise (its
/// defaults; a bind password is at most 8 characters, SMPP 3.4 §4.1).
pub const SYSTEM_ID: &str = "otpgate";
pub const PASSWORD: &str = "secret";

fn sim_dir() -> PathBuf {
    crate::workspace_root().join("tools/smsc-sim")
}

/// Checks Node.js and installs the simulator's npm packages, once per test
/// binary.
fn ensure_installed() -> Result<(), String> {
    static DONE: Mutex<Option<Result<(), String>>> = Mutex::new(None);
    let mut done = DONE.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(r) = done.as_ref() {
        return r.clone();
    }
    let r = (|| {
        let node = Command::new("node").arg("--version").output();
        if !node.is_ok_and(|o| o.status.success()) {
            return Err("node is not installed (apt-get install nodejs npm)".to_owned());
        }
        if !sim_dir().join("node_modules/smpp").exists() {
            let out = Command::new("npm")
                .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
                .current_dir(sim_dir())
                .output()
                .map_err(|e| format!("cannot run npm ci: {e}"))?;
            if !out.status.success() {
                return Err(format!(
                    "npm ci in tools/smsc-sim failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                ));
            }
        }
        Ok(())
    })();
    *done = Some(r.clone());
    r
}

/// One running simulator. See the module documentation.
pub struct Simulator {
    child: Child,
    stdin: Option<ChildStdin>,
    /// Where it listens (also [`Simulator::port`]).
    pub port: u16,
    events: Arc<Mutex<Vec<Value>>>,
    changed: Arc<Notify>,
}

impl Drop for Simulator {
    fn drop(&mut self) {
        if let Some(mut stdin) = self.stdin.take() {
            let _ = stdin.write_all(b"quit\n");
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Simulator {
    /// Starts the simulator on a port of its choosing with `args`
    /// (`--delay-ms 300`, `--password other`, …). `None`, after printing
    /// `SKIPPED <test>: …`, when Node.js is missing and services are
    /// optional.
    pub fn start(test: &str, args: &[&str]) -> Option<Self> {
        Self::start_on(test, 0, args)
    }

    /// [`Simulator::start`] on `port` (a test that starts its channels
    /// first and the SMSC later).
    ///
    /// # Panics
    /// When the simulator cannot start or does not say where it listens.
    pub fn start_on(test: &str, port: u16, args: &[&str]) -> Option<Self> {
        if let Err(why) = ensure_installed() {
            return skip_or_fail(test, format!("the SMSC simulator cannot run: {why}"));
        }
        let mut child = Command::new("node")
            .arg("sim.js")
            .args(["--port", &port.to_string()])
            .args(args)
            .current_dir(sim_dir())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn node tools/smsc-sim/sim.js");
        let stdout = child.stdout.take().expect("stdout");
        let stdin = child.stdin.take();
        let (port_tx, port_rx) = std::sync::mpsc::channel();
        let events: Arc<Mutex<Vec<Value>>> = Arc::default();
        let changed = Arc::new(Notify::new());
        let (sink, ping) = (events.clone(), changed.clone());
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(p) = line.strip_prefix("LISTENING ") {
                    let _ = port_tx.send(p.trim().parse::<u16>().unwrap_or(0));
                } else if let Ok(v) = serde_json::from_str::<Value>(&line) {
                    sink.lock().unwrap_or_else(PoisonError::into_inner).push(v);
                    ping.notify_waiters();
                }
            }
        });
        let port = port_rx
            .recv_timeout(Duration::from_secs(30))
            .expect("the simulator did not print its port within 30 s");
        Some(Self {
            child,
            stdin,
            port,
            events,
            changed,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Every event so far, in the order the simulator printed them.
    pub fn events(&self) -> Vec<Value> {
        self.events
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The events of one `kind` (`submit`, `bind`, `enquire_link`, …).
    pub fn of_kind(&self, kind: &str) -> Vec<Value> {
        self.events()
            .into_iter()
            .filter(|e| e["event"] == kind)
            .collect()
    }

    /// Every `submit_sm`, accepted or refused.
    pub fn submits(&self) -> Vec<Value> {
        self.of_kind("submit")
    }

    /// The `submit_sm`s the simulator accepted (status 0).
    pub fn accepted_submits(&self) -> Vec<Value> {
        self.submits()
            .into_iter()
            .filter(|e| e["status"] == 0)
            .collect()
    }

    /// Waits until an event of `kind` satisfying `pred` has been printed.
    ///
    /// # Panics
    /// After `limit`, listing the events seen.
    pub async fn wait_for(
        &self,
        kind: &str,
        pred: impl Fn(&Value) -> bool,
        limit: Duration,
    ) -> Value {
        self.wait_until(limit, &format!("no matching {kind:?} event"), || {
            self.of_kind(kind).into_iter().find(|e| pred(e))
        })
        .await
    }

    /// The events of one `kind` once at least `n` have been printed. A
    /// channel's `send` (or bind) returns when the simulator's response
    /// arrives, which can be before this process has read the line the
    /// simulator printed first; a test that counts events right after its
    /// sends waits here instead of reading `of_kind` at once.
    ///
    /// # Panics
    /// After `limit`, listing the events seen.
    pub async fn wait_count(&self, kind: &str, n: usize, limit: Duration) -> Vec<Value> {
        self.wait_until(limit, &format!("fewer than {n} {kind:?} events"), || {
            Some(self.of_kind(kind)).filter(|seen| seen.len() >= n)
        })
        .await
    }

    /// Re-reads `found` each time the simulator prints a line, until it
    /// gives a value; after `limit`, panics with `missing` and the events.
    async fn wait_until<T>(
        &self,
        limit: Duration,
        missing: &str,
        found: impl Fn() -> Option<T>,
    ) -> T {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            // Registered before the look, so a line printed in between
            // still wakes this wait.
            let notified = self.changed.notified();
            if let Some(v) = found() {
                return v;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                panic!("{missing} within {limit:?}; events: {:#?}", self.events());
            }
        }
    }

    /// The first accepted `submit_sm` to `destination`, blocking for it up
    /// to 30 s (for tests whose code under test runs in another process).
    ///
    /// # Panics
    /// When none arrives in time.
    pub fn submit_to(&self, destination: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(e) = self
                .accepted_submits()
                .into_iter()
                .find(|e| e["destination_addr"] == destination)
            {
                return e;
            }
            assert!(
                Instant::now() < deadline,
                "no submit_sm to {destination} reached the simulator"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Writes a control line (`throttle 3`, `drop`, …) without waiting for
    /// the simulator to take it.
    ///
    /// # Panics
    /// When the simulator's stdin is gone.
    pub fn send_line(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("simulator stdin");
        writeln!(stdin, "{line}").expect("write to the simulator");
        stdin.flush().expect("flush the simulator's stdin");
    }

    /// Flips a switch (`delay-ms 0`) and blocks until the simulator says it
    /// took it, so what the test does next sees the new behaviour.
    ///
    /// # Panics
    /// When the simulator does not acknowledge it within 10 s.
    pub fn control(&mut self, cmd: &str, value: &str) {
        self.send_line(&format!("{cmd} {value}"));
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let acked = self
                .of_kind("control")
                .iter()
                .any(|e| e["cmd"] == cmd && e["value"] == value);
            if acked {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the simulator did not acknowledge `{cmd} {value}`"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops the simulator now (as dropping it does), for tests that go on
    /// without their SMSC.
    pub fn stop(self) {}
}
