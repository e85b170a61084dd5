//! The send transaction (contract §2 and §5): charging test credits first,
//! queueing the message, 506 while one is pending, the rate limits, 402,
//! id collisions, and balances under concurrent sends from several nodes.

use otpgate_core::{DeliveryStatus, VerificationState};
use otpgate_store::{CreateOutcome, SendLimits, StoreError, ValidationAction};

use crate::fixture::TestDb;
use crate::helpers::*;

both_backends!(
    a_send_charges_test_credits_first_and_queues_its_message,
    a_send_without_enough_credits_stores_and_charges_nothing,
    unknown_and_disabled_accounts_cannot_send,
    a_send_while_one_is_pending_returns_it_and_a_resend_after_it_ends_creates_one,
    the_per_number_limit_refuses_until_the_oldest_send_leaves_the_window,
    the_per_account_rate_limit_counts_sends_in_the_last_second,
    wrong_codes_count_across_verifications_and_a_spent_budget_refuses_sends,
    a_verification_id_taken_is_a_conflict_that_charges_nothing,
    another_accounts_verification_is_indistinguishable_from_none,
    concurrent_sends_from_several_nodes_never_overdraw_the_balance,
    concurrent_sends_across_midnight_count_on_their_own_days,
);

async fn a_send_charges_test_credits_first_and_queues_its_message(db: TestDb) {
    let (store, c) = db.open_with_account(5, 1).await;
    let mut req = send(42, &c, &phone(1), T0);
    req.price = 3;
    let v = created(&store, req).await;
    assert_eq!((v.cost, v.cost_test), (3, 1));
    assert_eq!(v.state, VerificationState::Pending);
    assert_eq!(v.delivery, DeliveryStatus::Queued);
    assert_eq!(balance(&store, &c).await, (3, 0));
    assert_eq!(store.verification_get(&c, vid(42)).await.unwrap(), Some(v));

    let msg = store
        .outbox_for_verification(vid(42))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(msg.text.as_deref(), Some("Your code is 0042"));
    assert_eq!(msg.status, DeliveryStatus::Queued);
    assert_eq!((msg.attempts, msg.next_attempt_at), (0, T0));
    assert_eq!(msg.destination, phone(1));
    assert_eq!(msg.customer_id, c);
    assert_eq!(msg.expires_at, T0 + 60_000);
}

async fn a_send_without_enough_credits_stores_and_charges_nothing(db: TestDb) {
    let (store, c) = db.open_with_account(1, 1).await;
    let mut req = send(42, &c, &phone(1), T0);
    req.price = 3;
    assert!(matches!(
        store.verification_create(req).await.unwrap(),
        CreateOutcome::InsufficientBalance
    ));
    assert_eq!(balance(&store, &c).await, (1, 1));
    assert_eq!(store.verification_get(&c, vid(42)).await.unwrap(), None);
    assert_eq!(store.outbox_for_verification(vid(42)).await.unwrap(), None);
    // Exactly the balance is enough.
    let mut req = send(43, &c, &phone(1), T0);
    req.price = 2;
    created(&store, req).await;
    assert_eq!(balance(&store, &c).await, (0, 0));
}

async fn unknown_and_disabled_accounts_cannot_send(db: TestDb) {
    let store = db.open().await;
    assert!(matches!(
        store
            .verification_create(send(1, &cid(1), &phone(1), T0))
            .await
            .unwrap(),
        CreateOutcome::AccountUnavailable
    ));
    account(&store, &cid(2), 5, 0).await;
    store.account_set_disabled(&cid(2), true).await.unwrap();
    assert!(matches!(
        store
            .verification_create(send(2, &cid(2), &phone(1), T0))
            .await
            .unwrap(),
        CreateOutcome::AccountUnavailable
    ));
    assert_eq!(balance(&store, &cid(2)).await, (5, 0));
}

