//! Contract §2, §4 and §5 on the send path: the success shape, 506 and its
//! data, limits, balance, destinations.

use reqwest::StatusCode;

use crate::helpers::*;

fn sms(national: &str) -> Vec<(&'static str, String)> {
    vec![
        ("countryCode", "91".into()),
        ("mobileNumber", national.into()),
        ("flowType", "SMS".into()),
    ]
}

fn refs<'a>(p: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    p.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

async fn send_returns_the_contracts_shape_on_both_versions() {
    let (app, t) = spawn_app_signed_in().await;
    for (i, v) in BOTH.into_iter().enumerate() {
        let national = format!("987654321{i}");
        let r = app.send(v, &t, &refs(&sms(&national))).await;
        assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
        assert_eq!(r.content_type.as_deref(), Some("application/json"));
        assert_eq!(r.body["responseCode"], 200);
        assert_eq!(r.body["message"], "SUCCESS");
        let d = &r.body["data"];
        let id = d["verificationId"].as_str().expect("string id");
        let n: u64 = id.parse().unwrap();
        assert!(n > 0 && n < (1 << 53));
        assert_eq!(d["mobileNumber"], national.as_str());
        assert_eq!(d["responseCode"], "200");
        assert!(d["errorMessage"].is_null());
        assert_eq!(d["timeout"], "60");
        assert!(d["smsCLI"].is_null());
        let tx = d["transactionId"].as_str().unwrap();
        assert_eq!(tx.len(), 36);
        assert_eq!(d["referenceId"], tx);
        assert_eq!(d["flowType"], "SMS");
        assert!(r.body.get("errorMessage").is_none());
    }
}

async fn otp_length_and_timeout_are_honoured() {
    let (app, t) = spawn_app_signed_in().await;
    let mut p = sms("9876500001");
    p.push(("otpLength", "8".into()));
    p.push(("timeout", "120".into()));
    let r = app.send(Version::V3, &t, &refs(&p)).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.body["data"]["timeout"], "120");
    let id = r.body["data"]["verificationId"].as_str().unwrap();
    let code = app.code_for(id).await;
    assert_eq!(code.len(), 8);
    let text = app
        .store
        .inbox_list(None, Some("919876500001"), 1)
        .await
        .unwrap()[0]
        .text
        .clone();
    assert!(text.contains("2 min"), "{text}");
    assert!(text.contains("otpgate"), "{text}");
}

async fn out_of_range_length_and_timeout_get_400() {
    let (app, t) = spawn_app_signed_in().await;
    for (k, v) in [
        ("otpLength", "3"),
        ("otpLength", "9"),
        ("otpLength", "six"),
        ("timeout", "19"),
        ("timeout", "301"),
        ("timeout", "-5"),
    ] {
        let mut p = sms("9876500002");
        p.push((k, v.into()));
        let r = app.send(Version::V2, &t, &refs(&p)).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{k}={v}");
        assert_eq!(r.code(), 400);
        assert!(r.body.get("data").is_none());
        assert!(r.error_message().contains(k), "{:?}", r.body);
    }
}

async fn a_second_send_while_pending_gets_506_with_the_pending_id_and_costs_nothing() {
    let (app, t) = spawn_app_signed_in().await;
    for v in BOTH {
        let national = v.pick("9876500010", "9876500011");
        let id = app.send_ok(v, &t, national).await;
        let before = app.account_now().await;
        app.clock.advance_ms(19_000);
        let r = app.send(v, &t, &refs(&sms(national))).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST);
        assert_eq!(r.code(), 506);
        assert_eq!(r.body["message"], "REQUEST_ALREADY_EXISTS");
        let d = &r.body["data"];
        assert_eq!(d["verificationId"], id.as_str());
        assert_eq!(d["mobileNumber"], national);
        assert_eq!(d["responseCode"], "506");
        assert_eq!(d["errorMessage"], "REQUEST_ALREADY_EXISTS");
        assert_eq!(d["timeout"], "41");
        let after = app.account_now().await;
        assert_eq!(
            before.test_credits + before.credits,
            after.test_credits + after.credits
        );
        // Once it has expired, a send creates a new one (the "resend").
        app.clock.advance_ms(42_000);
        let again = app.send_ok(v, &t, national).await;
        assert_ne!(again, id);
    }
}

async fn a_completed_verification_does_not_block_a_new_send() {
    let (app, t) = spawn_app_signed_in().await;
    let (id, code) = app.sent_code(Version::V3, &t, "9876500020").await;
    assert_eq!(app.validate(Version::V3, &t, &id, &code).await.code(), 200);
    let again = app.send_ok(Version::V3, &t, "9876500020").await;
    assert_ne!(again, id);
}

