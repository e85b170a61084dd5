//! A send handed over in memory (`Delivery::reserve` and
//! `Reservation::hand`): the worker delivers it at once, with no claim and
//! no poll, and a reservation is only had while the worker runs; and a
//! delivery's slot is free for the next message while its result waits for
//! the store.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use otpgate_core::DeliveryStatus;
use otpgate_sms::worker::{Delivery, DeliveryConfig, Reservation, SingleRoute};
use otpgate_sms::{Accepted, Channel, ChannelError, ChannelHealth, InboxChannel, Outgoing};
use otpgate_store::{CreateOutcome, OutboxMessage, Verification};
use tokio::sync::Semaphore;
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
    let reservation = reserve(&db, &delivery).await;
    // Reservations are bounded: `batch` of them at most.
    let second = delivery.reserve(db.clock.now_ms()).expect("a second place");
    assert!(
        delivery.reserve(db.clock.now_ms()).is_none(),
        "only two places"
    );
    drop(second);

    let (v, msg) = send_leased(&db, &reservation, "9876543210").await;
    reservation.hand(msg);

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

/// A gateway that accepts every message and notes its id, holding the first
/// one until `gate` opens.
struct Gated {
    seen: Mutex<Vec<i64>>,
    gate: Semaphore,
}

#[async_trait]
impl Channel for Gated {
    fn name(&self) -> &str {
        "gated"
    }

    async fn send(&self, msg: &Outgoing) -> Result<Accepted, ChannelError> {
        let first = {
            let mut seen = self.seen.lock().unwrap();
            seen.push(msg.message_id);
            seen.len() == 1
        };
        if first {
            let _open = self.gate.acquire().await;
        }
        Ok(Accepted {
            gateway_id: Some(format!("g{}", msg.message_id)),
        })
    }

    fn health(&self) -> ChannelHealth {
        ChannelHealth {
            name: "gated".into(),
            kind: "test",
            up: true,
            last_error: None,
        }
    }
}

/// Waits up to 5 s for `done`.
async fn until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !done() {
        assert!(tokio::time::Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Makes a send to `national` whose message is stored leased under
/// `reservation`, and returns it with that message.
async fn send_leased(
    db: &Db,
    reservation: &Reservation,
    national: &str,
) -> (Verification, OutboxMessage) {
    let req = db.request("91", national, "Your code is 4817");
    let (outcome, msg) = db
        .store
        .verification_create_leased(req, reservation.lease())
        .await
        .unwrap();
    let CreateOutcome::Created(v) = outcome else {
        panic!("expected Created, got {outcome:?}");
    };
    (v, msg.expect("SQLite hands the message back"))
}

/// A place with `delivery`, once it runs and has one free (up to 5 s).
async fn reserve(db: &Db, delivery: &Delivery) -> Reservation {
    let mut reservation = None;
    until("a place with the worker", || {
        reservation = delivery.reserve(db.clock.now_ms());
        reservation.is_some()
    })
    .await;
    reservation.expect("checked by until")
}

/// Makes a send whose message is leased to `delivery` and hands it over:
/// the verification and the message's id.
async fn hand_one(db: &Db, delivery: &Delivery, national: &str) -> (Verification, i64) {
    let reservation = reserve(db, delivery).await;
    let (v, msg) = send_leased(db, &reservation, national).await;
    let id = msg.id;
    reservation.hand(msg);
    (v, id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_is_free_for_the_next_message_while_a_result_waits_for_the_store() {
    let db = Db::new().await;
    let gated = Arc::new(Gated {
        seen: Mutex::new(Vec::new()),
        gate: Semaphore::new(0),
    });
    let delivery = Delivery::new(
        db.store.clone(),
        db.clock.clone(),
        Arc::new(SingleRoute(vec![gated.clone()])),
        DeliveryConfig {
            worker_id: "one-slot".into(),
            // One message at a gateway at a time.
            batch: 1,
            lease_ms: 60_000,
            poll_ms: 600_000,
            ..DeliveryConfig::default()
        },
    );
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(delivery.clone().run(shutdown.clone()));
    let seen = |id: i64| gated.seen.lock().unwrap().contains(&id);

    // The first message holds the one slot at its gateway; the second is
    // handed over and waits for the slot.
    let (first, first_id) = hand_one(&db, &delivery, "9876543210").await;
    until("the first message at its gateway", || seen(first_id)).await;
    let (second, second_id) = hand_one(&db, &delivery, "9876543211").await;

    // The store's writes now wait (another connection holds the write
    // lock, for less than the store's busy timeout), and the gateway
    // accepts the first message: its result cannot be recorded yet, but
    // the gateway has done with it, so the second takes the slot.
    let lock = rusqlite::Connection::open(db.path()).unwrap();
    lock.execute_batch("begin immediate").unwrap();
    gated.gate.add_permits(1);
    until(
        "the second message at its gateway while the first's result waits",
        || seen(second_id),
    )
    .await;
    assert_eq!(
        db.outbox(&first).await.status,
        DeliveryStatus::Queued,
        "the first message's result is not recorded while the store is locked"
    );
    lock.execute_batch("rollback").unwrap();
    drop(lock);

    // Both results are recorded once the store takes writes again.
    for v in [&first, &second] {
        let m = db
            .wait_outbox(
                v,
                "sent",
                |m| m.status == DeliveryStatus::Sent,
                Duration::from_secs(5),
            )
            .await;
        assert_eq!(m.channel.as_deref(), Some("gated"));
    }
    shutdown.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
}
