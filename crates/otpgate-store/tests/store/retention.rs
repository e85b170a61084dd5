//! Verification ids (random, 31-bit by default, unique among stored ones:
//! the store takes the first free candidate) and retention (old
//! verifications, their messages and inbox rows deleted in batches, the
//! daily counts kept).

use std::collections::HashSet;
use std::sync::Arc;

use otpgate_core::{CodeHash, VerificationId};
use otpgate_store::{InboxEntry, Purged};

use crate::fixture::TestDb;
use crate::helpers::*;

both_backends!(
    a_taken_id_falls_through_to_the_next_candidate_and_is_charged_once,
    sends_get_distinct_ids_below_2_31_ten_thousand_on_sqlite,
    purging_deletes_old_verifications_messages_and_inbox_rows_but_keeps_daily_counts,
);

async fn a_taken_id_falls_through_to_the_next_candidate_and_is_charged_once(db: TestDb) {
    let (store, c) = db.open_with_account(10, 0).await;
    created(&store, send(42, &c, &phone(1), T0)).await;
    created(&store, send(43, &c, &phone(2), T0)).await;
    // 42 and 43 are taken: the third candidate is stored, with its own hash.
    let mut req = send(42, &c, &phone(3), T0);
    req.spare_ids = vec![(vid(43), CodeHash([1; 32])), (vid(44), CodeHash([2; 32]))];
    let v = created(&store, req).await;
    assert_eq!(v.id, vid(44));
    assert_eq!(v.code_hash, CodeHash([2; 32]));
    let stored = verification(&store, &c, vid(44)).await;
    assert_eq!(stored.code_hash, CodeHash([2; 32]));
    assert_eq!(stored.destination, phone(3));
    assert_eq!(outbox_row(&store, 44).await.verification_id, vid(44));
    // The other two are untouched, and the send cost one credit, not three.
    assert_eq!(
        verification(&store, &c, vid(42)).await.destination,
        phone(1)
    );
    assert_eq!(balance(&store, &c).await, (7, 0));
    // Every candidate taken: a conflict that charges nothing.
    let mut req = send(42, &c, &phone(4), T0);
    req.spare_ids = vec![(vid(43), CodeHash([1; 32]))];
    let err = store.verification_create(req).await.unwrap_err();
    assert!(
        matches!(err, otpgate_store::StoreError::Conflict(_)),
        "{err:?}"
    );
    assert_eq!(balance(&store, &c).await, (7, 0));
}

async fn sends_get_distinct_ids_below_2_31_ten_thousand_on_sqlite(db: TestDb) {
    // All 10,000 on SQLite, where a hundred concurrent sends share each
    // commit (group commit); on PostgreSQL, where each send is a round trip
    // of its own under its account's lock, a tenth of them, to keep the
    // suite fast. One account per task: a send locks its account, so tasks
    // of one account would only queue behind each other; ids are unique
    // across accounts all the same.
    let (sends, tasks): (u32, u32) = match db.backend {
        crate::fixture::Backend::Sqlite => (10_000, 100),
        crate::fixture::Backend::Postgres => (1_000, 8),
    };
    let store = Arc::new(db.open().await);
    for t in 0..tasks {
        account(&*store, &cid(u64::from(t) + 1), i64::from(sends / tasks), 0).await;
    }
    let started = std::time::Instant::now();
    let mut handles = Vec::new();
    for t in 0..tasks {
        let (store, c) = (store.clone(), cid(u64::from(t) + 1));
        handles.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            for i in (t..sends).step_by(tasks as usize) {
                // As the server draws them: random below 2^31, seven
                // spares each.
                let draw = || {
                    VerificationId::generate_bits(&mut rand::rng(), VerificationId::DEFAULT_BITS)
                };
                let mut req = send(1, &c, &phone(i), T0);
                req.id = draw();
                req.spare_ids = (0..7).map(|_| (draw(), CodeHash([7; 32]))).collect();
                ids.push(created(&*store, req).await.id.get());
            }
            ids
        }));
    }
    let mut all = HashSet::new();
    for h in handles {
        for id in h.await.unwrap() {
            assert!(id > 0 && id < 1 << 31, "{id} is not below 2^31");
            assert!(all.insert(id), "{id} issued twice");
        }
    }
    assert_eq!(all.len(), sends as usize);
    println!(
        "{sends} sends on {}: {} distinct ids below 2^31 in {:?}",
        store.backend(),
        all.len(),
        started.elapsed()
    );
    for t in 0..tasks {
        assert_eq!(balance(&*store, &cid(u64::from(t) + 1)).await, (0, 0));
    }
}

