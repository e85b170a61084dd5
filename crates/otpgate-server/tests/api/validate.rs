//! Contract §3 and §4 on the validate path: the success shapes of v2 and
//! v3, every failure code, precedence, and exactly-once completion.

use otpgate_core::VerificationId;
use reqwest::StatusCode;

use crate::helpers::*;

async fn right_code_gives_200_with_string_id_on_v2_and_number_on_v3() {
    let (app, t) = spawn_app_signed_in().await;
    for (i, v) in BOTH.into_iter().enumerate() {
        let national = format!("987650010{i}");
        let (id, code) = app.sent_code(v, &t, &national).await;
        let r = app.validate(v, &t, &id, &code).await;
        assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
        assert_eq!(r.body["responseCode"], 200);
        assert_eq!(r.body["message"], "SUCCESS");
        let d = &r.body["data"];
        match v {
            Version::V2 => assert_eq!(d["verificationId"], id.as_str()),
            Version::V3 => assert_eq!(d["verificationId"].as_u64(), Some(id.parse().unwrap())),
        }
        assert_eq!(d["mobileNumber"], national.as_str());
        assert_eq!(d["verificationStatus"], "VERIFICATION_COMPLETED");
        assert_eq!(d["responseCode"], "200");
        assert!(d["errorMessage"].is_null());
        assert!(d["authToken"].is_null());
        assert_eq!(d["transactionId"].as_str().unwrap().len(), 36);
        // 703 ever after, even with the right code.
        let again = app.validate(v, &t, &id, &code).await;
        assert_eq!(again.code(), 703, "{:?}", again.body);
        assert_eq!(again.status, StatusCode::BAD_REQUEST);
        assert_eq!(again.body["message"], "ALREADY_VERIFIED");
        assert!(again.body.get("data").is_none());
    }
}

async fn post_is_accepted_on_validate() {
    let (app, t) = spawn_app_signed_in().await;
    let (id, code) = app.sent_code(Version::V3, &t, "9876500110").await;
    let r = call(
        app.post_as(Version::V3.validate_path(), &t)
            .form(&[("verificationId", id.as_str()), ("code", code.as_str())]),
    )
    .await;
    assert_eq!(r.code(), 200, "{:?}", r.body);
}

async fn five_wrong_codes_count_down_then_800_even_for_the_right_code() {
    let (app, t) = spawn_app_signed_in().await;
    for v in BOTH {
        let national = v.pick("9876500120", "9876500121");
        let (id, code) = app.sent_code(v, &t, national).await;
        let wrong = TestApp::wrong(&code);
        for left in (0..5).rev() {
            let r = app.validate(v, &t, &id, &wrong).await;
            assert_eq!(r.code(), 702, "{:?}", r.body);
            assert_eq!(r.status, StatusCode::BAD_REQUEST);
            assert_eq!(r.body["message"], "WRONG_OTP_PROVIDED");
            let msg = r.body["errorMessage"].as_str().unwrap();
            assert!(msg.contains(&format!("{left} attempt")), "{msg}");
            assert!(!msg.contains(&code), "the code leaked: {msg}");
            assert!(r.body.get("data").is_none());
        }
        let r = app.validate(v, &t, &id, &code).await;
        assert_eq!(r.code(), 800, "{:?}", r.body);
        assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(r.body["message"], "MAXIMUM_LIMIT_REACHED");
        assert!(r.retry_after.is_some());
        // A dead verification does not block a new send.
        app.send_ok(v, &t, national).await;
    }
}

async fn an_expired_code_gets_705_and_a_wrong_code_never_extends_validity() {
    let (app, t) = spawn_app_signed_in().await;
    for v in BOTH {
        let national = v.pick("9876500130", "9876500131");
        let (id, code) = app.sent_code(v, &t, national).await;
        app.clock.advance_ms(59_000);
        assert_eq!(app.validate_wrong(v, &t, &id, &code).await.code(), 702);
        app.clock.advance_ms(1_000);
        let r = app.validate(v, &t, &id, &code).await;
        assert_eq!(r.code(), 705, "{:?}", r.body);
        assert_eq!(r.body["message"], "VERIFICATION_EXPIRED");
        assert_eq!(r.status, StatusCode::BAD_REQUEST);
    }
}

