//! The outbox: leases that one worker holds until they expire, claims from
//! several nodes that never share a message, and what sent, retried and
//! failed messages and delivery receipts do to their verifications.

use std::collections::HashSet;
use std::sync::Arc;

use otpgate_core::{DeliveryStatus, VerificationState};
use otpgate_store::{OutboxMessage, SentInfo, ValidationAction};
use tokio::sync::Barrier;

use crate::fixture::TestDb;
use crate::helpers::*;

both_backends!(
    a_claim_leases_due_messages_to_one_worker_until_the_lease_expires,
    concurrent_claims_from_several_nodes_never_share_a_message,
    a_sent_message_loses_its_text_and_receipts_update_its_verification,
    a_retry_releases_the_lease_until_the_next_attempt_is_due,
    a_failed_message_fails_its_verification_and_refunds_it_once,
    an_undeliverable_receipt_refunds_a_pending_verification_once_but_not_a_completed_one,
);

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
    let info = SentInfo {
        channel: "inbox".into(),
        gateway_id: Some("g1".into()),
    };
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
    let barrier = Arc::new(Barrier::new(WORKERS));
    let tasks: Vec<_> = (0..WORKERS)
        .map(|w| {
            let (node, barrier) = (nodes[w % nodes.len()].clone(), barrier.clone());
            tokio::spawn(async move {
                barrier.wait().await;
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
        })
        .collect();
    let all: Vec<i64> = futures::future::try_join_all(tasks)
        .await
        .unwrap()
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
    let info = SentInfo {
        channel: "smpp-a".into(),
        gateway_id: Some("gw-77".into()),
    };
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
    let v = store.verification_get(&c, vid(1)).await.unwrap().unwrap();
    assert_eq!(v.delivery, DeliveryStatus::Sent);
    assert_eq!(
        (v.channel.as_deref(), v.gateway_id.as_deref()),
        (Some("smpp-a"), Some("gw-77"))
    );
    // Sent messages are never claimed again.
    assert!(claim(&store, "w", 10, T0 + 100_000).await.is_empty());

    // A receipt finds its message by (channel, gateway id), both.
    assert!(
        store
            .outbox_receipt("smpp-b", "gw-77", DeliveryStatus::Delivered, "", T0)
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        store
            .outbox_receipt("smpp-a", "gw-78", DeliveryStatus::Delivered, "", T0)
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        store
            .outbox_receipt(
                "smpp-a",
                "gw-77",
                DeliveryStatus::Delivered,
                "DELIVRD",
                T0 + 20
            )
            .await
            .unwrap()
            .is_some()
    );
    let v = store.verification_get(&c, vid(1)).await.unwrap().unwrap();
    assert_eq!(v.delivery, DeliveryStatus::Delivered);
    assert_eq!(v.delivery_detail.as_deref(), Some("DELIVRD"));
    assert_eq!(v.state, VerificationState::Pending);
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
    let v = store.verification_get(&c, vid(1)).await.unwrap().unwrap();
    assert_eq!(v.delivery_detail.as_deref(), Some("smpp-a: timeout"));
    assert_eq!(v.delivery, DeliveryStatus::Queued);
}

async fn a_failed_message_fails_its_verification_and_refunds_it_once(db: TestDb) {
    let store = db.open().await;
    let c = cid(1);
    account(&store, &c, 3, 1).await;
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
    let v = store.verification_get(&c, vid(1)).await.unwrap().unwrap();
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
        let info = SentInfo {
            channel: "http".into(),
            gateway_id: Some(gw.into()),
        };
        assert!(store.outbox_sent(m.id, "w", &info, T0 + 1).await.unwrap());
    }
    assert_eq!(balance(&store, &c).await, (10, 0));
    // Verification 2 completed: its code evidently arrived.
    assert!(
        store
            .verification_apply(&c, vid(2), 0, ValidationAction::Complete, T0 + 2)
            .await
            .unwrap()
    );
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
    let one = store.verification_get(&c, vid(1)).await.unwrap().unwrap();
    assert_eq!(
        (one.state, one.delivery, one.cost),
        (VerificationState::Failed, DeliveryStatus::Undeliverable, 0)
    );
    assert_eq!(one.delivery_detail.as_deref(), Some("UNDELIV"));
    let two = store.verification_get(&c, vid(2)).await.unwrap().unwrap();
    assert_eq!((two.state, two.cost), (VerificationState::Completed, 1));
    assert_eq!(two.delivery, DeliveryStatus::Undeliverable);
    // Undeliverable is a delivery outcome, not a message the outbox gave up on.
    assert_eq!(store.outbox_depth().await.unwrap().failed, 0);
}
