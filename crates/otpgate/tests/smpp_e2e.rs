//! End to end over SMPP 3.4: the real `otpgate serve` with an SMPP channel
//! pointed at the SMSC simulator (`tools/smsc-sim`, on the npm `smpp`
//! package). A send through the API reaches the simulator as `submit_sm`,
//! the code read from the delivered text validates, the simulator's
//! delivery receipt shows up as the message's status, and the delivered
//! texts are then in none of the database's files.

mod common;

use std::time::{Duration, Instant};

use common::{
    ReplyJson, Simulator, TempDir, code_in, create_account, open_store, sim, start, token, validate,
};
use otpgate_core::{DeliveryStatus, VerificationId};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_code_sent_over_smpp_validates_and_its_receipt_is_recorded() {
    let test = "a_code_sent_over_smpp_validates_and_its_receipt_is_recorded";
    let Some(sim) = Simulator::start(test, &["--receipt-delay-ms", "100"]) else {
        return;
    };
    let dir = TempDir::new("smpp-e2e");
    let config = dir.write(
        "otpgate.toml",
        format!(
            r#"
[message.templates]
default = "{{code}} is your {{brand}} code"
hi = "आपका {{brand}} कोड {{code}} है"

[channels.smsc]
type = "smpp"
host = "127.0.0.1"
port = {port}
system_id = "{sid}"
password_env = "E2E_SMSC_PASSWORD"
source_addr = "OTPGATE"
reconnect_min_ms = 100
"#,
            port = sim.port,
            sid = sim::SYSTEM_ID,
        ),
    );
    let db = dir.sqlite_url();
    let cid = create_account(&db, Some(1000));
    let server = start(
        &["--config", config.to_str().unwrap(), "--database", &db],
        &[
            ("E2E_SMSC_PASSWORD", sim::PASSWORD),
            ("OTPGATE_DELIVERY__SCRUB_SECS", "1"),
        ],
    );
    let mut texts = Vec::new();
    let http = reqwest::Client::new();
    let t = token(&http, &server.base, &cid).await;
    let store = open_store(&db).await;

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
            .reply_json()
            .await;
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
        texts.push(text.to_owned());

        let r = validate(&http, &server.base, &t, &id, &code).await;
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

    // Delivered: once the WAL is checkpointed (`delivery.scrub_secs`), the
    // code-bearing texts are in none of the database's files.
    let db_path = dir.0.join("otpgate.db");
    let on_disk = || -> Vec<String> {
        let mut found = Vec::new();
        for suffix in ["", "-wal", "-shm", "-journal"] {
            let p = format!("{}{suffix}", db_path.display());
            let Ok(bytes) = std::fs::read(&p) else {
                continue;
            };
            for t in &texts {
                if bytes.windows(t.len()).any(|w| w == t.as_bytes()) {
                    found.push(format!("{t:?} in {p}"));
                }
            }
        }
        found
    };
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let found = on_disk();
        if found.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "still on disk: {found:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(server);
}
