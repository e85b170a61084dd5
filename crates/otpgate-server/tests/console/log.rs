//! The verification log at the HTTP level: newest first, paged, filtered,
//! and served as a fragment to htmx.

use otpgate_core::Clock;
use reqwest::StatusCode;

use crate::helpers::{PASSWORD, Visitor, code_in, spawn_tuned, spawn_with, test_settings};

/// The verification ids of a log page's rows, in order.
fn ids(body: &str) -> Vec<String> {
    body.split("data-verification=\"")
        .skip(1)
        .filter_map(|s| s.split_once('"').map(|(id, _)| id.to_owned()))
        .collect()
}

#[tokio::test]
async fn the_log_pages_newest_first_and_filters_by_number_status_and_date() {
    // Thirty unvalidated sends to one prefix: the fraud guard would block
    // them after twenty, and this test is about the log.
    let app = spawn_tuned(|s| s.fraud.guard = false).await;
    let (mut v, id) = app.signed_up("log@example.com").await;
    let token = app.token(&id, PASSWORD).await;
    let mut sent = Vec::new();
    for n in 0..30 {
        sent.push(app.send_ok(&token, "91", &format!("98765000{n:02}")).await);
        app.clock.advance_ms(1_000);
    }
    let code = code_in(&app.inbox_message(&sent[3]).await.text);
    assert_eq!(
        app.validate(&token, &sent[3], &code).await.status,
        StatusCode::OK
    );

    let first = v.get("/console/log").await;
    assert_eq!(first.status, StatusCode::OK);
    let newest: Vec<String> = sent.iter().rev().take(25).cloned().collect();
    assert_eq!(ids(&first.body), newest);
    assert!(first.body.contains("Older →"));
    assert!(!first.body.contains("← Newer"));
    assert!(first.body.contains("+91******0029"));
    assert!(!first.body.contains("9876500029"), "an unmasked number");

    let second = v.get("/console/log?page=2").await;
    let oldest: Vec<String> = sent.iter().rev().skip(25).cloned().collect();
    assert_eq!(ids(&second.body), oldest);
    assert!(second.body.contains("← Newer"));
    assert!(!second.body.contains("Older →"));

    let by_number = v.get("/console/log?number=%2B91+98765-00007").await;
    assert_eq!(ids(&by_number.body), vec![sent[7].clone()]);
    assert!(
        by_number.body.contains("value=\"+91 98765-00007\""),
        "filter not shown back"
    );

    let completed = v.get("/console/log?status=completed").await;
    assert_eq!(ids(&completed.body), vec![sent[3].clone()]);
    assert!(completed.body.contains(">completed<"));
    let pending = v.get("/console/log?status=pending").await;
    assert_eq!(ids(&pending.body).len(), 25);

    let today = otpgate_server_date(app.clock.now_ms());
    let dated = v
        .get(&format!("/console/log?from={today}&to={today}"))
        .await;
    assert_eq!(ids(&dated.body).len(), 25);
    let tomorrow = otpgate_server_date(app.clock.now_ms() + 86_400_000);
    let future = v.get(&format!("/console/log?from={tomorrow}")).await;
    assert!(ids(&future.body).is_empty());
    assert!(future.body.contains("No verifications"));
    let nonsense = v
        .get("/console/log?from=yesterday&status=%3Cscript%3E&page=-1")
        .await;
    assert_eq!(nonsense.status, StatusCode::OK);
    assert!(nonsense.body.contains("A date could not be read"));
    assert_eq!(ids(&nonsense.body).len(), 25);

    // htmx asks for the results alone, with the filter kept in the links.
    let fragment = v
        .get_with("/console/log?status=pending", &[("HX-Request", "true")])
        .await;
    assert!(
        fragment
            .body
            .trim_start()
            .starts_with("<section id=\"log-results\"")
    );
    assert!(!fragment.body.contains("<html"));
    // (askama escapes `&` as `&#38;`.)
    assert!(
        fragment
            .body
            .contains("href=\"/console/log?status=pending&#38;page=2\""),
        "{}",
        fragment.body
    );
    assert_eq!(fragment.header("vary"), Some("HX-Request"));
    let restore = v
        .get_with(
            "/console/log",
            &[
                ("HX-Request", "true"),
                ("HX-History-Restore-Request", "true"),
            ],
        )
        .await;
    assert!(
        restore.body.contains("<html"),
        "a history restore needs the whole page"
    );
}

