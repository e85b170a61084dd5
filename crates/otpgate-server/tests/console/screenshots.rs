//! Screenshots of every console page at desktop (1280×800) and phone
//! (390×844) size, with a month of data behind the dashboard, saved to
//! `target/console-screenshots/pages/` to look at. The test also checks
//! that no page is wider than the phone's screen.

use otpgate_core::{Clock, SystemClock};

use crate::browser::{Browser, DESKTOP, PHONE, screenshot_dir};
use crate::helpers::{
    ADMIN_EMAIL, ADMIN_PASSWORD, ConsoleApp, PASSWORD, code_in, spawn_at, test_settings,
};

const DAY_MS: i64 = 86_400_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_page_renders_at_desktop_and_phone_width() {
    // Start three weeks ago and live through them, so the chart has days.
    Browser::run(
        "every_page_renders_at_desktop_and_phone_width",
        spawn_at(test_settings(), SystemClock.now_ms() - 20 * DAY_MS),
        pages,
    )
    .await;
}

async fn fill_history(app: &ConsoleApp) -> String {
    let account = app.create_account("app.developer@example.com", "IN").await;
    let id = account.customer_id.to_string();
    app.store
        .account_add_credits(&account.customer_id, 2500)
        .await
        .expect("credits");
    let mut n = 0u32;
    for day in 0..=20 {
        // Tokens live a week: a fresh one each day.
        let token = app.token(&id, PASSWORD).await;
        let sends = (day * 7 % 5) + if day % 6 == 0 { 0 } else { 1 };
        for k in 0..sends {
            n += 1;
            let number = format!("98765{:05}", n);
            let vid = app.send_ok(&token, "91", &number).await;
            let code = code_in(&app.inbox_message(&vid).await.text);
            if (k + day) % 4 != 0 {
                let r = app.validate(&token, &vid, &code).await;
                assert_eq!(r.status, reqwest::StatusCode::OK, "{:?}", r.body);
            } else if k % 2 == 1 {
                let _ = app.validate(&token, &vid, "0000").await;
            }
            app.clock.advance_ms(61_000);
        }
        if day < 20 {
            app.clock.advance_ms(DAY_MS - i64::from(sends) * 61_000);
        }
    }
    // One still pending, for the log.
    let token = app.token(&id, PASSWORD).await;
    let _ = app.send_ok(&token, "44", "7911123456").await;
    id
}

async fn shoot(b: &Browser, name: &str) {
    let dir = screenshot_dir().join("pages");
    std::fs::create_dir_all(&dir).expect("dir");
    for (size, label) in [(DESKTOP, "desktop"), (PHONE, "phone")] {
        b.resize(size).await;
        // A measurement that fails (no number back) fails the test rather
        // than becoming 0 ≤ 0.
        let measure = |js: &'static str| async move {
            let v = b.client.execute(js, vec![]).await.expect(js);
            v.as_i64()
                .filter(|n| *n > 0)
                .unwrap_or_else(|| panic!("{name} at {label}: `{js}` gave {v}, not a size"))
        };
        let width = measure("return document.documentElement.clientWidth;").await;
        let scroll = measure("return document.documentElement.scrollWidth;").await;
        assert!(
            width <= i64::from(size.0) && width >= i64::from(size.0) / 2,
            "{name} at {label}: a {width}px viewport in a {}px window",
            size.0
        );
        assert!(
            scroll <= width,
            "{name} at {label}: the page is {scroll}px wide in a {width}px window"
        );
        b.screenshot(&format!("pages/{name}-{label}")).await;
        // And the whole page, for looking at below the fold: the window
        // grown to the document's height (plus any browser frame).
        let dims = b
            .client
            .execute(
                "return [document.documentElement.scrollHeight, window.outerHeight - window.innerHeight];",
                vec![],
            )
            .await
            .expect("height");
        let px = |i: usize| {
            dims[i]
                .as_u64()
                .and_then(|v| u32::try_from(v).ok())
                .unwrap_or_else(|| panic!("{name} at {label}: height measured as {dims}"))
        };
        assert!(px(0) > 0, "{name} at {label}: the page has no height");
        b.resize((size.0, (px(0) + px(1)).clamp(size.1, 5000)))
            .await;
        b.screenshot(&format!("pages/{name}-{label}-full")).await;
        println!(
            "{name} at {label}: viewport {width}px wide, page {}px tall",
            px(0)
        );
    }
    b.resize(DESKTOP).await;
}

async fn pages(b: &Browser, app: &ConsoleApp) {
    b.goto(&app.url("/console/login")).await;
    shoot(b, "login").await;
    b.goto(&app.url("/console/signup")).await;
    shoot(b, "signup").await;
    b.fill_sign_up("new.user@example.com").await;
    b.find("#customer-id").await;
    shoot(b, "welcome").await;
    b.click("form.logout button").await;

    let id = fill_history(app).await;
    b.goto(&app.url("/console/login")).await;
    b.fill("login", &id).await;
    b.fill("password", PASSWORD).await;
    b.click("form[action=\"/console/login\"] button[type=submit]")
        .await;
    b.find("#credits").await;
    shoot(b, "dashboard").await;
    for page in ["log", "inbox", "credentials", "settings"] {
        b.goto(&app.url(&format!("/console/{page}"))).await;
        b.find("main h1").await;
        shoot(b, page).await;
    }
    b.goto(&app.url("/console/log?status=completed&page=2"))
        .await;
    shoot(b, "log-filtered-page2").await;
    b.goto(&app.url("/console/nowhere")).await;
    shoot(b, "not-found").await;

    b.goto(&app.url("/console/dashboard")).await;
    b.click("form.logout button").await;
    b.find("form[action=\"/console/login\"]").await;
    b.fill("login", ADMIN_EMAIL).await;
    b.fill("password", ADMIN_PASSWORD).await;
    b.click("form[action=\"/console/login\"] button[type=submit]")
        .await;
    b.find("#accounts").await;
    shoot(b, "operators").await;
}
