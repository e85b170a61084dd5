//! The HTTP channel against a local gateway that records each request: the
//! exact request of the Kannel and Twilio presets (with and without a
//! receipt token) and of generic templates, the classification of answers,
//! and receipts through the store.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::IntoResponse;
use base64::Engine;
use otpgate_core::DeliveryStatus;
use otpgate_sms::config::{ConfigError, ReceiptAuth, SmsConfig, build_table, receipt_auth};
use otpgate_sms::{
    Channel, ChannelError, Outgoing, ReceiptError, ReceiptOutcome, Router, handle_http_receipt,
};
use otpgate_testkit::kannel::kannel_fills;

use crate::common::{Db, Worker, free_port};

#[derive(Debug, Clone)]
struct Seen {
    method: Method,
    path: String,
    query: BTreeMap<String, String>,
    /// The query as sent, before decoding.
    raw_query: String,
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
        raw_query: uri.query().unwrap_or("").to_owned(),
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
    crate::common::outgoing(id, 7, text)
}

fn env(k: &str) -> Option<String> {
    match k {
        "KANNEL_PASS" => Some("s3cret".into()),
        "TW_TOKEN" => Some("tw-token".into()),
        "API_KEY" => Some("k-1".into()),
        "API_TOKEN" => Some("tok-2".into()),
        "RECEIPT_TOKEN" => Some(RECEIPT_TOKEN.into()),
        _ => None,
    }
}

/// A receipt token with every kind of character a URL must encode: `+`, `/`,
/// `=`, `&`, `%`, a space, and a non-ASCII letter (whose UTF-8 bytes encode
/// as `%C3%A9`, which Kannel would read as its `%C` escape if left bare).
const RECEIPT_TOKEN: &str = "a+b/c=d&e%f é";
/// [`RECEIPT_TOKEN`] percent-encoded once, as a query value.
const RECEIPT_TOKEN_ENCODED: &str = "a%2Bb%2Fc%3Dd%26e%25f%20%C3%A9";

/// A channel table with the receipt token taken from `RECEIPT_TOKEN`.
fn with_receipt_token(table: String) -> String {
    table + "receipt_token_env = \"RECEIPT_TOKEN\"\n"
}

/// Sends message `id` with `text` through `ch`, which must accept it.
async fn accepted(ch: &Arc<dyn Channel>, id: i64, text: &str) -> otpgate_sms::Accepted {
    ch.send(&msg(id, text)).await.expect("accepted")
}

fn channel(db: &Db, toml: &str) -> Arc<dyn Channel> {
    let cfg = SmsConfig::from_toml(toml).expect("valid TOML");
    let table = build_table(&cfg, db.store.clone(), db.clock.clone(), &env).expect("valid config");
    table.channels()[0].clone()
}

fn kannel(port: u16) -> String {
    otpgate_testkit::settings::kannel_channel(
        port,
        "password_env = \"KANNEL_PASS\"\nreceipt_url = \"https://otp.example.com/\"",
    )
}

fn twilio(port: u16) -> String {
    otpgate_testkit::settings::twilio_channel(
        port,
        "auth_token_env = \"TW_TOKEN\"\nreceipt_url = \"https://otp.example.com\"",
    )
}

