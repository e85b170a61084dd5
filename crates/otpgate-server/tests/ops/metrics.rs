//! `/metrics` during a flow over SMPP: every series moves, on its own
//! listener and behind its bearer token.

use std::collections::BTreeMap;
use std::time::Duration;

use otpgate_core::SecretString;
use otpgate_core::{Clock, SystemClock};

use crate::sim::Simulator;
use crate::support::*;

const TOKEN: &str = "scrape-secret";

/// The samples of an exposition, by `name{labels}` as written.
fn samples(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_owned(), v.parse().ok()?))
        })
        .collect()
}

async fn scrape(server: &Server) -> BTreeMap<String, f64> {
    let port = server.metrics_port.expect("metrics on its own listener");
    let url = format!("http://127.0.0.1:{port}/metrics");
    let r = server
        .http
        .get(&url)
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), reqwest::StatusCode::OK);
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/openmetrics-text")
    );
    let text = r.text().await.unwrap();
    assert!(text.ends_with("# EOF\n"), "{text}");
    samples(&text)
}

fn value(s: &BTreeMap<String, f64>, key: &str) -> f64 {
    s.get(key).copied().unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_series_moves_during_a_flow_over_smpp() {
    let test = "every_series_moves_during_a_flow_over_smpp";
    let Some(mut sim) = Simulator::start(
        test,
        &["--receipt-delay-ms", "100", "--reject-prefix", "9199999"],
    ) else {
        return;
    };
    let dir = TempDir::new("ops-metrics");
    let mut settings = settings(sim.port, &dir);
    settings.metrics.listen = "127.0.0.1:0".into();
    settings.metrics.bearer_token = Some(SecretString::new(TOKEN));
    let server = start(settings).await;

    // Not on the API's listener; not without the token.
    use reqwest::StatusCode;
    let on_api = server.http.get(format!("{}/metrics", server.base));
    assert_eq!(status_of(on_api).await, StatusCode::NOT_FOUND);
    let port = server.metrics_port.unwrap();
    let metrics = format!("http://127.0.0.1:{port}/metrics");
    let bare = server.http.get(&metrics);
    assert_eq!(status_of(bare).await, StatusCode::UNAUTHORIZED);
    let wrong = server.http.get(&metrics).bearer_auth("scrape-secreT");
    assert_eq!(status_of(wrong).await, StatusCode::UNAUTHORIZED);

    let (receiver, secret) = server.webhook_receiver().await;

    let before = scrape(&server).await;

    // A wrong key and a bad authToken: token failures.
    let wrong_key = server
        .http
        .get(format!("{}{}", server.base, otpgate_api::paths::TOKEN))
        .query(&[
            ("customerId", server.account.customer_id.as_str()),
            ("key", "d3Jvbmc="),
        ]);
    assert_eq!(status_of(wrong_key).await, StatusCode::UNAUTHORIZED);
    let bad_token = server
        .http
        .post(format!("{}/verification/v3/send", server.base))
        .header("authToken", "not.a.token");
    assert_eq!(status_of(bad_token).await, StatusCode::UNAUTHORIZED);

    // One completed after a wrong code, one the SMSC rejects for good.
    let id = server.send("9876500001", "60").await;
    let code = code_sent_to(&sim, "9876500001");
    server.send("9999900002", "60").await;
    server.wait_delivered(&id, 10, "the receipt").await;
    let wrong_code = if code.starts_with('1') { "2" } else { "1" }.repeat(code.len());
    assert_eq!(server.validate(&id, &wrong_code).await, 702);
    assert_eq!(server.validate(&id, &code).await, 200);
    // The fraud defence's counters (its own tests drive real blocks).
    otpgate_server::metrics::fraud_block(otpgate_core::fraud::BlockScope::Prefix);
    otpgate_server::metrics::fraud_refused(otpgate_core::fraud::RefusalKind::PrefixBlocked);

    // Five events so far: two created, delivered, failed, completed.
    eventually(10, "webhook deliveries", async || {
        receiver.received().len() >= 5
    })
    .await;

    // A message held at the SMSC (in flight, the oldest queued one), and
    // its event held by a receiver that went away (pending, retried).
    server
        .store
        .webhook_set(
            &server.account.customer_id,
            "http://127.0.0.1:9/hook",
            &secret,
            SystemClock.now_ms(),
        )
        .await
        .unwrap();
    sim.control("delay-ms", "2500");
    server.send("9876500004", "60").await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let during = scrape(&server).await;
    sim.control("delay-ms", "0");
    eventually(10, "the held message sent", async || {
        server.store.outbox_depth().await.unwrap().in_flight == 0
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let after = scrape(&server).await;

    let moved = |key: &str| {
        let (b, a) = (value(&before, key), value(&after, key));
        assert!(a > b, "{key}: {b} -> {a}");
    };
    for key in [
        r#"otpgate_sends_total{outcome="created",country="91"}"#,
        r#"otpgate_validations_total{outcome="wrong_code"}"#,
        r#"otpgate_validations_total{outcome="completed"}"#,
        r#"otpgate_verifications_completed_total{country="91"}"#,
        r#"otpgate_deliveries_total{channel="smsc",status="sent"}"#,
        r#"otpgate_deliveries_total{channel="smsc",status="failed"}"#,
        r#"otpgate_deliveries_total{channel="smsc",status="delivered"}"#,
        r#"otpgate_delivery_gateway_latency_seconds_count{channel="smsc"}"#,
        r#"otpgate_delivery_receipt_latency_seconds_count{channel="smsc"}"#,
        r#"otpgate_outbox_messages{state="failed"}"#,
        r#"otpgate_store_operation_duration_seconds_count{op="verification_create_leased"}"#,
        r#"otpgate_store_operation_duration_seconds_count{op="outbox_receipt"}"#,
        r#"otpgate_token_failures_total{reason="bad_credentials"}"#,
        r#"otpgate_token_failures_total{reason="invalid_token"}"#,
        r#"otpgate_fraud_blocks_total{kind="prefix"}"#,
        r#"otpgate_fraud_refused_total{kind="prefix"}"#,
        r#"otpgate_webhook_deliveries_total{result="delivered"}"#,
        r#"otpgate_webhook_deliveries_total{result="retry"}"#,
    ] {
        moved(key);
    }
    // The gauges of the held message, seen while it was held.
    assert_eq!(
        value(&during, r#"otpgate_outbox_messages{state="in_flight"}"#),
        1.0
    );
    let age = value(&during, "otpgate_outbox_oldest_message_age_seconds");
    assert!(age >= 1.0, "oldest message age {age}");
    assert_eq!(
        value(&after, "otpgate_outbox_oldest_message_age_seconds"),
        0.0
    );
    assert_eq!(value(&before, "otpgate_events_pending"), 0.0);
    assert!(value(&during, "otpgate_events_pending") >= 1.0);
    let age = value(&during, "otpgate_events_oldest_pending_age_seconds");
    assert!(age >= 1.0, "oldest pending event age {age}");
    // Conversion per country from the two counters.
    let sends = value(
        &after,
        r#"otpgate_sends_total{outcome="created",country="91"}"#,
    );
    let completed = value(
        &after,
        r#"otpgate_verifications_completed_total{country="91"}"#,
    );
    assert!(completed / sends > 0.0 && completed / sends <= 1.0);
}