async fn a_send_while_one_is_pending_returns_it_and_a_resend_after_it_ends_creates_one(db: TestDb) {
    let (store, c) = db.open_with_account(100, 0).await;
    let to = phone(1);
    let first = created(&store, send(1, &c, &to, T0)).await;
    match store
        .verification_create(send(2, &c, &to, T0 + 19_000))
        .await
        .unwrap()
    {
        CreateOutcome::AlreadyPending(v) => assert_eq!(v, first),
        other => panic!("expected 506, got {other:?}"),
    }
    assert_eq!(balance(&store, &c).await, (99, 0));
    assert_eq!(store.verification_get(&c, vid(2)).await.unwrap(), None);
    // Another destination, or another account's, is not blocked.
    created(&store, send(3, &c, &phone(2), T0 + 19_000)).await;
    account(&store, &cid(2), 1, 0).await;
    created(&store, send(4, &cid(2), &to, T0 + 19_000)).await;

    // Expired: a resend creates a new one.
    let second = created(&store, send(5, &c, &to, T0 + 60_000)).await;
    // Completed: likewise.
    assert!(completes(&store, &c, second.id, 0, T0 + 61_000).await);
    let third = created(&store, send(6, &c, &to, T0 + 62_000)).await;
    // Dead (all attempts wrong): likewise.
    for n in 0..5 {
        assert!(
            store
                .verification_apply(&c, third.id, n, ValidationAction::Wrong, T0 + 63_000)
                .await
                .unwrap()
        );
    }
    created(&store, send(7, &c, &to, T0 + 64_000)).await;
}

async fn the_per_number_limit_refuses_until_the_oldest_send_leaves_the_window(db: TestDb) {
    let (store, c) = db.open_with_account(100, 0).await;
    let to = phone(1);
    let limits = SendLimits {
        per_number_max: 3,
        per_number_window_ms: 60_000,
        ..roomy_limits()
    };
    // Each ends before the next, so none answers 506: the first and third
    // completed, the second expired (which counts against the limit all
    // the same).
    for (n, at, completed) in [(1, T0, true), (2, T0 + 1_000, false), (3, T0 + 2_000, true)] {
        let mut req = send(n, &c, &to, at);
        req.limits = limits;
        req.expires_at = at + 1_000;
        let v = created(&store, req).await;
        if completed {
            assert!(completes(&store, &c, v.id, 0, at).await);
        }
    }
    let mut req = send(4, &c, &to, T0 + 2_500);
    req.limits = limits;
    assert_eq!(rate_limited(&store, req.clone()).await, 58);
    assert_eq!(balance(&store, &c).await, (97, 0));
    // Another number is unaffected.
    let mut other = send(5, &c, &phone(2), T0 + 2_500);
    other.limits = limits;
    created(&store, other).await;
    // The first send leaves the window at T0 + 60s.
    req.created_at = T0 + 59_999;
    req.expires_at = req.created_at + 60_000;
    assert_eq!(rate_limited(&store, req.clone()).await, 1);
    req.created_at = T0 + 60_000;
    req.expires_at = req.created_at + 60_000;
    created(&store, req).await;
}

async fn the_per_account_rate_limit_counts_sends_in_the_last_second(db: TestDb) {
    let (store, c) = db.open_with_account(100, 0).await;
    let limits = SendLimits {
        per_account_per_second: Some(2),
        ..roomy_limits()
    };
    let mut n = 0;
    let mut try_send = |at: i64| {
        n += 1;
        let mut req = send(n, &c, &phone(u32::try_from(n).unwrap()), at);
        req.limits = limits;
        req
    };
    created(&store, try_send(T0)).await;
    created(&store, try_send(T0 + 500)).await;
    assert_eq!(rate_limited(&store, try_send(T0 + 999)).await, 1);
    created(&store, try_send(T0 + 1_000)).await;
    assert_eq!(balance(&store, &c).await, (97, 0));
}

async fn wrong_codes_count_across_verifications_and_a_spent_budget_refuses_sends(db: TestDb) {
    let (store, c) = db.open_with_account(100, 0).await;
    let to = phone(1);
    let limits = SendLimits {
        wrong_code_max: 4,
        wrong_code_window_ms: 600_000,
        ..roomy_limits()
    };
    // Two wrong codes on each of two verifications, a minute apart; the
    // first then completed, the second left to expire (its wrong codes
    // count all the same).
    for (n, at, complete) in [(1u64, T0, true), (2, T0 + 60_000, false)] {
        let mut req = send(n, &c, &to, at);
        req.limits = limits;
        let v = created(&store, req).await;
        for w in 0..2 {
            assert!(
                store
                    .verification_apply(&c, v.id, w, ValidationAction::Wrong, at + 1)
                    .await
                    .unwrap()
            );
        }
        if complete {
            assert!(completes(&store, &c, v.id, 2, at + 2).await);
        }
    }
    // A validation's read counts them, over the account's verifications
    // to the destination since the window's start.
    let (v, wrong) = store
        .verification_to_validate(&c, vid(2), T0)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((v.id.get(), wrong), (2, 4));
    let read = |id: u64, since: i64| {
        let (store, c) = (&store, &c);
        async move {
            store
                .verification_to_validate(c, vid(id), since)
                .await
                .unwrap()
                .map(|(_, wrong)| wrong)
        }
    };
    assert_eq!(read(2, T0 + 1).await, Some(2));

    // Two minutes on, the second has expired (so 506 does not answer).
    let mut req = send(3, &c, &to, T0 + 120_000);
    req.limits = limits;
    // Under budget again once the first verification's two leave the
    // window, at T0 + 600 s.
    assert_eq!(rate_limited(&store, req.clone()).await, 480);
    assert_eq!(balance(&store, &c).await, (98, 0));
    req.created_at = T0 + 600_000;
    req.expires_at = req.created_at + 60_000;
    created(&store, req).await;

    // Another destination's are its own.
    let other = created(&store, send(10, &c, &phone(2), T0 + 600_000)).await;
    assert_eq!(read(other.id.get(), T0).await, Some(0));
    // Another account's id reads as none.
    assert!(
        store
            .verification_to_validate(&cid(2), vid(2), T0)
            .await
            .unwrap()
            .is_none()
    );
}

