//! Webhook events end to end: every event of a flow over SMPP reaches a
//! local receiver, signed; a receiver that is down for 30 s gets them all
//! once it is up, with the ids they had; a tampered event fails the
//! receiver's own check.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use otpgate_core::{Clock, SystemClock};
use otpgate_server::events::sign;

use crate::sim::Simulator;
use crate::support::*;

/// The simulator as the event tests run it (receipts 100 ms after each
/// submit, numbers under +91 99999 rejected for good) and a server on it
/// with its data in a directory tagged `tag`; `None` when the simulator
/// cannot run (the test is skipped).
async fn events_setup(test: &str, tag: &str) -> Option<(Simulator, TempDir, Server)> {
    let sim = Simulator::start(
        test,
        &["--receipt-delay-ms", "100", "--reject-prefix", "9199999"],
    )?;
    let dir = TempDir::new(tag);
    let server = start(settings(sim.port, &dir)).await;
    Some((sim, dir, server))
}

/// Three verifications: one completed, one whose message the SMSC rejects,
/// one left to expire. Returns (id, the events it must produce).
async fn flow(server: &Server, sim: &Simulator) -> Vec<(String, Vec<&'static str>)> {
    let done = server.send("9876500001", "60").await;
    let code = code_sent_to(sim, "9876500001");
    // The delivered event needs the receipt (100 ms after the submit).
    let rejected = server.send("9999900002", "60").await;
    let expiring = server.send("9876500003", "1").await;
    server.wait_delivered(&done, 10, "the first receipt").await;
    assert_eq!(server.validate(&done, &code).await, 200);
    vec![
        (
            done,
            vec![
                "verification.completed",
                "verification.created",
                "verification.delivered",
            ],
        ),
        (
            rejected,
            vec!["verification.created", "verification.failed"],
        ),
        (
            expiring,
            vec![
                "verification.created",
                "verification.delivered",
                "verification.expired",
            ],
        ),
    ]
}

/// The receiver's requests grouped by verification: the event types.
fn by_verification(got: &[Received]) -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for r in got {
        let v = r.json();
        out.entry(v["data"]["verificationId"].as_str().unwrap().to_owned())
            .or_default()
            .insert(v["type"].as_str().unwrap().to_owned());
    }
    out
}

fn expected_map(flow: &[(String, Vec<&'static str>)]) -> BTreeMap<String, BTreeSet<String>> {
    flow.iter()
        .map(|(id, kinds)| (id.clone(), kinds.iter().map(|k| (*k).to_owned()).collect()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_gets_every_event_of_a_flow_each_validly_signed() {
    let test = "a_receiver_gets_every_event_of_a_flow_each_validly_signed";
    let Some((sim, _dir, server)) = events_setup(test, "ops-events").await else {
        return;
    };
    let (receiver, secret) = server.webhook_receiver().await;

    let flow = flow(&server, &sim).await;
    let expected = expected_map(&flow);
    eventually(20, "every event at the receiver", async || {
        by_verification(&receiver.received()) == expected
    })
    .await;
    let got = receiver.received();
    assert!(
        got.iter().all(|r| r.valid),
        "every signature verifies: {got:?}"
    );
    // Each event's body tells what happened, its id is one event's only.
    let ids: BTreeSet<&str> = got.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids.len(), 8, "one id per event: {got:?}");
    for r in &got {
        let v = r.json();
        assert!(r.id.starts_with("evt_"));
        assert_eq!(v["data"]["customerId"], server.account.customer_id.as_str());
        assert!(v["timestamp"].as_str().unwrap().ends_with('Z'));
        if v["type"] == "verification.failed" {
            assert_eq!(v["data"]["reason"], "undeliverable", "{v}");
        }
    }
    // The store records each as delivered with the receiver's answer.
    eventually(5, "every event recorded as delivered", async || {
        let list = server
            .store
            .event_list(&server.account.customer_id, 100)
            .await
            .unwrap();
        list.len() == 8
            && list
                .iter()
                .all(|e| e.status == "delivered" && e.response_status == Some(204))
    })
    .await;

    // Tampering: the receiver's check refuses a changed body, a changed
    // signature, another id, and the right signature under another secret.
    let r = &got[0];
    assert!(verify(&secret, &r.id, &r.timestamp, &r.body, &r.signature));
    let changed_body = r.body.replacen("verification.", "verification.x", 1);
    assert!(!verify(
        &secret,
        &r.id,
        &r.timestamp,
        &changed_body,
        &r.signature
    ));
    let mut sig = r.signature.clone().into_bytes();
    let last = sig.len() - 2;
    sig[last] = if sig[last] == b'A' { b'B' } else { b'A' };
    let sig = String::from_utf8(sig).unwrap();
    assert!(!verify(&secret, &r.id, &r.timestamp, &r.body, &sig));
    assert!(!verify(
        &secret,
        "evt_other",
        &r.timestamp,
        &r.body,
        &r.signature
    ));
    assert!(!verify(
        &sign::new_secret(),
        &r.id,
        &r.timestamp,
        &r.body,
        &r.signature
    ));
    // And a receiver that answers 400 to a bad signature is what the
    // server retries against: the same request with a tampered signature
    // is refused by the live receiver too.
    let status = reqwest::Client::new()
        .post(receiver.url())
        .header("webhook-id", &r.id)
        .header("webhook-timestamp", &r.timestamp)
        .header("webhook-signature", &sig)
        .body(r.body.clone())
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, reqwest::StatusCode::BAD_REQUEST);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_down_for_30_s_gets_every_event_with_the_same_ids_once_up() {
    let test = "a_receiver_down_for_30_s_gets_every_event_with_the_same_ids_once_up";
    let Some((sim, _dir, server)) = events_setup(test, "ops-events-down").await else {
        return;
    };
    // A port nobody listens on (yet): connections are refused.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let secret = sign::new_secret();
    server
        .store
        .webhook_set(
            &server.account.customer_id,
            &format!("http://127.0.0.1:{port}/hook"),
            &secret,
            SystemClock.now_ms(),
        )
        .await
        .unwrap();

    let flow = flow(&server, &sim).await;
    let down_since = std::time::Instant::now();
    // While it is down every event is retried, none given up, ids fixed.
    let mut seen = BTreeMap::new();
    while down_since.elapsed() < Duration::from_secs(30) {
        for e in server
            .store
            .event_list(&server.account.customer_id, 100)
            .await
            .unwrap()
        {
            assert_eq!(e.status, "pending", "{e:?}");
            seen.insert(e.event_id, e.attempts);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(seen.len(), 8, "all 8 events queued: {seen:?}");
    assert!(
        seen.values().all(|a| *a >= 3),
        "each was tried again and again (backoff capped at 1 s): {seen:?}"
    );

    let receiver = Receiver::start(port).await;
    receiver.set_secret(&secret);
    let expected = expected_map(&flow);
    eventually(15, "every event after the receiver came up", async || {
        by_verification(&receiver.received()) == expected
    })
    .await;
    let got = receiver.received();
    assert!(got.iter().all(|r| r.valid), "{got:?}");
    let ids: BTreeSet<String> = got.iter().map(|r| r.id.clone()).collect();
    let queued: BTreeSet<String> = seen.keys().cloned().collect();
    assert_eq!(
        ids, queued,
        "the ids delivered are the ids queued during the outage"
    );
}
