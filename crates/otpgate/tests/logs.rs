//! Secrets never reach a log: a whole flow through the real binary at the
//! most verbose log level, including failures, leaves no password, key,
//! token or code in what the server wrote.

mod common;

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
use common::{PASSWORD, ReplyJson, inbox_code, open_store, token, validate};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flow_at_trace_level_logs_no_password_key_token_or_code() {
    let (_dir, db, cid, server) =
        common::serve_sqlite("logs", Some(1000), &[("OTPGATE_LOG", "trace")]);
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
        .reply_json()
        .await;
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
    // Read the log only once the server has exited and every line it wrote
    // has been read.
    let log = server.stop_and_log();
    assert!(
        log.contains("verification completed"),
        "the flow was logged at all:\n{log}"
    );
    let signature = t.rsplit('.').next().unwrap();
    for (what, secret) in [
        ("password", PASSWORD),
        ("wrong password", "not the password"),
        ("token", t.as_str()),
        ("token signature", signature),
        ("code", code.as_str()),
        ("wrong code", wrong.as_str()),
    ] {
        for form in encodings(secret) {
            assert!(
                !log.contains(&form),
                "the {what} appears in the log as {form:?}:\n{log}"
            );
        }
    }
}

/// Every form a secret can take on its way through a request: as it is, in
/// base64 (padded, unpadded, URL-safe) as the token request's `key` carries
/// a password, and each of those URL-encoded (`=` as `%3D`, in either case)
/// as a query string carries them.
fn encodings(secret: &str) -> Vec<String> {
    let b64 = [
        STANDARD.encode(secret),
        STANDARD_NO_PAD.encode(secret),
        URL_SAFE.encode(secret),
        URL_SAFE_NO_PAD.encode(secret),
    ];
    let mut forms = vec![secret.to_owned()];
    forms.extend(b64);
    for f in forms.clone() {
        let url = serde_urlencoded::to_string([("", f.as_str())]).unwrap();
        let url = url.trim_start_matches('=').to_owned();
        forms.push(lower_hex(&url));
        forms.push(url.replace('+', "%20"));
        forms.push(url);
    }
    forms.sort();
    forms.dedup();
    forms
}

/// `%3D` as `%3d`: percent-encoding's hex digits may come in either case.
fn lower_hex(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut hex_left = 0;
    for c in s.chars() {
        if hex_left > 0 {
            out.push(c.to_ascii_lowercase());
            hex_left -= 1;
        } else {
            out.push(c);
            if c == '%' {
                hex_left = 2;
            }
        }
    }
    out
}
