//! Webhook events: each change of a verification queues its event in the
//! change's own transaction, once, only for an account with a webhook; the
//! expiry sweep finds what nobody completed; workers lease events as they
//! lease outbox messages, and the id stays the same across attempts.

use otpgate_core::DeliveryStatus;
use otpgate_store::{EventAttempt, EventKind, EventOutcome, ValidationAction};

use crate::fixture::TestDb;
use crate::helpers::*;

both_backends!(
    each_change_of_a_verification_queues_its_event_once,
    events_are_leased_to_one_worker_and_keep_their_id_across_attempts,
);

async fn kinds_of(store: &impl AsStore, c: &otpgate_core::CustomerId, id: u64) -> Vec<EventKind> {
    let mut kinds: Vec<EventKind> = store
        .as_store()
        .event_list(c, 100)
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.verification_id.get() == id)
        .map(|e| e.kind)
        .collect();
    kinds.sort_by_key(|k| k.as_str());
    kinds
}

async fn each_change_of_a_verification_queues_its_event_once(db: TestDb) {
    let store = db.open().await;
    let (with, without) = (cid(1), cid(2));
    account(&store, &with, 100, 0).await;
    account(&store, &without, 100, 0).await;
    store
        .webhook_set(&with, "https://example.test/hook", "whsec_c2VjcmV0", T0)
        .await
        .unwrap();

    // 1: created, delivered (twice: one event), completed.
    created(&store, send(1, &with, &phone(1), T0)).await;
    created(&store, send(9, &without, &phone(1), T0)).await;
    let msgs = claim(&store, "w", 10, T0).await;
    for m in &msgs {
        let gw = format!("gw-{}", m.verification_id.get());
        let sent = sent_info("smpp", &gw);
        assert!(store.outbox_sent(m.id, "w", &sent, T0 + 5).await.unwrap());
    }
    for _ in 0..2 {
        let at = store
            .outbox_receipt("smpp", "gw-1", DeliveryStatus::Delivered, "DELIVRD", T0 + 9)
            .await
            .unwrap();
        assert_eq!(at, Some(T0), "the receipt tells when the send was accepted");
    }
    assert!(completes(&store, &with, vid(1), 0, T0 + 10).await);
    assert_eq!(
        kinds_of(&store, &with, 1).await,
        [
            EventKind::Completed,
            EventKind::Created,
            EventKind::Delivered
        ]
    );
    // An account without a webhook queues nothing.
    assert!(store.event_list(&without, 100).await.unwrap().is_empty());

    // 2: its message fails for good → failed.
    created(&store, send(2, &with, &phone(2), T0)).await;
    let m = claim(&store, "w", 10, T0 + 20).await;
    assert!(
        store
            .outbox_failed(m[0].id, "w", "rejected", T0 + 21)
            .await
            .unwrap()
    );
    assert_eq!(
        kinds_of(&store, &with, 2).await,
        [EventKind::Created, EventKind::Failed]
    );

    // 3: the wrong code that spends the last of five attempts → failed.
    created(&store, send(3, &with, &phone(3), T0)).await;
    for n in 0..5 {
        assert!(
            store
                .verification_apply(&with, vid(3), n, ValidationAction::Wrong, T0 + 30)
                .await
                .unwrap()
        );
        let failed = kinds_of(&store, &with, 3)
            .await
            .contains(&EventKind::Failed);
        assert_eq!(failed, n == 4, "after wrong code {}", n + 1);
    }

    // 4: left pending past its expiry (T0 + 60 s) → expired, once, and
    // only for it: 1 completed, 2 and 3 failed.
    created(&store, send(4, &with, &phone(4), T0)).await;
    assert_eq!(store.events_sweep_expired(T0 + 59_000).await.unwrap(), 0);
    assert_eq!(store.events_sweep_expired(T0 + 61_000).await.unwrap(), 1);
    assert_eq!(store.events_sweep_expired(T0 + 62_000).await.unwrap(), 0);
    assert_eq!(
        kinds_of(&store, &with, 4).await,
        [EventKind::Created, EventKind::Expired]
    );
    for id in [1, 2, 3] {
        assert!(
            !kinds_of(&store, &with, id)
                .await
                .contains(&EventKind::Expired)
        );
    }
    let backlog = store.event_backlog().await.unwrap();
    assert_eq!(backlog.pending, 9);
    assert_eq!(backlog.oldest_at, Some(T0));
}

