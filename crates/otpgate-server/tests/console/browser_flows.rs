//! Browser tests: headless Chromium through the console, the API driven
//! from the test beside it with reqwest.

use std::time::Duration;

use reqwest::StatusCode;

use crate::browser::Browser;
use crate::helpers::{ConsoleApp, PASSWORD, Visitor, code_in, spawn};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_up_send_see_delivery_read_inbox_validate_and_count_it() {
    Browser::run(
        "sign_up_send_see_delivery_read_inbox_validate_and_count_it",
        spawn(),
        signup_to_completed,
    )
    .await;
}

async fn signup_to_completed(b: &Browser, app: &ConsoleApp) {
    // Sign up in the browser; the welcome page shows the customerId once.
    b.goto(&app.url("/console/signup")).await;
    b.fill_sign_up("dev@example.com").await;
    let id = b.text("#customer-id").await;
    assert!(id.starts_with("C-") && id.len() == 17, "{id}");
    assert_eq!(b.text("#test-credits").await, "100");
    assert!(b.text("#curl-token").await.contains(&id));
    // console.js runs (a file: the policy allows no inline script) and
    // its copy button answers.
    b.click("button[data-copy=\"customer-id\"]").await;
    let said = b.text("button[data-copy=\"customer-id\"]").await;
    assert!(said == "Copied" || said == "Selected", "{said}");

    // A token with it over the API, and a send (8 digits, so the code
    // cannot be mistaken for a time of day on the log page).
    let token = app.token(&id, PASSWORD).await;
    let r = app
        .api
        .post(app.url(otpgate_api::paths::SEND_V3))
        .header("authToken", &token)
        .query(&[
            ("countryCode", "91"),
            ("mobileNumber", "9876543210"),
            ("flowType", "SMS"),
            ("otpLength", "8"),
        ])
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), StatusCode::OK);
    let body: serde_json::Value = r.json().await.expect("json");
    let vid = body["data"]["verificationId"]
        .as_str()
        .expect("id")
        .to_owned();
    app.delivered(&vid).await;

    // The log shows it, masked, with the gateway's delivery status.
    b.goto(&app.url("/console/log")).await;
    let row = format!("tr[data-verification=\"{vid}\"]");
    assert_eq!(
        b.text(&format!("{row} td[data-label=To]")).await,
        "+91******3210"
    );
    assert_eq!(
        b.text(&format!("{row} td[data-label=Delivery] .badge"))
            .await,
        "sent"
    );
    assert!(
        b.text(&format!("{row} td[data-label=Delivery] .detail"))
            .await
            .contains("inbox")
    );
    assert_eq!(
        b.text(&format!("{row} td[data-label=Status] .badge")).await,
        "pending"
    );
    let log_source = b.source().await;

    // The filter swaps the results in place with htmx (no reload: a marker
    // set on this page survives) and puts the filter in the address.
    b.client
        .execute("window.__same_page = true;", vec![])
        .await
        .expect("execute");
    b.fill("number", "0000").await;
    b.click("form.filters button[type=submit]").await;
    b.find("#log-results .empty").await;
    b.fill("number", "3210").await;
    b.click("form.filters button[type=submit]").await;
    b.find(&row).await;
    let state = b
        .client
        .execute(
            "return [window.__same_page === true, location.search, document.querySelectorAll('style').length];",
            vec![],
        )
        .await
        .expect("execute");
    assert_eq!(state[0], serde_json::json!(true), "the page reloaded");
    assert!(
        state[1].as_str().unwrap_or("").contains("number=3210"),
        "{state:?}"
    );
    // htmx's own indicator styles are off: they would break the policy.
    assert_eq!(state[2], serde_json::json!(0));

    // The sandbox inbox shows the message with the code.
    b.click("nav a[href=\"/console/inbox\"]").await;
    let text = b
        .text(&format!("li[data-verification=\"{vid}\"] .text"))
        .await;
    let code = code_in(&text);
    assert_eq!(code.len(), 8);
    assert_eq!(code, code_in(&app.inbox_message(&vid).await.text));
    assert!(!log_source.contains(&code), "the log page shows the code");

    // Validate over the API; the dashboard counts one completion.
    let r = app.validate(&token, &vid, &code).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    b.click("nav a[href=\"/console/dashboard\"]").await;
    assert_eq!(b.text("#today-sends").await, "1");
    assert_eq!(b.text("#today-completed").await, "1");
    assert_eq!(b.text("#today-rate").await, "100.0%");
    assert_eq!(b.text("#month-completed").await, "1");
    assert_eq!(b.text("#test-credits").await, "99");
    let channel = b.text("#channels tbody tr").await;
    assert!(channel.starts_with("inbox"), "{channel}");
    assert!(channel.contains("100.0%"), "{channel}");
    // The chart drew today's pair of bars: of the 30 days' bars of each
    // kind, only the last (today's) has a height.
    for kind in ["sends", "done"] {
        let heights = b
            .client
            .execute(
                &format!(
                    "return Array.from(document.querySelectorAll('svg rect.bar.{kind}'))\
                     .map(r => parseFloat(r.getAttribute('height')));"
                ),
                vec![],
            )
            .await
            .expect("bar heights");
        let heights: Vec<f64> = heights
            .as_array()
            .expect("an array")
            .iter()
            .map(|h| h.as_f64().expect("a height"))
            .collect();
        assert_eq!(heights.len(), 30, "{kind}: {heights:?}");
        assert!(
            heights[29] > 0.0,
            "{kind}: today's bar is flat: {heights:?}"
        );
        assert!(
            heights[..29].iter().all(|h| *h == 0.0),
            "{kind}: a bar on a day without sends: {heights:?}"
        );
    }

    b.goto(&app.url("/console/log")).await;
    assert_eq!(
        b.text(&format!("{row} td[data-label=Status] .badge")).await,
        "completed"
    );
    assert!(!b.source().await.contains(&code));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_saved_in_the_console_apply_to_the_next_api_send() {
    Browser::run(
        "settings_saved_in_the_console_apply_to_the_next_api_send",
        spawn(),
        settings_apply,
    )
    .await;
}

