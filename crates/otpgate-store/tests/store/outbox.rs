//! The outbox: leases that one worker holds until they expire, claims from
//! several nodes that never share a message, and what sent, retried and
//! failed messages and delivery receipts do to their verifications.

use std::collections::HashSet;

use otpgate_core::{CustomerId, DeliveryStatus, VerificationState};
use otpgate_store::{OutboxMessage, ValidationAction};

use crate::fixture::TestDb;
use crate::helpers::*;

both_backends!(
    a_claim_leases_due_messages_to_one_worker_until_the_lease_expires,
    concurrent_claims_from_several_nodes_never_share_a_message,
    a_sent_message_loses_its_text_and_receipts_update_its_verification,
    a_retry_releases_the_lease_until_the_next_attempt_is_due,
    a_failed_message_fails_its_verification_and_refunds_it_once,
    an_undeliverable_receipt_refunds_a_pending_verification_once_but_not_a_completed_one,
    a_fallback_step_is_held_until_due_and_cancelled_when_the_first_is_delivered,
    a_failed_step_wakes_the_next_and_only_the_last_failure_fails_and_refunds,
    completion_or_death_by_wrong_codes_cancels_held_steps,
    a_later_step_sent_cancels_an_earlier_one_still_retrying,
    a_step_in_flight_when_its_verification_ends_is_left_to_its_worker,
);

/// Verification 1 on SMS with a WhatsApp step due at `T0 + 10 s`.
async fn with_fallback(store: &impl AsStore) -> CustomerId {
    let c = cid(1);
    account(store, &c, 1, 0).await;
    let mut req = send(1, &c, &phone(1), T0);
    req.lang = Some("fr".into());
    req.fallbacks = vec![otpgate_store::NewFallback {
        flow_type: "WHATSAPP".into(),
        text: "1234".into(),
        address: None,
        due_at: T0 + 10_000,
    }];
    created(store, req).await;
    c
}

async fn steps(store: &impl AsStore) -> Vec<OutboxMessage> {
    store.as_store().outbox_attempts(vid(1)).await.unwrap()
}

async fn a_fallback_step_is_held_until_due_and_cancelled_when_the_first_is_delivered(db: TestDb) {
    let store = db.open().await;
    with_fallback(&store).await;
    let first = claim(&store, "w", 10, T0).await;
    assert_eq!(first.len(), 1, "only the first step is due");
    assert_eq!((first[0].step, first[0].flow_type.as_str()), (0, "SMS"));
    assert!(
        store
            .outbox_sent(first[0].id, "w", &sent_info("sms", "g1"), T0 + 1)
            .await
            .unwrap()
    );
    assert!(claim(&store, "w", 10, T0 + 9_999).await.is_empty());
    let held = &steps(&store).await[1];
    assert_eq!((held.step, held.flow_type.as_str()), (1, "WHATSAPP"));
    assert_eq!(held.lang.as_deref(), Some("fr"));
    assert_eq!(held.text.as_deref(), Some("1234"));

    assert!(
        store
            .outbox_receipt("sms", "g1", DeliveryStatus::Delivered, "ok", T0 + 2)
            .await
            .unwrap()
            .is_some()
    );
    let all = steps(&store).await;
    assert_eq!(all[0].status, DeliveryStatus::Delivered);
    assert_eq!(all[1].status, DeliveryStatus::Cancelled);
    assert!(all[1].text.is_none(), "the held step's code is erased");
    assert!(claim(&store, "w", 10, T0 + 10_000).await.is_empty());
}

