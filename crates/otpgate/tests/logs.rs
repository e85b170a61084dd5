//! Secrets never reach a log: a whole flow through the real binary at the
//! most verbose log level, including failures, leaves no password, key,
//! token or code in what the server wrote.

mod common;

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use common::{PASSWORD, TempDir, create_account, inbox_code, open_store, start, token, validate};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flow_at_trace_level_logs_no_password_key_token_or_code() {
    let dir = TempDir::new("logs");
    let db = dir.sqlite_url();
    let cid = create_account(&db, Some(1000));
    let server = start(&["--database", &db], &[("OTPGATE_LOG", "trace")]);
    let http = reqwest::Client::new();
    let base = &server.base;

    // A failed token request (wrong key) and a good one.
    let wrong_key = STANDARD.encode("not the password");
    http.get(format!("{base}/auth/v1/authentication/token"))
        .query(&[("customerId", cid.as_str()), ("key", wrong_key.as_str())])
        .send()
        .await
        .unwrap();
    let t = token(&http, base, &cid).await;

    let v: serde_json::Value = http
        .post(format!("{base}/verification/v3/send"))
        .header("authToken", &t)
        .query(&[
            ("countryCode", "91"),
            ("mobileNumber", "9876543210"),
            ("flowType", "SMS"),
            ("otpLength", "8"),
        ])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = v["data"]["verificationId"].as_str().unwrap().to_owned();
    let store = open_store(&db).await;
    let code = inbox_code(
        store.as_ref(),
        "919876543210",
        &id,
        8,
        Duration::from_secs(20),
    )
    .await;
    let wrong: String = code
        .chars()
        .map(|c| if c == '9' { '0' } else { '9' })
        .collect();
    for c in [wrong.as_str(), code.as_str()] {
        validate(&http, base, &t, &id, c).await;
    }
    // Give the log a moment to be written out.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let log = server.log_text();
    assert!(
        log.contains("verification completed"),
        "the flow was logged at all:\n{log}"
    );
    let key = STANDARD.encode(PASSWORD);
    let signature = t.rsplit('.').next().unwrap();
    for (what, secret) in [
        ("password", PASSWORD),
        ("key", key.as_str()),
        ("wrong key", wrong_key.as_str()),
        ("token signature", signature),
        ("code", code.as_str()),
        ("wrong code", wrong.as_str()),
    ] {
        assert!(
            !log.contains(secret),
            "the {what} appears in the log:\n{log}"
        );
    }
}
