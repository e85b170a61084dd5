//! Extensions beyond the hosted contract and its last wire gaps: the status
//! endpoint, multipart bodies, CORS, and verification ids that fit a signed
//! 32-bit integer (ids issued wider before still validate).

use std::collections::HashSet;

use futures::StreamExt;

use otpgate_core::{Clock, CodeKey, OtpCode, PhoneNumber, VerificationId};
use otpgate_store::{CreateOutcome, NewVerification, SendLimits};
use reqwest::StatusCode;

use crate::helpers::*;

both_stores!(
    status_follows_a_verification_from_pending_to_completed_on_both_versions,
    status_of_another_accounts_or_an_unknown_id_is_505,
    sends_through_the_api_get_distinct_ids_below_2_31,
    an_id_issued_wider_before_the_change_still_validates,
);

async fn status(app: &TestApp, v: Version, token: &str, id: &str) -> Resp {
    let path = match v {
        Version::V2 => otpgate_api::paths::STATUS_V2,
        Version::V3 => otpgate_api::paths::STATUS_V3,
    };
    call(
        app.http
            .get(app.url(path))
            .header("authToken", token)
            .query(&[("verificationId", id)]),
    )
    .await
}

async fn status_follows_a_verification_from_pending_to_completed_on_both_versions() {
    let (app, t) = spawn_app_signed_in().await;
    for (i, v) in BOTH.into_iter().enumerate() {
        let national = format!("987650000{i}");
        let (id, code) = app.sent_code(v, &t, &national).await;
        // Delivered to the inbox: the worker has recorded it as sent.
        let mut r = status(&app, v, &t, &id).await;
        for _ in 0..200 {
            if r.body["data"]["deliveryStatus"] != "QUEUED" {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            r = status(&app, v, &t, &id).await;
        }
        assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
        assert_eq!(r.content_type.as_deref(), Some("application/json"));
        let d = &r.body["data"];
        match v {
            Version::V2 => assert_eq!(d["verificationId"], id.as_str()),
            Version::V3 => assert_eq!(d["verificationId"], id.parse::<u64>().unwrap()),
        }
        assert_eq!(d["mobileNumber"], national.as_str());
        assert_eq!(d["verificationStatus"], "VERIFICATION_PENDING");
        assert_eq!(d["deliveryStatus"], "SENT");
        assert_eq!(d["channel"], "inbox");
        assert_eq!(d["flowType"], "SMS");
        assert_eq!(d["attemptsLeft"], 5);
        assert_eq!(d["timeout"], "60");
        assert!(d["completedAt"].is_null());

        let wrong = app.validate_wrong(v, &t, &id, &code).await;
        assert_eq!(wrong.code(), 702);
        let r = status(&app, v, &t, &id).await;
        assert_eq!(r.body["data"]["attemptsLeft"], 4);
        app.clock.advance_ms(10_500);
        assert_eq!(status(&app, v, &t, &id).await.body["data"]["timeout"], "50");

        assert_eq!(app.validate(v, &t, &id, &code).await.code(), 200);
        let r = status(&app, v, &t, &id).await;
        assert_eq!(
            r.body["data"]["verificationStatus"],
            "VERIFICATION_COMPLETED"
        );
        assert!(r.body["data"]["completedAt"].is_i64());
        // Polling changes nothing: the code stays used.
        assert_eq!(app.validate(v, &t, &id, &code).await.code(), 703);
    }
    // Blocked and expired, as validate would answer them (800, then 705).
    let (id, code) = app.sent_code(Version::V3, &t, "9876500009").await;
    for _ in 0..5 {
        let r = app.validate_wrong(Version::V3, &t, &id, &code).await;
        assert_eq!(r.code(), 702);
    }
    let r = status(&app, Version::V3, &t, &id).await;
    assert_eq!(r.body["data"]["verificationStatus"], "VERIFICATION_BLOCKED");
    assert_eq!(r.body["data"]["attemptsLeft"], 0);
    assert_eq!(app.validate(Version::V3, &t, &id, &code).await.code(), 800);
    let id = app.send_ok(Version::V3, &t, "9876500008").await;
    app.clock.advance_ms(61_000);
    let r = status(&app, Version::V3, &t, &id).await;
    assert_eq!(r.body["data"]["verificationStatus"], "VERIFICATION_EXPIRED");
    assert_eq!(r.body["data"]["timeout"], "0");
    assert_eq!(app.validate(Version::V3, &t, &id, "0000").await.code(), 705);
}

async fn status_of_another_accounts_or_an_unknown_id_is_505() {
    let (app, t) = spawn_app_signed_in().await;
    let id = app.send_ok(Version::V3, &t, "9876500001").await;
    let other = create_account(&app.store, &app.clock, &app.settings, None).await;
    let t2 = app.token_for(&other).await;
    let theirs = status(&app, Version::V3, &t2, &id).await;
    let unknown = status(&app, Version::V3, &t2, "12345").await;
    for r in [&theirs, &unknown] {
        assert_eq!(r.status, StatusCode::BAD_REQUEST);
        assert_eq!(r.code(), 505);
        assert!(r.body.get("data").is_none());
    }
    assert_eq!(theirs.body, unknown.body);
    assert_eq!(status(&app, Version::V2, &t, "abc").await.code(), 400);
    assert_eq!(status(&app, Version::V2, "nope", &id).await.code(), 401);
    let missing = call(
        app.http
            .get(app.url(otpgate_api::paths::STATUS_V3))
            .header("authToken", &t),
    )
    .await;
    assert_eq!(missing.code(), 400);
    assert!(missing.error_message().contains("verificationId"));
}

async fn sends_through_the_api_get_distinct_ids_below_2_31() {
    const SENDS: usize = 200;
    // Two hundred sends nobody validates would trip the fraud guard.
    let mut settings = test_settings();
    settings.fraud.guard = false;
    let app = spawn_app_with(settings).await;
    let rich = create_account(&app.store, &app.clock, &app.settings, Some(1000)).await;
    let t = app.token_for(&rich).await;
    let mut ids = HashSet::new();
    // Eight at a time: sends of one account queue on its lock, and a
    // PostgreSQL pool answers 503 to a request that waits too long for it.
    let sends = futures::stream::iter(0..SENDS).map(|i| {
        let (app, t) = (&app, &t);
        async move { app.send_ok(Version::V3, t, &format!("98760{i:05}")).await }
    });
    let all: Vec<String> = sends.buffer_unordered(8).collect().await;
    for id in all {
        let n: u64 = id.parse().unwrap();
        assert!(n > 0 && n < 1 << 31, "{n} does not fit an i32");
        assert!(ids.insert(n), "{n} issued twice");
    }
    assert_eq!(ids.len(), SENDS);
}

async fn an_id_issued_wider_before_the_change_still_validates() {
    let (app, t) = spawn_app_signed_in().await;
    // A verification stored by an earlier build, whose ids ran to 2^53,
    // with its code hashed under the server's key.
    let key = CodeKey::new(
        app.store
            .secret_get_or_init("code_key", &[0; 64])
            .await
            .unwrap(),
    );
    let id = VerificationId::new(4_503_599_627_370_497).unwrap();
    let code = OtpCode::parse("4821").unwrap();
    let now = app.clock.now_ms();
    let old = NewVerification {
        id,
        customer_id: app.account.customer_id.clone(),
        destination: PhoneNumber::parse("91", "9876500007").unwrap(),
        flow_type: "SMS".into(),
        code_hash: code.hash(&key, id.get()),
        spare_ids: Vec::new(),
        otp_length: 4,
        max_attempts: 5,
        created_at: now,
        expires_at: now + 60_000,
        transaction_id: uuid::Uuid::new_v4().to_string(),
        price: 1,
        message_text: "4821 is your code".into(),
        address: None,
        lang: None,
        fallbacks: Vec::new(),
        prefix: "91987650".into(),
        fraud: otpgate_core::fraud::FraudPolicy::off(),
        kind: otpgate_store::SendKind::Normal,
        limits: SendLimits {
            per_number_max: 5,
            per_number_window_ms: 600_000,
            wrong_code_max: 100,
            wrong_code_window_ms: 86_400_000,
            per_account_per_second: None,
        },
    };
    assert!(matches!(
        app.store.verification_create(old).await.unwrap(),
        CreateOutcome::Created(_)
    ));
    let wide = id.get().to_string();
    let s = status(&app, Version::V3, &t, &wide).await;
    assert_eq!(s.body["data"]["verificationId"], id.get());
    let r = app.validate(Version::V3, &t, &wide, "4821").await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.body["data"]["verificationId"], id.get());
    assert_eq!(
        app.validate(Version::V2, &t, &wide, "4821").await.code(),
        703
    );
}