async fn unknown_ids_and_other_accounts_ids_get_the_same_505() {
    let (app, t) = spawn_app_signed_in().await;
    let other = create_account(&app.store, &app.clock, &app.settings, None).await;
    let other_t = app.token_for(&other).await;
    let theirs = app.send_ok(Version::V3, &other_t, "9876500140").await;
    for v in BOTH {
        let unknown = app.validate(v, &t, "12345", "1234").await;
        let foreign = app.validate(v, &t, &theirs, "1234").await;
        for r in [&unknown, &foreign] {
            assert_eq!(r.code(), 505, "{:?}", r.body);
            assert_eq!(r.status, StatusCode::BAD_REQUEST);
            assert_eq!(r.body["message"], "INVALID_VERIFICATION_ID");
        }
        assert_eq!(unknown.body, foreign.body);
    }
    // And the foreign attempts did not touch the owner's verification.
    let code = app.code_for(&theirs).await;
    assert_eq!(
        app.validate(Version::V3, &other_t, &theirs, &code)
            .await
            .code(),
        200
    );
}

async fn a_failed_delivery_gets_700_and_refunds_the_charge() {
    let gate = std::sync::Arc::new(tokio::sync::Semaphore::new(0));
    let router =
        otpgate_sms::worker::SingleRoute(vec![std::sync::Arc::new(RejectAll(Some(gate.clone())))]);
    let app = spawn_app_routed(test_settings(), Some(std::sync::Arc::new(router))).await;
    let t = app.token().await;
    let balance = || async {
        let a = app.account_now().await;
        a.test_credits + a.credits
    };
    let before = balance().await;
    for v in BOTH {
        let national = v.pick("9876500150", "9876500151");
        let id = app.send_ok(v, &t, national).await;
        let vid = VerificationId::parse(&id).unwrap();
        // The gateway has not answered yet: the send is charged.
        let charged = app.verification_now(vid).await;
        assert_eq!(charged.cost, 1, "{charged:?}");
        assert_eq!(balance().await, before - 1, "one credit charged on send");
        gate.add_permits(1);
        let mut status = None;
        for _ in 0..300 {
            let m = app
                .store
                .outbox_for_verification(vid)
                .await
                .unwrap()
                .unwrap();
            if m.status == otpgate_core::DeliveryStatus::Failed {
                status = Some(m);
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        let m = status.expect("the worker marks the message failed");
        assert!(m.text.is_none(), "the text (it holds the code) is erased");
        let r = app.validate(v, &t, &id, "1234").await;
        assert_eq!(r.code(), 700, "{:?}", r.body);
        assert_eq!(r.body["message"], "VERIFICATION_FAILED");
        assert_eq!(r.status, StatusCode::BAD_REQUEST);
        // The refund came with the failure, before the next send.
        let refunded = app.verification_now(vid).await;
        assert_eq!(refunded.cost, 0, "{refunded:?}");
        assert_eq!(balance().await, before, "the credit is back");
    }
}

async fn precedence_completed_beats_expired() {
    let (app, t) = spawn_app_signed_in().await;
    let (id, code) = app.sent_code(Version::V3, &t, "9876500160").await;
    assert_eq!(app.validate(Version::V3, &t, &id, &code).await.code(), 200);
    app.clock.advance_ms(3_600_000);
    assert_eq!(app.validate(Version::V3, &t, &id, &code).await.code(), 703);
}

async fn precedence_dead_beats_expired() {
    let (app, t) = spawn_app_signed_in().await;
    let (id, code) = app.sent_code(Version::V2, &t, "9876500170").await;
    for _ in 0..5 {
        app.validate_wrong(Version::V2, &t, &id, &code).await;
    }
    app.clock.advance_ms(3_600_000);
    assert_eq!(app.validate(Version::V2, &t, &id, &code).await.code(), 800);
}

async fn twenty_concurrent_right_codes_give_exactly_one_200() {
    let (app, t) = spawn_app_signed_in().await;
    let (id, code) = app.sent_code(Version::V3, &t, "9876500180").await;
    let tries = (0..20).map(|i| {
        let v = if i % 2 == 0 { Version::V2 } else { Version::V3 };
        let (app, t, id, code) = (&app, &t, &id, &code);
        async move { app.validate(v, t, id, code).await.code() }
    });
    let codes = futures::future::join_all(tries).await;
    assert_eq!(codes.iter().filter(|c| **c == 200).count(), 1, "{codes:?}");
    assert_eq!(codes.iter().filter(|c| **c == 703).count(), 19, "{codes:?}");
}

async fn concurrent_wrong_codes_never_exceed_the_attempt_limit() {
    let (app, t) = spawn_app_signed_in().await;
    let (id, code) = app.sent_code(Version::V3, &t, "9876500190").await;
    let wrong = TestApp::wrong(&code);
    let tries = (0..20).map(|_| {
        let (app, t, id, wrong) = (&app, &t, &id, &wrong);
        async move { app.validate(Version::V3, t, id, wrong).await.code() }
    });
    let codes = futures::future::join_all(tries).await;
    assert_eq!(codes.iter().filter(|c| **c == 702).count(), 5, "{codes:?}");
    assert_eq!(codes.iter().filter(|c| **c == 800).count(), 15, "{codes:?}");
}

async fn the_wrong_code_budget_across_verifications_gets_800() {
    let app = spawn_app_tuned(|s| s.limits.wrong_code_max = 7).await;
    let t = app.token().await;
    // A new verification to the number and `n` wrong codes for it, each
    // answered 702; its (id, code).
    let wrong_codes = async |n| {
        let (id, code) = app.sent_code(Version::V3, &t, "9876500200").await;
        for _ in 0..n {
            let r = app.validate_wrong(Version::V3, &t, &id, &code).await;
            assert_eq!(r.code(), 702);
        }
        (id, code)
    };
    wrong_codes(5).await;
    let (id, code) = wrong_codes(2).await;
    // Seven wrong codes for this number: even the right one is refused now,
    // and so is a new send.
    assert_eq!(app.validate(Version::V3, &t, &id, &code).await.code(), 800);
    app.clock.advance_ms(61_000);
    let r = app.send_to(Version::V3, &t, "91", "9876500200").await;
    assert_eq!(r.code(), 800, "{:?}", r.body);
}

async fn customer_id_other_than_the_tokens_gets_501_on_validate() {
    let (app, t) = spawn_app_signed_in().await;
    for v in BOTH {
        let r = call(
            app.http
                .get(app.url(v.validate_path()))
                .header("authToken", &t)
                .query(&[
                    ("verificationId", "1"),
                    ("code", "1234"),
                    ("customerId", "C-0000000000000AB"),
                ]),
        )
        .await;
        assert_eq!(r.code(), 501, "{:?}", r.body);
    }
}

crate::both_stores!(
    right_code_gives_200_with_string_id_on_v2_and_number_on_v3,
    post_is_accepted_on_validate,
    five_wrong_codes_count_down_then_800_even_for_the_right_code,
    an_expired_code_gets_705_and_a_wrong_code_never_extends_validity,
    unknown_ids_and_other_accounts_ids_get_the_same_505,
    a_failed_delivery_gets_700_and_refunds_the_charge,
    precedence_completed_beats_expired,
    precedence_dead_beats_expired,
    twenty_concurrent_right_codes_give_exactly_one_200,
    concurrent_wrong_codes_never_exceed_the_attempt_limit,
    the_wrong_code_budget_across_verifications_gets_800,
    customer_id_other_than_the_tokens_gets_501_on_validate,
);
