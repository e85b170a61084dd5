//! End to end over SMPP 3.4: the real `otpgate serve` with an SMPP channel
//! pointed at the SMSC simulator (`tools/smsc-sim`, on the npm `smpp`
//! package). A send through the API reaches the simulator as `submit_sm`,
//! the code read from the delivered text validates, and the simulator's
//! delivery receipt shows up as the message's status.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, channel};
use std::time::{Duration, Instant};

use common::{TempDir, code_in, create_account, require_services, start, token};
use otpgate_core::{DeliveryStatus, VerificationId};

struct Simulator {
    child: Child,
    port: u16,
    events: Receiver<serde_json::Value>,
}

impl Drop for Simulator {
    fn drop(&mut self) {
        if let Some(mut stdin) = self.child.stdin.take() {
            let _ = stdin.write_all(b"quit\n");
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn sim_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tools/smsc-sim")
}

/// Starts the simulator, installing its npm packages first if needed.
/// `None` (the test skips) when Node is missing and services are optional.
fn start_simulator(test: &str) -> Option<Simulator> {
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
            "otpgate",
            "--password",
            "e2e-pw",
            "--receipt-delay-ms",
            "100",
        ])
        .current_dir(&dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start the SMSC simulator");
    let stdout = child.stdout.take().expect("stdout");
    let (port_tx, port_rx) = channel();
    let (ev_tx, events) = channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(p) = line.strip_prefix("LISTENING ") {
                let _ = port_tx.send(p.trim().parse::<u16>().unwrap_or(0));
            } else if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) {
                let _ = ev_tx.send(v);
            }
        }
    });
    let port = port_rx
        .recv_timeout(Duration::from_secs(30))
        .expect("the simulator did not print its port");
    Some(Simulator {
        child,
        port,
        events,
    })
}

impl Simulator {
    /// The next `submit_sm` to `destination`.
    fn submit_to(&self, destination: &str) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let ev = self
                .events
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("no submit_sm to {destination} reached the simulator"));
            if ev["event"] == "submit" && ev["destination_addr"] == destination {
                return ev;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_code_sent_over_smpp_validates_and_its_receipt_is_recorded() {
    let test = "a_code_sent_over_smpp_validates_and_its_receipt_is_recorded";
    let Some(sim) = start_simulator(test) else {
        return;
    };
    let dir = TempDir::new("smpp-e2e");
    let config = dir.0.join("otpgate.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[message.templates]
default = "{{code}} is your {{brand}} code"
hi = "आपका {{brand}} कोड {{code}} है"

[channels.smsc]
type = "smpp"
host = "127.0.0.1"
port = {port}
system_id = "otpgate"
password_env = "E2E_SMSC_PASSWORD"
source_addr = "OTPGATE"
reconnect_min_ms = 100
"#,
            port = sim.port
        ),
    )
    .unwrap();
    let db = dir.sqlite_url();
    let cid = create_account(&db, None);
    let server = start(
        &["--config", config.to_str().unwrap(), "--database", &db],
        &[("E2E_SMSC_PASSWORD", "e2e-pw")],
    );
    let http = reqwest::Client::new();
    let t = token(&http, &server.base, &cid).await;
    let settings = otpgate_server::Settings {
        database_url: db.clone(),
        ..Default::default()
    };
    let store = otpgate_server::store::open(&settings).await.unwrap();

    for (national, lang, coding) in [("9876543210", "en", 0), ("9876543211", "hi", 8)] {
        let v: serde_json::Value = http
            .post(format!("{}/verification/v3/send", server.base))
            .header("authToken", &t)
            .query(&[
                ("countryCode", "91"),
                ("mobileNumber", national),
                ("flowType", "SMS"),
                ("otpLength", "6"),
                ("langId", lang),
            ])
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(v["responseCode"], 200, "{v}");
        let id = v["data"]["verificationId"].as_str().unwrap().to_owned();

        let submit = sim.submit_to(&format!("91{national}"));
        assert_eq!(submit["data_coding"], coding, "{submit}");
        let text = submit["text"].as_str().unwrap();
        if lang == "hi" {
            assert!(
                text.starts_with("आपका otpgate कोड "),
                "non-GSM text arrives intact: {text}"
            );
        }
        let code = code_in(text, 6);

        let r: serde_json::Value = http
            .get(format!("{}/verification/v3/validateOtp", server.base))
            .header("authToken", &t)
            .query(&[("verificationId", id.as_str()), ("code", code.as_str())])
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(r["responseCode"], 200, "{r}");

        // The simulator's receipt (stat:DELIVRD) comes back as deliver_sm and
        // is recorded on the message, with the SMSC's message id kept.
        let vid = VerificationId::parse(&id).unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let m = store.outbox_for_verification(vid).await.unwrap().unwrap();
            if m.status == DeliveryStatus::Delivered {
                assert_eq!(m.channel.as_deref(), Some("smsc"));
                assert_eq!(m.gateway_id.as_deref(), submit["message_id"].as_str());
                assert!(
                    m.text.is_none(),
                    "delivered text (it holds the code) is erased"
                );
                break;
            }
            assert!(Instant::now() < deadline, "receipt never recorded: {m:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    drop(server);
}
