//! `/receipts/{channel}` with receipt tokens: a message sent through the API
//! to a local stub gateway (answering like Twilio with a `sid`, or like
//! Kannel), then callbacks without, with a wrong, and with the right token,
//! the right one taken from the very callback URL the gateway was handed.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{Method, Uri};
use axum::response::IntoResponse;
use otpgate_core::{DeliveryStatus, VerificationId};
use otpgate_sms::SmsConfig;
use otpgate_store::OutboxMessage;
use otpgate_testkit::kannel::kannel_fills;
use reqwest::StatusCode;

use crate::helpers::*;

/// Every character a URL must encode, and a non-ASCII one.
const TOKEN: &str = "r+c/t=1&2%3 é";
/// Where the channels tell gateways to call back; tests swap in the app's
/// own address.
const PUBLIC: &str = "https://otp.example.com";

/// One request the stub gateway received.
#[derive(Clone, Debug)]
struct Seen {
    query: Vec<(String, String)>,
    form: Vec<(String, String)>,
}

impl Seen {
    fn get(&self, name: &str) -> String {
        self.query
            .iter()
            .chain(&self.form)
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| panic!("the gateway got no {name}: {self:?}"))
    }
}

/// A gateway on an ephemeral port: a POST is answered like Twilio's
/// Messages API (201 with a fresh `sid`), a GET like Kannel's sendsms (202).
struct StubGateway {
    port: u16,
    seen: Arc<Mutex<Vec<Seen>>>,
    task: tokio::task::JoinHandle<()>,
}

