//! Malformed requests of every kind get a 4xx in the contract's envelope
//! with a reason — never a 500, never a hang, never a partial write.

use reqwest::{Method, StatusCode};

use crate::helpers::*;

struct Case {
    name: &'static str,
    method: Method,
    path: &'static str,
    query: String,
    body: Vec<u8>,
    content_type: Option<&'static str>,
    auth: bool,
}

fn case(name: &'static str, method: Method, path: &'static str, query: impl Into<String>) -> Case {
    Case {
        name,
        method,
        path,
        query: query.into(),
        body: Vec::new(),
        content_type: None,
        auth: true,
    }
}

async fn a_table_of_bad_inputs_gets_only_4xx_with_a_reason() {
    let (app, t) = spawn_app_signed_in().await;
    let send = Version::V3.send_path();
    let send2 = Version::V2.send_path();
    let val = Version::V3.validate_path();
    let tok = otpgate_api::paths::TOKEN;
    let long = "9".repeat(10_000);
    let mut cases = vec![
        case("send without parameters", Method::POST, send, ""),
        case(
            "send without flowType",
            Method::POST,
            send,
            "countryCode=91&mobileNumber=9876543210",
        ),
        case(
            "send without countryCode",
            Method::POST,
            send2,
            "mobileNumber=9876543210&flowType=SMS",
        ),
        case(
            "duplicated mobileNumber",
            Method::POST,
            send,
            "countryCode=91&mobileNumber=9876543210&mobileNumber=9876543211&flowType=SMS",
        ),
        case(
            "letters in number",
            Method::POST,
            send,
            "countryCode=91&mobileNumber=98765abcde&flowType=SMS",
        ),
        case(
            "10 kB number",
            Method::POST,
            send,
            format!("countryCode=91&mobileNumber={long}&flowType=SMS"),
        ),
        case(
            "10 kB country code",
            Method::POST,
            send,
            format!("countryCode={long}&mobileNumber=9876543210&flowType=SMS"),
        ),
        case(
            "negative country code",
            Method::POST,
            send,
            "countryCode=-91&mobileNumber=9876543210&flowType=SMS",
        ),
        case(
            "non-UTF-8 number",
            Method::POST,
            send,
            "countryCode=91&mobileNumber=%ff%fe&flowType=SMS",
        ),
        case(
            "broken percent escape",
            Method::POST,
            send,
            "countryCode=91&mobileNumber=98%2&flowType=SMS",
        ),
        case(
            "otpLength huge",
            Method::POST,
            send,
            "countryCode=91&mobileNumber=9876543210&flowType=SMS&otpLength=99999999999999999999",
        ),
        case(
            "timeout float",
            Method::POST,
            send,
            "countryCode=91&mobileNumber=9876543210&flowType=SMS&timeout=60.5",
        ),
        case(
            "validate without code",
            Method::GET,
            val,
            "verificationId=1",
        ),
        case("validate without id", Method::GET, val, "code=1234"),
        case(
            "letters in id",
            Method::GET,
            val,
            "verificationId=abc&code=1234",
        ),
        case(
            "id above 2^53",
            Method::GET,
            val,
            "verificationId=9007199254740993&code=1234",
        ),
        case(
            "id 10 kB",
            Method::GET,
            val,
            format!("verificationId={long}&code=1234"),
        ),
        case(
            "code with letters",
            Method::GET,
            val,
            "verificationId=1&code=12ab",
        ),
        case(
            "code 10 kB",
            Method::GET,
            val,
            format!("verificationId=1&code={long}"),
        ),
        case(
            "duplicated code",
            Method::GET,
            val,
            "verificationId=1&code=1234&code=1235",
        ),
        case(
            "wrong method on send",
            Method::GET,
            send,
            "countryCode=91&mobileNumber=9876543210&flowType=SMS",
        ),
        case(
            "wrong method on validate",
            Method::DELETE,
            val,
            "verificationId=1&code=1234",
        ),
        case("unknown path", Method::GET, "/verification/v9/send", ""),
        case(
            "token without key",
            Method::GET,
            tok,
            "customerId=C-6D16D900FA3044F",
        ),
        case(
            "token with bad base64",
            Method::GET,
            tok,
            "customerId=C-6D16D900FA3044F&key=%%%",
        ),
        case(
            "token with 10 kB key",
            Method::GET,
            tok,
            format!("customerId=C-6D16D900FA3044F&key={long}"),
        ),
    ];
    let mut big = case(
        "oversized body",
        Method::POST,
        send,
        "countryCode=91&mobileNumber=9876543210&flowType=SMS",
    );
    big.body = vec![b'x'; 1 << 20];
    big.content_type = Some("application/json");
    cases.push(big);
    let mut form = case("non-UTF-8 form body", Method::POST, send, "");
    form.body = b"countryCode=91&mobileNumber=\xff\xfe&flowType=SMS".to_vec();
    form.content_type = Some("application/x-www-form-urlencoded");
    cases.push(form);
    let mut noauth = case(
        "send without token",
        Method::POST,
        send,
        "countryCode=91&mobileNumber=9876543210&flowType=SMS",
    );
    noauth.auth = false;
    cases.push(noauth);

    for c in cases {
        let mut url = app.url(c.path);
        if !c.query.is_empty() {
            url = format!("{url}?{}", c.query);
        }
        let mut req = app.http.request(c.method.clone(), &url);
        if c.auth {
            req = req.header("authToken", &t);
        }
        if let Some(ct) = c.content_type {
            req = req.header("content-type", ct);
        }
        if !c.body.is_empty() {
            req = req.body(c.body.clone());
        }
        let r = req
            .send()
            .await
            .unwrap_or_else(|e| panic!("{}: {e}", c.name));
        let status = r.status();
        let ct = r
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_owned());
        let text = r.text().await.unwrap();
        assert!(status.is_client_error(), "{}: {status} {text}", c.name);
        assert_eq!(ct.as_deref(), Some("application/json"), "{}", c.name);
        let body: serde_json::Value =
            serde_json::from_str(&text).unwrap_or_else(|_| panic!("{}: not JSON: {text}", c.name));
        let reason = if c.path == tok {
            &body["error"]
        } else {
            &body["errorMessage"]
        };
        assert!(
            reason
                .as_str()
                .is_some_and(|s| !s.is_empty() && s.len() < 300),
            "{}: no short reason: {text}",
            c.name
        );
        assert!(body.get("data").is_none(), "{}: {text}", c.name);
    }
    // Nothing above created a verification or charged anything.
    let a = app.account_now().await;
    assert_eq!(a.test_credits, app.settings.accounts.test_credits);
    assert!(
        app.store
            .inbox_list(None, None, 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        StatusCode::OK,
        reqwest::get(app.url("/healthz")).await.unwrap().status()
    );
}