/// The date filter over several days: `from` and `to` are inclusive, each
/// bound cuts where it should, and a day between holds only its own sends.
#[tokio::test]
async fn the_log_filters_by_date_across_days() {
    let app = spawn_with(test_settings()).await;
    let (_, id) = app.signed_up("dates@example.com").await;
    let token = app.token(&id, PASSWORD).await;
    // Three days, two sends a day; each send's date as the console writes it.
    let mut sent: Vec<(String, String)> = Vec::new();
    for day in 0..3 {
        for n in 0..2 {
            let date = otpgate_server_date(app.clock.now_ms());
            let id = app
                .send_ok(&token, "91", &format!("987650{day}{n}00"))
                .await;
            sent.push((id, date));
            app.clock.advance_ms(1_000);
        }
        app.clock.advance_ms(86_400_000);
    }
    // The console session has expired over those days: sign in afresh.
    let mut v = Visitor::new(&app.base);
    v.log_in("dates@example.com", PASSWORD).await;
    let mut days: Vec<String> = sent.iter().map(|(_, d)| d.clone()).collect();
    days.dedup();
    assert!(days.len() >= 3, "{days:?}");
    let (first, middle, last) = (&days[0], &days[1], &days[days.len() - 1]);
    let want = |from: &str, to: &str| -> Vec<String> {
        sent.iter()
            .rev()
            .filter(|(_, d)| d.as_str() >= from && d.as_str() <= to)
            .map(|(id, _)| id.clone())
            .collect()
    };
    for (query, from, to) in [
        (format!("from={middle}&to={middle}"), middle, middle),
        (format!("from={middle}"), middle, last),
        (format!("to={middle}"), first, middle),
        (format!("from={first}&to={last}"), first, last),
        (format!("from={last}&to={last}"), last, last),
    ] {
        let page = v.get(&format!("/console/log?{query}")).await;
        let expected = want(from, to);
        assert!(!expected.is_empty());
        assert_eq!(ids(&page.body), expected, "{query}");
    }
    let reversed = v.get(&format!("/console/log?from={last}&to={first}")).await;
    assert!(ids(&reversed.body).is_empty(), "from after to");
}

fn otpgate_server_date(ms: i64) -> String {
    // Days to a civil date, as the console's own helper does (kept here so
    // the test does not trust the code it checks).
    let z = ms.div_euclid(86_400_000) + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

/// A fallback workflow's steps show in the log, each with its channel.
#[tokio::test]
async fn the_log_lists_each_step_of_a_fallback_workflow_with_its_channel() {
    let mut settings = crate::helpers::test_settings();
    let sms = otpgate_sms::config::SmsConfig::from_toml(
        r#"
[channels.sms-inbox]
type = "inbox"
[channels.wa-inbox]
type = "inbox"
[[routes]]
flow_types = ["SMS"]
channels = ["sms-inbox"]
fallback = [{ flow = "WHATSAPP", after_secs = 5 }]
[[routes]]
flow_types = ["WHATSAPP"]
channels = ["wa-inbox"]
"#,
    )
    .unwrap();
    settings.channels = sms.channels;
    settings.routes = sms.routes;
    let app = crate::helpers::spawn_with(settings).await;
    let (mut v, cid) = app.signed_up("steps@example.com").await;
    let token = app.token(&cid, PASSWORD).await;
    let id = app.send_ok(&token, "91", "9876500001").await;
    app.delivered(&id).await;
    // The inbox reports no delivery: the WhatsApp step goes when due.
    app.clock.advance_ms(5_000);
    let vid = otpgate_core::VerificationId::parse(&id).unwrap();
    for _ in 0..500 {
        let steps = app.store.outbox_attempts(vid).await.unwrap();
        if steps[1].status == otpgate_core::DeliveryStatus::Sent {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let page = v.get("/console/log").await;
    assert!(
        page.body.contains("SMS via sms-inbox: sent"),
        "{}",
        page.body
    );
    assert!(
        page.body.contains("WHATSAPP via wa-inbox: sent"),
        "{}",
        page.body
    );
}
