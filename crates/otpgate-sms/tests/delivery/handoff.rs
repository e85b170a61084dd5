//! A send handed over in memory (`Delivery::reserve` and
//! `Reservation::hand`): the worker delivers it at once, with no claim and
//! no poll, and a reservation is only had while the worker runs.

use std::sync::Arc;
use std::time::Duration;

use otpgate_core::DeliveryStatus;
use otpgate_sms::InboxChannel;
use otpgate_sms::worker::{Delivery, DeliveryConfig, SingleRoute};
use otpgate_store::CreateOutcome;
use tokio_util::sync::CancellationToken;

use crate::common::Db;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handed_over_message_is_delivered_at_once_without_a_claim() {
    let db = Db::new().await;
    let inbox = Arc::new(InboxChannel::new("dev", db.store.clone(), db.clock.clone()));
    let delivery = Delivery::new(
        db.store.clone(),
        db.clock.clone(),
        Arc::new(SingleRoute(vec![inbox])),
        DeliveryConfig {
            worker_id: "handoff-worker".into(),
            batch: 2,
            lease_ms: 60_000,
            // No poll within the test: only the handoff can deliver.
            poll_ms: 600_000,
            ..DeliveryConfig::default()
        },
    );
    assert!(
        delivery.reserve(db.clock.now_ms()).is_none(),
        "no reservation before the worker runs"
    );
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(delivery.clone().run(shutdown.clone()));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let reservation = loop {
        if let Some(r) = delivery.reserve(db.clock.now_ms()) {
            break r;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the worker never ran"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    // Reservations are bounded: `batch` of them at most.
    let second = delivery.reserve(db.clock.now_ms()).expect("a second place");
    assert!(
        delivery.reserve(db.clock.now_ms()).is_none(),
        "only two places"
    );
    drop(second);

    let req = db.request("91", "9876543210", "Your code is 4817", 60_000);
    let (outcome, msg) = db
        .store
        .verification_create_leased(req, reservation.lease())
        .await
        .unwrap();
    let CreateOutcome::Created(v) = outcome else {
        panic!("expected Created, got {outcome:?}");
    };
    reservation.hand(msg.expect("SQLite hands the message back"));

    let m = db
        .wait_outbox(
            &v,
            "sent",
            |m| m.status == DeliveryStatus::Sent,
            Duration::from_secs(5),
        )
        .await;
    // One attempt: the store's lease, never a claim (a claim counts one).
    assert_eq!(m.attempts, 1);
    assert_eq!(m.channel.as_deref(), Some("dev"));
    let entries = db
        .store
        .inbox_list(None, Some("919876543210"), 5)
        .await
        .unwrap();
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].text, "Your code is 4817");

    shutdown.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
    assert!(
        delivery.reserve(db.clock.now_ms()).is_none(),
        "no reservation once the worker stopped"
    );
}
