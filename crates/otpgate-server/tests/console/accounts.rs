//! Sign-up, log-in by customerId, password changes and the operators'
//! page, at the HTTP level.

use otpgate_core::CustomerId;
use reqwest::StatusCode;

use crate::helpers::{ADMIN_EMAIL, ADMIN_PASSWORD, PASSWORD, Page, Visitor, spawn, spawn_tuned};

#[tokio::test]
async fn sign_up_gives_a_customer_id_test_credits_and_a_session() {
    let app = spawn().await;
    let mut v = Visitor::new(&app.base);
    let (welcome, id) = v.sign_up("new@example.com", PASSWORD).await;
    let id = CustomerId::parse(&id).expect("a customerId on the welcome page");
    assert_eq!(welcome.text_of("test-credits").as_deref(), Some("100"));
    // The next step: a token request naming this account, against this
    // server's own address.
    let curl = welcome.text_of("curl-token").expect("curl");
    assert!(curl.contains(&format!("customerId={id}")), "{curl}");
    assert!(curl.contains(&app.base), "{curl}");
    let account = app.account(&id).await;
    assert_eq!(account.email.as_deref(), Some("new@example.com"));
    assert_eq!(account.country.as_deref(), Some("IN"));
    assert!(account.password_hash.starts_with("$argon2id$"));
    // Logged in already.
    assert_eq!(v.get("/console/dashboard").await.status, StatusCode::OK);
    // And the API takes the password's base64 as the key.
    let _ = app.token(id.as_str(), PASSWORD).await;
}

#[tokio::test]
async fn sign_up_explains_what_is_wrong_and_keeps_what_was_typed() {
    let app = spawn().await;
    let mut v = Visitor::new(&app.base);
    let csrf = v.get("/console/signup").await.csrf();
    let post = |email: &'static str,
                pw: &'static str,
                confirm: &'static str,
                country: &'static str| { (email, pw, confirm, country) };
    for ((email, pw, confirm, country), status, says) in [
        (
            post("a@example.com", PASSWORD, "other password", "IN"),
            422,
            "The two passwords differ.",
        ),
        (
            post("a@example.com", "short", "short", "IN"),
            422,
            "Choose a password of 8",
        ),
        (
            post("not-an-address", PASSWORD, PASSWORD, "IN"),
            422,
            "does not look like an e-mail",
        ),
        (
            post("a@example.com", PASSWORD, PASSWORD, "India"),
            422,
            "Country must be",
        ),
        (post("", PASSWORD, PASSWORD, "IN"), 422, "Enter your e-mail"),
    ] {
        let r = v
            .post(
                "/console/signup",
                &[
                    ("csrf", &csrf),
                    ("email", email),
                    ("password", pw),
                    ("confirm", confirm),
                    ("country", country),
                ],
            )
            .await;
        assert_eq!(
            r.status.as_u16(),
            status,
            "{email} {pw} {country}: {}",
            r.body
        );
        assert!(r.body.contains(says), "{says}: {}", r.body);
        assert!(!r.body.contains(pw) || pw == "short" && !r.body.contains("value=\"short\""));
        if !email.is_empty() {
            assert!(
                r.body.contains(&format!("value=\"{email}\"")),
                "e-mail not kept"
            );
        }
    }
    v.sign_up("taken@example.com", PASSWORD).await;
    let mut w = Visitor::new(&app.base);
    let r = w.try_sign_up("TAKEN@example.com", PASSWORD).await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    assert!(r.body.contains("An account with this e-mail exists"));
}

#[tokio::test]
async fn sign_up_can_be_closed_and_is_limited_per_address() {
    let app = spawn_tuned(|s| s.console.signup = false).await;
    let mut v = Visitor::new(&app.base);
    let page = v.get("/console/signup").await;
    assert!(page.body.contains("Sign-up is closed"));
    assert!(!page.body.contains("action=\"/console/signup\""));
    // A valid pre-session token (from the log-in form) does not open it.
    let csrf = v.get("/console/login").await.csrf();
    let r = v.post_sign_up(&csrf, "a@example.com", PASSWORD).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert!(
        app.store
            .account_by_email("a@example.com")
            .await
            .expect("q")
            .is_none()
    );

    let app = spawn_tuned(|s| s.console.signups_per_hour = 2).await;
    for n in 0..2 {
        Visitor::new(&app.base)
            .sign_up(&format!("u{n}@example.com"), PASSWORD)
            .await;
    }
    let mut v = Visitor::new(&app.base);
    let r = v.try_sign_up("u3@example.com", PASSWORD).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
}

#[tokio::test]
async fn changing_the_password_revokes_tokens_and_other_sessions() {
    let app = spawn().await;
    let (mut mine, id) = app.signed_up("rotate@example.com").await;
    // A second session, logged in by customerId (lower case works too).
    let mut other = Visitor::new(&app.base);
    let r = other.log_in(&id.to_ascii_lowercase(), PASSWORD).await;
    assert_eq!(r.location(), Some("/console/dashboard"));
    let old_token = app.token(&id, PASSWORD).await;
    assert_eq!(
        app.send(&old_token, "91", "9876543210").await.status,
        StatusCode::OK
    );

    let page = mine.get("/console/credentials").await;
    assert!(page.body.contains("revokes every token issued before"));
    assert_eq!(page.text_of("customer-id").as_deref(), Some(id.as_str()));

    // A wrong current password changes nothing.
    let r = change_password(&mut mine, "not it at all", "brand new password").await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(r.body.contains("The current password is wrong"));
    assert_eq!(
        app.send(&old_token, "91", "9876543211").await.status,
        StatusCode::OK
    );

    let r = change_password(&mut mine, PASSWORD, "brand new password").await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.body);
    assert_eq!(r.location(), Some("/console/credentials?changed=1"));
    let after = mine.get("/console/credentials?changed=1").await;
    assert_eq!(after.status, StatusCode::OK, "this session goes on");
    assert!(
        after
            .body
            .contains("Every token issued before now is revoked")
    );

    let revoked = app.send(&old_token, "91", "9876543212").await;
    assert_eq!(
        revoked.status,
        StatusCode::UNAUTHORIZED,
        "{:?}",
        revoked.body
    );
    assert_eq!(
        app.token_request(&id, PASSWORD).await.status,
        StatusCode::UNAUTHORIZED
    );
    let new_token = app.token(&id, "brand new password").await;
    assert_eq!(
        app.send(&new_token, "91", "9876543213").await.status,
        StatusCode::OK
    );

    let r = other.get("/console/dashboard").await;
    assert_eq!(
        r.location(),
        Some("/console/login"),
        "the other session survived"
    );
    assert_eq!(
        other.log_in(&id, PASSWORD).await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        other.log_in(&id, "brand new password").await.status,
        StatusCode::SEE_OTHER
    );
}

