//! What a user expects of a login page and its forms: CSRF tokens, cookie
//! flags, security headers, throttled log-ins, sessions that end, and one
//! account never seeing another's data.

use reqwest::StatusCode;

use crate::helpers::{PASSWORD, Visitor, spawn, spawn_tuned, spawn_with, test_settings};
use otpgate_server::console::CONTENT_SECURITY_POLICY;
use otpgate_store::AccountSettings;

/// `fields` with `csrf` as the form's token, first.
fn with_csrf<'a>(csrf: &'a str, fields: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    [&[("csrf", csrf)][..], fields].concat()
}

#[tokio::test]
async fn a_form_posted_without_its_csrf_token_is_refused_with_403() {
    let app = spawn().await;
    let (mut v, id) = app.signed_up("csrf@example.com").await;
    let fields = [("brand_name", "Evil"), ("allowed_country_codes", "1")];

    let none = v.post("/console/settings", &fields).await;
    assert_eq!(none.status, StatusCode::FORBIDDEN);
    assert!(none.body.contains("Form refused"));
    let empty = v.post("/console/settings", &with_csrf("", &fields)).await;
    assert_eq!(empty.status, StatusCode::FORBIDDEN);
    let forged = "A".repeat(43);
    let wrong = v
        .post("/console/settings", &with_csrf(&forged, &fields))
        .await;
    assert_eq!(wrong.status, StatusCode::FORBIDDEN);

    // Another session's token is no good here either.
    let mut other = Visitor::new(&app.base);
    other.sign_up("other@example.com", PASSWORD).await;
    let theirs = other.get("/console/settings").await.csrf();
    let borrowed = v
        .post("/console/settings", &with_csrf(&theirs, &fields))
        .await;
    assert_eq!(borrowed.status, StatusCode::FORBIDDEN);

    let account = app
        .account(&otpgate_core::CustomerId::parse(&id).expect("id"))
        .await;
    // As sign-up left them: its own country only.
    assert_eq!(
        account.settings,
        AccountSettings {
            allowed_country_codes: Some(vec![91]),
            ..AccountSettings::default()
        },
        "a refused form changed settings"
    );

    // Every other form too.
    for (path, fields) in [
        ("/console/logout", vec![]),
        (
            "/console/credentials/password",
            vec![
                ("current", PASSWORD),
                ("new", "new password 1"),
                ("confirm", "new password 1"),
            ],
        ),
    ] {
        let r = v.post(path, &fields).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{path}");
    }
    let mut anon = Visitor::new(&app.base);
    let _ = anon.get("/console/login").await;
    for (path, fields) in [
        (
            "/console/login",
            vec![("login", "csrf@example.com"), ("password", PASSWORD)],
        ),
        (
            "/console/signup",
            vec![
                ("email", "x@example.com"),
                ("password", PASSWORD),
                ("confirm", PASSWORD),
                ("country", "IN"),
            ],
        ),
    ] {
        let r = anon.post(path, &fields).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{path}");
        assert!(!anon.cookies.contains_key("otpgate_session"));
    }

    // And with the token, the same form goes through.
    let ok = v
        .submit("/console/settings", "/console/settings", &fields)
        .await;
    assert_eq!(ok.status, StatusCode::SEE_OTHER, "{}", ok.body);
    assert_eq!(ok.location(), Some("/console/settings?saved=1"));
}

#[tokio::test]
async fn operator_forms_need_the_token_too() {
    let app = spawn().await;
    let (_, id) = app.signed_up("victim@example.com").await;
    let mut ops = Visitor::new(&app.base);
    let r = ops
        .log_in(crate::helpers::ADMIN_EMAIL, crate::helpers::ADMIN_PASSWORD)
        .await;
    assert_eq!(r.location(), Some("/console/operators"));
    for (path, fields) in [
        (
            "/console/operators/credits",
            vec![("customer_id", id.as_str()), ("amount", "1000")],
        ),
        (
            "/console/operators/disabled",
            vec![("customer_id", id.as_str()), ("disabled", "true")],
        ),
    ] {
        assert_eq!(
            ops.post(path, &fields).await.status,
            StatusCode::FORBIDDEN,
            "{path}"
        );
    }
    let a = app
        .account(&otpgate_core::CustomerId::parse(&id).expect("id"))
        .await;
    assert_eq!(a.credits, 0);
    assert!(!a.disabled);
}

/// The headers every console page carries.
fn assert_hardened(page: &crate::helpers::Page) {
    assert_eq!(
        page.header("content-security-policy"),
        Some(CONTENT_SECURITY_POLICY)
    );
    assert_eq!(page.header("x-content-type-options"), Some("nosniff"));
    assert_eq!(page.header("x-frame-options"), Some("DENY"));
    assert_eq!(page.header("cache-control"), Some("no-store"));
    assert!(
        page.header("content-type")
            .unwrap_or("")
            .starts_with("text/html")
    );
}

