//! Accounts: unique ids and e-mails, paging, credits, token epochs,
//! disabling and settings.

use std::time::Duration;

use otpgate_store::{Account, AccountSettings, InboxEntry, NewAccount, StoreError};

use crate::fixture::TestDb;
use crate::helpers::*;

both_backends!(
    accounts_round_trip_and_collide_on_id_and_on_email_in_any_case,
    accounts_list_newest_first_in_pages,
    credits_are_added_and_removed_but_never_below_zero,
    password_changes_and_revocations_bump_the_token_epoch,
    an_account_change_on_another_node_is_heard_and_a_send_is_not_one,
);

async fn accounts_round_trip_and_collide_on_id_and_on_email_in_any_case(db: TestDb) {
    let store = db.open().await;
    let new = NewAccount {
        customer_id: cid(0xA),
        password_hash: "hash".into(),
        email: Some("Ärger@Example.com".into()),
        country: Some("IN".into()),
        credits: 7,
        test_credits: 3,
        settings: Default::default(),
        created_at: T0,
    };
    let made = store.account_create(new.clone()).await.unwrap();
    assert_eq!(made.token_epoch, 0);
    assert!(!made.disabled);
    assert_eq!(
        store.account_get(&cid(0xA)).await.unwrap(),
        Some(made.clone())
    );
    for spelling in ["ärger@example.COM", "ÄRGER@EXAMPLE.COM"] {
        assert_eq!(
            store.account_by_email(spelling).await.unwrap(),
            Some(made.clone()),
            "{spelling}"
        );
    }
    assert_eq!(
        store.account_by_email("other@example.com").await.unwrap(),
        None
    );
    assert_eq!(store.account_get(&cid(0xB)).await.unwrap(), None);

    // Colliding on both keys. Which key the message names differs: SQLite
    // names the e-mail, PostgreSQL the id (each engine checks its unique
    // indexes in its own order), so only the conflict is asserted here.
    let both = store.account_create(new.clone()).await.unwrap_err();
    assert!(matches!(both, StoreError::Conflict(_)), "{both:?}");
    // Colliding on one key, the conflict names it, for the admin API.
    let same_id = NewAccount {
        email: Some("someone.else@example.com".into()),
        ..new.clone()
    };
    let same_email = NewAccount {
        customer_id: cid(0xB),
        email: Some("ÄRGER@example.com".into()),
        ..new.clone()
    };
    for (collides, named) in [(same_id, "customerId"), (same_email, "e-mail")] {
        let err = store.account_create(collides).await.unwrap_err();
        assert!(
            matches!(&err, StoreError::Conflict(m) if m.contains(named)),
            "{err:?}"
        );
    }
    assert_eq!(
        store
            .account_by_email("someone.else@example.com")
            .await
            .unwrap(),
        None
    );
    assert_eq!(store.account_get(&cid(0xB)).await.unwrap(), None);
    // Accounts without an e-mail do not collide with each other.
    for n in [0xC, 0xD] {
        let a = NewAccount {
            customer_id: cid(n),
            email: None,
            ..new.clone()
        };
        store.account_create(a).await.unwrap();
    }
}

