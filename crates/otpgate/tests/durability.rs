//! Durability of the real binary: a send that got a 200 survives `kill -9`
//! of the server at any instant, and its message reaches the inbox after a
//! restart (at least once, never zero times).

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use tokio::sync::Mutex;

const BIN: &str = env!("CARGO_BIN_EXE_otpgate");
const PASSWORD: &str = "durable password";

struct Server {
    child: Child,
    base: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `otpgate serve` on an ephemeral port and reads the address it
/// logs once it is listening.
fn start(db: &str) -> Server {
    let mut child = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--database", db])
        .env("OTPGATE_DELIVERY__BATCH", "2")
        .env("OTPGATE_LOG", "info")
        .env("NO_COLOR", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start otpgate serve");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut sent = false;
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if !sent && let Some(i) = line.find("address=http://") {
                let addr: String = line[i + "address=".len()..]
                    .chars()
                    .take_while(|c| !c.is_whitespace())
                    .collect();
                let _ = tx.send(addr);
                sent = true;
            }
        }
    });
    let base = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("otpgate serve did not report its address");
    Server { child, base }
}

fn create_account(db: &str) -> String {
    let out = Command::new(BIN)
        .args([
            "customer",
            "create",
            "--password",
            PASSWORD,
            "--credits",
            "100000",
            "--json",
            "--database",
            db,
        ])
        .output()
        .expect("run customer create");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    v["customerId"].as_str().expect("customerId").to_owned()
}

async fn token(http: &reqwest::Client, base: &str, cid: &str) -> String {
    let v: serde_json::Value = http
        .get(format!("{base}/auth/v1/authentication/token"))
        .query(&[("customerId", cid), ("key", &STANDARD.encode(PASSWORD))])
        .send()
        .await
        .expect("token request")
        .json()
        .await
        .expect("token json");
    v["token"].as_str().expect("token").to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_send_that_got_200_survives_kill_9_and_is_delivered_after_restart() {
    let dir = std::env::temp_dir().join(format!("otpgate-durability-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let db = format!("sqlite://{}", dir.join("otpgate.db").display());
    let cid = create_account(&db);
    let mut server = start(&db);
    let http = reqwest::Client::new();
    let t = token(&http, &server.base, &cid).await;

    // 8 senders, each to its own numbers, until the server dies under them.
    let acked: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    let count = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for w in 0..8u32 {
        let (http, base, t, acked, count) = (
            http.clone(),
            server.base.clone(),
            t.clone(),
            acked.clone(),
            count.clone(),
        );
        tasks.push(tokio::spawn(async move {
            for i in 0..10_000u32 {
                let national = format!("98{w:02}{i:06}");
                let r = http
                    .post(format!("{base}/verification/v3/send"))
                    .header("authToken", &t)
                    .query(&[
                        ("countryCode", "91"),
                        ("mobileNumber", national.as_str()),
                        ("flowType", "SMS"),
                    ])
                    .timeout(Duration::from_secs(5))
                    .send()
                    .await;
                let Ok(r) = r else { return };
                let Ok(v) = r.json::<serde_json::Value>().await else {
                    return;
                };
                if v["responseCode"] == 200 {
                    let id = v["data"]["verificationId"].as_str().unwrap().to_owned();
                    acked.lock().await.push((id, format!("91{national}")));
                    count.fetch_add(1, Ordering::SeqCst);
                }
            }
        }));
    }
    let started = Instant::now();
    while count.load(Ordering::SeqCst) < 150 && started.elapsed() < Duration::from_secs(60) {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    // SIGKILL, mid-stream: no shutdown hook runs.
    server.child.kill().expect("kill -9");
    server.child.wait().unwrap();
    for t in tasks {
        let _ = t.await;
    }
    let acked = acked.lock().await.clone();
    assert!(
        acked.len() >= 150,
        "only {} sends succeeded before the kill",
        acked.len()
    );

    let server = start(&db);
    // The token survives the restart: the signing secret is in the database.
    let http = reqwest::Client::new();
    let settings = otpgate_server::Settings {
        database_url: db.clone(),
        ..Default::default()
    };
    let store = otpgate_server::store::open(&settings).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    for (id, to) in &acked {
        let code = loop {
            let entries = store.inbox_list(None, Some(to), 10).await.unwrap();
            let mine: Vec<_> = entries
                .iter()
                .filter(|e| e.verification_id.map(|v| v.get().to_string()).as_deref() == Some(id))
                .collect();
            if let Some(e) = mine.first() {
                break e
                    .text
                    .split(|c: char| !c.is_ascii_digit())
                    .find(|w| w.len() == 4)
                    .unwrap()
                    .to_owned();
            }
            assert!(
                Instant::now() < deadline,
                "verification {id} never reached the inbox after restart"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let v: serde_json::Value = http
            .get(format!("{}/verification/v3/validateOtp", server.base))
            .header("authToken", &t)
            .query(&[("verificationId", id.as_str()), ("code", code.as_str())])
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(v["responseCode"], 200, "verification {id}: {v}");
    }
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}