#[tokio::test]
async fn the_wider_id_setting_issues_ids_past_2_31() {
    let mut settings = test_settings();
    settings.otp.id_bits = 53;
    let app = spawn_app_with(settings).await;
    let t = app.token().await;
    let mut widest = 0u64;
    for i in 0..8 {
        let id = app
            .send_ok(Version::V3, &t, &format!("98765000{i:02}"))
            .await;
        widest = widest.max(id.parse().unwrap());
    }
    // Eight draws all below 2^31 from 1..2^53: about once in 2^176.
    assert!(widest >= 1 << 31, "{widest}");
    let code = app.code_for(&widest.to_string()).await;
    let r = app
        .validate(Version::V3, &t, &widest.to_string(), &code)
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.body["data"]["verificationId"], widest);
}

/// The body the hosted service's web console sends (Dio's `FormData`).
fn multipart(boundary: &str, fields: &[(&str, &str)]) -> String {
    let mut b = String::new();
    for (k, v) in fields {
        b.push_str(&format!(
            "--{boundary}\r\ncontent-disposition: form-data; name=\"{k}\"\r\n\r\n{v}\r\n"
        ));
    }
    b.push_str(&format!("--{boundary}--\r\n"));
    b
}

#[tokio::test]
async fn a_multipart_send_with_an_empty_query_succeeds_and_the_query_wins_on_conflict() {
    let (app, t) = spawn_app_signed_in().await;
    let boundary = "--dio-boundary-0123456789";
    let body = multipart(
        boundary,
        &[
            ("countryCode", "91"),
            ("mobileNumber", "9876543210"),
            ("flowType", "SMS"),
            ("otpLength", "6"),
        ],
    );
    // A multipart POST to `path` with `body` as the dio client sends it.
    let post = |path: &'static str, body: String| {
        app.post_as(path, &t)
            .header(
                "content-type",
                format!("multipart/form-data; boundary={boundary}"),
            )
            .body(body)
    };
    let send = |query: &'static [(&'static str, &'static str)], body: String| {
        post(otpgate_api::paths::SEND_V3, body).query(query).send()
    };
    let r = resp(send(&[], body.clone()).await.unwrap()).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.body["data"]["mobileNumber"], "9876543210");
    let id = r.body["data"]["verificationId"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(app.code_for(&id).await.len(), 6);
    // The same body with another number in the query: the query's is used.
    let r = resp(send(&[("mobileNumber", "9876543211")], body).await.unwrap()).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.body["data"]["mobileNumber"], "9876543211");
    // Validate takes multipart too.
    let code = app.code_for(&id).await;
    let fields = multipart(boundary, &[("verificationId", &id), ("code", &code)]);
    let r = call(post(otpgate_api::paths::VALIDATE_V3, fields)).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    // A broken body is a 400 with a reason, and nothing is sent.
    let r = call(
        app.post_as(otpgate_api::paths::SEND_V3, &t)
            .header("content-type", "multipart/form-data; boundary=x")
            .body("--x\r\nno headers here"),
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{:?}", r.body);
    assert!(r.error_message().contains("multipart"));
}