async fn unknown_dialing_code_gets_511_and_invalid_number_400() {
    let (app, t) = spawn_app_signed_in().await;
    for v in BOTH {
        let r = app.send_to(v, &t, "999", "9876543210").await;
        assert_eq!(r.code(), 511, "{:?}", r.body);
        assert_eq!(r.status, StatusCode::BAD_REQUEST);
        assert_eq!(r.body["message"], "INVALID_COUNTRY_CODE");
        let r = app.send_to(v, &t, "91", "12345").await;
        assert_eq!(r.code(), 400, "{:?}", r.body);
        let r = app.send_to(v, &t, "+91", "098765-43210").await;
        assert_eq!(
            r.code(),
            if v == Version::V2 { 200 } else { 506 },
            "{:?}",
            r.body
        );
    }
}

async fn a_country_the_account_may_not_send_to_gets_511() {
    let app = spawn_app().await;
    let settings = otpgate_store::AccountSettings {
        allowed_country_codes: Some(vec![44]),
        ..Default::default()
    };
    app.store
        .account_set_settings(&app.account.customer_id, &settings)
        .await
        .unwrap();
    let t = app.token().await;
    let r = app.send(Version::V3, &t, &refs(&sms("9876500030"))).await;
    assert_eq!(r.code(), 511, "{:?}", r.body);
    let r = app.send_to(Version::V3, &t, "44", "7400123456").await;
    assert_eq!(r.code(), 200, "{:?}", r.body);
}

async fn server_wide_blocked_countries_get_511_and_blocked_prefixes_400() {
    let mut settings = test_settings();
    settings.fraud.blocked_country_codes = vec![44];
    settings.fraud.blocked_prefixes = vec!["+9198765".into()];
    let app = spawn_app_with(settings).await;
    let t = app.token().await;
    let r = app.send_to(Version::V3, &t, "44", "7400123456").await;
    assert_eq!(r.code(), 511, "{:?}", r.body);
    assert!(r.error_message().contains("does not send to that country"));
    let r = app.send(Version::V3, &t, &refs(&sms("9876500031"))).await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::BAD_REQUEST, 400),
        "{:?}",
        r.body
    );
    assert!(r.error_message().contains("+9198765"), "{:?}", r.body);
    let r = app.send(Version::V3, &t, &refs(&sms("9812300031"))).await;
    assert_eq!(r.code(), 200, "{:?}", r.body);
}

async fn flows_without_a_channel_get_400() {
    let (app, t) = spawn_app_signed_in().await;
    for flow in ["WHATSAPP", "RCS", "SAUTH", "PIGEON"] {
        let r = app
            .send(
                Version::V3,
                &t,
                &[
                    ("countryCode", "91"),
                    ("mobileNumber", "9876500040"),
                    ("flowType", flow),
                ],
            )
            .await;
        assert_eq!(r.code(), 400, "{flow}");
        assert!(r.error_message().contains("flowType"));
    }
}

async fn customer_id_other_than_the_tokens_gets_501() {
    let (app, t) = spawn_app_signed_in().await;
    for v in BOTH {
        let mut p = sms("9876500050");
        p.push(("customerId", "C-0000000000000AB".into()));
        let r = app.send(v, &t, &refs(&p)).await;
        assert_eq!(r.code(), 501, "{:?}", r.body);
        assert_eq!(r.status, StatusCode::BAD_REQUEST);
        assert_eq!(r.body["message"], "INVALID_CUSTOMER_ID");
        let mut p = sms("9876500050");
        p.push(("customerId", app.account.customer_id.as_str().into()));
        let r = app.send(v, &t, &refs(&p)).await;
        assert!(r.code() == 200 || r.code() == 506, "{:?}", r.body);
    }
}

async fn no_credits_gets_402_and_test_credits_are_spent_first() {
    let app = spawn_app().await;
    let poor = create_account(&app.store, &app.clock, &app.settings, Some(1)).await;
    assert_eq!((poor.credits, poor.test_credits), (1, 0));
    let t = app.token_for(&poor).await;
    app.send_ok(Version::V3, &t, "9876500060").await;
    for (v, national) in [(Version::V2, "9876500061"), (Version::V3, "9876500063")] {
        let r = app.send(v, &t, &refs(&sms(national))).await;
        assert_eq!(r.code(), 402, "{v:?}: {:?}", r.body);
        assert_eq!(r.status, StatusCode::PAYMENT_REQUIRED);
        assert_eq!(r.body["message"], "INSUFFICIENT_BALANCE");
        assert!(r.body.get("data").is_none());
    }

    let t = app.token().await;
    let before = app.account_now().await;
    app.send_ok(Version::V3, &t, "9876500062").await;
    let after = app.account_now().await;
    assert_eq!(after.test_credits, before.test_credits - 1);
    assert_eq!(after.credits, before.credits);
}

