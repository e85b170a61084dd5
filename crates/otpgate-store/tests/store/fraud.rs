//! The fraud defence as the store applies it (the rules are
//! `otpgate_core::fraud`; this is the SQL on each backend): the account cap
//! holds under concurrent sends from several nodes, the conversion guard
//! records one block for a prefix and refuses later sends, a lift lets the
//! next send through, the safe list bypasses the guard, test credits pay only
//! for verified own numbers, and a test number queues nothing.

use otpgate_core::PhoneNumber;
use otpgate_core::fraud::{self, BlockScope, FraudPolicy, RefusalKind};
use otpgate_store::{CreateOutcome, NewVerification, SendKind, ValidationAction};

use crate::fixture::TestDb;
use crate::helpers::*;

both_backends!(
    the_account_cap_holds_under_concurrent_sends_from_several_nodes,
    each_cap_refuses_when_it_is_on_and_weighs_nothing_when_it_is_off,
    the_destination_cap_holds_under_concurrent_sends_from_many_accounts,
    a_prefix_with_unconverted_sends_is_blocked_lifted_and_safe_listed,
    test_credits_pay_only_for_verified_own_numbers_and_test_numbers_queue_nothing,
);

fn policy() -> FraudPolicy {
    let mut p = FraudPolicy::off();
    p.guard = true;
    p.test_credits_verified_only = true;
    p.prefix = fraud::GuardPolicy {
        min_unconverted: 5,
        max_conversion_percent: 35,
        window_ms: fraud::HOUR_MS,
        block_ms: fraud::HOUR_MS,
        max_block_ms: fraud::DAY_MS,
    };
    p
}

/// A send under `policy()` to `+91 98765 4nnnn` (one prefix for all).
fn guarded(id: u64, customer: &otpgate_core::CustomerId, n: u32, now: i64) -> NewVerification {
    let to = PhoneNumber::parse("91", &format!("987654{n:04}")).expect("number");
    let mut req = send(id, customer, &to, now);
    req.fraud = policy();
    req
}