async fn form_bodies_are_accepted_and_the_query_wins() {
    let (app, t) = spawn_app_signed_in().await;
    let r = call(
        app.post_as(Version::V3.send_path(), &t)
            .query(&[("mobileNumber", "9876500300")])
            .form(&[
                ("countryCode", "91"),
                ("mobileNumber", "9876500399"),
                ("flowType", "SMS"),
            ]),
    )
    .await;
    assert_eq!(r.code(), 200, "{:?}", r.body);
    assert_eq!(r.body["data"]["mobileNumber"], "9876500300");
}

async fn health_and_readiness_answer() {
    const HEALTH_TOKEN: &str = "health-token-of-at-least-32-bytes-0123";
    let mut settings = test_settings();
    settings.health.token = Some(otpgate_core::SecretString::new(HEALTH_TOKEN));
    let app = spawn_app_with(settings).await;
    let r = resp(reqwest::get(app.url("/healthz")).await.unwrap()).await;
    assert_eq!(r.status, StatusCode::OK);
    // A stranger learns ready or not, and nothing about channels.
    let r = resp(reqwest::get(app.url("/readyz")).await.unwrap()).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.body, serde_json::json!({"status": "ready"}));
    for wrong in ["Bearer nope", "Bearer ", HEALTH_TOKEN] {
        let r = app
            .http
            .get(app.url("/readyz"))
            .header("authorization", wrong)
            .send()
            .await
            .unwrap();
        let r = resp(r).await;
        assert_eq!(r.body, serde_json::json!({"status": "ready"}), "{wrong}");
    }
    // The operator, with the token, gets the detail.
    let r = app
        .http
        .get(app.url("/readyz"))
        .header("authorization", format!("Bearer {HEALTH_TOKEN}"))
        .send()
        .await
        .unwrap();
    let r = resp(r).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.body["store"]["ok"], true);
    assert_eq!(r.body["channels"][0]["name"], "inbox");
}

crate::both_stores!(
    a_table_of_bad_inputs_gets_only_4xx_with_a_reason,
    form_bodies_are_accepted_and_the_query_wins,
    health_and_readiness_answer,
);