#[tokio::test]
async fn cookies_are_httponly_samesite_strict_and_pages_carry_the_policy() {
    let app = spawn().await;
    let mut v = Visitor::new(&app.base);
    let login = v.get("/console/login").await;
    assert_eq!(login.status, StatusCode::OK);
    assert_hardened(&login);
    assert_eq!(
        CONTENT_SECURITY_POLICY,
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; frame-ancestors 'none'; form-action 'self'"
    );
    let pre = login.set_cookies();
    assert!(pre.iter().any(|c| c.starts_with("otpgate_pre=")));
    for c in &pre {
        assert!(
            c.contains("HttpOnly") && c.contains("SameSite=Strict") && c.contains("Path=/console"),
            "{c}"
        );
        assert!(!c.contains("Secure"), "{c}");
    }
    // No inline script or style anywhere: scripts are files.
    assert!(!login.body.contains("<script>"));
    assert!(!login.body.contains("style="));
    assert!(login.body.contains("name=\"viewport\""));

    let (welcome, _) = v.sign_up("cookie@example.com", PASSWORD).await;
    let session = welcome
        .set_cookies()
        .into_iter()
        .find(|c| c.starts_with("otpgate_session="))
        .expect("a session cookie")
        .to_owned();
    assert!(
        session.contains("HttpOnly") && session.contains("SameSite=Strict"),
        "{session}"
    );
    // 256 random bits, base64url without padding.
    let value = session
        .split(';')
        .next()
        .unwrap_or("")
        .trim_start_matches("otpgate_session=");
    assert_eq!(value.len(), 43);
    assert_eq!(
        welcome.header("content-security-policy"),
        Some(CONTENT_SECURITY_POLICY)
    );

    let dash = v.get("/console/dashboard").await;
    assert_eq!(dash.status, StatusCode::OK);
    assert_hardened(&dash);
    let missing = v.get("/console/no-such-page").await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert!(missing.body.contains("<html"));
    assert_hardened(&missing);
    // The console's root leads to whoever's home page.
    assert_eq!(
        v.get("/console").await.location(),
        Some("/console/dashboard")
    );
    assert_eq!(
        Visitor::new(&app.base).get("/console").await.location(),
        Some("/console/login")
    );
    assert_eq!(v.get("/console/").await.location(), Some("/console"));
    let js = v.get("/console/assets/htmx.min.js").await;
    assert_eq!(js.status, StatusCode::OK);
    assert_eq!(
        js.header("content-type"),
        Some("text/javascript; charset=utf-8")
    );
    assert_eq!(js.header("x-content-type-options"), Some("nosniff"));
    assert!(js.body.contains("htmx"));
    assert_eq!(
        v.get("/console/assets/../Cargo.toml").await.status,
        StatusCode::NOT_FOUND
    );

    // Behind TLS the cookies are Secure.
    let mut s = test_settings();
    s.console.secure_cookies = true;
    let tls = spawn_with(s).await;
    let mut v = Visitor::new(&tls.base);
    let login = v.get("/console/login").await;
    assert!(login.set_cookies().iter().all(|c| c.contains("; Secure")));
    let (welcome, _) = v.sign_up("tls@example.com", PASSWORD).await;
    assert!(welcome.set_cookies().iter().all(|c| c.contains("; Secure")));
}

#[tokio::test]
async fn log_ins_are_throttled_after_repeated_failures() {
    let app = spawn_tuned(|s| s.console.max_login_failures = 3).await;
    let (_, id) = app.signed_up("throttle@example.com").await;

    let mut v = Visitor::new(&app.base);
    for _ in 0..3 {
        let r = v.log_in("throttle@example.com", "wrong password").await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);
        assert!(r.body.contains("Wrong e-mail, customerId or password"));
        assert!(!r.body.contains("wrong password"), "the password is echoed");
    }
    let r = v.log_in("throttle@example.com", PASSWORD).await;
    assert_eq!(
        r.status,
        StatusCode::TOO_MANY_REQUESTS,
        "the right password during a lock-out"
    );
    assert!(r.header("retry-after").is_some());
    // The customerId is a different login name, but the address is the
    // same: also throttled.
    let r = v.log_in(&id, PASSWORD).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    assert!(!v.cookies.contains_key("otpgate_session"));

    // Once the window has passed, the right password works.
    app.clock.advance_ms(301_000);
    let r = v.log_in(&id, PASSWORD).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    assert_eq!(r.location(), Some("/console/dashboard"));
}