async fn a_failed_step_wakes_the_next_and_only_the_last_failure_fails_and_refunds(db: TestDb) {
    let store = db.open().await;
    let c = with_fallback(&store).await;
    let first = claim(&store, "w", 10, T0).await;
    assert!(
        store
            .outbox_failed(first[0].id, "w", "sms: refused", T0 + 5)
            .await
            .unwrap()
    );
    let v = verification(&store, &c, vid(1)).await;
    assert_eq!(
        v.state,
        VerificationState::Pending,
        "the fallback can still bring it"
    );
    assert_eq!(balance(&store, &c).await, (0, 0), "not refunded yet");
    // The WhatsApp step goes at once, not at T0 + 10 s.
    let next = claim(&store, "w", 10, T0 + 5).await;
    assert_eq!(next.len(), 1);
    assert_eq!(next[0].step, 1);
    assert!(
        store
            .outbox_failed(next[0].id, "w", "wa: refused", T0 + 6)
            .await
            .unwrap()
    );
    let v = verification(&store, &c, vid(1)).await;
    assert_eq!(v.state, VerificationState::Failed);
    assert_eq!(balance(&store, &c).await, (1, 0), "refunded once");
}

async fn completion_or_death_by_wrong_codes_cancels_held_steps(db: TestDb) {
    let store = db.open().await;
    let c = with_fallback(&store).await;
    assert!(completes(&store, &c, vid(1), 0, T0 + 1).await);
    let all = steps(&store).await;
    assert!(
        all.iter()
            .all(|m| m.status == DeliveryStatus::Cancelled && m.text.is_none())
    );

    // Five wrong codes (max_attempts) kill verification 2: its held step
    // goes too; fewer leave it.
    let mut req = send(2, &c, &phone(2), T0);
    req.fallbacks = vec![otpgate_store::NewFallback {
        flow_type: "WHATSAPP".into(),
        text: "9999".into(),
        address: None,
        due_at: T0 + 10_000,
    }];
    store.account_add_credits(&c, 1).await.unwrap();
    created(&store, req).await;
    for n in 0..5 {
        let held = &store.outbox_attempts(vid(2)).await.unwrap()[1];
        assert_eq!(held.status, DeliveryStatus::Queued, "after {n} wrong codes");
        assert!(
            store
                .verification_apply(&c, vid(2), n, ValidationAction::Wrong, T0 + 1)
                .await
                .unwrap()
        );
    }
    let held = &store.outbox_attempts(vid(2)).await.unwrap()[1];
    assert_eq!(held.status, DeliveryStatus::Cancelled);
    assert!(held.text.is_none());
}

async fn a_later_step_sent_cancels_an_earlier_one_still_retrying(db: TestDb) {
    let store = db.open().await;
    with_fallback(&store).await;
    let first = claim(&store, "w", 10, T0).await;
    assert!(
        store
            .outbox_retry(first[0].id, "w", T0 + 50_000, "sms: timeout", T0 + 1)
            .await
            .unwrap()
    );
    let next = claim(&store, "w", 10, T0 + 10_000).await;
    assert_eq!(next.len(), 1);
    assert_eq!(next[0].step, 1);
    assert!(
        store
            .outbox_sent(next[0].id, "w", &sent_info("wa", "wamid.1"), T0 + 10_001)
            .await
            .unwrap()
    );
    let all = steps(&store).await;
    assert_eq!(all[0].status, DeliveryStatus::Cancelled);
    assert!(all[0].text.is_none());
    assert_eq!(all[1].status, DeliveryStatus::Sent);
    assert!(claim(&store, "w", 10, T0 + 50_000).await.is_empty());
}