impl StubGateway {
    async fn start() -> Self {
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let app = axum::Router::new()
            .fallback(answer)
            .with_state(seen.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { port, seen, task }
    }

    fn last(&self) -> Seen {
        self.seen
            .lock()
            .unwrap()
            .last()
            .cloned()
            .expect("the gateway got a request")
    }
}

impl Drop for StubGateway {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn answer(
    State(seen): State<Arc<Mutex<Vec<Seen>>>>,
    method: Method,
    uri: Uri,
    body: Bytes,
) -> axum::response::Response {
    let decode = |s: &[u8]| -> Vec<(String, String)> {
        serde_urlencoded::from_bytes(s).expect("a well-formed query or form")
    };
    let n = {
        let mut seen = seen.lock().unwrap();
        seen.push(Seen {
            query: decode(uri.query().unwrap_or("").as_bytes()),
            form: decode(&body),
        });
        seen.len()
    };
    if method == Method::POST {
        (
            axum::http::StatusCode::CREATED,
            [("content-type", "application/json")],
            format!(r#"{{"sid":"SM{n:04}","status":"queued"}}"#),
        )
            .into_response()
    } else {
        (axum::http::StatusCode::ACCEPTED, "0: Accepted for delivery").into_response()
    }
}

/// Test settings whose only channel is `toml`'s.
fn with_channels(toml: &str) -> otpgate_server::Settings {
    let cfg = SmsConfig::from_toml(toml).expect("a valid channel table");
    let mut s = test_settings();
    s.channels = cfg.channels;
    s.routes = cfg.routes;
    s
}

fn twilio(port: u16, token: Option<&str>) -> otpgate_server::Settings {
    twilio_with(port, token, false)
}

/// `open`: `receipts_unauthenticated = true`.
fn twilio_with(port: u16, token: Option<&str>, open: bool) -> otpgate_server::Settings {
    let mut token = token.map_or(String::new(), |t| format!("receipt_token = {t:?}\n"));
    if open {
        token.push_str("receipts_unauthenticated = true\n");
    }
    let extra = format!("auth_token = \"tw-auth\"\nreceipt_url = \"{PUBLIC}\"\n{token}");
    with_channels(&otpgate_testkit::settings::twilio_channel(port, &extra))
}

/// Sends through the API and waits until the gateway has accepted it.
async fn send_and_wait_sent(app: &TestApp, national: &str) -> (String, OutboxMessage) {
    let t = app.token().await;
    let id = app.send_ok(Version::V3, &t, national).await;
    let vid = VerificationId::parse(&id).unwrap();
    for _ in 0..500 {
        let m = outbox(app, &id).await;
        if m.status == DeliveryStatus::Sent {
            assert!(m.channel.is_some(), "{m:?}");
            return (id, m);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("verification {vid} was never sent");
}

async fn outbox(app: &TestApp, id: &str) -> OutboxMessage {
    app.store
        .outbox_for_verification(VerificationId::parse(id).unwrap())
        .await
        .unwrap()
        .expect("an outbox row")
}

/// Twilio's status callback for message `sid`, without a token.
async fn twilio_receipt(app: &TestApp, sid: &str, status: &str) -> Resp {
    let url = app.url("/receipts/twilio");
    post_form(app, &url, &[("MessageSid", sid), ("MessageStatus", status)]).await
}

/// A callback URL handed to the gateway, pointed at this test's server.
fn local(app: &TestApp, callback: &str) -> String {
    let path = callback
        .strip_prefix(PUBLIC)
        .unwrap_or_else(|| panic!("{callback} is not under {PUBLIC}"));
    app.url(path)
}

async fn post_form(app: &TestApp, url: &str, form: &[(&str, &str)]) -> Resp {
    call(app.http.post(url).form(form)).await
}

async fn a_receipt_without_the_right_token_gets_401_and_changes_nothing() {
    let gw = StubGateway::start().await;
    let app = spawn_app_with(twilio(gw.port, Some(TOKEN))).await;
    let (id, sent) = send_and_wait_sent(&app, "9876500301").await;
    let sid = sent.gateway_id.clone().expect("the gateway's sid");
    assert!(sid.starts_with("SM"), "{sid}");
    let callback = gw.last().get("StatusCallback");
    assert!(callback.contains("?token="), "{callback}");
    let undelivered = [
        ("MessageSid", sid.as_str()),
        ("MessageStatus", "undelivered"),
        ("ErrorCode", "30003"),
    ];

    // No token at all.
    let r = post_form(&app, &app.url("/receipts/twilio"), &undelivered).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{:?}", r.body);
    assert_eq!(r.code(), 401);
    assert_eq!(r.body["message"], "UNAUTHORIZED");
    assert!(r.body.get("data").is_none());
    assert_eq!(outbox(&app, &id).await.status, DeliveryStatus::Sent);

    // Wrong tokens: another value, the right one re-encoded, a prefix, one
    // in the form body, and blank.
    let spaced = format!("{TOKEN} ");
    for wrong in ["r+c/t=1&2%3 e", "r%2Bc%2Ft", &TOKEN[..5], &spaced, ""] {
        let url = reqwest::Url::parse_with_params(&app.url("/receipts/twilio"), [("token", wrong)])
            .unwrap();
        let r = post_form(&app, url.as_str(), &undelivered).await;
        assert_eq!(
            r.status,
            StatusCode::UNAUTHORIZED,
            "{wrong:?}: {:?}",
            r.body
        );
        assert_eq!(r.code(), 401);
        let text = r.body.to_string();
        assert!(!text.contains(TOKEN) && !text.contains("r+c"), "{text}");
    }
    let mut in_body = undelivered.to_vec();
    in_body.push(("token", "not it"));
    let r = post_form(&app, &app.url("/receipts/twilio"), &in_body).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{:?}", r.body);
    // A GET is refused alike.
    let r = call(
        app.http
            .get(app.url("/receipts/twilio"))
            .query(&undelivered),
    )
    .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{:?}", r.body);

    let m = outbox(&app, &id).await;
    assert_eq!(m.status, DeliveryStatus::Sent, "nothing was recorded");
    assert_eq!(m.gateway_id.as_deref(), Some(sid.as_str()));

    // The right token, in the callback URL the gateway was handed: recorded,
    // and the verification fails (700) as an undeliverable message must.
    let r = post_form(&app, &local(&app, &callback), &undelivered).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.body["status"], "recorded");
    assert_eq!(
        outbox(&app, &id).await.status,
        DeliveryStatus::Undeliverable
    );
    let t = app.token().await;
    let v = app.validate(Version::V3, &t, &id, "1234").await;
    assert_eq!(v.code(), 700, "{:?}", v.body);
}

async fn the_right_token_records_a_delivery() {
    let gw = StubGateway::start().await;
    let app = spawn_app_with(twilio(gw.port, Some(TOKEN))).await;
    let (id, sent) = send_and_wait_sent(&app, "9876500302").await;
    let sid = sent.gateway_id.expect("the gateway's sid");
    let url =
        reqwest::Url::parse_with_params(&app.url("/receipts/twilio"), [("token", TOKEN)]).unwrap();
    let r = post_form(
        &app,
        url.as_str(),
        &[("MessageSid", &sid), ("MessageStatus", "delivered")],
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.body["status"], "recorded");
    let m = outbox(&app, &id).await;
    assert_eq!(m.status, DeliveryStatus::Delivered);
    assert_eq!(m.gateway_id.as_deref(), Some(sid.as_str()));
}

async fn kannels_dlr_url_authenticates_once_kannel_fills_it() {
    let gw = StubGateway::start().await;
    let extra =
        format!("password = \"kannel-pw\"\nreceipt_url = \"{PUBLIC}\"\nreceipt_token = {TOKEN:?}");
    let settings = with_channels(&otpgate_testkit::settings::kannel_channel(gw.port, &extra));
    let app = spawn_app_with(settings).await;
    let (id, sent) = send_and_wait_sent(&app, "9876500303").await;
    let dlr = gw.last().get("dlr-url");
    // Report type 2: not delivered to the phone.
    // Kannel URL-encodes the SMSC's answer into `%A`.
    let answer = serde_urlencoded::to_string([("", "NACK/0x0000000b/Invalid Destination Address")]);
    let called = kannel_fills(&dlr, 2, &answer.unwrap()[1..]);
    let r = call(app.http.get(local(&app, &called))).await;
    assert_eq!(r.status, StatusCode::OK, "{called}: {:?}", r.body);
    assert_eq!(r.body["status"], "recorded");
    let m = outbox(&app, &id).await;
    assert_eq!(m.status, DeliveryStatus::Undeliverable);
    assert_eq!(m.gateway_id, sent.gateway_id);

    // The same callback without its token is refused.
    let bare = called.split("&token=").next().unwrap().to_owned();
    let r = call(app.http.get(local(&app, &bare))).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{bare}: {:?}", r.body);
}

async fn without_a_token_receipts_are_refused_unless_the_channel_opts_out() {
    let gw = StubGateway::start().await;
    let app = spawn_app_with(twilio(gw.port, None)).await;
    let (id, sent) = send_and_wait_sent(&app, "9876500305").await;
    let sid = sent.gateway_id.expect("the gateway's sid");
    let r = twilio_receipt(&app, &sid, "undelivered").await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{:?}", r.body);
    assert!(
        r.error_message().contains("receipts_unauthenticated"),
        "{:?}",
        r.body
    );
    assert_eq!(
        outbox(&app, &id).await.status,
        DeliveryStatus::Sent,
        "a refused receipt changes nothing"
    );
    drop(app);

    let app = spawn_app_with(twilio_with(gw.port, None, true)).await;
    let (id, sent) = send_and_wait_sent(&app, "9876500304").await;
    assert_eq!(
        gw.last().get("StatusCallback"),
        format!("{PUBLIC}/receipts/twilio"),
        "no token to hand the gateway"
    );
    let sid = sent.gateway_id.expect("the gateway's sid");
    let r = twilio_receipt(&app, &sid, "delivered").await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.body["status"], "recorded");
    assert_eq!(outbox(&app, &id).await.status, DeliveryStatus::Delivered);
}

async fn channels_that_take_no_http_receipts_are_not_found() {
    let settings = with_channels(
        r#"
[channels.dev]
type = "inbox"
"#,
    );
    let app = spawn_app_with(settings).await;
    for path in ["/receipts/dev", "/receipts/nope"] {
        let r = post_form(&app, &app.url(path), &[("id", "1"), ("status", "UNDELIV")]).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{path}: {:?}", r.body);
        assert_eq!(r.code(), 404);
    }
}

crate::both_stores!(
    a_receipt_without_the_right_token_gets_401_and_changes_nothing,
    the_right_token_records_a_delivery,
    kannels_dlr_url_authenticates_once_kannel_fills_it,
    without_a_token_receipts_are_refused_unless_the_channel_opts_out,
    channels_that_take_no_http_receipts_are_not_found,
);
