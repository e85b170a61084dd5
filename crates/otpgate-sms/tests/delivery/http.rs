//! The HTTP channel against a local gateway that records each request: the
//! exact request of the Kannel and Twilio presets and of generic templates,
//! the classification of answers, and receipts through the store.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::IntoResponse;
use base64::Engine;
use otpgate_core::{CustomerId, DeliveryStatus, PhoneNumber, VerificationId};
use otpgate_sms::config::{SmsConfig, build_table};
use otpgate_sms::{
    Channel, ChannelError, Outgoing, ReceiptError, ReceiptOutcome, Router, handle_http_receipt,
};

use crate::common::{Db, Worker, free_port};

#[derive(Debug, Clone)]
struct Seen {
    method: Method,
    path: String,
    query: BTreeMap<String, String>,
    headers: HeaderMap,
    body: Vec<u8>,
}

#[derive(Clone)]
struct Gw {
    seen: Arc<Mutex<Vec<Seen>>>,
    reply: Arc<Mutex<(u16, String, u64)>>,
}

/// A gateway on an ephemeral port answering `status` with `body`.
struct Gateway {
    port: u16,
    gw: Gw,
    task: tokio::task::JoinHandle<()>,
}

impl Gateway {
    async fn start(status: u16, body: &str) -> Gateway {
        let gw = Gw {
            seen: Arc::default(),
            reply: Arc::new(Mutex::new((status, body.to_owned(), 0))),
        };
        let app = axum::Router::new().fallback(record).with_state(gw.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Gateway { port, gw, task }
    }

    fn answer(&self, status: u16, body: &str, delay_ms: u64) {
        *self.gw.reply.lock().unwrap() = (status, body.to_owned(), delay_ms);
    }

    fn seen(&self) -> Vec<Seen> {
        self.gw.seen.lock().unwrap().clone()
    }

    fn last(&self) -> Seen {
        self.seen().pop().expect("the gateway got a request")
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn record(
    State(gw): State<Gw>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> impl IntoResponse {
    gw.seen.lock().unwrap().push(Seen {
        method,
        path: uri.path().to_owned(),
        query: pairs(uri.query().unwrap_or("")),
        headers,
        body: body.to_vec(),
    });
    let (status, body, delay) = gw.reply.lock().unwrap().clone();
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    (
        StatusCode::from_u16(status).unwrap(),
        [("content-type", "application/json")],
        body,
    )
}

fn pairs(s: &str) -> BTreeMap<String, String> {
    reqwest::Url::parse(&format!("http://x/?{s}"))
        .unwrap()
        .query_pairs()
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

fn msg(id: i64, text: &str) -> Outgoing {
    Outgoing {
        message_id: id,
        verification_id: VerificationId::new(7).unwrap(),
        customer_id: CustomerId::parse("C-0000000000000A1").unwrap(),
        destination: PhoneNumber::parse("91", "9876543210").unwrap(),
        flow_type: "SMS".into(),
        text: text.into(),
    }
}

fn env(k: &str) -> Option<String> {
    match k {
        "KANNEL_PASS" => Some("s3cret".into()),
        "TW_TOKEN" => Some("tw-token".into()),
        "API_KEY" => Some("k-1".into()),
        "API_TOKEN" => Some("tok-2".into()),
        _ => None,
    }
}

fn channel(db: &Db, toml: &str) -> Arc<dyn Channel> {
    let cfg = SmsConfig::from_toml(toml).expect("valid TOML");
    let table = build_table(&cfg, db.store.clone(), db.clock.clone(), &env).expect("valid config");
    table.channels()[0].clone()
}

fn kannel(port: u16) -> String {
    format!(
        r#"
[channels.kannel]
type = "http"
preset = "kannel"
url = "http://127.0.0.1:{port}"
username = "otp"
password_env = "KANNEL_PASS"
from = "OTPGATE"
receipt_url = "https://otp.example.com/"
"#
    )
}

fn twilio(port: u16) -> String {
    format!(
        r#"
[channels.twilio]
type = "http"
preset = "twilio"
url = "http://127.0.0.1:{port}"
account_sid = "AC123"
auth_token_env = "TW_TOKEN"
from = "+15005550006"
receipt_url = "https://otp.example.com"
"#
    )
}

#[tokio::test]
async fn the_kannel_preset_sends_exactly_a_sendsms_request() {
    let gw = Gateway::start(202, "0: Accepted for delivery").await;
    let db = Db::new().await;
    let ch = channel(&db, &kannel(gw.port));
    let acc = ch
        .send(&msg(42, "Your code is 1234"))
        .await
        .expect("accepted");
    assert_eq!(
        acc.gateway_id.as_deref(),
        Some("42"),
        "Kannel returns no id: the reference is it"
    );
    let r = gw.last();
    assert_eq!(r.method, Method::GET);
    assert_eq!(r.path, "/cgi-bin/sendsms");
    let want: BTreeMap<String, String> = [
        ("username", "otp"),
        ("password", "s3cret"),
        ("from", "OTPGATE"),
        ("to", "+919876543210"),
        ("text", "Your code is 1234"),
        ("charset", "UTF-8"),
        ("coding", "0"),
        ("dlr-mask", "19"),
        (
            "dlr-url",
            "https://otp.example.com/receipts/kannel?ref=42&status=%d&answer=%A",
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    assert_eq!(r.query, want);
    assert!(r.body.is_empty());

    // Text outside GSM 03.38 asks Kannel for UCS-2.
    ch.send(&msg(43, "Ваш код 1234")).await.unwrap();
    let r = gw.last();
    assert_eq!(r.query["coding"], "2");
    assert_eq!(r.query["text"], "Ваш код 1234");
}

#[tokio::test]
async fn the_twilio_preset_posts_the_messages_api_form_with_basic_auth() {
    let gw = Gateway::start(201, r#"{"sid":"SM0123","status":"queued"}"#).await;
    let db = Db::new().await;
    let ch = channel(&db, &twilio(gw.port));
    let acc = ch
        .send(&msg(5, "Your code is 9876"))
        .await
        .expect("accepted");
    assert_eq!(acc.gateway_id.as_deref(), Some("SM0123"));
    let r = gw.last();
    assert_eq!(r.method, Method::POST);
    assert_eq!(r.path, "/2010-04-01/Accounts/AC123/Messages.json");
    let auth = base64::engine::general_purpose::STANDARD.encode("AC123:tw-token");
    assert_eq!(r.headers["authorization"], format!("Basic {auth}").as_str());
    assert_eq!(
        r.headers["content-type"],
        "application/x-www-form-urlencoded"
    );
    let body = pairs(std::str::from_utf8(&r.body).unwrap());
    let want: BTreeMap<String, String> = [
        ("To", "+919876543210"),
        ("From", "+15005550006"),
        ("Body", "Your code is 9876"),
        ("StatusCallback", "https://otp.example.com/receipts/twilio"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    assert_eq!(body, want);
    assert!(r.query.is_empty());
}

#[tokio::test]
async fn a_generic_json_template_is_filled_escaped_and_checked() {
    let gw = Gateway::start(200, r#"{"result":{"ok":true,"id":"g-77"}}"#).await;
    let db = Db::new().await;
    let toml = format!(
        r#"
[channels.gw]
type = "http"
url = "http://127.0.0.1:{}/v1/sms?key=${{API_KEY}}"
json_template = '{{"messages":[{{"to":"{{to_digits}}","body":"{{text}}","from":"{{from}}"}}]}}'
from = "OTPGATE"
id_field = "result.id"
success_field = "result.ok"
[channels.gw.headers]
Authorization = "Bearer ${{API_TOKEN}}"
X-Ref = "{{reference}}"
"#,
        gw.port
    );
    let ch = channel(&db, &toml);
    let text = "He said \"1234\"\nthen left \\ {ok}";
    let acc = ch.send(&msg(9, text)).await.expect("accepted");
    assert_eq!(acc.gateway_id.as_deref(), Some("g-77"));
    let r = gw.last();
    assert_eq!(r.method, Method::POST);
    assert_eq!(r.path, "/v1/sms");
    assert_eq!(r.query.get("key").map(String::as_str), Some("k-1"));
    assert_eq!(r.headers["authorization"], "Bearer tok-2");
    assert_eq!(r.headers["x-ref"], "9");
    assert_eq!(r.headers["content-type"], "application/json");
    let body: serde_json::Value = serde_json::from_slice(&r.body).expect("valid JSON");
    assert_eq!(
        body,
        serde_json::json!({"messages": [{"to": "919876543210", "body": text, "from": "OTPGATE"}]})
    );

    // success_field false: the gateway refused this message.
    gw.answer(200, r#"{"result":{"ok":false}}"#, 0);
    let e = ch.send(&msg(10, "x")).await.unwrap_err();
    assert!(matches!(e, ChannelError::Permanent(_)), "{e:?}");
}

#[tokio::test]
async fn generic_form_fields_go_as_a_form_body() {
    let gw = Gateway::start(200, "OK").await;
    let db = Db::new().await;
    let toml = format!(
        r#"
[channels.gw]
type = "http"
url = "http://127.0.0.1:{}/send"
method = "PUT"
body = "form"
success_status = [200]
[channels.gw.fields]
msisdn = "{{to_digits}}"
message = "{{text}}"
ref = "{{reference}}"
"#,
        gw.port
    );
    let ch = channel(&db, &toml);
    let acc = ch.send(&msg(11, "code 1 & 2 = 3")).await.unwrap();
    assert_eq!(acc.gateway_id.as_deref(), Some("11"));
    let r = gw.last();
    assert_eq!(r.method, Method::PUT);
    let body = pairs(std::str::from_utf8(&r.body).unwrap());
    assert_eq!(body["msisdn"], "919876543210");
    assert_eq!(body["message"], "code 1 & 2 = 3");
    assert_eq!(body["ref"], "11");
}

#[tokio::test]
async fn answers_are_classified_and_credentials_stay_out_of_errors() {
    let gw = Gateway::start(200, "").await;
    let db = Db::new().await;
    let ch = channel(&db, &kannel(gw.port));
    for (status, want) in [
        (429, "transient"),
        (500, "transient"),
        (503, "transient"),
        (400, "permanent"),
        (404, "permanent"),
        (401, "unavailable"),
        (403, "unavailable"),
    ] {
        gw.answer(status, "{}", 0);
        let e = ch.send(&msg(1, "x")).await.unwrap_err();
        let got = match &e {
            ChannelError::Transient(_) => "transient",
            ChannelError::Permanent(_) => "permanent",
            ChannelError::Unavailable(_) => "unavailable",
        };
        assert_eq!(got, want, "HTTP {status}: {e:?}");
        assert!(!e.to_string().contains("s3cret"), "{e}");
    }
    // Nobody listening: the channel is unavailable, and says so in health.
    let down = channel(&db, &kannel(free_port()));
    let e = down.send(&msg(1, "x")).await.unwrap_err();
    assert!(matches!(e, ChannelError::Unavailable(_)), "{e:?}");
    assert!(!e.to_string().contains("s3cret"), "{e}");
    let h = down.health();
    assert!(!h.up);
    assert!(!h.last_error.unwrap_or_default().contains("s3cret"));

    // Too slow: retried later.
    let toml = format!("{}timeout_ms = 300\n", kannel(gw.port));
    let slow = channel(&db, &toml);
    gw.answer(202, "", 1500);
    let e = slow.send(&msg(1, "x")).await.unwrap_err();
    assert!(matches!(e, ChannelError::Transient(_)), "{e:?}");
}

#[tokio::test]
async fn bad_http_configurations_are_refused_at_build() {
    let db = Db::new().await;
    let build = |t: &str| {
        let cfg = SmsConfig::from_toml(t).expect("valid TOML");
        build_table(&cfg, db.store.clone(), db.clock.clone(), &env).err()
    };
    let e =
        build("[channels.a]\ntype = \"http\"\nurl = \"http://x/\"\nfields = { t = \"{txet}\" }\n");
    assert!(e.unwrap().to_string().contains("txet"));
    let e = build(
        "[channels.a]\ntype = \"http\"\npreset = \"kannel\"\nurl = \"http://k\"\nusername = \"u\"\npassword_env = \"NOPE\"\n",
    );
    assert!(e.unwrap().to_string().contains("NOPE"));
    let e = build(
        "[channels.a]\ntype = \"http\"\npreset = \"twilio\"\naccount_sid = \"AC1\"\nauth_token = \"t\"\n",
    );
    assert!(e.unwrap().to_string().contains("from"));
    let e = build(
        "[channels.a]\ntype = \"http\"\nurl = \"http://x/\"\njson_template = '{\"a\": {text}}'\n",
    );
    assert!(
        e.unwrap().to_string().contains("JSON"),
        "an unquoted placeholder breaks JSON"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_receipts_update_the_message_found_by_gateway_id() {
    let gw = Gateway::start(201, r#"{"sid":"SM0999"}"#).await;
    let kgw = Gateway::start(202, "0: Accepted").await;
    let db = Db::new().await;
    let toml = format!(
        "{}{}{}",
        twilio(gw.port),
        kannel(kgw.port),
        r#"
[[routes]]
country_codes = [91]
channels = ["twilio"]
[[routes]]
country_codes = [44]
channels = ["kannel"]
"#
    );
    let cfg = SmsConfig::from_toml(&toml).unwrap();
    let table = Arc::new(build_table(&cfg, db.store.clone(), db.clock.clone(), &env).unwrap());
    let worker = Worker::start(&db, table);
    let wait = Duration::from_secs(10);

    let v = db
        .queue("91", "9876543210", "Your code is 1357", 60_000)
        .await;
    let m = db
        .wait_outbox(&v, "sent", |m| m.status == DeliveryStatus::Sent, wait)
        .await;
    assert_eq!(m.gateway_id.as_deref(), Some("SM0999"));
    let p = |kv: &[(&str, &str)]| -> Vec<(String, String)> {
        kv.iter().map(|(k, v)| ((*k).into(), (*v).into())).collect()
    };
    let (store, clock) = (db.store.as_ref(), db.clock.as_ref());
    let sent = p(&[("MessageSid", "SM0999"), ("MessageStatus", "sent")]);
    assert_eq!(
        handle_http_receipt(store, clock, "twilio", &sent)
            .await
            .unwrap(),
        ReceiptOutcome::Ignored
    );
    let done = p(&[("MessageSid", "SM0999"), ("MessageStatus", "delivered")]);
    assert_eq!(
        handle_http_receipt(store, clock, "twilio", &done)
            .await
            .unwrap(),
        ReceiptOutcome::Recorded
    );
    let ver = db.verification(&v).await;
    assert_eq!(ver.delivery, DeliveryStatus::Delivered);
    assert_eq!(ver.gateway_id.as_deref(), Some("SM0999"));
    // The same id on another channel is not this message.
    assert_eq!(
        handle_http_receipt(store, clock, "kannel", &done)
            .await
            .unwrap(),
        ReceiptOutcome::Unmatched
    );
    assert!(matches!(
        handle_http_receipt(store, clock, "twilio", &p(&[("foo", "bar")])).await,
        Err(ReceiptError::Malformed(_))
    ));

    // Kannel: the reference in dlr-url finds the message.
    let uk = db
        .queue("44", "7400123456", "Your code is 2468", 60_000)
        .await;
    let m = db
        .wait_outbox(&uk, "sent", |m| m.status == DeliveryStatus::Sent, wait)
        .await;
    let reference = m.id.to_string();
    assert_eq!(m.gateway_id.as_deref(), Some(reference.as_str()));
    let dlr = kgw.last().query["dlr-url"].clone();
    assert!(dlr.contains(&format!("ref={reference}&")), "{dlr}");
    let cb = p(&[("ref", &reference), ("status", "1"), ("answer", "ACK/")]);
    assert_eq!(
        handle_http_receipt(store, clock, "kannel", &cb)
            .await
            .unwrap(),
        ReceiptOutcome::Recorded
    );
    assert_eq!(
        db.verification(&uk).await.delivery,
        DeliveryStatus::Delivered
    );
    worker.stop().await;
}