async fn purging_deletes_old_verifications_messages_and_inbox_rows_but_keeps_daily_counts(
    db: TestDb,
) {
    let (store, c) = db.open_with_account(100, 0).await;
    // A webhook, so each change queues an event retention must also delete.
    store
        .webhook_set(&c, "https://example.test/hook", "whsec_c2VjcmV0", T0)
        .await
        .unwrap();
    let day0 = T0 - T0.rem_euclid(DAY);
    // Day 0: three sends, two completed; day 1: one send. Each message
    // reached the inbox.
    for (n, at, complete) in [
        (1u32, day0 + 10, true),
        (2, day0 + 20, true),
        (3, day0 + 30, false),
        (4, day0 + DAY + 10, false),
    ] {
        let v = created(&store, send(u64::from(n), &c, &phone(n), at)).await;
        if complete {
            assert!(completes(&store, &c, v.id, 0, at + 5).await);
        }
        store
            .inbox_put(&InboxEntry {
                customer_id: Some(c.clone()),
                destination: v.destination.e164_digits(),
                text: format!("{n:04} is your code"),
                verification_id: Some(v.id),
                created_at: at + 1,
            })
            .await
            .unwrap();
    }
    let counts = |s: Vec<otpgate_store::DailyStats>| {
        s.iter().map(|d| (d.sends, d.completed)).collect::<Vec<_>>()
    };
    let before = store.daily_stats(&c, day0, day0 + 2 * DAY).await.unwrap();
    assert_eq!(counts(before), [(3, 2), (1, 0)]);

    // Everything before day 1, in batches of two.
    let cutoff = day0 + DAY;
    let first = store.purge_before(cutoff, 2).await.unwrap();
    assert_eq!((first.verifications, first.outbox, first.inbox), (2, 2, 2));
    let second = store.purge_before(cutoff, 2).await.unwrap();
    assert_eq!(
        (second.verifications, second.outbox, second.inbox),
        (1, 1, 1)
    );
    // Day 0's five events (three created, two completed): those of the
    // purged verifications, and any older than the cutoff.
    assert_eq!(first.events + second.events, 5);
    assert_eq!(
        store.purge_before(cutoff, 2).await.unwrap(),
        Purged::default()
    );
    let events = store.event_list(&c, 100).await.unwrap();
    assert_eq!(
        events.iter().map(|e| e.verification_id).collect::<Vec<_>>(),
        [vid(4)],
        "only the kept verification's event is left"
    );

    for n in 1..=3 {
        assert_eq!(store.verification_get(&c, vid(n)).await.unwrap(), None);
        assert_eq!(store.outbox_for_verification(vid(n)).await.unwrap(), None);
    }
    assert!(has_verification(&store, &c, vid(4)).await);
    assert!(
        store
            .outbox_for_verification(vid(4))
            .await
            .unwrap()
            .is_some()
    );
    let inbox = store.inbox_list(None, None, 100).await.unwrap();
    assert_eq!(inbox.len(), 1);
    assert_eq!(inbox[0].verification_id, Some(vid(4)));
    // The log no longer lists the deleted ones (nor their numbers)...
    let log = store
        .verification_list(&c, &Default::default(), 100, 0)
        .await
        .unwrap();
    assert_eq!(log.iter().map(|v| v.id.get()).collect::<Vec<_>>(), [4]);
    // ...while the counts of their day stay, and keep counting.
    let after = store.daily_stats(&c, day0, day0 + 2 * DAY).await.unwrap();
    assert_eq!(counts(after), [(3, 2), (1, 0)]);
    assert!(completes(&store, &c, vid(4), 0, day0 + DAY + 20).await);
    let last = store.daily_stats(&c, day0, day0 + 2 * DAY).await.unwrap();
    assert_eq!(counts(last), [(3, 2), (1, 1)]);
    // A freed id can be issued again.
    created(&store, send(1, &c, &phone(9), day0 + DAY + 30)).await;
}