async fn the_account_cap_holds_under_concurrent_sends_from_several_nodes(db: TestDb) {
    let (nodes, c) = db.nodes_with_account(4, 1000, 0).await;
    let outcomes = at_once(&nodes, 40, |node, i| {
        let n = u32::try_from(i).unwrap() + 1;
        let mut req = send(u64::from(n), &c, &phone(n), T0);
        req.fraud.caps.account_hour_messages = 12;
        async move { node.verification_create(req).await.unwrap() }
    })
    .await;
    let (mut made, mut capped) = (0, 0);
    for outcome in outcomes {
        match outcome {
            CreateOutcome::Created(_) => made += 1,
            CreateOutcome::Blocked {
                kind: RefusalKind::AccountHourlyCap,
                retry_after_secs,
                new_block: None,
                ..
            } => {
                assert!((3599..=3600).contains(&retry_after_secs));
                capped += 1;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!((made, capped), (12, 28));
    assert_eq!(
        balance(&nodes[0], &c).await,
        (988, 0),
        "refusals cost nothing"
    );
    assert_eq!(nodes[0].outbox_depth().await.unwrap().queued, 12);
}

/// Each cap on its own: three sends (three accounts for the destination's
/// cap, which spans accounts) where the cap allows two. The third is refused
/// by that cap while it is on, and goes through when every cap is off: a
/// backend that reads a fact only when its cap weighs it must still read it
/// then.
async fn each_cap_refuses_when_it_is_on_and_weighs_nothing_when_it_is_off(db: TestDb) {
    type Cap = fn(&mut fraud::Caps);
    #[rustfmt::skip]
    let cases: [(&str, Cap, RefusalKind); 5] = [
        ("hour messages", |c| c.account_hour_messages = 2, RefusalKind::AccountHourlyCap),
        ("hour credits", |c| c.account_hour_credits = 2, RefusalKind::AccountHourlyCap),
        ("day messages", |c| c.account_day_messages = 2, RefusalKind::AccountDailyCap),
        ("day credits", |c| c.account_day_credits = 2, RefusalKind::AccountDailyCap),
        ("destination", |c| c.destination_day_messages = 2, RefusalKind::DestinationCap),
    ];
    let store = db.open().await;
    let mut next = 0u64;
    for (case, (what, set, kind)) in cases.iter().enumerate() {
        for on in [true, false] {
            let base = 1000 * (2 * case as u64 + u64::from(on));
            let mut outcomes = Vec::new();
            for i in 0..3u64 {
                next += 1;
                // The destination's cap counts one number's sends from any
                // account; the account caps, one account's sends to any.
                let (customer, to) = if *kind == RefusalKind::DestinationCap {
                    (cid(base + i + 1), phone(u32::try_from(base).unwrap()))
                } else {
                    (cid(base + 1), phone(u32::try_from(base + i).unwrap()))
                };
                if i == 0 || *kind == RefusalKind::DestinationCap {
                    account(&store, &customer, 100, 0).await;
                }
                let mut req = send(next, &customer, &to, T0 + i64::try_from(i).unwrap());
                if on {
                    set(&mut req.fraud.caps);
                }
                outcomes.push(store.verification_create(req).await.unwrap());
            }
            assert!(
                outcomes[..2]
                    .iter()
                    .all(|o| matches!(o, CreateOutcome::Created(_))),
                "{what} (on: {on}): {outcomes:?}"
            );
            match (&outcomes[2], on) {
                (CreateOutcome::Blocked { kind: k, .. }, true) if *k == *kind => {}
                (CreateOutcome::Created(_), false) => {}
                (other, _) => panic!("{what} (on: {on}): third send gave {other:?}"),
            }
        }
    }
}

/// The destination's cap spans accounts, so the sends that weigh it
/// serialise on more than their own account's lock: 40 accounts on four
/// nodes send to one number at once, and exactly the cap's three go.
async fn the_destination_cap_holds_under_concurrent_sends_from_many_accounts(db: TestDb) {
    let nodes = db.nodes(4).await;
    for i in 1..=40 {
        account(&nodes[0], &cid(i), 10, 0).await;
    }
    let outcomes = at_once(&nodes, 40, |node, i| {
        let n = u64::try_from(i).unwrap() + 1;
        let mut req = send(n, &cid(n), &phone(7), T0);
        req.fraud.caps.destination_day_messages = 3;
        async move { node.verification_create(req).await.unwrap() }
    })
    .await;
    let made = outcomes
        .iter()
        .filter(|o| matches!(o, CreateOutcome::Created(_)))
        .count();
    let capped = outcomes
        .iter()
        .filter(|o| {
            matches!(
                o,
                CreateOutcome::Blocked {
                    kind: RefusalKind::DestinationCap,
                    ..
                }
            )
        })
        .count();
    assert_eq!((made, capped), (3, 37), "(created, refused by the cap)");
}

async fn a_prefix_with_unconverted_sends_is_blocked_lifted_and_safe_listed(db: TestDb) {
    let (store, c) = db.open_with_account(1000, 0).await;
    for n in 0..5 {
        created(&store, guarded(u64::from(n) + 1, &c, n, T0 + i64::from(n))).await;
    }
    let now = T0 + 10;
    match store
        .verification_create(guarded(100, &c, 100, now))
        .await
        .unwrap()
    {
        CreateOutcome::Blocked {
            kind: RefusalKind::PrefixBlocked,
            retry_after_secs: 3600,
            new_block: Some(BlockScope::Prefix),
            reason,
        } => assert!(
            reason.contains("5 of 5 recent sends unconverted"),
            "{reason}"
        ),
        other => panic!("expected a new block, got {other:?}"),
    }
    let blocks = store.fraud_blocks_active(now, 10).await.unwrap();
    assert_eq!(blocks.len(), 1, "{blocks:?}");
    assert_eq!((blocks[0].key.as_str(), blocks[0].strikes), ("91987654", 1));
    match store
        .verification_create(guarded(101, &c, 101, now + 5))
        .await
        .unwrap()
    {
        CreateOutcome::Blocked {
            kind: RefusalKind::PrefixBlocked,
            new_block: None,
            ..
        } => {}
        other => panic!("expected the block to hold, got {other:?}"),
    }
    assert_eq!(balance(&store, &c).await, (995, 0));

    // A lift lets the next send through, and counting starts afresh.
    assert!(
        store
            .fraud_block_lift(BlockScope::Prefix, "91987654", now + 10)
            .await
            .unwrap()
    );
    assert!(
        store
            .fraud_blocks_active(now + 10, 10)
            .await
            .unwrap()
            .is_empty()
    );
    created(&store, guarded(102, &c, 102, now + 11)).await;

    // A completed send counts as converted.
    store
        .verification_apply(&c, vid(102), 0, ValidationAction::Complete, now + 12)
        .await
        .unwrap();

    // The safe list bypasses the guard, whatever the counts.
    store
        .safe_list_add("9198765", "test SIMs", now)
        .await
        .unwrap();
    for n in 0..10u32 {
        created(
            &store,
            guarded(200 + u64::from(n), &c, 200 + n, now + 20 + i64::from(n)),
        )
        .await;
    }
    assert_eq!(store.safe_list().await.unwrap()[0].note, "test SIMs");
    assert!(store.safe_list_remove("9198765").await.unwrap());
    // Safe-listed sends were not counted: only the lifted block's one
    // converted send is, so the prefix is not blocked.
    created(&store, guarded(300, &c, 300, now + 40)).await;
}

async fn test_credits_pay_only_for_verified_own_numbers_and_test_numbers_queue_nothing(db: TestDb) {
    let (store, c) = db.open_with_account(0, 10).await;
    let mine = PhoneNumber::parse("91", "9876512345").unwrap();
    let mut req = send(1, &c, &mine, T0);
    req.fraud = policy();
    assert!(matches!(
        store.verification_create(req.clone()).await.unwrap(),
        CreateOutcome::TestCreditsRestricted
    ));
    // The account proves the number is its own.
    req.kind = SendKind::OwnNumber { max_per_day: 3 };
    created(&store, req.clone()).await;
    assert!(
        !store.own_number_confirm(&c, vid(1), T0 + 1).await.unwrap(),
        "not yet completed"
    );
    store
        .verification_apply(&c, vid(1), 0, ValidationAction::Complete, T0 + 1)
        .await
        .unwrap();
    assert!(store.own_number_confirm(&c, vid(1), T0 + 2).await.unwrap());
    assert_eq!(
        store.own_numbers(&c).await.unwrap()[0].destination,
        "919876512345"
    );
    let mut again = send(2, &c, &mine, T0 + 3);
    again.fraud = policy();
    created(&store, again).await;
    assert_eq!(balance(&store, &c).await, (0, 8));

    // A test number: no outbox row, no charge.
    let mut t = send(3, &c, &phone(3), T0 + 4);
    t.fraud = policy();
    t.kind = SendKind::TestNumber;
    let v = created(&store, t).await;
    assert_eq!(v.cost, 0);
    assert!(
        store
            .outbox_for_verification(vid(3))
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(balance(&store, &c).await, (0, 8));
    assert!(store.own_number_remove(&c, "919876512345").await.unwrap());
    assert!(store.own_numbers(&c).await.unwrap().is_empty());
}
