//! Durability of the real binary: a send that got a 200 survives `kill -9`
//! of the server at any instant, and its message reaches the inbox after a
//! restart (at least once, never zero times).

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{TempDir, code_in, create_account, start, token};
use tokio::sync::Mutex;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_send_that_got_200_survives_kill_9_and_is_delivered_after_restart() {
    let dir = TempDir::new("durability");
    let db = dir.sqlite_url();
    let cid = create_account(&db, Some(100_000));
    // Small delivery batches, so a backlog is queued when the kill lands.
    let serve = |db: &str| start(&["--database", db], &[("OTPGATE_DELIVERY__BATCH", "2")]);
    let mut server = serve(&db);
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

    let server = serve(&db);
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
                break code_in(&e.text, 4);
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
}