/// The query the Kannel preset (as [`kannel`] configures it) sends for
/// message 42, "Your code is 1234", with `dlr_url` as its receipt URL.
fn kannel_sendsms(dlr_url: &str) -> BTreeMap<String, String> {
    [
        ("username", "otp"),
        ("password", "s3cret"),
        ("from", "OTPGATE"),
        ("to", "+919876543210"),
        ("text", "Your code is 1234"),
        ("charset", "UTF-8"),
        ("coding", "0"),
        ("dlr-mask", "19"),
        ("dlr-url", dlr_url),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

#[tokio::test]
async fn the_kannel_preset_sends_exactly_a_sendsms_request() {
    let gw = Gateway::start(202, "0: Accepted for delivery").await;
    let db = Db::new().await;
    let ch = channel(&db, &kannel(gw.port));
    let acc = accepted(&ch, 42, "Your code is 1234").await;
    assert_eq!(
        acc.gateway_id.as_deref(),
        Some("42"),
        "Kannel returns no id: the reference is it"
    );
    let r = gw.last();
    assert_eq!(r.method, Method::GET);
    assert_eq!(r.path, "/cgi-bin/sendsms");
    let dlr = "https://otp.example.com/receipts/kannel?ref=42&status=%d&answer=%A";
    assert_eq!(r.query, kannel_sendsms(dlr));
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
    let acc = accepted(&ch, 5, "Your code is 9876").await;
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

/// `s` URL-encoded as Kannel encodes the SMSC's answer into `%A`: every
/// byte but ASCII letters and digits as `%XX`.
fn kannel_encoded(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

#[tokio::test]
async fn the_kannel_preset_puts_the_receipt_token_into_the_dlr_url_encoded_for_kannel() {
    let gw = Gateway::start(202, "0: Accepted for delivery").await;
    let db = Db::new().await;
    let toml = with_receipt_token(kannel(gw.port));
    let ch = channel(&db, &toml);
    accepted(&ch, 42, "Your code is 1234").await;
    let r = gw.last();
    assert_eq!(r.method, Method::GET);
    assert_eq!(r.path, "/cgi-bin/sendsms");
    // Encoded once for the callback's query, then every `%` doubled for
    // Kannel's escape codes.
    let dlr = "https://otp.example.com/receipts/kannel?ref=42&status=%d&answer=%A\
               &token=a%%2Bb%%2Fc%%3Dd%%26e%%25f%%20%%C3%%A9";
    assert_eq!(r.query, kannel_sendsms(dlr));
    // And the whole dlr-url is itself encoded once more as a query value.
    assert!(
        r.raw_query.contains(
            "%26token%3Da%25%252Bb%25%252Fc%25%253Dd%25%2526e%25%2525f%25%2520%25%25C3%25%25A9"
        ),
        "{}",
        r.raw_query
    );

    // When Kannel calls back, the token arrives as configured.
    let answer = kannel_encoded("NACK/0x0000000b/Invalid Destination Address");
    let callback = kannel_fills(dlr, 2, &answer);
    assert!(
        callback.contains(&format!("&token={RECEIPT_TOKEN_ENCODED}")),
        "{callback}"
    );
    let url = reqwest::Url::parse(&callback).unwrap();
    let got: BTreeMap<String, String> = url
        .query_pairs()
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    assert_eq!(got["token"], RECEIPT_TOKEN);
    assert_eq!(got["ref"], "42");
    assert_eq!(got["status"], "2");
    assert_eq!(got["answer"], "NACK/0x0000000b/Invalid Destination Address");

    // The token, like the password, stays out of errors and health.
    let down = channel(&db, &with_receipt_token(kannel(free_port())));
    let e = down.send(&msg(1, "x")).await.unwrap_err();
    for secret in [RECEIPT_TOKEN, RECEIPT_TOKEN_ENCODED, "a%%2Bb"] {
        assert!(!e.to_string().contains(secret), "{e}");
        assert!(!format!("{e:?}").contains(secret), "{e:?}");
        assert!(
            !down
                .health()
                .last_error
                .unwrap_or_default()
                .contains(secret)
        );
    }
}

#[tokio::test]
async fn the_twilio_preset_puts_the_receipt_token_into_the_status_callback() {
    let gw = Gateway::start(201, r#"{"sid":"SM0123","status":"queued"}"#).await;
    let db = Db::new().await;
    let toml = with_receipt_token(twilio(gw.port));
    let ch = channel(&db, &toml);
    accepted(&ch, 5, "Your code is 9876").await;
    let r = gw.last();
    assert_eq!(r.method, Method::POST);
    assert_eq!(r.path, "/2010-04-01/Accounts/AC123/Messages.json");
    let auth = base64::engine::general_purpose::STANDARD.encode("AC123:tw-token");
    assert_eq!(r.headers["authorization"], format!("Basic {auth}").as_str());
    let body = pairs(std::str::from_utf8(&r.body).unwrap());
    let callback = format!("https://otp.example.com/receipts/twilio?token={RECEIPT_TOKEN_ENCODED}");
    let want: BTreeMap<String, String> = [
        ("To", "+919876543210"),
        ("From", "+15005550006"),
        ("Body", "Your code is 9876"),
        ("StatusCallback", callback.as_str()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    assert_eq!(body, want);
    assert!(r.query.is_empty());
    // Twilio calls that URL back as given: its token decodes to ours.
    let url = reqwest::Url::parse(&body["StatusCallback"]).unwrap();
    let token: Vec<String> = url
        .query_pairs()
        .filter(|(k, _)| k == "token")
        .map(|(_, v)| v.into_owned())
        .collect();
    assert_eq!(token, [RECEIPT_TOKEN]);
}

#[test]
fn receipt_auth_tells_the_server_what_to_ask_of_each_channel() {
    let cfg = SmsConfig::from_toml(
        r#"
[channels.inline]
type = "http"
url = "http://gw.example/send"
receipt_token = "t0k"
[channels.from-env]
type = "http"
url = "http://gw.example/send"
receipt_token_env = "RECEIPT_TOKEN"
receipt_token = "ignored: the variable wins"
[channels.open]
type = "http"
url = "http://gw.example/send"
receipts_unauthenticated = true
[channels.closed]
type = "http"
url = "http://gw.example/send"
[channels.dev]
type = "inbox"
[channels.smsc]
type = "smpp"
host = "smsc.example"
system_id = "otp"
source_addr = "OTPGATE"
[[routes]]
channels = ["inline"]
"#,
    )
    .unwrap();
    let auth = |name: &str| receipt_auth(name, &cfg.channels[name], &env).unwrap();
    assert!(matches!(auth("inline"), ReceiptAuth::Token(t) if t.expose() == "t0k"));
    assert!(matches!(auth("from-env"), ReceiptAuth::Token(t) if t.expose() == RECEIPT_TOKEN));
    assert!(matches!(auth("open"), ReceiptAuth::Open));
    assert!(
        matches!(auth("closed"), ReceiptAuth::NoToken),
        "no token and no opt-out: refused"
    );
    assert!(matches!(auth("dev"), ReceiptAuth::NotHttp));
    assert!(matches!(auth("smsc"), ReceiptAuth::NotHttp));
    // Neither the parsed configuration nor the answer shows the token.
    for shown in [format!("{cfg:?}"), format!("{:?}", auth("inline"))] {
        assert!(!shown.contains("t0k"), "{shown}");
    }
    let prepared = otpgate_sms::http::prepare(
        "t",
        match &cfg.channels["inline"] {
            otpgate_sms::config::ChannelConfig::Http(c) => c,
            _ => unreachable!(),
        },
        &env,
    )
    .unwrap();
    assert!(!format!("{prepared:?}").contains("t0k"));
    // The variable unset: refused, naming the variable (not a value).
    let e = receipt_auth("from-env", &cfg.channels["from-env"], &|_| None).unwrap_err();
    assert!(
        matches!(e, ConfigError::MissingEnv { ref var, .. } if var == "RECEIPT_TOKEN"),
        "{e}"
    );
}

#[tokio::test]
async fn an_empty_or_missing_receipt_token_is_refused_at_build() {
    let db = Db::new().await;
    let build = |extra: &str| {
        let t = format!("[channels.a]\ntype = \"http\"\nurl = \"http://x/\"\n{extra}");
        let cfg = SmsConfig::from_toml(&t)?;
        cfg.validate(&env)?;
        build_table(&cfg, db.store.clone(), db.clock.clone(), &env).map(|_| ())
    };
    assert!(build("receipt_token = \"t\"\n").is_ok());
    let e = build("receipt_token = \"\"\n").unwrap_err();
    assert!(
        e.to_string().contains("receipt_token must not be empty"),
        "{e}"
    );
    let e = build("receipt_token_env = \"NO_SUCH_TOKEN\"\n").unwrap_err();
    assert!(e.to_string().contains("NO_SUCH_TOKEN"), "{e}");
    let e = build("receipt_tokn = \"t\"\n").unwrap_err();
    assert!(
        e.to_string().contains("receipt_tokn"),
        "a typo is not silently unauthenticated: {e}"
    );
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

    let v = db.queue("91", "9876543210", "Your code is 1357").await;
    let m = db.wait_status(&v, DeliveryStatus::Sent, wait).await;
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
    let uk = db.queue("44", "7400123456", "Your code is 2468").await;
    let m = db.wait_status(&uk, DeliveryStatus::Sent, wait).await;
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
