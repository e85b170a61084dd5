//! What the console reads: the verification log and its filters, sends and
//! completions per UTC day, outcomes per channel, and the development inbox.

use otpgate_core::{DeliveryStatus, VerificationState};
use otpgate_store::{InboxEntry, SentInfo, ValidationAction, Verification, VerificationFilter};

use crate::fixture::TestDb;
use crate::helpers::*;

both_backends!(
    the_log_filters_by_number_state_and_time_newest_first,
    daily_stats_cover_every_day_in_range_including_empty_ones,
    channel_stats_count_outcomes_per_channel,
    the_inbox_lists_newest_first_filtered_by_account_and_number,
);

async fn the_log_filters_by_number_state_and_time_newest_first(db: TestDb) {
    let (store, c) = db.open_with_account(100, 0).await;
    account(&store, &cid(2), 100, 0).await;
    for n in 1..=6u32 {
        let at = T0 + i64::from(n) * 1_000;
        let v = created(&store, send(u64::from(n), &c, &phone(n), at)).await;
        if n % 2 == 0 {
            store
                .verification_apply(&c, v.id, 0, ValidationAction::Complete, at)
                .await
                .unwrap();
        }
    }
    created(&store, send(99, &cid(2), &phone(1), T0)).await;
    let list = |filter: VerificationFilter, limit, offset| {
        let (store, c) = (store.clone(), c.clone());
        async move {
            let vs: Vec<Verification> = store
                .verification_list(&c, &filter, limit, offset)
                .await
                .unwrap();
            vs.iter().map(|v| v.id.get()).collect::<Vec<_>>()
        }
    };
    let all = VerificationFilter::default();
    assert_eq!(list(all.clone(), 10, 0).await, [6, 5, 4, 3, 2, 1]);
    assert_eq!(list(all, 2, 1).await, [5, 4]);
    let completed = VerificationFilter {
        state: Some(VerificationState::Completed),
        ..Default::default()
    };
    assert_eq!(list(completed, 10, 0).await, [6, 4, 2]);
    // `since` is inclusive, `until` exclusive.
    let window = VerificationFilter {
        since: Some(T0 + 2_000),
        until: Some(T0 + 5_000),
        ..Default::default()
    };
    assert_eq!(list(window, 10, 0).await, [4, 3, 2]);
    let number = VerificationFilter {
        number: Some("00003".into()),
        ..Default::default()
    };
    assert_eq!(list(number, 10, 0).await, [3]);
    // A pattern character is matched as itself, not as a wildcard.
    let pattern = VerificationFilter {
        number: Some("%".into()),
        ..Default::default()
    };
    assert!(list(pattern, 10, 0).await.is_empty());
}

async fn daily_stats_cover_every_day_in_range_including_empty_ones(db: TestDb) {
    let (store, c) = db.open_with_account(100, 0).await;
    let day0 = T0 - T0.rem_euclid(DAY);
    // Day 0: three sends, one completed; day 1: none; day 2: one, completed
    // the day after (counted on its send's day).
    let sends = [
        (1u32, day0 + 10, true),
        (2, day0 + 20, false),
        (3, day0 + DAY - 1, false),
        (4, day0 + 2 * DAY + 5, true),
    ];
    for (n, at, complete) in sends {
        let v = created(&store, send(u64::from(n), &c, &phone(n), at)).await;
        if complete {
            store
                .verification_apply(&c, v.id, 0, ValidationAction::Complete, at + DAY)
                .await
                .unwrap();
        }
    }
    let stats = store
        .daily_stats(&c, day0 + 5, day0 + 3 * DAY)
        .await
        .unwrap();
    let rows: Vec<_> = stats
        .iter()
        .map(|d| (d.day_start, d.sends, d.completed))
        .collect();
    assert_eq!(
        rows,
        [(day0, 3, 1), (day0 + DAY, 0, 0), (day0 + 2 * DAY, 1, 1)]
    );
    // Counts are kept per whole day: `since` inside day 0 still gives all
    // of day 0.
    let later = store.daily_stats(&c, day0 + 15, day0 + DAY).await.unwrap();
    assert_eq!((later.len(), later[0].sends), (1, 3));
    assert!(store.daily_stats(&c, day0, day0).await.unwrap().is_empty());
    assert_eq!(
        store.daily_stats(&cid(2), day0, day0 + DAY).await.unwrap()[0].sends,
        0
    );
    // An absurd range is cut to its latest ten years instead of exhausting memory.
    let huge = store
        .daily_stats(&c, i64::MIN / 2, day0 + 3 * DAY)
        .await
        .unwrap();
    assert_eq!(huge.len(), 3660);
    assert_eq!(huge.last().unwrap().day_start, day0 + 2 * DAY);
    let whole = store.daily_stats(&c, i64::MIN, i64::MAX).await.unwrap();
    assert_eq!(whole.len(), 3660);
    // The ends of the timeline neither panic nor overflow.
    let first = store.daily_stats(&c, i64::MIN, i64::MIN + 1).await.unwrap();
    assert_eq!((first.len(), first[0].sends), (1, 0));
    let last = store.daily_stats(&c, i64::MAX - 1, i64::MAX).await.unwrap();
    assert_eq!((last.len(), last[0].sends), (1, 0));
}