#[tokio::test]
async fn unknown_names_and_wrong_passwords_get_the_same_answer() {
    let app = spawn().await;
    let mut user = Visitor::new(&app.base);
    user.sign_up("same@example.com", PASSWORD).await;
    let mut v = Visitor::new(&app.base);
    let wrong = v.log_in("same@example.com", "not the password").await;
    let unknown = v.log_in("nobody@example.com", "not the password").await;
    let bad_id = v.log_in("C-000000000000000", "not the password").await;
    for r in [&wrong, &unknown, &bad_id] {
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);
        assert!(
            r.body
                .contains("Wrong e-mail, customerId or password, or the account is disabled.")
        );
    }
}

#[tokio::test]
async fn sessions_end_when_idle_when_too_old_and_at_log_out() {
    let mut s = test_settings();
    s.console.session_idle_secs = 600;
    s.console.session_max_secs = 900;
    let app = spawn_with(s).await;
    let mut v = Visitor::new(&app.base);
    v.sign_up("idle@example.com", PASSWORD).await;
    assert_eq!(v.get("/console/dashboard").await.status, StatusCode::OK);

    // Idle for longer than 10 minutes: back to the log-in page.
    app.clock.advance_ms(601_000);
    let r = v.get("/console/dashboard").await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    assert_eq!(r.location(), Some("/console/login"));

    // Active, but older than 15 minutes: over as well.
    assert_eq!(
        v.log_in("idle@example.com", PASSWORD).await.status,
        StatusCode::SEE_OTHER
    );
    for _ in 0..3 {
        app.clock.advance_ms(299_000);
        assert_eq!(v.get("/console/log").await.status, StatusCode::OK);
    }
    app.clock.advance_ms(5_000);
    assert_eq!(v.get("/console/log").await.status, StatusCode::SEE_OTHER);

    // Log-out ends the session on the server: the old cookie is worthless.
    assert_eq!(
        v.log_in("idle@example.com", PASSWORD).await.status,
        StatusCode::SEE_OTHER
    );
    let cookie = v.cookies.get("otpgate_session").cloned().expect("session");
    let out = v.submit("/console/dashboard", "/console/logout", &[]).await;
    assert_eq!(out.status, StatusCode::SEE_OTHER);
    assert_eq!(out.location(), Some("/console/login?out=1"));
    assert!(
        !v.cookies.contains_key("otpgate_session"),
        "cookie not cleared"
    );
    v.cookies.insert("otpgate_session".into(), cookie);
    let r = v.get("/console/dashboard").await;
    assert_eq!(r.location(), Some("/console/login"));
}

#[tokio::test]
async fn one_accounts_log_and_inbox_never_show_anothers_rows() {
    let app = spawn().await;
    let (mut a, a_id) = app.signed_up("alice@example.com").await;
    let (mut b, b_id) = app.signed_up("bob@example.com").await;
    let a_token = app.token(&a_id, PASSWORD).await;
    let b_token = app.token(&b_id, PASSWORD).await;
    let a_vid = app.send_ok(&a_token, "91", "9876500001").await;
    let b_vid = app.send_ok(&b_token, "91", "9876500002").await;
    // Both to the same number, too.
    let b_vid2 = app.send_ok(&b_token, "91", "9876500003").await;
    let a_vid2 = app.send_ok(&a_token, "91", "9876500003").await;
    for id in [&a_vid, &b_vid, &a_vid2, &b_vid2] {
        let _ = app.inbox_message(id).await;
    }

    for (v, mine, theirs, their_number) in [
        (&mut a, [&a_vid, &a_vid2], [&b_vid, &b_vid2], "******0002"),
        (&mut b, [&b_vid, &b_vid2], [&a_vid, &a_vid2], "******0001"),
    ] {
        let log = v.get("/console/log").await;
        assert_eq!(log.status, StatusCode::OK);
        assert_eq!(log.body.matches("data-verification=").count(), 2);
        for id in mine {
            assert!(log.body.contains(&format!("data-verification=\"{id}\"")));
        }
        for id in theirs {
            assert!(!log.body.contains(id.as_str()), "another account's row");
        }
        assert!(!log.body.contains(their_number));
        // Filtering for the other account's number finds nothing.
        let digits = if their_number.ends_with("0002") {
            "9876500002"
        } else {
            "9876500001"
        };
        let filtered = v.get(&format!("/console/log?number={digits}")).await;
        assert_eq!(filtered.body.matches("data-verification=").count(), 0);

        let inbox = v.get("/console/inbox").await;
        assert_eq!(inbox.body.matches("class=\"message\"").count(), 2);
        for id in theirs {
            assert!(
                !inbox.body.contains(id.as_str()),
                "another account's message"
            );
        }
    }
}