async fn a_claim_leases_due_messages_to_one_worker_until_the_lease_expires(db: TestDb) {
    let store = db.open().await;
    queued(&store, 3).await;
    assert!(
        claim(&store, "w1", 10, T0 - 1).await.is_empty(),
        "not due yet"
    );
    let first = claim(&store, "w1", 2, T0).await;
    let ids: Vec<u64> = first.iter().map(|m| m.verification_id.get()).collect();
    assert_eq!(ids, [1, 2]);
    assert!(first.iter().all(|m| m.attempts == 1 && m.text.is_some()));
    let depth = store.outbox_depth().await.unwrap();
    assert_eq!((depth.queued, depth.in_flight), (1, 2));

    let second = claim(&store, "w2", 10, T0 + 1).await;
    assert_eq!(second.len(), 1);
    assert_eq!(second[0].verification_id.get(), 3);
    assert!(claim(&store, "w2", 10, T0 + LEASE - 1).await.is_empty());

    // w1 died: its leases expire and w2 takes the same messages, on a
    // second attempt.
    let taken = claim(&store, "w2", 10, T0 + LEASE).await;
    let row_ids = |ms: &[OutboxMessage]| ms.iter().map(|m| m.id).collect::<HashSet<_>>();
    assert_eq!(row_ids(&taken), row_ids(&first));
    assert!(taken.iter().all(|m| m.attempts == 2));
    // w1's late results are ignored.
    let info = sent_info("inbox", "g1");
    assert!(
        !store
            .outbox_sent(taken[0].id, "w1", &info, T0 + 30_001)
            .await
            .unwrap()
    );
    assert!(
        !store
            .outbox_retry(taken[0].id, "w1", T0 + 40_000, "x", T0 + 30_001)
            .await
            .unwrap()
    );
    assert!(
        !store
            .outbox_failed(taken[0].id, "w1", "x", T0 + 30_001)
            .await
            .unwrap()
    );
    assert!(
        store
            .outbox_sent(taken[0].id, "w2", &info, T0 + 30_001)
            .await
            .unwrap()
    );
}

async fn concurrent_claims_from_several_nodes_never_share_a_message(db: TestDb) {
    let nodes = db.nodes(2).await;
    queued(&nodes[0], 60).await;
    const WORKERS: usize = 12;
    let all: Vec<i64> = at_once(&nodes, WORKERS, |node, w| async move {
        // Bounded: 60 messages take at most 60 non-empty claims,
        // unless some are handed out twice.
        let mut mine = Vec::new();
        for _ in 0..=60 {
            let got = claim(&node, &format!("w{w}"), 3, T0).await;
            if got.is_empty() {
                break;
            }
            for m in got {
                assert_eq!(m.attempts, 1, "message {} claimed before", m.id);
                mine.push(m.id);
            }
        }
        mine
    })
    .await
    .into_iter()
    .flatten()
    .collect();
    let unique: HashSet<i64> = all.iter().copied().collect();
    assert_eq!(unique.len(), all.len(), "a message was leased twice");
    assert_eq!(all.len(), 60, "every message is claimed once");
    let depth = nodes[0].outbox_depth().await.unwrap();
    assert_eq!((depth.queued, depth.in_flight), (0, 60));
}

async fn a_sent_message_loses_its_text_and_receipts_update_its_verification(db: TestDb) {
    let store = db.open().await;
    let c = queued(&store, 1).await;
    let msg = claim(&store, "w", 1, T0).await.remove(0);
    let info = sent_info("smpp-a", "gw-77");
    assert!(
        store
            .outbox_sent(msg.id, "w", &info, T0 + 10)
            .await
            .unwrap()
    );
    assert!(
        !store
            .outbox_sent(msg.id, "w", &info, T0 + 11)
            .await
            .unwrap(),
        "recorded twice"
    );
    let row = outbox_row(&store, 1).await;
    assert_eq!(row.text, None);
    assert_eq!(row.status, DeliveryStatus::Sent);
    assert_eq!(
        (row.channel.as_deref(), row.gateway_id.as_deref()),
        (Some("smpp-a"), Some("gw-77"))
    );
    let v = verification(&store, &c, vid(1)).await;
    assert_eq!(v.delivery, DeliveryStatus::Sent);
    assert_eq!(
        (v.channel.as_deref(), v.gateway_id.as_deref()),
        (Some("smpp-a"), Some("gw-77"))
    );
    // Sent messages are never claimed again.
    assert!(claim(&store, "w", 10, T0 + 100_000).await.is_empty());

    // A receipt finds its message by (channel, gateway id), both.
    let delivered = |channel, gw, detail, at| {
        store.outbox_receipt(channel, gw, DeliveryStatus::Delivered, detail, at)
    };
    assert!(
        delivered("smpp-b", "gw-77", "", T0)
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        delivered("smpp-a", "gw-78", "", T0)
            .await
            .unwrap()
            .is_none()
    );
    let found = delivered("smpp-a", "gw-77", "DELIVRD", T0 + 20).await;
    assert!(found.unwrap().is_some());
    let v = verification(&store, &c, vid(1)).await;
    assert_eq!(v.delivery, DeliveryStatus::Delivered);
    assert_eq!(v.delivery_detail.as_deref(), Some("DELIVRD"));
    assert_eq!(v.state, VerificationState::Pending);
    assert_eq!(
        outbox_row(&store, 1).await.status,
        DeliveryStatus::Delivered
    );
    // A late receipt saying "queued" keeps its detail, not its status.
    let late = store
        .outbox_receipt(
            "smpp-a",
            "gw-77",
            DeliveryStatus::Queued,
            "ENROUTE",
            T0 + 30,
        )
        .await;
    assert!(late.unwrap().is_some());
    let v = verification(&store, &c, vid(1)).await;
    assert_eq!(v.delivery, DeliveryStatus::Delivered);
    assert_eq!(v.delivery_detail.as_deref(), Some("ENROUTE"));
    assert_eq!(
        outbox_row(&store, 1).await.status,
        DeliveryStatus::Delivered
    );
}