async fn events_are_leased_to_one_worker_and_keep_their_id_across_attempts(db: TestDb) {
    let nodes = db.nodes(2).await;
    let (a, b) = (&nodes[0], &nodes[1]);
    let c = cid(1);
    account(a, &c, 10, 0).await;
    a.as_store()
        .webhook_set(&c, "https://example.test/hook", "whsec_c2VjcmV0", T0)
        .await
        .unwrap();
    created(a, send(1, &c, &phone(1), T0)).await;

    let first = a
        .as_store()
        .events_claim("w1", 10, LEASE, T0)
        .await
        .unwrap();
    assert_eq!(first.len(), 1);
    let ev = &first[0];
    assert_eq!((ev.kind, ev.attempts), (EventKind::Created, 1));
    assert!(ev.event_id.starts_with("evt_"), "{}", ev.event_id);
    let (url, secret) = ev.endpoint.clone().expect("the account has a webhook");
    assert_eq!(
        (url.as_str(), secret.expose()),
        ("https://example.test/hook", "whsec_c2VjcmV0")
    );
    let detail: serde_json::Value = serde_json::from_str(&ev.detail).unwrap();
    assert_eq!(detail["countryCode"], "91");
    // Held by w1: the other node gets nothing until the lease runs out.
    let b_store = b.as_store();
    assert!(
        b_store
            .events_claim("w2", 10, LEASE, T0 + 1)
            .await
            .unwrap()
            .is_empty()
    );
    let again = b_store
        .events_claim("w2", 10, LEASE, T0 + LEASE)
        .await
        .unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].event_id, ev.event_id, "the id is stable");
    assert_eq!(again[0].attempts, 2);
    // w1's late result is ignored; w2's retry releases it until it is due.
    let retry = EventAttempt {
        outcome: EventOutcome::Retry {
            next_attempt_at: T0 + LEASE + 5000,
        },
        response_status: Some(503),
        response: "busy".into(),
    };
    assert!(
        !a.as_store()
            .event_record(ev.id, "w1", &retry, T0 + LEASE)
            .await
            .unwrap()
    );
    assert!(
        b_store
            .event_record(ev.id, "w2", &retry, T0 + LEASE)
            .await
            .unwrap()
    );
    assert!(
        b_store
            .events_claim("w2", 10, LEASE, T0 + LEASE + 4999)
            .await
            .unwrap()
            .is_empty()
    );
    let third = b_store
        .events_claim("w2", 10, LEASE, T0 + LEASE + 5000)
        .await
        .unwrap();
    assert_eq!(third[0].event_id, ev.event_id);
    let done = EventAttempt {
        outcome: EventOutcome::Delivered,
        response_status: Some(204),
        response: String::new(),
    };
    assert!(
        b_store
            .event_record(ev.id, "w2", &done, T0 + 40_000)
            .await
            .unwrap()
    );
    let list = a.as_store().event_list(&c, 10).await.unwrap();
    assert_eq!(list.len(), 1);
    let r = &list[0];
    assert_eq!(
        (
            r.status.as_str(),
            r.attempts,
            r.response_status,
            r.delivered_at
        ),
        ("delivered", 3, Some(204), Some(T0 + 40_000))
    );
    assert_eq!(a.as_store().event_backlog().await.unwrap().pending, 0);

    // Without a webhook, a queued event is handed out with no endpoint (the
    // worker drops it).
    created(a, send(2, &c, &phone(2), T0)).await;
    a.as_store().webhook_delete(&c).await.unwrap();
    let orphan = a
        .as_store()
        .events_claim("w1", 10, LEASE, T0 + 50_000)
        .await
        .unwrap();
    assert_eq!(orphan.len(), 1);
    assert!(orphan[0].endpoint.is_none());
}
