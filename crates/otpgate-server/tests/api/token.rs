//! Contract §1: the token endpoint, its failures, and what makes a token
//! stop working (expiry, password change, forgery).

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE_NO_PAD};
use reqwest::StatusCode;

use crate::helpers::*;

async fn token_is_an_hs512_jwt_with_sub_iat_exp() {
    let (app, t) = spawn_app_signed_in().await;
    let parts: Vec<&str> = t.split('.').collect();
    assert_eq!(parts.len(), 3);
    let header = URL_SAFE_NO_PAD.decode(parts[0]).unwrap();
    assert_eq!(header, br#"{"alg":"HS512"}"#);
    let claims: serde_json::Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
    assert_eq!(claims["sub"], app.account.customer_id.as_str());
    assert_eq!(
        claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(),
        7 * 24 * 3600
    );
}

async fn key_without_padding_and_extra_params_are_accepted() {
    let app = spawn_app().await;
    let r = app
        .token_request(&[
            ("customerId", app.account.customer_id.as_str()),
            ("key", &STANDARD_NO_PAD.encode(PASSWORD)),
            ("country", "IN"),
            ("email", "a@b.c"),
            ("scope", "NEW"),
            ("whatever", "1"),
        ])
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.body["status"], 200);
    assert_eq!(r.content_type.as_deref(), Some("application/json"));
}

async fn missing_parameters_and_bad_base64_get_400_with_status_and_error() {
    let app = spawn_app().await;
    let cid = app.account.customer_id.as_str().to_owned();
    for params in [
        vec![("key", STANDARD.encode(PASSWORD))],
        vec![("customerId", cid.clone())],
        vec![("customerId", cid.clone()), ("key", "not base64!!".into())],
    ] {
        let p: Vec<(&str, &str)> = params.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let r = app.token_request(&p).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{p:?}");
        assert_eq!(r.body["status"], 400);
        assert!(r.body["error"].as_str().unwrap().len() > 5);
        assert!(r.body.get("token").is_none());
    }
}

async fn wrong_key_unknown_customer_and_disabled_account_get_the_same_401() {
    let app = spawn_app().await;
    let wrong = app.login("wrong password").await;
    let unknown = app.token_with("C-000000000000000", PASSWORD).await;
    app.store
        .account_set_disabled(&app.account.customer_id, true)
        .await
        .unwrap();
    let disabled = app.login(PASSWORD).await;
    for r in [&wrong, &unknown, &disabled] {
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);
        assert_eq!(r.body["status"], 401);
    }
    assert_eq!(wrong.body, unknown.body);
    assert_eq!(wrong.body, disabled.body);
}

async fn repeated_failures_are_throttled_with_429_and_retry_after() {
    let app = spawn_app().await;
    let max = app.settings.token.max_failures;
    for _ in 0..max {
        let r = app.login("wrong password").await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    }
    // Now even the right key is refused until the window passes.
    let r = app.login(PASSWORD).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS, "{:?}", r.body);
    assert_eq!(r.body["status"], 429);
    // Every failure was at the same instant of the manual clock: the wait is
    // the whole window, exactly.
    let window = app.settings.token.failure_window_secs;
    assert_eq!(r.retry_after.as_deref(), Some(window.to_string().as_str()));
    // A millisecond before the window has passed the right key is still
    // refused, with one second left; at the end of the window it is let in.
    app.clock
        .advance_ms(i64::try_from(window).unwrap() * 1000 - 1);
    let r = app.login(PASSWORD).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS, "{:?}", r.body);
    assert_eq!(r.retry_after.as_deref(), Some("1"));
    app.clock.advance_ms(1);
    app.token().await;
}

/// A guesser spread over many addresses (here: named by a trusted proxy)
/// blocks the customerId for new addresses once it passes
/// `token.max_failures_per_customer`, but the address the owner got a token
/// from keeps working.
async fn a_distributed_guesser_leaves_the_owners_usual_address_working() {
    let mut s = test_settings();
    s.http.trusted_proxies = vec!["127.0.0.1".into()];
    s.token.max_failures_per_customer = 5;
    let app = spawn_app_with(s).await;
    let cid = app.account.customer_id.as_str().to_owned();
    let from = |xff: String, key: &'static str| {
        let (http, url, cid) = (
            app.http.clone(),
            app.url(otpgate_api::paths::TOKEN),
            cid.clone(),
        );
        async move {
            call(
                http.get(url)
                    .query(&[("customerId", cid.as_str()), ("key", &STANDARD.encode(key))])
                    .header("x-forwarded-for", xff),
            )
            .await
        }
    };
    let owner = "198.51.100.7".to_owned();
    assert_eq!(from(owner.clone(), PASSWORD).await.status, StatusCode::OK);
    for i in 0..5 {
        let r = from(format!("203.0.113.{i}"), "wrong password").await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{i}");
    }
    let r = from("203.0.113.99".into(), PASSWORD).await;
    assert_eq!(
        r.status,
        StatusCode::TOO_MANY_REQUESTS,
        "a new address is refused for this customerId now: {:?}",
        r.body
    );
    let r = from(owner, PASSWORD).await;
    assert_eq!(
        r.status,
        StatusCode::OK,
        "the owner's address: {:?}",
        r.body
    );
}