async fn a_retry_releases_the_lease_until_the_next_attempt_is_due(db: TestDb) {
    let store = db.open().await;
    let c = queued(&store, 1).await;
    let msg = claim(&store, "w", 1, T0).await.remove(0);
    assert!(
        !store
            .outbox_retry(msg.id, "x", T0 + 2_000, "not my lease", T0 + 5)
            .await
            .unwrap(),
        "only the lease holder may retry"
    );
    assert!(
        store
            .outbox_retry(msg.id, "w", T0 + 2_000, "smpp-a: timeout", T0 + 5)
            .await
            .unwrap()
    );
    let depth = store.outbox_depth().await.unwrap();
    assert_eq!((depth.queued, depth.in_flight), (1, 0));
    assert!(claim(&store, "w", 1, T0 + 1_999).await.is_empty());
    let again = claim(&store, "w2", 1, T0 + 2_000).await.remove(0);
    assert_eq!(again.attempts, 2);
    assert_eq!(again.last_error.as_deref(), Some("smpp-a: timeout"));
    assert_eq!(again.text, msg.text);
    let v = verification(&store, &c, vid(1)).await;
    assert_eq!(v.delivery_detail.as_deref(), Some("smpp-a: timeout"));
    assert_eq!(v.delivery, DeliveryStatus::Queued);
}

async fn a_failed_message_fails_its_verification_and_refunds_it_once(db: TestDb) {
    let (store, c) = db.open_with_account(3, 1).await;
    let mut req = send(1, &c, &phone(1), T0);
    req.price = 2;
    created(&store, req).await;
    assert_eq!(balance(&store, &c).await, (2, 0));
    let msg = claim(&store, "w", 1, T0).await.remove(0);
    assert!(
        !store
            .outbox_failed(msg.id, "other", "nope", T0 + 1)
            .await
            .unwrap(),
        "only the lease holder may fail it"
    );
    let long_error = "x".repeat(10_000);
    assert!(
        store
            .outbox_failed(msg.id, "w", &long_error, T0 + 1)
            .await
            .unwrap()
    );
    assert!(
        !store
            .outbox_failed(msg.id, "w", "again", T0 + 2)
            .await
            .unwrap()
    );
    assert_eq!(
        balance(&store, &c).await,
        (3, 1),
        "refunded to where it came from"
    );
    let v = verification(&store, &c, vid(1)).await;
    assert_eq!(v.state, VerificationState::Failed);
    assert_eq!(v.delivery, DeliveryStatus::Failed);
    assert_eq!((v.cost, v.cost_test), (0, 0));
    let row = outbox_row(&store, 1).await;
    assert_eq!(row.status, DeliveryStatus::Failed);
    assert_eq!(row.text, None, "the code is erased");
    assert!(row.last_error.unwrap().len() <= 500, "errors are clipped");
    assert_eq!(store.outbox_depth().await.unwrap().failed, 1);
    // A failed verification is no longer pending: a resend creates one.
    created(&store, send(2, &c, &phone(1), T0 + 3)).await;
    // The completion of a failed verification does not apply.
    assert!(
        !store
            .verification_apply(&c, vid(1), 0, ValidationAction::Complete, T0 + 4)
            .await
            .unwrap()
    );
}

