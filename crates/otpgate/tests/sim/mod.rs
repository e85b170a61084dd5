//! The SMSC simulator (`tools/smsc-sim`) as the binary-level tests use it:
//! every event it prints is kept in order, so a test can ask afterwards
//! which `submit_sm` arrived when (the `t` field, milliseconds since the
//! epoch on the same clock the nodes use), and switches can be flipped on
//! its stdin while nodes are bound to it.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::require_services;

/// Bind credentials the tests' channel configuration uses (a bind password
/// is at most 8 characters, SMPP 3.4 §4.1).
pub const SYSTEM_ID: &str = "otpgate";
pub const PASSWORD: &str = "mn-pw";

pub struct Simulator {
    child: Child,
    stdin: Option<ChildStdin>,
    pub port: u16,
    events: Arc<Mutex<Vec<serde_json::Value>>>,
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

fn sim_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tools/smsc-sim")
}

impl Simulator {
    /// Starts the simulator with `extra` switches, installing its npm
    /// packages first if needed. `None` (the test skips) when Node is
    /// missing and services are optional.
    pub fn start(test: &str, extra: &[&str]) -> Option<Self> {
        let dir = sim_dir();
        if Command::new("node").arg("--version").output().is_err() {
            assert!(!require_services(), "{test}: node is not installed");
            println!("SKIPPED {test}: node is not installed");
            return None;
        }
        if !dir.join("node_modules").exists() {
            let ok = Command::new("npm")
                .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
                .current_dir(&dir)
                .status()
                .is_ok_and(|s| s.success());
            assert!(ok, "{test}: npm ci in tools/smsc-sim failed");
        }
        let mut child = Command::new("node")
            .args([
                "sim.js",
                "--port",
                "0",
                "--system-id",
                SYSTEM_ID,
                "--password",
                PASSWORD,
            ])
            .args(extra)
            .current_dir(&dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the SMSC simulator");
        let stdout = child.stdout.take().expect("stdout");
        let stdin = child.stdin.take();
        let (port_tx, port_rx) = std::sync::mpsc::channel();
        let events: Arc<Mutex<Vec<serde_json::Value>>> = Arc::default();
        let sink = events.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(p) = line.strip_prefix("LISTENING ") {
                    let _ = port_tx.send(p.trim().parse::<u16>().unwrap_or(0));
                } else if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) {
                    sink.lock().unwrap_or_else(|p| p.into_inner()).push(v);
                }
            }
        });
        let port = port_rx
            .recv_timeout(Duration::from_secs(30))
            .expect("the simulator did not print its port");
        Some(Self {
            child,
            stdin,
            port,
            events,
        })
    }

    /// Every event so far, in the order the simulator printed them.
    pub fn events(&self) -> Vec<serde_json::Value> {
        self.events
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The accepted `submit_sm`s so far.
    pub fn submits(&self) -> Vec<serde_json::Value> {
        self.events()
            .into_iter()
            .filter(|e| e["event"] == "submit" && e["status"] == 0)
            .collect()
    }

    /// Flips a switch (`delay-ms 0`) and waits until the simulator says it
    /// took it, so what the test does next sees the new behaviour.
    pub fn control(&mut self, cmd: &str, value: &str) {
        let stdin = self.stdin.as_mut().expect("simulator stdin");
        writeln!(stdin, "{cmd} {value}").expect("write to the simulator");
        stdin.flush().expect("flush the simulator's stdin");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let acked = self
                .events()
                .iter()
                .any(|e| e["event"] == "control" && e["cmd"] == cmd && e["value"] == value);
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

    /// The first accepted `submit_sm` to `destination`, waiting for it up
    /// to 30 s.
    pub fn submit_to(&self, destination: &str) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(e) = self
                .submits()
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
}
