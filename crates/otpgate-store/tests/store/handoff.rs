//! A send whose first message is stored already leased to the sending
//! node's worker (`verification_create_leased`): held by that worker alone
//! until the lease runs out, then claimable by any, as after a claim. And a
//! message the development inbox delivers, stored with its sent mark in one
//! write (`outbox_sent_to_inbox`).

use otpgate_core::CustomerId;
use otpgate_core::DeliveryStatus;
use otpgate_store::{CreateOutcome, InboxEntry, OutboxLease, OutboxMessage};

use crate::fixture::{Node, TestDb};
use crate::helpers::*;

both_backends!(
    a_leased_send_is_its_workers_until_the_lease_runs_out,
    a_refused_leased_send_leaves_nothing_behind,
    an_inbox_delivery_is_stored_with_its_sent_mark_and_only_by_the_lease_holder,
);

/// Send 1 from `c` to `phone(1)` at `T0`, its message stored leased to
/// worker `a` until `T0 + LEASE`.
async fn send_leased_to_a(store: &Node, c: &CustomerId) -> (CreateOutcome, Option<OutboxMessage>) {
    let lease = OutboxLease {
        worker: "a".into(),
        until: T0 + LEASE,
    };
    store
        .verification_create_leased(send(1, c, &phone(1), T0), lease)
        .await
        .unwrap()
}

async fn a_leased_send_is_its_workers_until_the_lease_runs_out(db: TestDb) {
    let (store, c) = db.open_with_account(5, 0).await;
    let (outcome, handed) = send_leased_to_a(&store, &c).await;
    assert!(matches!(outcome, CreateOutcome::Created(_)), "{outcome:?}");
    let handed = handed.expect("the leased message comes back");
    assert_eq!(handed.attempts, 1);
    // Nobody else claims it while the lease holds, not even the holder.
    assert!(claim(&store, "b", 10, T0 + LEASE - 1).await.is_empty());
    assert!(claim(&store, "a", 10, T0 + LEASE - 1).await.is_empty());
    // Once it runs out, another worker claims the very message the send
    // handed over (its second attempt).
    let again = claim(&store, "b", 10, T0 + LEASE).await;
    assert_eq!(again.len(), 1);
    let mut expected = handed.clone();
    expected.attempts = 2;
    assert_eq!(again[0], expected);
    // The first holder lost it; the new one records the result.
    let info = sent_info("sms", "g");
    assert!(
        !store
            .outbox_sent(handed.id, "a", &info, T0 + LEASE)
            .await
            .unwrap()
    );
    assert!(
        store
            .outbox_sent(handed.id, "b", &info, T0 + LEASE)
            .await
            .unwrap()
    );
}

async fn a_refused_leased_send_leaves_nothing_behind(db: TestDb) {
    let (store, c) = db.open_with_account(0, 0).await;
    let (outcome, handed) = send_leased_to_a(&store, &c).await;
    assert!(
        matches!(outcome, CreateOutcome::InsufficientBalance),
        "{outcome:?}"
    );
    assert!(handed.is_none());
    assert!(claim(&store, "b", 10, T0 + LEASE).await.is_empty());
    let depth = store.outbox_depth().await.unwrap();
    assert_eq!((depth.queued, depth.in_flight), (0, 0));
}

async fn an_inbox_delivery_is_stored_with_its_sent_mark_and_only_by_the_lease_holder(db: TestDb) {
    let (store, c) = db.open_with_account(5, 0).await;
    let v = created(&store, send(1, &c, &phone(1), T0)).await;
    let msg = claim(&store, "w", 10, T0).await.remove(0);
    let entry = InboxEntry {
        customer_id: Some(c.clone()),
        destination: phone(1).e164_digits(),
        text: "Your code is 0001".into(),
        verification_id: Some(v.id),
        created_at: T0 + 1,
    };
    let info = sent_info("dev", &format!("inbox-{}", msg.id));
    // A worker without the lease stores nothing, neither mark nor entry.
    assert!(
        !store
            .outbox_sent_to_inbox(msg.id, "other", &info, &entry, T0 + 1)
            .await
            .unwrap()
    );
    assert!(inbox_of_phone_1(&store).await.is_empty());
    assert_eq!(outbox_row(&store, 1).await.status, DeliveryStatus::Queued);
    // The holder stores both.
    assert!(
        store
            .outbox_sent_to_inbox(msg.id, "w", &info, &entry, T0 + 1)
            .await
            .unwrap()
    );
    assert_eq!(inbox_of_phone_1(&store).await, vec![entry.clone()]);
    let row = outbox_row(&store, 1).await;
    assert_eq!(row.status, DeliveryStatus::Sent);
    assert!(row.text.is_none(), "the code is erased from the outbox");
    // Recorded once: a second attempt (a lost lease) adds no second copy.
    assert!(
        !store
            .outbox_sent_to_inbox(msg.id, "w", &info, &entry, T0 + 2)
            .await
            .unwrap()
    );
    assert_eq!(inbox_of_phone_1(&store).await.len(), 1);
}

/// What the inbox holds for `phone(1)`.
async fn inbox_of_phone_1(store: &Node) -> Vec<InboxEntry> {
    let to = phone(1).e164_digits();
    store.inbox_list(None, Some(&to), 10).await.unwrap()
}
