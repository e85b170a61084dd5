//! `/openapi.json` holds true: every response of a flow through every
//! endpoint — successes and the failures the contract names — is checked
//! against the schema the document gives for its path, method and status
//! (with `jsonschema`), and every documented path is routed.

use reqwest::{Method, StatusCode};
use serde_json::Value;

use crate::helpers::*;

/// The served document.
async fn document(app: &TestApp) -> Value {
    let r = app.http.get(app.url("/openapi.json")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["content-type"], "application/json");
    let doc: Value = r.json().await.unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    doc
}

/// Follows a local `$ref` (`#/components/...`).
fn resolve<'a>(doc: &'a Value, v: &'a Value) -> &'a Value {
    match v.get("$ref").and_then(Value::as_str) {
        Some(r) => doc
            .pointer(r.trim_start_matches('#'))
            .unwrap_or_else(|| panic!("dangling $ref {r}")),
        None => v,
    }
}

/// Checks one real response against the document; returns the body.
async fn conforms(doc: &Value, path: &str, method: &str, r: reqwest::Response) -> Value {
    let status = r.status().as_u16().to_string();
    let headers = r.headers().clone();
    let text = r.text().await.unwrap();
    let op = &doc["paths"][path][method];
    assert!(op.is_object(), "{method} {path} is not documented");
    let response = op["responses"]
        .get(&status)
        .map(|v| resolve(doc, v))
        .unwrap_or_else(|| panic!("{method} {path} answered {status}, not documented: {text}"));
    for (name, _) in response["headers"].as_object().into_iter().flatten() {
        assert!(
            headers.contains_key(name.as_str()),
            "{method} {path} {status} lacks documented header {name}"
        );
    }
    let ct = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let media = &response["content"][ct];
    assert!(
        media.is_object(),
        "{method} {path} {status}: content type {ct} not documented"
    );
    let body: Value = serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text}"));
    // The schema evaluated inside the whole document, so its `$ref`s
    // (`#/components/schemas/…`) resolve: the document is the root, with
    // the response's schema keywords added at its top.
    let mut schema_root = doc.clone();
    for (k, v) in media["schema"].as_object().unwrap() {
        schema_root[k] = v.clone();
    }
    let validator = jsonschema::validator_for(&schema_root)
        .unwrap_or_else(|e| panic!("{method} {path} {status}: schema does not compile: {e}"));
    let errors: Vec<String> = validator
        .iter_errors(&body)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect();
    assert!(
        errors.is_empty(),
        "{method} {path} {status} breaks the document: {errors:?}\n{body}"
    );
    body
}

/// Sends `req` and checks its response against the document's operation
/// for `path` and the request's method; returns the status and the body.
async fn check(doc: &Value, path: &str, req: reqwest::RequestBuilder) -> (StatusCode, Value) {
    let (client, req) = req.build_split();
    let req = req.unwrap();
    let method = req.method().as_str().to_ascii_lowercase();
    let r = client.execute(req).await.unwrap();
    let status = r.status();
    (status, conforms(doc, path, &method, r).await)
}