async fn accounts_list_newest_first_in_pages(db: TestDb) {
    let store = db.open().await;
    for n in 1..=5u64 {
        store
            .account_create(NewAccount {
                customer_id: cid(n),
                password_hash: "h".into(),
                email: None,
                country: None,
                credits: 0,
                test_credits: 0,
                settings: Default::default(),
                created_at: T0 + i64::try_from(n).unwrap(),
            })
            .await
            .unwrap();
    }
    let page = |limit, offset| {
        let store = store.clone();
        async move {
            let accounts: Vec<Account> = store.account_list(limit, offset).await.unwrap();
            accounts
                .into_iter()
                .map(|a| a.customer_id)
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(page(2, 0).await, [cid(5), cid(4)]);
    assert_eq!(page(2, 2).await, [cid(3), cid(2)]);
    assert_eq!(page(2, 4).await, [cid(1)]);
    assert_eq!(page(10, 4).await, [cid(1)]);
}

async fn credits_are_added_and_removed_but_never_below_zero(db: TestDb) {
    let (store, c) = db.open_with_account(10, 2).await;
    assert_eq!(store.account_add_credits(&c, 5).await.unwrap().credits, 15);
    assert_eq!(store.account_add_credits(&c, -4).await.unwrap().credits, 11);
    let floored = store.account_add_credits(&c, -100).await.unwrap();
    assert_eq!((floored.credits, floored.test_credits), (0, 2));
    // A huge grant saturates instead of overflowing, twice over.
    for _ in 0..2 {
        let a = store.account_add_credits(&c, i64::MAX).await.unwrap();
        assert_eq!(a.credits, i64::MAX);
    }
    assert!(matches!(
        store.account_add_credits(&cid(2), 1).await,
        Err(StoreError::NotFound)
    ));
}

async fn password_changes_and_revocations_bump_the_token_epoch(db: TestDb) {
    let (store, c) = db.open_with_account(0, 0).await;
    let a = store.account_set_password(&c, "new-hash").await.unwrap();
    assert_eq!((a.password_hash.as_str(), a.token_epoch), ("new-hash", 1));
    assert_eq!(
        store.account_revoke_tokens(&c).await.unwrap().token_epoch,
        2
    );
    assert_eq!(store.account_get(&c).await.unwrap().unwrap().token_epoch, 2);
    assert!(store.account_set_disabled(&c, true).await.unwrap().disabled);
    assert!(store.account_get(&c).await.unwrap().unwrap().disabled);
    assert!(
        !store
            .account_set_disabled(&c, false)
            .await
            .unwrap()
            .disabled
    );

    // Settings are one JSON document: quotes and non-ASCII survive.
    let settings = AccountSettings {
        brand_name: Some("Acme \"quoted\" ✓".into()),
        default_timeout_secs: Some(120),
        default_otp_length: Some(6),
        allowed_country_codes: Some(vec![91, 44]),
        per_number_send_limit: Some(3),
    };
    assert_eq!(
        store
            .account_set_settings(&c, &settings)
            .await
            .unwrap()
            .settings,
        settings
    );
    let a = store.account_get(&c).await.unwrap().unwrap();
    assert_eq!(a.settings, settings);
    assert!(!a.disabled);

    let missing = cid(2);
    assert!(matches!(
        store.account_set_password(&missing, "h").await,
        Err(StoreError::NotFound)
    ));
    assert!(matches!(
        store.account_revoke_tokens(&missing).await,
        Err(StoreError::NotFound)
    ));
    assert!(matches!(
        store.account_set_disabled(&missing, true).await,
        Err(StoreError::NotFound)
    ));
    assert!(matches!(
        store.account_set_settings(&missing, &settings).await,
        Err(StoreError::NotFound)
    ));
}

/// `account_changes` (what the server's account cache trusts): a change
/// through a handle moves its own count at once, and another handle's (another
/// node, or on SQLite the CLI beside the server) once it hears: PostgreSQL by
/// notification, SQLite at its next write transaction. A send, which charges
/// the account, is not a change of what the cache serves.
async fn an_account_change_on_another_node_is_heard_and_a_send_is_not_one(db: TestDb) {
    let (here, id) = db.open_with_account(100, 0).await;
    let there = db.open().await;
    // PostgreSQL's listener starts on the first call; until it listens, each
    // call answers a new number.
    let settled = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let a = here.account_changes();
            tokio::time::sleep(Duration::from_millis(50)).await;
            if here.account_changes() == a {
                return a;
            }
        }
    })
    .await
    .expect("the count settles once the store listens");
    created(&here, send(1, &id, &phone(1), T0)).await;
    assert_eq!(here.account_changes(), settled, "a send moved the count");

    here.account_set_disabled(&id, true).await.unwrap();
    let mine = here.account_changes();
    assert!(mine > settled, "a change through this handle");

    there.account_revoke_tokens(&id).await.unwrap();
    let heard = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            // A write of this handle's own: where SQLite looks.
            let entry = InboxEntry {
                customer_id: None,
                destination: "919876543210".into(),
                text: "a write".into(),
                verification_id: None,
                created_at: T0,
            };
            here.inbox_put(&entry).await.unwrap();
            if here.account_changes() > mine {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(
        heard.is_ok(),
        "the other handle's change was not heard in 10 s"
    );
}