async fn a_verification_id_taken_is_a_conflict_that_charges_nothing(db: TestDb) {
    let (store, c) = db.open_with_account(5, 0).await;
    created(&store, send(42, &c, &phone(1), T0)).await;
    let err = store
        .verification_create(send(42, &c, &phone(2), T0))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)), "{err:?}");
    assert_eq!(balance(&store, &c).await, (4, 0));
    // The store is usable after the rolled-back transaction.
    created(&store, send(43, &c, &phone(2), T0)).await;
}

async fn another_accounts_verification_is_indistinguishable_from_none(db: TestDb) {
    let store = db.open().await;
    account(&store, &cid(1), 5, 0).await;
    account(&store, &cid(2), 5, 0).await;
    created(&store, send(42, &cid(1), &phone(1), T0)).await;
    assert_eq!(
        store.verification_get(&cid(2), vid(42)).await.unwrap(),
        None
    );
    assert_eq!(
        store.verification_get(&cid(1), vid(43)).await.unwrap(),
        None
    );
    assert!(
        !store
            .verification_apply(&cid(2), vid(42), 0, ValidationAction::Complete, T0)
            .await
            .unwrap()
    );
    assert_eq!(
        verification(&store, &cid(1), vid(42)).await.state,
        VerificationState::Pending
    );
}

async fn concurrent_sends_from_several_nodes_never_overdraw_the_balance(db: TestDb) {
    // 10 credits, 3 of them test credits; 40 sends to distinct numbers.
    let (nodes, c) = db.nodes_with_account(5, 7, 3).await;
    let outcomes = at_once(&nodes, 40, |node, i| {
        let n = u32::try_from(i).unwrap() + 1;
        let req = send(u64::from(n), &c, &phone(n), T0);
        async move { node.verification_create(req).await.unwrap() }
    })
    .await;
    let (mut made, mut broke, mut test_paid) = (0, 0, 0);
    for outcome in outcomes {
        match outcome {
            CreateOutcome::Created(v) => {
                made += 1;
                test_paid += v.cost_test;
            }
            CreateOutcome::InsufficientBalance => broke += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!((made, broke, test_paid), (10, 30, 3));
    assert_eq!(balance(&nodes[0], &c).await, (0, 0));
    assert_eq!(nodes[0].outbox_depth().await.unwrap().queued, 10);
}

async fn concurrent_sends_across_midnight_count_on_their_own_days(db: TestDb) {
    // 30 credits, 40 sends at once, half a millisecond either side of a
    // midnight: on PostgreSQL one node's sends of an account run in shared
    // transactions, which count their sends at their end, by day.
    let (nodes, c) = db.nodes_with_account(2, 30, 0).await;
    let midnight = DAY0 + DAY;
    let outcomes = at_once(&nodes, 40, |node, i| {
        let n = u32::try_from(i).unwrap() + 1;
        let at = if i % 2 == 0 { midnight - 1 } else { midnight };
        let req = send(u64::from(n), &c, &phone(n), at);
        async move { (at, node.verification_create(req).await.unwrap()) }
    })
    .await;
    let (mut before, mut after) = (0, 0);
    for (at, outcome) in outcomes {
        match outcome {
            CreateOutcome::Created(_) if at < midnight => before += 1,
            CreateOutcome::Created(_) => after += 1,
            CreateOutcome::InsufficientBalance => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(before + after, 30);
    let stats = nodes[0]
        .daily_stats(&c, midnight - DAY, midnight + DAY)
        .await
        .unwrap();
    let rows: Vec<_> = stats.iter().map(|d| (d.day_start, d.sends)).collect();
    assert_eq!(rows, [(midnight - DAY, before), (midnight, after)]);
}