async fn concurrent_sends_never_drive_the_balance_below_zero() {
    let app = spawn_app().await;
    let acct = create_account(&app.store, &app.clock, &app.settings, Some(7)).await;
    let t = app.token_for(&acct).await;
    let sends = (0..30).map(|i| {
        let national = format!("98765{i:05}");
        let (app, t) = (&app, &t);
        async move {
            app.send(Version::V3, t, &refs(&sms(&national)))
                .await
                .code()
        }
    });
    let codes = futures::future::join_all(sends).await;
    assert_eq!(codes.iter().filter(|c| **c == 200).count(), 7, "{codes:?}");
    assert_eq!(codes.iter().filter(|c| **c == 402).count(), 23, "{codes:?}");
    let a = app.account_of(&acct.customer_id).await;
    assert_eq!(a.credits, 0);
}

async fn the_per_number_limit_gets_800_with_retry_after() {
    let (app, t) = spawn_app_signed_in().await;
    let max = app.settings.limits.per_number_max;
    for _ in 0..max {
        app.send_ok(Version::V3, &t, "9876500070").await;
        app.clock.advance_ms(61_000);
    }
    let r = app.send(Version::V3, &t, &refs(&sms("9876500070"))).await;
    assert_eq!(r.code(), 800, "{:?}", r.body);
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(r.body["message"], "MAXIMUM_LIMIT_REACHED");
    // The manual clock makes the wait exact: the first send leaves the window
    // `window` seconds after it was made, and `max` steps of 61 s have passed.
    let wait: i64 = r.retry_after.expect("Retry-After").parse().unwrap();
    let window = i64::from(app.settings.limits.per_number_window_secs);
    assert_eq!(wait, window - i64::from(max) * 61);
    // Another number is not affected.
    app.send_ok(Version::V3, &t, "9876500071").await;
    // A millisecond before the wait is over the number is still limited...
    app.clock.advance_ms(wait * 1000 - 1);
    let r = app.send(Version::V3, &t, &refs(&sms("9876500070"))).await;
    assert_eq!(r.code(), 800, "{:?}", r.body);
    assert_eq!(r.retry_after.as_deref(), Some("1"));
    // ...and once it is over it may be sent to again.
    app.clock.advance_ms(1);
    app.send_ok(Version::V3, &t, "9876500070").await;
}

async fn the_per_account_rate_limit_gets_800_when_configured() {
    let app = spawn_app_tuned(|s| s.limits.per_account_per_second = 2).await;
    let t = app.token().await;
    app.send_ok(Version::V3, &t, "9876500080").await;
    app.send_ok(Version::V3, &t, "9876500081").await;
    let r = app.send(Version::V3, &t, &refs(&sms("9876500082"))).await;
    assert_eq!(r.code(), 800, "{:?}", r.body);
    assert!(r.retry_after.is_some());
    app.clock.advance_ms(1001);
    app.send_ok(Version::V3, &t, "9876500082").await;
}

async fn the_inbox_forgets_messages_after_its_retention() {
    let app = spawn_app_tuned(|s| s.inbox.retention_secs = 10).await;
    let t = app.token().await;
    let (kept, _) = app.sent_code(Version::V3, &t, "9876500090").await;
    app.clock.advance_ms(5_000);
    let (young, _) = app.sent_code(Version::V3, &t, "9876500091").await;
    // The first is now past 10 s, the second 5 s old.
    app.clock.advance_ms(6_000);
    let ids = |entries: &[otpgate_store::InboxEntry]| -> Vec<String> {
        entries
            .iter()
            .filter_map(|e| e.verification_id.map(|v| v.get().to_string()))
            .collect()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let left = ids(&app.store.inbox_list(None, None, 100).await.unwrap());
        if !left.contains(&kept) {
            assert_eq!(left, vec![young.clone()], "only the expired one goes");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the expired message is still in the inbox"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

crate::both_stores!(
    the_inbox_forgets_messages_after_its_retention,
    send_returns_the_contracts_shape_on_both_versions,
    otp_length_and_timeout_are_honoured,
    out_of_range_length_and_timeout_get_400,
    a_second_send_while_pending_gets_506_with_the_pending_id_and_costs_nothing,
    a_completed_verification_does_not_block_a_new_send,
    unknown_dialing_code_gets_511_and_invalid_number_400,
    a_country_the_account_may_not_send_to_gets_511,
    server_wide_blocked_countries_get_511_and_blocked_prefixes_400,
    flows_without_a_channel_get_400,
    customer_id_other_than_the_tokens_gets_501,
    no_credits_gets_402_and_test_credits_are_spent_first,
    concurrent_sends_never_drive_the_balance_below_zero,
    the_per_number_limit_gets_800_with_retry_after,
    the_per_account_rate_limit_gets_800_when_configured,
);