async fn settings_apply(b: &Browser, app: &ConsoleApp) {
    let account = app.create_account("brand@example.com", "GB").await;
    let id = account.customer_id.to_string();
    let token = app.token(&id, PASSWORD).await;
    // Before: India is allowed.
    let before = app.send_ok(&token, "91", "9876543210").await;
    let _ = app.inbox_message(&before).await;

    // Log in with the form and change the settings.
    b.goto(&app.url("/console/login")).await;
    b.fill("login", "brand@example.com").await;
    b.fill("password", PASSWORD).await;
    b.click("form[action=\"/console/login\"] button[type=submit]")
        .await;
    b.find("#credits").await;
    b.click("nav a[href=\"/console/settings\"]").await;
    b.fill("brand_name", "Acme Sandbox").await;
    b.fill("allowed_country_codes", "44").await;
    b.click("form.settings button[type=submit]").await;
    assert!(b.text(".notice").await.starts_with("Saved"));
    let stored = app.account(&account.customer_id).await;
    assert_eq!(stored.settings.brand_name.as_deref(), Some("Acme Sandbox"));
    assert_eq!(stored.settings.allowed_country_codes, Some(vec![44]));

    // The next send: India is refused with 511, the UK goes out with the
    // brand in the text.
    let refused = app.send(&token, "91", "9876500000").await;
    assert_eq!(
        refused.status,
        StatusCode::BAD_REQUEST,
        "{:?}",
        refused.body
    );
    assert_eq!(refused.code(), 511);
    let uk = app.send_ok(&token, "44", "7911123456").await;
    let msg = app.inbox_message(&uk).await;
    assert!(msg.text.contains("Acme Sandbox"), "{}", msg.text);

    b.click("nav a[href=\"/console/inbox\"]").await;
    let shown = b
        .text(&format!("li[data-verification=\"{uk}\"] .text"))
        .await;
    assert!(shown.contains("Acme Sandbox"), "{shown}");
    let older = b
        .text(&format!("li[data-verification=\"{before}\"] .text"))
        .await;
    assert!(!older.contains("Acme"), "{older}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn script_in_an_email_or_brand_name_is_shown_as_text_and_never_runs() {
    Browser::run(
        "script_in_an_email_or_brand_name_is_shown_as_text_and_never_runs",
        spawn(),
        injected_script_is_inert,
    )
    .await;
}

const EVIL_EMAIL: &str = "<script>window.__pwned=1</script>@x.io";
const EVIL_BRAND: &str = "<img src=x onerror=window.__pwned=2><script>window.__pwned=3</script>";

/// How the page must carry `text`: HTML-escaped (askama writes numeric
/// character references).
fn escaped(text: &str) -> String {
    text.replace('&', "&#38;")
        .replace('<', "&#60;")
        .replace('>', "&#62;")
        .replace('"', "&#34;")
        .replace('\'', "&#39;")
}

/// Nothing injected exists as markup, and nothing ran.
async fn assert_inert(b: &Browser, page: &str) {
    assert_eq!(
        b.pwned().await,
        serde_json::Value::Null,
        "{page}: a script ran"
    );
    let injected = b
        .client
        .execute(
            "return document.querySelectorAll('img').length + \
             Array.from(document.scripts).filter(s => s.textContent.includes('__pwned')).length;",
            vec![],
        )
        .await
        .expect("execute");
    assert_eq!(
        injected,
        serde_json::json!(0),
        "{page}: injected markup in the DOM"
    );
}

async fn injected_script_is_inert(b: &Browser, app: &ConsoleApp) {
    // Sign up with a script for an e-mail (the form's type=email would stop
    // a browser, so the form is posted directly).
    let mut v = Visitor::new(&app.base);
    let (_, id) = v.sign_up(EVIL_EMAIL, PASSWORD).await;

    // The server's HTML has it escaped.
    let html = v.get("/console/dashboard").await.body;
    assert!(!html.contains("<script>window.__pwned"), "unescaped e-mail");
    assert!(
        html.contains(&escaped(EVIL_EMAIL)),
        "the e-mail is not shown escaped"
    );

    // In the browser: log in with it; it shows as text; nothing runs.
    b.goto(&app.url("/console/login")).await;
    b.fill("login", EVIL_EMAIL).await;
    b.fill("password", PASSWORD).await;
    b.click("form[action=\"/console/login\"] button[type=submit]")
        .await;
    b.find("#credits").await;
    assert_eq!(b.text(".who").await, EVIL_EMAIL);
    assert_inert(b, "dashboard").await;

    // A brand name with markup, saved through the form.
    b.click("nav a[href=\"/console/settings\"]").await;
    b.fill("brand_name", EVIL_BRAND).await;
    b.click("form.settings button[type=submit]").await;
    assert!(b.text(".notice").await.starts_with("Saved"));
    let value = b
        .find("input[name=brand_name]")
        .await
        .prop("value")
        .await
        .expect("value");
    assert_eq!(value.as_deref(), Some(EVIL_BRAND));
    assert_inert(b, "settings").await;
    let html = v.get("/console/settings").await.body;
    assert!(
        !html.contains("<img src=x"),
        "unescaped brand in the settings page"
    );
    assert!(html.contains(&format!("value=\"{}\"", escaped(EVIL_BRAND))));

    // The brand goes into the message; the inbox shows it as text, also
    // after htmx has refreshed the list.
    let token = app.token(&id, PASSWORD).await;
    let vid = app.send_ok(&token, "91", "9876543210").await;
    assert!(app.inbox_message(&vid).await.text.contains(EVIL_BRAND));
    b.click("nav a[href=\"/console/inbox\"]").await;
    let selector = format!("li[data-verification=\"{vid}\"] .text");
    assert!(b.text(&selector).await.contains(EVIL_BRAND));
    assert_inert(b, "inbox").await;
    // Mark the list, then wait until htmx has swapped it for a fresh one
    // (the mark is gone): the refresh is seen, not assumed after a sleep.
    b.client
        .execute(
            "document.getElementById('inbox-list').dataset.stale = '1'; return 0;",
            vec![],
        )
        .await
        .expect("mark the list");
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let stale = b
            .client
            .execute(
                "const l = document.getElementById('inbox-list'); \
                 return l === null || l.dataset.stale === '1';",
                vec![],
            )
            .await
            .expect("look at the list");
        if stale == serde_json::json!(false) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "htmx never refreshed the inbox list"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(b.text(&selector).await.contains(EVIL_BRAND));
    assert_inert(b, "inbox after a refresh").await;
    let html = v.get("/console/inbox").await.body;
    assert!(!html.contains("<img src=x") && !html.contains("<script>window"));
    assert!(html.contains(&escaped(EVIL_BRAND)));

    // The operators' list shows the e-mail as text too.
    b.click("form.logout button").await;
    b.find("form[action=\"/console/login\"]").await;
    b.fill("login", crate::helpers::ADMIN_EMAIL).await;
    b.fill("password", crate::helpers::ADMIN_PASSWORD).await;
    b.click("form[action=\"/console/login\"] button[type=submit]")
        .await;
    let email = b
        .text(&format!("tr[data-customer=\"{id}\"] td.email"))
        .await;
    assert_eq!(email, EVIL_EMAIL);
    assert_inert(b, "operators").await;
}