async fn channel_stats_count_outcomes_per_channel(db: TestDb) {
    let store = db.open().await;
    let c = queued(&store, 5).await;
    let msgs = claim(&store, "w", 5, T0).await;
    assert_eq!(msgs.len(), 5);
    let sent = |channel: &str, gw: Option<&str>| SentInfo {
        channel: channel.into(),
        gateway_id: gw.map(Into::into),
    };
    let outcomes = [
        store
            .outbox_sent(msgs[0].id, "w", &sent("smpp", Some("a")), T0)
            .await,
        store
            .outbox_sent(msgs[1].id, "w", &sent("smpp", Some("b")), T0)
            .await,
        store
            .outbox_receipt("smpp", "b", DeliveryStatus::Rejected, "REJECTD", T0)
            .await
            .map(|m| m.is_some()),
        store.outbox_failed(msgs[2].id, "w", "permanent", T0).await,
        // A channel without gateway ids (the inbox).
        store
            .outbox_sent(msgs[4].id, "w", &sent("inbox", None), T0)
            .await,
    ];
    for (i, outcome) in outcomes.into_iter().enumerate() {
        assert!(outcome.unwrap(), "step {i} applied");
    }
    // msgs[3] is still in flight: attempted, neither outcome yet; it and
    // the failed one never reached a channel.
    let stats = store.channel_stats(&c, T0, T0 + 1).await.unwrap();
    let rows: Vec<_> = stats
        .iter()
        .map(|s| (s.channel.as_str(), s.attempted, s.succeeded, s.failed))
        .collect();
    assert_eq!(rows, [("", 2, 0, 1), ("inbox", 1, 1, 0), ("smpp", 2, 1, 1)]);
    assert!(
        store
            .channel_stats(&c, T0 + 1, T0 + 2)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        store
            .channel_stats(&cid(2), T0, T0 + 1)
            .await
            .unwrap()
            .is_empty()
    );
}

async fn the_inbox_lists_newest_first_filtered_by_account_and_number(db: TestDb) {
    let store = db.open().await;
    let entry = |c: Option<u64>, to: &str, at: i64| InboxEntry {
        customer_id: c.map(cid),
        destination: to.into(),
        text: format!("code at {at}"),
        verification_id: Some(vid(u64::try_from(at - T0 + 1).unwrap())),
        created_at: at,
    };
    let all = [
        entry(Some(1), "919876500001", T0),
        entry(Some(1), "919876500002", T0 + 1),
        entry(Some(2), "919876500001", T0 + 2),
        entry(None, "919876500001", T0 + 3),
    ];
    for e in &all {
        store.inbox_put(e).await.unwrap();
    }
    // The entries at these indexes of `all`, in this order.
    let pick = |ix: &[usize]| ix.iter().map(|&i| all[i].clone()).collect::<Vec<_>>();
    let list = |customer: Option<u64>, to: Option<&'static str>, limit| {
        let store = store.clone();
        async move {
            let customer = customer.map(cid);
            store
                .inbox_list(customer.as_ref(), to, limit)
                .await
                .unwrap()
        }
    };
    assert_eq!(list(None, None, 10).await, pick(&[3, 2, 1, 0]));
    assert_eq!(list(None, None, 1).await, pick(&[3]));
    assert_eq!(list(Some(1), None, 10).await, pick(&[1, 0]));
    let to = Some("919876500001");
    assert_eq!(list(Some(1), to, 10).await, pick(&[0]));
    assert_eq!(list(None, to, 10).await, pick(&[3, 2, 0]));
    assert_eq!(list(None, to, 2).await, pick(&[3, 2]));
}
