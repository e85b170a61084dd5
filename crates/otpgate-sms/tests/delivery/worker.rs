//! The outbox worker with configured routes, a real SQLite store and the
//! simulator: queueing while the SMSC is down, backoff under throttling,
//! permanent failures and refunds, failover, receipts.

use std::time::Duration;

use otpgate_core::{DeliveryStatus, VerificationState};

use crate::common::{Db, Sim, Worker, free_port, smpp_channel, smsc_worker};

const WAIT: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_sent_while_the_smsc_is_down_stays_queued_and_goes_out_when_it_comes_up() {
    let port = free_port();
    let db = Db::new().await;
    let router = db.build(&smpp_channel("smsc", port, ""));
    let worker = Worker::start(&db, router.clone());
    let v = db.queue("91", "9876543210", "Your code is 5831").await;

    // Down: every attempt finds no bind, the message waits in the outbox.
    let m = db
        .wait_outbox(&v, "retried", |m| m.attempts >= 2, WAIT)
        .await;
    assert_eq!(m.status, DeliveryStatus::Queued);
    assert!(
        m.last_error
            .as_deref()
            .is_some_and(|e| e.contains("not bound")),
        "{m:#?}"
    );
    assert_eq!(db.verification(&v).await.state, VerificationState::Pending);
    assert!(!worker.delivery.health()[0].up);

    let Some(sim) = Sim::start_on("smsc_down_then_up", port, &[]) else {
        worker.stop().await;
        return;
    };
    let m = db.wait_dequeued(&v, WAIT).await;
    assert_eq!(m.channel.as_deref(), Some("smsc"));
    let submit = sim.wait_for("submit", |_| true, WAIT).await;
    assert_eq!(submit["text"], "Your code is 5831");
    assert_eq!(submit["destination_addr"], "919876543210");
    assert_eq!(m.gateway_id.as_deref(), submit["message_id"].as_str());
    assert!(worker.delivery.health()[0].up);
    worker.stop().await;
    sim.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttling_is_retried_with_growing_backoff_until_delivered() {
    let Some((sim, db, worker)) = smsc_worker("throttle", &["--throttle", "3"]).await else {
        return;
    };
    worker.wait_up().await;
    let v = db.queue("91", "9876543210", "Your code is 1111").await;
    let m = db.wait_dequeued(&v, WAIT).await;
    assert_eq!(m.attempts, 4, "three throttled attempts and one accepted");
    let submits = sim.wait_count("submit", 4, WAIT).await;
    let statuses: Vec<u64> = submits
        .iter()
        .map(|s| s["status"].as_u64().unwrap())
        .collect();
    assert_eq!(statuses, [0x58, 0x58, 0x58, 0]);
    // Backoff with the test's base of 100 ms, cap of 400 ms and jitter in
    // the upper half: the k-th retry waits between 50·2^(k-1) and 100·2^(k-1)
    // ms. Above that, the worker's poll (25 ms) and a loaded machine may add
    // up to SLACK; a backoff twice as long as configured does not fit.
    const SLACK: u64 = 150;
    let t: Vec<u64> = submits.iter().map(|s| s["t"].as_u64().unwrap()).collect();
    for (k, (lo, hi)) in [(50, 100), (100, 200), (200, 400)].into_iter().enumerate() {
        let gap = t[k + 1] - t[k];
        assert!(
            gap + 5 >= lo && gap <= hi + SLACK,
            "retry {} after {gap} ms, want {lo}..={hi} ms (+{SLACK} ms slack); times {t:?}",
            k + 1
        );
    }
    assert_eq!(submits[3]["text"], "Your code is 1111");
    worker.stop().await;
    sim.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_destination_fails_the_verification_and_refunds_it() {
    let Some((sim, db, worker)) = smsc_worker("reject", &["--reject-prefix", "91"]).await else {
        return;
    };
    assert_eq!(db.test_credits().await, 10);
    worker.wait_up().await;
    let v = db.queue("91", "9876543210", "Your code is 2222").await;
    assert_eq!(db.test_credits().await, 9, "charged on send");
    let m = db.wait_status(&v, DeliveryStatus::Failed, WAIT).await;
    assert_eq!(m.attempts, 1, "a permanent refusal is not retried");
    assert!(
        m.last_error
            .as_deref()
            .is_some_and(|e| e.contains("ESME_RINVDSTADR")),
        "{m:#?}"
    );
    assert_eq!(m.text, None, "the text (it holds the code) is erased");
    let ver = db.verification(&v).await;
    assert_eq!(ver.state, VerificationState::Failed);
    assert_eq!(db.test_credits().await, 10, "refunded");
    assert_eq!(sim.wait_count("submit", 1, WAIT).await.len(), 1);
    worker.stop().await;
    sim.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_delivers_through_the_second_channel_when_the_first_is_down() {
    let Some(sim) = Sim::start("failover", &[]) else {
        return;
    };
    let db = Db::new().await;
    let toml = format!(
        "{}{}{}",
        smpp_channel("smsc-a", free_port(), ""),
        smpp_channel("smsc-b", sim.port(), ""),
        r#"
[[routes]]
country_codes = [91, 44]
flow_types = ["SMS"]
channels = ["smsc-a", "smsc-b"]
"#
    );
    let worker = Worker::start(&db, db.build(&toml));
    let v = db.queue("91", "9876543210", "Your code is 3333").await;
    let m = db.wait_dequeued(&v, WAIT).await;
    assert_eq!(m.channel.as_deref(), Some("smsc-b"));
    // Whether smsc-b was bound on the first attempt or not, smsc-a was never
    // the one that took it, and no attempt waited for a retry slot once
    // smsc-b was up.
    assert_eq!(sim.wait_count("submit", 1, WAIT).await.len(), 1);
    let health = worker.delivery.health();
    let a = health.iter().find(|h| h.name == "smsc-a").unwrap();
    assert!(!a.up && a.last_error.is_some(), "{a:?}");

    // A destination no route covers fails at once, refunded.
    let before = db.test_credits().await;
    let us = db.queue("1", "6502530000", "Your code is 4444").await;
    let m = db.wait_status(&us, DeliveryStatus::Failed, WAIT).await;
    assert!(m.last_error.unwrap_or_default().contains("no route"));
    assert_eq!(db.test_credits().await, before);
    worker.stop().await;
    sim.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_receipt_updates_the_status_and_keeps_the_smsc_message_id() {
    let Some((sim, db, worker)) = smsc_worker(
        "receipt",
        &["--receipt-delay-ms", "100", "--id-format", "dec"],
    )
    .await
    else {
        return;
    };
    worker.wait_up().await;
    let v = db.queue("91", "9876543210", "Your code is 6060").await;
    let m = db.wait_status(&v, DeliveryStatus::Delivered, WAIT).await;
    let submit = &sim.wait_count("submit", 1, WAIT).await[0];
    let smsc_id = submit["message_id"].as_str().unwrap();
    assert_eq!(m.gateway_id.as_deref(), Some(smsc_id));
    let ver = db.verification(&v).await;
    assert_eq!(ver.delivery, DeliveryStatus::Delivered);
    assert_eq!(ver.gateway_id.as_deref(), Some(smsc_id));
    assert_eq!(ver.channel.as_deref(), Some("smsc"));
    let detail = ver.delivery_detail.unwrap_or_default();
    assert!(detail.contains("DELIVRD"), "{detail}");
    assert!(!detail.contains("6060"), "no message text in the detail");
    let depth = worker.delivery.queue_depth().await.unwrap();
    assert_eq!((depth.queued, depth.in_flight), (0, 0));
    worker.stop().await;
    sim.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undeliverable_receipt_fails_and_refunds_the_verification() {
    let Some((sim, db, worker)) = smsc_worker(
        "receipt_undeliv",
        &[
            "--receipt-delay-ms",
            "50",
            "--receipt-stat",
            "UNDELIV",
            "--receipt-mode",
            "tlv",
        ],
    )
    .await
    else {
        return;
    };
    worker.wait_up().await;
    let v = db.queue("91", "9876543210", "Your code is 7070").await;
    db.wait_status(&v, DeliveryStatus::Undeliverable, WAIT)
        .await;
    let ver = db.verification(&v).await;
    assert_eq!(ver.state, VerificationState::Failed);
    assert_eq!(db.test_credits().await, 10, "refunded");
    worker.stop().await;
    sim.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_gateway_holds_only_its_own_messages() {
    // The SMSC takes 2 s to answer each submit_sm (within the channel's 3 s
    // request timeout); messages to other countries go to the inbox and must
    // not wait behind it.
    let Some(sim) = Sim::start("slow_gateway", &["--delay-ms", "2000"]) else {
        return;
    };
    let db = Db::new().await;
    let toml = format!(
        "{}\n[channels.inbox]\ntype = \"inbox\"\n\n[[routes]]\ncountry_codes = [44]\nchannels = [\"smsc\"]\n\n[[routes]]\nchannels = [\"inbox\"]\n",
        smpp_channel("smsc", sim.port(), "")
    );
    let worker = Worker::start(&db, db.build(&toml));
    worker.wait_up().await;
    let slow = db.queue("44", "7400123456", "Your code is 1111").await;
    worker.delivery.notify();
    sim.wait_for("submit", |_| true, WAIT).await;

    // The SMSC now holds the first message; a second one to India arrives.
    let started = std::time::Instant::now();
    let fast = db.queue("91", "9876543210", "Your code is 2222").await;
    worker.delivery.notify();
    let m = db.wait_dequeued(&fast, WAIT).await;
    let took = started.elapsed();
    assert_eq!(m.channel.as_deref(), Some("inbox"));
    assert!(
        took < Duration::from_millis(1500),
        "the inbox message waited {took:?} behind the slow SMSC"
    );
    assert_eq!(
        db.outbox(&slow).await.status,
        DeliveryStatus::Queued,
        "the slow one is still in flight"
    );
    let m = db.wait_dequeued(&slow, WAIT).await;
    assert_eq!(m.channel.as_deref(), Some("smsc"));
    worker.stop().await;
    sim.stop();
}
