//! Throughput of the SMPP channel against the SMSC simulator, with a window
//! of 1 (stop-and-wait) and with the default window, in one run.
//!
//! ```sh
//! (cd tools/smsc-sim && npm ci)
//! cargo run --release -p otpgate-sms --example smpp_bench -- [N] [SIM_DELAY_MS]
//! ```
//!
//! N messages (default 2000, at most 100000) per window size; the simulator
//! answers each `submit_sm` after SIM_DELAY_MS (default 0; a real SMSC takes
//! milliseconds, which is where the window pays). Receipts are requested
//! and flow back as in production; they are counted, not stored.

use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures::StreamExt;
use otpgate_core::{CustomerId, PhoneNumber, VerificationId};
use otpgate_sms::receipt::{Receipt, ReceiptSink};
use otpgate_sms::smpp::SmppSettings;
use otpgate_sms::{Channel, Outgoing, SmppChannel};
use otpgate_store::StoreError;
use tokio::io::{AsyncBufReadExt, BufReader};

#[derive(Default)]
struct Count(AtomicU64);

#[async_trait]
impl ReceiptSink for Count {
    async fn record(&self, _: &str, _: &Receipt) -> Result<bool, StoreError> {
        self.0.fetch_add(1, Ordering::Relaxed);
        Ok(true)
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let n: usize = args.next().map_or(Ok(2000), |a| a.parse())?.min(100_000);
    let delay: u64 = args.next().map_or(Ok(0), |a| a.parse())?;

    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tools/smsc-sim");
    let mut sim = tokio::process::Command::new("node")
        .args(["sim.js", "--quiet", "--delay-ms", &delay.to_string()])
        .current_dir(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| {
            format!("cannot start node tools/smsc-sim/sim.js (npm ci there first): {e}")
        })?;
    let mut lines = BufReader::new(sim.stdout.take().ok_or("no stdout")?).lines();
    let first = tokio::time::timeout(Duration::from_secs(15), lines.next_line())
        .await??
        .ok_or("simulator exited")?;
    let port: u16 = first
        .strip_prefix("LISTENING ")
        .ok_or("unexpected simulator output")?
        .trim()
        .parse()?;
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });

    let default_window = SmppSettings::new("127.0.0.1", port, "otpgate", "secret").window;
    println!("smpp_bench: {n} messages per run, simulator delay {delay} ms");
    let mut rates = Vec::new();
    for window in [1, default_window] {
        let mut s = SmppSettings::new("127.0.0.1", port, "otpgate", "secret");
        s.window = window;
        let receipts = Arc::new(Count::default());
        let ch = SmppChannel::start("bench", s, receipts.clone());
        if !ch.wait_bound(Duration::from_secs(5)).await {
            return Err(format!("no bind: {:?}", ch.health()).into());
        }
        let msgs: Vec<Outgoing> = (0..n)
            .map(|i| Outgoing {
                message_id: i as i64,
                verification_id: VerificationId::new(i as u64 + 1).expect("id"),
                customer_id: CustomerId::parse("C-0000000000000A1").expect("id"),
                destination: PhoneNumber::parse("91", "9876543210").expect("number"),
                flow_type: "SMS".into(),
                step: 0,
                address: None,
                lang: None,
                text: format!("Your code is {:04}", i % 10_000),
            })
            .collect();
        let t = Instant::now();
        // More senders than slots: the window, not the caller, is the limit.
        let ok = futures::stream::iter(msgs.iter().map(|m| ch.send(m)))
            .buffer_unordered(window * 2)
            .filter(|r| futures::future::ready(r.is_ok()))
            .count()
            .await;
        let secs = t.elapsed().as_secs_f64();
        let rate = ok as f64 / secs;
        // Let the receipts of the last messages arrive before unbinding.
        tokio::time::sleep(Duration::from_millis(200)).await;
        println!(
            "window {window:>3}: {ok}/{n} accepted in {secs:.3} s = {rate:.0} msg/s ({} receipts)",
            receipts.0.load(Ordering::Relaxed)
        );
        ch.close().await;
        rates.push(rate);
    }
    println!(
        "ratio window {default_window} / window 1: {:.2}x",
        rates[1] / rates[0]
    );
    let _ = sim.kill().await;
    Ok(())
}