async fn every_response_of_a_flow_matches_the_openapi_document() {
    let mut settings = test_settings();
    settings.limits.per_number_max = 2;
    let app = spawn_app_with(settings).await;
    let doc = document(&app).await;
    let h = &app.http;
    let t = app.token().await;
    let token_path = otpgate_api::paths::TOKEN;

    // Token: 200, 400, 401.
    let good = [
        ("customerId", app.account.customer_id.as_str().to_owned()),
        ("key", base64_of(PASSWORD)),
    ];
    check(&doc, token_path, h.get(app.url(token_path)).query(&good)).await;
    check(&doc, token_path, h.post(app.url(token_path)).query(&good)).await;
    check(&doc, token_path, h.get(app.url(token_path))).await;
    check(
        &doc,
        token_path,
        h.get(app.url(token_path))
            .query(&[("customerId", "C-000000000000000"), ("key", "eA==")]),
    )
    .await;

    for v in BOTH {
        let (send, validate, status) = match v {
            Version::V2 => (
                otpgate_api::paths::SEND_V2,
                otpgate_api::paths::VALIDATE_V2,
                otpgate_api::paths::STATUS_V2,
            ),
            Version::V3 => (
                otpgate_api::paths::SEND_V3,
                otpgate_api::paths::VALIDATE_V3,
                otpgate_api::paths::STATUS_V3,
            ),
        };
        let national = v.pick("9876512340", "9876512341");
        let q = [
            ("countryCode", "91"),
            ("mobileNumber", national),
            ("flowType", "SMS"),
        ];
        let post = |path: &'static str| h.post(app.url(path)).header("authToken", &t);
        // Send: 200, then 506 with data, 401, 400.
        let body = check(&doc, send, post(send).query(&q)).await.1;
        let id = body["data"]["verificationId"].as_str().unwrap().to_owned();
        check(&doc, send, post(send).query(&q)).await;
        check(&doc, send, h.post(app.url(send)).query(&q)).await;
        check(&doc, send, post(send).query(&[("countryCode", "91")])).await;
        // Status while pending, on GET and POST.
        let sq = [("verificationId", id.as_str())];
        check(
            &doc,
            status,
            h.get(app.url(status)).header("authToken", &t).query(&sq),
        )
        .await;
        check(&doc, status, post(status).query(&sq)).await;
        check(
            &doc,
            status,
            h.get(app.url(status))
                .header("authToken", &t)
                .query(&[("verificationId", "77")]),
        )
        .await;
        // Validate: 702, 200, 703 (GET), then 400 (POST).
        let code = app.code_for(&id).await;
        for c in [TestApp::wrong(&code), code.clone(), code.clone()] {
            check(
                &doc,
                validate,
                h.get(app.url(validate))
                    .header("authToken", &t)
                    .query(&[("verificationId", id.as_str()), ("code", c.as_str())]),
            )
            .await;
        }
        check(&doc, validate, post(validate).query(&[("code", "1234")])).await;
        let done = check(
            &doc,
            status,
            h.get(app.url(status)).header("authToken", &t).query(&sq),
        )
        .await
        .1;
        assert_eq!(done["data"]["verificationStatus"], "VERIFICATION_COMPLETED");
    }

    // 429 with Retry-After: the per-number limit (2 here) after expiry.
    let q = [
        ("countryCode", "91"),
        ("mobileNumber", "9876512349"),
        ("flowType", "SMS"),
    ];
    let send = otpgate_api::paths::SEND_V3;
    let mut statuses = Vec::new();
    for _ in 0..3 {
        let req = h.post(app.url(send)).header("authToken", &t).query(&q);
        statuses.push(check(&doc, send, req).await.0.as_u16());
        app.clock.advance_ms(61_000);
    }
    assert_eq!(statuses, [200, 200, 429]);
    // 402: an account without credits.
    let poor = create_account(&app.store, &app.clock, &app.settings, Some(0)).await;
    let tp = app.token_for(&poor).await;
    let req = h.post(app.url(send)).header("authToken", &tp).query(&[
        ("countryCode", "91"),
        ("mobileNumber", "9876512348"),
        ("flowType", "SMS"),
    ]);
    let (status, _) = check(&doc, send, req).await;
    assert_eq!(status, StatusCode::PAYMENT_REQUIRED);
    // 413.
    let req = h
        .post(app.url(send))
        .header("authToken", &t)
        .header("content-type", "application/x-www-form-urlencoded")
        .body("a".repeat(app.settings.http.max_body_bytes + 1));
    let (status, _) = check(&doc, send, req).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);

    // Health, readiness, receipts of an unknown channel, the document.
    for (path, method) in [
        ("/healthz", Method::GET),
        ("/readyz", Method::GET),
        ("/openapi.json", Method::GET),
    ] {
        check(&doc, path, h.request(method.clone(), app.url(path))).await;
    }
    check(
        &doc,
        "/receipts/{channel}",
        h.get(app.url("/receipts/nope?id=1&status=DELIVRD")),
    )
    .await;

    // Every documented operation is routed (no 405; 404 only where the
    // document says so).
    for (path, ops) in doc["paths"].as_object().unwrap() {
        for method in ops.as_object().unwrap().keys() {
            let url = app.url(&path.replace("{channel}", "nope"));
            let m = Method::from_bytes(method.to_ascii_uppercase().as_bytes()).unwrap();
            let r = h.request(m, url).send().await.unwrap();
            let code = r.status().as_u16().to_string();
            assert!(
                doc["paths"][path][method]["responses"].get(&code).is_some(),
                "{method} {path} answered {code}, which the document does not list"
            );
        }
    }
}

fn base64_of(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(s)
}

both_stores!(every_response_of_a_flow_matches_the_openapi_document);