async fn expired_token_gets_401_on_both_versions() {
    let (app, t) = spawn_app_signed_in().await;
    // Used once while good, so the server has checked (and kept) it.
    let r = app.validate(Version::V3, &t, "1", "1234").await;
    assert_eq!(r.code(), 505, "the token authenticates: {:?}", r.body);
    app.clock.advance_ms(7 * 24 * 3600 * 1000 + 1000);
    for v in BOTH {
        let r = app.send_to(v, &t, "91", "9876543210").await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);
        assert_eq!(r.code(), 401);
        assert!(r.body.get("data").is_none());
        assert!(r.error_message().contains("expired"));
    }
}

async fn changing_the_password_revokes_earlier_tokens() {
    let app = spawn_app().await;
    let old = app.token().await;
    // Used once while good, so the server has checked (and kept) it.
    let r = app.validate(Version::V3, &old, "1", "1234").await;
    assert_eq!(r.code(), 505, "the token authenticates: {:?}", r.body);
    otpgate_server::accounts::set_password(
        app.store.as_ref(),
        &app.account.customer_id,
        "a brand new password",
    )
    .await
    .unwrap();
    let r = app.validate(Version::V3, &old, "1", "1234").await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{:?}", r.body);
    let fresh = app.login("a brand new password").await;
    assert_eq!(fresh.status, StatusCode::OK);
    let t = fresh.body["token"].as_str().unwrap();
    let r = app.validate(Version::V3, t, "1", "1234").await;
    assert_eq!(r.code(), 505, "a fresh token authenticates: {:?}", r.body);
}

async fn forged_alg_none_and_tampered_tokens_get_401() {
    let (app, t) = spawn_app_signed_in().await;
    let parts: Vec<&str> = t.split('.').collect();
    let none = format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(r#"{"alg":"none"}"#),
        parts[1]
    );
    let other = app.account_now().await;
    let _ = other;
    let tampered_claims = URL_SAFE_NO_PAD.encode(format!(
        r#"{{"sub":"{}","iat":0,"exp":99999999999}}"#,
        app.account.customer_id
    ));
    let tampered = format!("{}.{}.{}", parts[0], tampered_claims, parts[2]);
    let hs256 = format!(
        "{}.{}.{}",
        URL_SAFE_NO_PAD.encode(r#"{"alg":"HS256"}"#),
        parts[1],
        parts[2]
    );
    for bad in [none.as_str(), &tampered, &hs256, "garbage", "a.b.c", ""] {
        let r = app.validate(Version::V2, bad, "1", "1234").await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{bad}: {:?}", r.body);
        assert_eq!(r.code(), 401);
    }
    // No header at all.
    let r = call(
        app.http
            .get(app.url(Version::V3.validate_path()))
            .query(&[("verificationId", "1"), ("code", "1234")]),
    )
    .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
}

async fn header_name_is_case_insensitive() {
    let (app, t) = spawn_app_signed_in().await;
    for name in ["AuthToken", "authtoken", "AUTHTOKEN"] {
        let r = call(
            app.http
                .get(app.url(Version::V3.validate_path()))
                .header(name, &t)
                .query(&[("verificationId", "1"), ("code", "1234")]),
        )
        .await;
        assert_eq!(r.code(), 505, "{name}");
    }
}

crate::both_stores!(
    token_is_an_hs512_jwt_with_sub_iat_exp,
    key_without_padding_and_extra_params_are_accepted,
    missing_parameters_and_bad_base64_get_400_with_status_and_error,
    wrong_key_unknown_customer_and_disabled_account_get_the_same_401,
    repeated_failures_are_throttled_with_429_and_retry_after,
    a_distributed_guesser_leaves_the_owners_usual_address_working,
    expired_token_gets_401_on_both_versions,
    changing_the_password_revokes_earlier_tokens,
    forged_alg_none_and_tampered_tokens_get_401,
    header_name_is_case_insensitive,
);