async fn an_undeliverable_receipt_refunds_a_pending_verification_once_but_not_a_completed_one(
    db: TestDb,
) {
    let store = db.open().await;
    let c = queued(&store, 2).await;
    store.account_add_credits(&c, 10).await.unwrap();
    let msgs = claim(&store, "w", 2, T0).await;
    for (m, gw) in msgs.iter().zip(["g1", "g2"]) {
        let info = sent_info("http", gw);
        assert!(store.outbox_sent(m.id, "w", &info, T0 + 1).await.unwrap());
    }
    assert_eq!(balance(&store, &c).await, (10, 0));
    // Verification 2 completed: its code evidently arrived.
    assert!(completes(&store, &c, vid(2), 0, T0 + 2).await);
    for _ in 0..2 {
        for gw in ["g1", "g2"] {
            assert!(
                store
                    .outbox_receipt("http", gw, DeliveryStatus::Undeliverable, "UNDELIV", T0 + 3)
                    .await
                    .unwrap()
                    .is_some()
            );
        }
    }
    assert_eq!(
        balance(&store, &c).await,
        (11, 0),
        "only the pending one, once"
    );
    let one = verification(&store, &c, vid(1)).await;
    assert_eq!(
        (one.state, one.delivery, one.cost),
        (VerificationState::Failed, DeliveryStatus::Undeliverable, 0)
    );
    assert_eq!(one.delivery_detail.as_deref(), Some("UNDELIV"));
    let two = verification(&store, &c, vid(2)).await;
    assert_eq!((two.state, two.cost), (VerificationState::Completed, 1));
    assert_eq!(two.delivery, DeliveryStatus::Undeliverable);
    // Undeliverable is a delivery outcome, not a message the outbox gave up on.
    assert_eq!(store.outbox_depth().await.unwrap().failed, 0);
}

async fn a_step_in_flight_when_its_verification_ends_is_left_to_its_worker(db: TestDb) {
    // The first step is at its gateway (claimed) when the code comes back:
    // the held step is cancelled, the one in flight is not, and its worker
    // records it sent, so its receipt has a row to land on.
    let store = db.open().await;
    let c = with_fallback(&store).await;
    let first = claim(&store, "w", 10, T0).await;
    assert!(completes(&store, &c, vid(1), 0, T0 + 1).await);
    let all = steps(&store).await;
    assert_eq!(
        (all[0].status, all[1].status),
        (DeliveryStatus::Queued, DeliveryStatus::Cancelled)
    );
    assert!(
        store
            .outbox_sent(first[0].id, "w", &sent_info("smsc", "m1"), T0 + 2)
            .await
            .unwrap()
    );
    let sent = &steps(&store).await[0];
    assert_eq!(sent.status, DeliveryStatus::Sent);
    assert!(sent.text.is_none());

    // Had it failed for now instead, there is no second attempt.
    store.account_add_credits(&c, 2).await.unwrap();
    created(&store, send(2, &c, &phone(2), T0)).await;
    let second = claim(&store, "w", 10, T0).await;
    assert!(completes(&store, &c, vid(2), 0, T0 + 1).await);
    assert!(
        store
            .outbox_retry(second[0].id, "w", T0 + 500, "smsc: throttled", T0 + 2)
            .await
            .unwrap()
    );
    let retried = outbox_row(&store, 2).await;
    assert_eq!(retried.status, DeliveryStatus::Cancelled);
    assert!(retried.text.is_none());
    assert!(claim(&store, "w", 10, T0 + 1_000).await.is_empty());

    // A lease that ran out is no flight: its holder is presumed dead, and
    // the message is cancelled with the verification.
    created(&store, send(3, &c, &phone(3), T0)).await;
    claim(&store, "w", 10, T0).await;
    assert!(completes(&store, &c, vid(3), 0, T0 + LEASE).await);
    assert_eq!(
        outbox_row(&store, 3).await.status,
        DeliveryStatus::Cancelled
    );
}
