//! The fraud defence against the real binary, with default settings unless
//! a test names one: test credits that cannot be pumped (a console
//! sign-up's credits pay only for its verified number; test numbers never
//! leave the server), only mobile numbers, the pumping scenario on SQLite,
//! and what an operator does in the console (safe list, lifting a block).

mod common;

use std::time::{Duration, Instant};

use common::{TempDir, inbox_code, open_store, start, token, validate};
use otpgate_core::{CustomerId, VerificationId};
use otpgate_testkit::console::{Page, Visitor};
use serde_json::Value;

const OPERATOR: &str = "ops@example.com";
const OPERATOR_PASSWORD: &str = "operator password";

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("HTTP client")
}

async fn send(
    http: &reqwest::Client,
    base: &str,
    token: &str,
    cc: &str,
    national: &str,
) -> (u16, Option<String>, Value) {
    let r = common::send_request(http, base, token, cc, national)
        .send()
        .await
        .expect("send request");
    let status = r.status().as_u16();
    let retry = r
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    (status, retry, r.json().await.unwrap_or(Value::Null))
}

/// Posts the form `action` of the console's Fraud page (as the operator).
async fn fraud_form(ops: &mut Visitor, action: &str, fields: &[(&str, &str)]) -> Page {
    let action = format!("/console/fraud/{action}");
    ops.submit("/console/fraud", &action, fields).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signups_test_credits_pay_only_for_its_verified_number_and_test_numbers_send_nothing() {
    let dir = TempDir::new("fraud-credits");
    let db = dir.sqlite_url();
    let server = start(
        &["--database", &db],
        &[("OTPGATE_FRAUD__TEST_NUMBERS__919999900001", "482913")],
    );
    let base = server.base.clone();
    let http = http();
    let store = open_store(&db).await;

    // A console sign-up in India, as an attacker would make one.
    let mut v = Visitor::new(&base);
    let (_, cid) = v.sign_up("signup@example.com", common::PASSWORD).await;
    let customer = CustomerId::parse(&cid).expect("a customerId");
    let t = token(&http, &base, &cid).await;
    let credits = || async {
        let a = store.account_get(&customer).await.unwrap().unwrap();
        (a.credits, a.test_credits)
    };
    assert_eq!(credits().await, (0, 100));

    // Test credits do not pay for a number the account has not verified…
    let (status, _, body) = send(&http, &base, &t, "91", "9876501234").await;
    assert_eq!(
        (status, &body["responseCode"]),
        (402, &402.into()),
        "{body}"
    );
    let why = body["errorMessage"].as_str().unwrap_or_default();
    assert!(why.contains("verified numbers"), "{body}");
    // …nor go to another country: a sign-up sends to its own country only.
    let (status, _, body) = send(&http, &base, &t, "44", "7400123456").await;
    assert_eq!(
        (status, &body["responseCode"]),
        (400, &511.into()),
        "{body}"
    );
    assert_eq!(credits().await, (0, 100), "refusals cost nothing");

    // The account verifies its own number through the console: otpgate
    // sends it a code, the account types it back.
    let sent = v
        .submit(
            "/console/numbers",
            "/console/numbers/send",
            &[("country_code", "91"), ("mobile_number", "9876501234")],
        )
        .await;
    assert_eq!(sent.status, 303, "{}", sent.body);
    let id = sent
        .location()
        .and_then(|to| to.split_once("sent="))
        .map(|(_, id)| id.to_owned())
        .expect("the pending verification in the redirect");
    // The code of verification `id` to the account's own number.
    let own_code = async |id: &str| {
        let wait = Duration::from_secs(20);
        inbox_code(store.as_ref(), "919876501234", id, 4, wait).await
    };
    let code = own_code(&id).await;
    // The confirm form on the page the redirect named, with `typed`.
    let page = format!("/console/numbers?sent={id}");
    let confirm = async |v: &mut Visitor, typed: &str| {
        let fields = [("verification_id", id.as_str()), ("code", typed)];
        v.submit(&page, "/console/numbers/confirm", &fields).await
    };
    let wrong = confirm(&mut v, "0000").await;
    if code != "0000" {
        assert_eq!(wrong.status, 422, "a wrong code verifies nothing");
    }
    let done = confirm(&mut v, &code).await;
    assert_eq!(done.status, 303, "{}", done.body);
    let listed = v.get("/console/numbers").await;
    assert!(listed.body.contains("+919876501234"), "{}", listed.body);
    assert_eq!(
        credits().await,
        (0, 99),
        "the proving code cost one test credit"
    );

    // Now test credits pay for that number, and the code validates.
    let (status, _, body) = send(&http, &base, &t, "91", "9876501234").await;
    assert_eq!(status, 200, "{body}");
    let id = body["data"]["verificationId"].as_str().unwrap().to_owned();
    let code = own_code(&id).await;
    assert_eq!(
        validate(&http, &base, &t, &id, &code).await["responseCode"],
        200
    );
    assert_eq!(credits().await, (0, 98));
    // Another number still gets 402.
    let (status, _, _) = send(&http, &base, &t, "91", "9876501235").await;
    assert_eq!(status, 402);

    // A configured test number: 200, the fixed code validates, nothing is
    // queued, delivered or charged.
    let (status, _, body) = send(&http, &base, &t, "91", "9999900001").await;
    assert_eq!(status, 200, "{body}");
    let id = body["data"]["verificationId"].as_str().unwrap().to_owned();
    let vid = VerificationId::parse(&id).unwrap();
    assert_eq!(
        validate(&http, &base, &t, &id, "111111").await["responseCode"],
        702
    );
    assert_eq!(
        validate(&http, &base, &t, &id, "482913").await["responseCode"],
        200
    );
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(store.outbox_for_verification(vid).await.unwrap().is_none());
    assert!(
        store
            .inbox_list(None, Some("919999900001"), 10)
            .await
            .unwrap()
            .is_empty(),
        "a test number's message never leaves the server"
    );
    assert_eq!(credits().await, (0, 98));
    let log = server.log_text();
    assert!(!log.contains("482913"), "the fixed code is never logged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn premium_rate_and_fixed_line_numbers_get_400_with_the_reason() {
    let (_dir, db, cid, server) = common::serve_sqlite("fraud-types", Some(100), &[]);
    let http = http();
    let t = token(&http, &server.base, &cid).await;
    for (cc, national, kind) in [
        ("44", "9098790000", "premium-rate"),
        ("1", "9005550100", "premium-rate"),
        ("44", "2079460018", "fixed-line"),
    ] {
        let (status, _, body) = send(&http, &server.base, &t, cc, national).await;
        assert_eq!(
            (status, &body["responseCode"]),
            (400, &400.into()),
            "+{cc} {national}: {body}"
        );
        let why = body["errorMessage"].as_str().unwrap_or_default();
        assert!(
            why.contains(kind) && why.contains("mobile numbers only"),
            "{body}"
        );
    }
    // Mobile numbers, and +1 numbers the plan cannot tell from mobile, go.
    for (cc, national) in [
        ("44", "7400123456"),
        ("1", "6502530000"),
        ("91", "9876543210"),
    ] {
        let (status, _, body) = send(&http, &server.base, &t, cc, national).await;
        assert_eq!(status, 200, "+{cc} {national}: {body}");
    }
    let store = open_store(&db).await;
    let a = common::account_of(store.as_ref(), &cid).await;
    assert_eq!(a.credits, 97, "refused numbers cost nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pumping_one_prefix_is_blocked_early_while_legitimate_traffic_flows() {
    let (_dir, db, cid, server) = common::serve_sqlite("fraud-pumping", Some(100_000), &[]);
    let http = http();
    let t = token(&http, &server.base, &cid).await;
    let store = open_store(&db).await;
    let p = common::pumping::run(std::slice::from_ref(&server.base), &t, store.clone()).await;
    common::pumping::assert_bounds(&p);
    // Every block is logged, without codes.
    let log = server.log_text();
    assert!(log.contains("fraud guard: block started"), "{log}");
    // Nothing was charged for the refused sends.
    let a = common::account_of(store.as_ref(), &cid).await;
    let accepted = i64::try_from(p.attack_accepted + p.legit_accepted).unwrap();
    assert_eq!(a.credits, 100_000 - accepted);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_safe_listed_prefix_is_not_blocked_and_a_lifted_block_lets_the_next_send_through() {
    let (_dir, db, cid, server) = common::serve_sqlite(
        "fraud-operator",
        Some(10_000),
        &common::operator(OPERATOR, OPERATOR_PASSWORD),
    );
    let base = server.base.clone();
    let http = http();
    let t = token(&http, &base, &cid).await;
    let store = open_store(&db).await;
    let mut ops = Visitor::new(&base);
    let r = ops.log_in(OPERATOR, OPERATOR_PASSWORD).await;
    assert_eq!(r.status, 303, "log-in: {}", r.body);
    let r = fraud_form(
        &mut ops,
        "safe",
        &[("entry", "+91 987651"), ("note", "our own test SIMs")],
    )
    .await;
    assert_eq!(r.status, 303, "{}", r.body);
    assert!(ops.get("/console/fraud").await.body.contains("+91987651"));

    // The same attack (20 per second, never validated) on the safe-listed
    // prefix: nothing is blocked.
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    for i in 0..100usize {
        tick.tick().await;
        let (status, _, body) = send(&http, &base, &t, "91", &format!("987651{i:04}")).await;
        assert_eq!(status, 200, "send {i} to the safe-listed prefix: {body}");
    }

    // On another prefix the guard blocks it: 800, Retry-After, a reason
    // naming the block; nothing charged, nothing sent.
    let before = common::account_of(store.as_ref(), &cid).await.credits;
    let started = Instant::now();
    let mut accepted = 0i64;
    let mut blocked = None;
    for i in 0..100usize {
        tick.tick().await;
        let (status, retry, body) = send(&http, &base, &t, "91", &format!("987652{i:04}")).await;
        if status == 200 {
            accepted += 1;
            continue;
        }
        assert_eq!(
            (status, &body["responseCode"]),
            (429, &800.into()),
            "{body}"
        );
        blocked = Some((i, retry, body));
        break;
    }
    let (at, retry, body) = blocked.expect("the attack on an unlisted prefix was never blocked");
    eprintln!(
        "unlisted prefix blocked at send {at} after {:?}",
        started.elapsed()
    );
    assert!(at <= 25, "blocked only at send {at}");
    let secs: u64 = retry.expect("Retry-After").parse().unwrap();
    assert!((3000..=3600).contains(&secs), "Retry-After {secs}");
    let why = body["errorMessage"].as_str().unwrap_or_default();
    assert!(
        why.contains("fraud guard") && why.contains("prefix is blocked"),
        "{body}"
    );
    assert!(body.get("data").is_none(), "{body}");
    // Later sends stay refused.
    let (status, _, _) = send(&http, &base, &t, "91", "9876529999").await;
    assert_eq!(status, 429);
    tokio::time::sleep(Duration::from_millis(800)).await;
    let after = common::account_of(store.as_ref(), &cid).await.credits;
    assert_eq!(before - after, accepted, "refused sends cost nothing");
    let delivered = store
        .inbox_list(None, None, 1000)
        .await
        .unwrap()
        .iter()
        .filter(|e| e.destination.starts_with("91987652"))
        .count();
    assert_eq!(
        i64::try_from(delivered).unwrap(),
        accepted,
        "refused sends send nothing"
    );

    // The operator sees the block, why and until when, and lifts it.
    let page = ops.get("/console/fraud").await;
    assert!(page.body.contains("data-key=\"91987652\""), "{}", page.body);
    assert!(page.body.contains("unconverted"), "{}", page.body);
    assert!(
        !page.body.contains("data-key=\"91987651\""),
        "the safe prefix is not blocked"
    );
    // The conversion cards count the sends of the prefix and its country.
    for cell in [
        r#"<td data-label="Prefix" class="mono">+91987652</td>"#,
        r#"<td data-label="Dialing code">+91</td>"#,
    ] {
        assert!(page.body.contains(cell), "no {cell}: {}", page.body);
    }
    let r = fraud_form(
        &mut ops,
        "lift",
        &[("scope", "prefix"), ("key", "91987652")],
    )
    .await;
    assert_eq!(
        (r.status.as_u16(), r.location()),
        (303, Some("/console/fraud?done=lifted"))
    );
    let (status, _, body) = send(&http, &base, &t, "91", "9876529998").await;
    assert_eq!(status, 200, "after the lift: {body}");
    assert!(
        ops.get("/console/fraud")
            .await
            .body
            .contains("id=\"no-blocks\"")
    );
    // Forms without the session's CSRF token change nothing.
    let r = ops
        .post(
            "/console/fraud/safe",
            &[("csrf", "forged"), ("entry", "+91 9876")],
        )
        .await;
    assert_eq!(r.status, 403);
    assert_eq!(store.safe_list().await.unwrap().len(), 1);
}