#[tokio::test]
async fn the_operator_lists_accounts_adds_credits_and_disables_one() {
    let app = spawn().await;
    let (mut user, id) = app.signed_up("customer@example.com").await;
    let cid = CustomerId::parse(&id).expect("id");

    // Customers do not see the operators' page.
    assert_eq!(
        user.get("/console/operators").await.status,
        StatusCode::NOT_FOUND
    );

    let mut ops = Visitor::new(&app.base);
    assert_eq!(
        ops.log_in(ADMIN_EMAIL, "wrong").await.status,
        StatusCode::UNAUTHORIZED
    );
    let r = ops
        .log_in(&ADMIN_EMAIL.to_ascii_uppercase(), ADMIN_PASSWORD)
        .await;
    assert_eq!(r.location(), Some("/console/operators"));
    // And the account pages are not theirs.
    assert_eq!(
        ops.get("/console/dashboard").await.location(),
        Some("/console/operators")
    );
    let list = ops.get("/console/operators").await;
    assert_eq!(list.status, StatusCode::OK);
    assert!(list.body.contains(&format!("data-customer=\"{id}\"")));
    assert!(list.body.contains("customer@example.com"));

    let r = grant_credits(&mut ops, &id, "250").await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.body);
    let account = app.account(&cid).await;
    assert_eq!(account.credits, 250);
    let page = ops.get(r.location().expect("location")).await;
    assert!(page.body.contains(&format!("Credits of {id} changed.")));
    let r = grant_credits(&mut ops, &id, "-50").await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    assert_eq!(app.account(&cid).await.credits, 200);
    for bad in ["0", "ten", "99999999999"] {
        let r = grant_credits(&mut ops, &id, bad).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{bad}");
    }
    let r = grant_credits(&mut ops, "C-000000000000000", "5").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);

    // Disabling: the API refuses its tokens, its console session ends, it
    // cannot log in; enabling undoes it.
    let token = app.token(&id, PASSWORD).await;
    let r = set_disabled(&mut ops, &id, "true").await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    assert!(app.account(&cid).await.disabled);
    assert_eq!(
        app.send(&token, "91", "9876543210").await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        app.token_request(&id, PASSWORD).await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        user.get("/console/dashboard").await.location(),
        Some("/console/login")
    );
    assert_eq!(
        user.log_in(&id, PASSWORD).await.status,
        StatusCode::UNAUTHORIZED
    );
    let list = ops.get("/console/operators").await;
    assert!(list.body.contains("disabled"));

    let r = set_disabled(&mut ops, &id, "false").await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    assert_eq!(
        user.log_in(&id, PASSWORD).await.status,
        StatusCode::SEE_OTHER
    );
    assert_eq!(
        app.send(&token, "91", "9876543210").await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn without_an_operator_configured_nobody_logs_in_as_one() {
    let app = spawn_tuned(|s| s.console.admin_password = None).await;
    let mut v = Visitor::new(&app.base);
    let r = v.log_in(ADMIN_EMAIL, ADMIN_PASSWORD).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        v.get("/console/operators").await.location(),
        Some("/console/login")
    );
}

#[tokio::test]
async fn a_server_without_the_console_serves_no_console() {
    let app = spawn_tuned(|s| s.console.enabled = false).await;
    let mut v = Visitor::new(&app.base);
    for path in ["/console", "/console/login", "/console/assets/htmx.min.js"] {
        let r = v.get(path).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{path}");
        assert!(
            r.body.contains("NOT_FOUND"),
            "the API's envelope: {}",
            r.body
        );
    }
}

/// Posts the Credentials page's password form, the new password confirmed.
async fn change_password(v: &mut Visitor, current: &str, new: &str) -> Page {
    let fields = [("current", current), ("new", new), ("confirm", new)];
    v.submit(
        "/console/credentials",
        "/console/credentials/password",
        &fields,
    )
    .await
}

/// The operator adds `amount` (a signed number, as typed) to `customer`'s
/// credits through the Operators page.
async fn grant_credits(ops: &mut Visitor, customer: &str, amount: &str) -> Page {
    let fields = [("customer_id", customer), ("amount", amount)];
    ops.submit("/console/operators", "/console/operators/credits", &fields)
        .await
}

/// The operator disables (`"true"`) or enables (`"false"`) `customer`
/// through the Operators page.
async fn set_disabled(ops: &mut Visitor, customer: &str, disabled: &str) -> Page {
    let fields = [("customer_id", customer), ("disabled", disabled)];
    ops.submit("/console/operators", "/console/operators/disabled", &fields)
        .await
}
