//! Retention: with `retention.days = 1` and the clock moved past it, the
//! sweep deletes old verifications (their numbers with them) and their
//! messages, while the dashboard still counts their day.

use std::time::Duration;

use reqwest::StatusCode;

use crate::helpers::*;

const DAY_MS: i64 = 86_400_000;

#[tokio::test]
async fn old_verifications_and_their_numbers_go_while_the_dashboards_counts_stay() {
    let mut settings = test_settings();
    settings.retention.days = 1;
    settings.retention.sweep_interval_secs = 1;
    // Noon UTC, so the sends below stay on one day.
    let now = otpgate_core::Clock::now_ms(&otpgate_core::SystemClock);
    let start = now - now.rem_euclid(DAY_MS) - 3 * DAY_MS + DAY_MS / 2;
    let app = spawn_at(settings, start).await;
    let (mut v, customer) = app.signed_up("keep@otpgate.test").await;
    let t = app.token(&customer, PASSWORD).await;
    let numbers = ["9876501111", "9876502222", "9876503333"];
    let mut ids = Vec::new();
    for n in numbers {
        ids.push(app.send_ok(&t, "91", n).await);
    }
    let code = code_in(&app.inbox_message(&ids[0]).await.text);
    assert_eq!(app.validate(&t, &ids[0], &code).await.code(), 200);
    for id in &ids {
        app.delivered(id).await;
    }
    let page = v.get("/console/dashboard").await;
    assert_eq!(page.text_of("today-sends").as_deref(), Some("3"));

    // Two days later the sweep (every second) deletes them.
    app.clock.advance_ms(2 * DAY_MS);
    let cid = otpgate_core::CustomerId::parse(&customer).unwrap();
    let mut gone = false;
    for _ in 0..100 {
        let left = app
            .store
            .verification_list(&cid, &Default::default(), 100, 0)
            .await
            .unwrap();
        let inbox = app.store.inbox_list(Some(&cid), None, 100).await.unwrap();
        if left.is_empty() && inbox.is_empty() {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(gone, "the sweep did not delete the old verifications");
    for id in &ids {
        let vid = otpgate_core::VerificationId::parse(id).unwrap();
        assert_eq!(app.store.verification_get(&cid, vid).await.unwrap(), None);
        assert_eq!(app.store.outbox_for_verification(vid).await.unwrap(), None);
    }

    // The console shows no number any more, and still counts the day.
    assert_eq!(
        v.log_in("keep@otpgate.test", PASSWORD).await.status,
        StatusCode::SEE_OTHER
    );
    let log = v.get("/console/log").await;
    assert_eq!(log.status, StatusCode::OK);
    for n in numbers {
        assert!(!log.body.contains(&n[6..]), "{n} still in the log");
    }
    let page = v.get("/console/dashboard").await;
    assert_eq!(page.status, StatusCode::OK);
    assert_eq!(page.text_of("today-sends").as_deref(), Some("0"));
    assert_eq!(page.text_of("month-sends").as_deref(), Some("3"));
    assert_eq!(page.text_of("month-completed").as_deref(), Some("1"));
}
