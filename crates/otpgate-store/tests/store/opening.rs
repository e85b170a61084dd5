//! Opening a database: migration (by one opener or several at once),
//! reopening, refusing a schema from a newer build, and the server-wide secrets every opener must agree on.

use otpgate_store::StoreError;

use crate::fixture::TestDb;
use crate::helpers::*;

both_backends!(
    a_fresh_database_is_migrated_and_reopening_keeps_the_data,
    nodes_starting_together_migrate_once_and_all_come_up,
    a_database_migrated_by_a_newer_build_is_refused,
    every_opener_of_a_secret_gets_the_first_candidate_stored,
    a_database_from_before_events_migrates_and_keeps_its_verifications,
);

async fn a_database_from_before_events_migrates_and_keeps_its_verifications(db: TestDb) {
    db.make_as_before_events().await;
    let store = db.open().await;
    assert_eq!(store.schema_version().await, db.backend.schema_version());
    let c = cid(1);
    let v = store
        .verification_get(&c, vid(42))
        .await
        .unwrap()
        .expect("the old verification is still there");
    assert_eq!((v.cost, v.expires_at), (1, T0 + 60_000));
    assert_eq!(balance(&store, &c).await, (5, 0));
    // The old verification takes part in events once a webhook is set.
    store
        .webhook_set(&c, "https://example.test/hook", "whsec_c2VjcmV0", T0)
        .await
        .unwrap();
    assert!(completes(&store, &c, vid(42), 0, T0 + 1).await);
    let events = store.event_list(&c, 10).await.unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].kind, otpgate_store::EventKind::Completed);
}

async fn a_fresh_database_is_migrated_and_reopening_keeps_the_data(db: TestDb) {
    let store = db.open().await;
    store.ping().await.unwrap();
    assert_eq!(store.backend(), db.backend.name());
    assert_eq!(store.schema_version().await, db.backend.schema_version());
    let c = cid(1);
    account(&store, &c, 5, 0).await;
    let v = created(&store, send(42, &c, &phone(1), T0)).await;
    store.close().await;
    drop(store);

    let again = db.open().await;
    assert_eq!(again.schema_version().await, db.backend.schema_version());
    assert_eq!(again.verification_get(&c, v.id).await.unwrap(), Some(v));
    assert_eq!(balance(&again, &c).await, (4, 0));
}

async fn nodes_starting_together_migrate_once_and_all_come_up(db: TestDb) {
    const NODES: usize = 6;
    let db = std::sync::Arc::new(db);
    // All six wait at the barrier, then open at once: they race for real.
    let start = std::sync::Arc::new(tokio::sync::Barrier::new(NODES));
    let tasks: Vec<_> = (0..NODES)
        .map(|_| {
            let (db, start) = (db.clone(), start.clone());
            tokio::spawn(async move {
                start.wait().await;
                db.try_open().await
            })
        })
        .collect();
    let mut nodes = Vec::new();
    for t in tasks {
        let node = t.await.unwrap().expect("every node opens the database");
        assert_eq!(node.schema_version().await, db.backend.schema_version());
        nodes.push(node);
    }
    // Each migration is recorded once, every one of them is there, and (on
    // PostgreSQL, where the row says when) one opener applied them all.
    let version = db.backend.schema_version();
    assert_eq!(db.migration_history().await, (version, version, 1));
}

async fn a_database_migrated_by_a_newer_build_is_refused(db: TestDb) {
    let store = db.open().await;
    store.close().await;
    drop(store);
    let future = db.pretend_a_newer_build_migrated().await;
    match db.try_open().await {
        Err(StoreError::SchemaTooNew { found, known }) => {
            assert_eq!((found, known), (future, db.backend.schema_version()));
        }
        Err(other) => panic!("expected SchemaTooNew, got {other:?}"),
        Ok(_) => panic!("expected SchemaTooNew, got a store"),
    }
}

async fn every_opener_of_a_secret_gets_the_first_candidate_stored(db: TestDb) {
    let (a, b) = (db.open().await, db.open().await);
    // One after the other: the first candidate stays.
    let first = a.secret_get_or_init("signing", b"one").await.unwrap();
    let second = b.secret_get_or_init("signing", b"two").await.unwrap();
    assert_eq!(
        (first.as_slice(), second.as_slice()),
        (&b"one"[..], &b"one"[..])
    );

    // All at once, from two handles: all get the same one.
    let tasks: Vec<_> = (0u8..16)
        .map(|i| {
            let s = if i % 2 == 0 { a.clone() } else { b.clone() };
            tokio::spawn(async move { s.secret_get_or_init("token", &[i; 32]).await.unwrap() })
        })
        .collect();
    let values: Vec<Vec<u8>> = futures::future::try_join_all(tasks).await.unwrap();
    assert!(values.windows(2).all(|w| w[0] == w[1]), "{values:?}");
    assert_eq!(values[0].len(), 32);
    assert_eq!(
        a.secret_get_or_init("token", b"other").await.unwrap(),
        values[0]
    );
    assert_eq!(a.secret_get_or_init("code", b"c").await.unwrap(), b"c");
}