const ALLOWED: &str = "https://app.example.com";

async fn preflight(app: &TestApp, origin: &str) -> reqwest::Response {
    app.http
        .request(
            reqwest::Method::OPTIONS,
            app.url(otpgate_api::paths::SEND_V3),
        )
        .header("origin", origin)
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", "authtoken,content-type")
        .send()
        .await
        .expect("preflight")
}

fn cors_headers(r: &reqwest::Response) -> Vec<String> {
    r.headers()
        .keys()
        .map(|k| k.as_str().to_owned())
        .filter(|k| k.starts_with("access-control-"))
        .collect()
}

#[tokio::test]
async fn a_preflight_from_an_allowed_origin_succeeds_and_from_another_gets_no_allow_headers() {
    let mut settings = test_settings();
    settings.http.cors_origins = vec![ALLOWED.into(), "http://localhost:3000".into()];
    let app = spawn_app_with(settings).await;

    let ok = preflight(&app, ALLOWED).await;
    assert!(ok.status().is_success(), "{}", ok.status());
    let h = ok.headers();
    assert_eq!(h["access-control-allow-origin"], ALLOWED);
    let methods = h["access-control-allow-methods"].to_str().unwrap();
    assert!(
        methods.contains("POST") && methods.contains("GET"),
        "{methods}"
    );
    let allowed = h["access-control-allow-headers"]
        .to_str()
        .unwrap()
        .to_ascii_lowercase();
    assert!(
        allowed.contains("authtoken") && allowed.contains("content-type"),
        "{allowed}"
    );
    assert!(h.get("access-control-allow-credentials").is_none());

    for stranger in [
        "https://evil.example",
        "https://app.example.com.evil.example",
        "null",
    ] {
        let no = preflight(&app, stranger).await;
        assert_eq!(no.status(), StatusCode::FORBIDDEN, "{stranger}");
        assert!(
            cors_headers(&no).is_empty(),
            "{stranger}: {:?}",
            cors_headers(&no)
        );
    }

    // The real call from the allowed page is readable by it; from another
    // page it carries no allow-origin, so the browser hides the answer.
    let t = app.token().await;
    let call = |origin: &'static str| {
        app.http
            .post(app.url(otpgate_api::paths::SEND_V3))
            .header("origin", origin)
            .header("authToken", &t)
            .query(&[
                ("countryCode", "91"),
                ("mobileNumber", "9876543210"),
                ("flowType", "SMS"),
            ])
            .send()
    };
    let r = call(ALLOWED).await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["access-control-allow-origin"], ALLOWED);
    let r = call("https://evil.example").await.unwrap();
    assert!(r.headers().get("access-control-allow-origin").is_none());
}

#[tokio::test]
async fn without_configured_origins_a_preflight_gets_no_cors_headers() {
    let app = spawn_app().await;
    let r = preflight(&app, ALLOWED).await;
    assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert!(cors_headers(&r).is_empty(), "{:?}", cors_headers(&r));
}
