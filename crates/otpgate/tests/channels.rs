//! WhatsApp, voice, e-mail and fallback workflows through the real binary:
//! `otpgate serve` with a configuration whose channels point at local
//! receivers on 127.0.0.1 — a stand-in for the WhatsApp Cloud API, Twilio's
//! Calls API and an HTTP SMS gateway (recording every request), and an
//! `aiosmtpd` SMTP server (`tools/python/smtp_sink.py`).

mod common;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use common::{
    ReplyJson, Server, TempDir, code_in, create_account, open_store, require_services, start, token,
};
use hmac::{Hmac, KeyInit, Mac};
use otpgate_core::{DeliveryStatus, VerificationId};
use sha2::Sha256;

const WA_TOKEN: &str = "wa-access-token-for-tests";
const WA_SECRET: &str = "wa-app-secret-for-tests";
const WA_VERIFY: &str = "wa-verify-token-for-tests";
const TWILIO_TOKEN: &str = "twilio-auth-token-for-tests";
const SMS_RECEIPT_TOKEN: &str = "sms-receipt-token-for-tests";
/// Seconds after the send at which the SMS route's WhatsApp step goes.
const FALLBACK_AFTER_SECS: u64 = 2;

/// One request a stand-in received.
#[derive(Debug, Clone)]
struct Seen {
    at: Instant,
    method: Method,
    path: String,
    headers: HeaderMap,
    body: Bytes,
}

impl Seen {
    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("a JSON body")
    }
    fn form(&self) -> Vec<(String, String)> {
        serde_urlencoded::from_bytes(&self.body).expect("a form body")
    }
}

/// The Cloud API, Calls API and SMS gateway stand-in.
#[derive(Clone, Default)]
struct StandIn {
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl StandIn {
    async fn start() -> (Self, u16) {
        let me = Self::default();
        let app = axum::Router::new().fallback(answer).with_state(me.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move { axum::serve(listener, app).await });
        (me, port)
    }

    fn seen(&self, path_part: &str) -> Vec<Seen> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.path.contains(path_part))
            .cloned()
            .collect()
    }

    /// The first request to a path containing `path_part` whose body
    /// contains `needle`, waiting up to `wait`.
    async fn wait_for(&self, path_part: &str, needle: &str, wait: Duration) -> Seen {
        let deadline = Instant::now() + wait;
        loop {
            if let Some(s) = self
                .seen(path_part)
                .into_iter()
                .find(|s| String::from_utf8_lossy(&s.body).contains(needle))
            {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "no request to {path_part} with {needle:?} arrived"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

async fn answer(
    State(me): State<StandIn>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().to_owned();
    let n = {
        let mut seen = me.seen.lock().unwrap();
        seen.push(Seen {
            at: Instant::now(),
            method,
            path: path.clone(),
            headers,
            body,
        });
        seen.len()
    };
    let reply = |code: StatusCode, v: serde_json::Value| (code, axum::Json(v)).into_response();
    if path.ends_with("/messages") {
        reply(
            StatusCode::OK,
            serde_json::json!({"messaging_product": "whatsapp",
                "contacts": [{"input": "x", "wa_id": "x"}],
                "messages": [{"id": format!("wamid.TEST{n}")}]}),
        )
    } else if path.ends_with("/Calls.json") {
        reply(
            StatusCode::CREATED,
            serde_json::json!({"sid": format!("CA{n:032}"), "status": "queued"}),
        )
    } else if path == "/sms" {
        reply(
            StatusCode::OK,
            serde_json::json!({"id": format!("sms-{n}")}),
        )
    } else {
        reply(StatusCode::NOT_FOUND, serde_json::json!({}))
    }
}

/// An `aiosmtpd` server writing each message it receives as a JSON line.
struct SmtpSink {
    child: Child,
    port: u16,
    out: PathBuf,
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl SmtpSink {
    /// `None` (skipped, said by name) when Python with aiosmtpd is missing
    /// outside CI; a failure when `OTPGATE_REQUIRE_SERVICES` is set.
    fn start(test: &str, dir: &TempDir) -> Option<Self> {
        Self::start_with(test, dir, &[])
    }

    /// With `extra` arguments of the sink (certificate, key, credentials).
    fn start_with(test: &str, dir: &TempDir, extra: &[&str]) -> Option<Self> {
        let python = std::env::var("OTPGATE_PYTHON").unwrap_or_else(|_| {
            concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../../target/python/bin/python"
            )
            .to_owned()
        });
        let has = Command::new(&python)
            .args(["-c", "import aiosmtpd"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !has {
            assert!(
                !require_services(),
                "{test}: needs Python with aiosmtpd (OTPGATE_PYTHON, tools/python/requirements.txt)"
            );
            eprintln!("skipped {test}: no Python with aiosmtpd (set OTPGATE_PYTHON)");
            return None;
        }
        // A free port: bound and released, then taken by the sink.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let out = dir.0.join("mail.jsonl");
        let script = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../tools/python/smtp_sink.py"
        );
        let mut child = Command::new(&python)
            .args([script, &port.to_string(), out.to_str().unwrap()])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the SMTP sink");
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(child.stdout.take().unwrap()),
            &mut line,
        )
        .unwrap();
        assert_eq!(line.trim(), "ready", "the SMTP sink did not start");
        Some(Self { child, port, out })
    }

    async fn wait_for(&self, to: &str, wait: Duration) -> serde_json::Value {
        let deadline = Instant::now() + wait;
        loop {
            if let Ok(text) = std::fs::read_to_string(&self.out)
                && let Some(m) = text
                    .lines()
                    .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                    .find(|m| m["rcpt_tos"][0] == to)
            {
                return m;
            }
            assert!(Instant::now() < deadline, "no e-mail to {to} arrived");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Every channel kind, each on its own route; SMS falls back to WhatsApp.
fn config(dir: &TempDir, standin: u16, smtp: u16) -> PathBuf {
    dir.write(
        "otpgate.toml",
        format!(
            r#"
[message.flows.EMAIL]
subject = {{ default = "Your {{brand}} code", fr = "Votre code {{brand}}" }}
templates = {{ default = "Your code is {{code}}.", fr = "Votre code est {{code}}. Il expire dans {{minutes}} min." }}
html = {{ fr = "<p>Votre code est <b>{{code}}</b>.</p>" }}

[channels.wa]
type = "whatsapp"
url = "http://127.0.0.1:{standin}"
phone_number_id = "1234567890"
access_token_env = "E2E_WA_TOKEN"
template = "otp_login"
languages = {{ fr = "fr" }}
app_secret_env = "E2E_WA_SECRET"
verify_token_env = "E2E_WA_VERIFY"

[channels.voice]
type = "voice"
preset = "twilio"
url = "http://127.0.0.1:{standin}"
account_sid = "AC0123456789abcdef0123456789abcdef"
auth_token_env = "E2E_TWILIO_TOKEN"
from = "+15005550006"

[channels.mail]
type = "email"
host = "127.0.0.1"
port = {smtp}
security = "none"
from = "otpgate <otp@example.com>"

[channels.sms]
type = "http"
url = "http://127.0.0.1:{standin}/sms"
fields = {{ to = "{{to}}", text = "{{text}}", ref = "{{reference}}" }}
id_field = "id"
receipt_token_env = "E2E_SMS_RECEIPT_TOKEN"

[[routes]]
flow_types = ["WHATSAPP"]
channels = ["wa"]

[[routes]]
flow_types = ["VOICE"]
channels = ["voice"]

[[routes]]
flow_types = ["EMAIL"]
channels = ["mail"]

[[routes]]
flow_types = ["SMS"]
channels = ["sms"]
fallback = [{{ flow = "WHATSAPP", after_secs = {FALLBACK_AFTER_SECS} }}]
"#
        ),
    )
}

const ENVS: [(&str, &str); 5] = [
    ("E2E_WA_TOKEN", WA_TOKEN),
    ("E2E_WA_SECRET", WA_SECRET),
    ("E2E_WA_VERIFY", WA_VERIFY),
    ("E2E_TWILIO_TOKEN", TWILIO_TOKEN),
    ("E2E_SMS_RECEIPT_TOKEN", SMS_RECEIPT_TOKEN),
];

struct Setup {
    dir: TempDir,
    db: String,
    config: PathBuf,
    cid: String,
    standin: StandIn,
    server: Server,
    http: reqwest::Client,
    token: String,
}

impl Setup {
    /// `smtp` is the SMTP server's port (any port when the test sends no
    /// e-mail: the channel connects only to send).
    async fn new(tag: &str, smtp: Option<(TempDir, u16)>) -> Self {
        let (dir, smtp) = smtp.unwrap_or_else(|| (TempDir::new(tag), 9));
        let (standin, port) = StandIn::start().await;
        let config = config(&dir, port, smtp);
        let db = dir.sqlite_url();
        let cid = create_account(&db, Some(1000));
        let server = Self::serve(&config, &db);
        let http = reqwest::Client::new();
        let token = token(&http, &server.base, &cid).await;
        Self {
            dir,
            db,
            config,
            cid,
            standin,
            server,
            http,
            token,
        }
    }

    fn serve(config: &std::path::Path, db: &str) -> Server {
        start(
            &["--config", config.to_str().unwrap(), "--database", db],
            &ENVS,
        )
    }

    async fn send(&self, params: &[(&str, &str)]) -> serde_json::Value {
        self.http
            .post(format!("{}/verification/v3/send", self.server.base))
            .header("authToken", &self.token)
            .query(params)
            .reply_json()
            .await
    }

    /// A six-digit SMS send to `+91 <national>`, which must succeed, and
    /// the request it made of the SMS gateway: (id, request).
    async fn send_sms(&self, national: &str) -> (String, Seen) {
        self.send_caught("91", national, "SMS", &[("otpLength", "6")], "/sms")
            .await
    }

    /// A send of `flow` to `+<cc> <national>` (with `extra` parameters),
    /// which must succeed, and the request it made of the stand-in at a
    /// path containing `path`: (id, request).
    async fn send_caught(
        &self,
        cc: &str,
        national: &str,
        flow: &str,
        extra: &[(&str, &str)],
        path: &str,
    ) -> (String, Seen) {
        let id = id_of(&self.send_flow(cc, national, flow, extra).await);
        let to = format!("{cc}{national}");
        let req = self
            .standin
            .wait_for(path, &to, Duration::from_secs(10))
            .await;
        (id, req)
    }

    /// A send of `flow` to `+<cc> <national>`, with `extra` parameters.
    async fn send_flow(
        &self,
        cc: &str,
        national: &str,
        flow: &str,
        extra: &[(&str, &str)],
    ) -> serde_json::Value {
        let mut params = vec![
            ("countryCode", cc),
            ("mobileNumber", national),
            ("flowType", flow),
        ];
        params.extend_from_slice(extra);
        self.send(&params).await
    }

    async fn validate(&self, id: &str, code: &str) -> serde_json::Value {
        common::validate(&self.http, &self.server.base, &self.token, id, code).await
    }

    async fn webhook(&self, body: &str, signature: &str) -> reqwest::Response {
        self.http
            .post(format!("{}/webhooks/whatsapp/wa", self.server.base))
            .header("content-type", "application/json")
            .header("x-hub-signature-256", signature)
            .body(body.to_owned())
            .send()
            .await
            .unwrap()
    }
}

fn sign(secret: &str, body: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(body.as_bytes());
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

fn status_hook(wamid: &str, status: &str) -> String {
    serde_json::json!({
        "object": "whatsapp_business_account",
        "entry": [{"id": "102290129340398", "changes": [{"field": "messages", "value": {
            "messaging_product": "whatsapp",
            "metadata": {"display_phone_number": "15550783881", "phone_number_id": "1234567890"},
            "statuses": [{"id": wamid, "status": status, "timestamp": "1750000000",
                          "recipient_id": "919876543210"}]}}]}]
    })
    .to_string()
}

fn id_of(v: &serde_json::Value) -> String {
    assert_eq!(v["responseCode"], 200, "{v}");
    v["data"]["verificationId"].as_str().unwrap().to_owned()
}

async fn wait_status(db: &str, id: &str, want: DeliveryStatus) {
    let store = open_store(db).await;
    let vid = VerificationId::parse(id).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let m = store.outbox_for_verification(vid).await.unwrap().unwrap();
        if m.status == want {
            return;
        }
        assert!(Instant::now() < deadline, "never {want:?}: {m:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_whatsapp_send_reaches_the_cloud_api_and_only_a_signed_status_marks_it_delivered() {
    let s = Setup::new("wa", None).await;
    let (id, req) = s
        .send_caught(
            "91",
            "9876543210",
            "WHATSAPP",
            &[("otpLength", "6"), ("langId", "fr")],
            "/messages",
        )
        .await;

    // The exact request the preset documents.
    assert_eq!(req.method, Method::POST);
    assert_eq!(req.path, "/v21.0/1234567890/messages");
    assert_eq!(
        req.headers["authorization"],
        format!("Bearer {WA_TOKEN}").as_str()
    );
    assert!(
        req.headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/json")
    );
    let body = req.json();
    let code = body["template"]["components"][0]["parameters"][0]["text"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(code.len(), 6);
    assert_eq!(
        body,
        serde_json::json!({
            "messaging_product": "whatsapp",
            "recipient_type": "individual",
            "to": "919876543210",
            "type": "template",
            "template": {
                "name": "otp_login",
                "language": {"code": "fr"},
                "components": [
                    {"type": "body", "parameters": [{"type": "text", "text": code}]},
                    {"type": "button", "sub_type": "url", "index": "0",
                     "parameters": [{"type": "text", "text": code}]}
                ]
            }
        })
    );
    wait_status(&s.db, &id, DeliveryStatus::Sent).await;

    // A "failed" status with a bad signature, then with none: refused, and
    // the message is neither failed nor refunded.
    let wamid = "wamid.TEST1";
    let forged = status_hook(wamid, "failed");
    let r = s
        .webhook(&forged, &sign("not the app secret", &forged))
        .await;
    assert_eq!(r.status(), 401);
    let r = s
        .http
        .post(format!("{}/webhooks/whatsapp/wa", s.server.base))
        .body(forged.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let store = open_store(&s.db).await;
    let vid = VerificationId::parse(&id).unwrap();
    let m = store.outbox_for_verification(vid).await.unwrap().unwrap();
    assert_eq!(
        m.status,
        DeliveryStatus::Sent,
        "a forged status changed nothing"
    );
    assert_eq!(m.gateway_id.as_deref(), Some(wamid));

    // The genuine "delivered" status, signed with the app secret.
    let hook = status_hook(wamid, "delivered");
    let r = s.webhook(&hook, &sign(WA_SECRET, &hook)).await;
    assert_eq!(r.status(), 200);
    let j: serde_json::Value = r.json().await.unwrap();
    assert_eq!(j["matched"], 1, "{j}");
    wait_status(&s.db, &id, DeliveryStatus::Delivered).await;

    // Meta's registration handshake.
    let hs = |tok: &'static str| {
        s.http
            .get(format!("{}/webhooks/whatsapp/wa", s.server.base))
            .query(&[
                ("hub.mode", "subscribe"),
                ("hub.verify_token", tok),
                ("hub.challenge", "1158201444"),
            ])
            .send()
    };
    let ok = hs(WA_VERIFY).await.unwrap();
    assert_eq!(ok.status(), 200);
    assert_eq!(ok.text().await.unwrap(), "1158201444");
    assert_eq!(hs("wrong").await.unwrap().status(), 403);

    // The code WhatsApp carried validates.
    assert_eq!(s.validate(&id, &code).await["responseCode"], 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_voice_send_reaches_the_calls_api_with_twiml_that_speaks_the_code() {
    let s = Setup::new("voice", None).await;
    let (id, req) = s
        .send_caught(
            "44",
            "7911123456",
            "VOICE",
            &[("otpLength", "4")],
            "/Calls.json",
        )
        .await;
    assert_eq!(req.method, Method::POST);
    assert_eq!(
        req.path,
        "/2010-04-01/Accounts/AC0123456789abcdef0123456789abcdef/Calls.json"
    );
    use base64::Engine;
    let basic = base64::engine::general_purpose::STANDARD
        .encode(format!("AC0123456789abcdef0123456789abcdef:{TWILIO_TOKEN}"));
    assert_eq!(
        req.headers["authorization"],
        format!("Basic {basic}").as_str()
    );
    let form = req.form();
    let get = |k: &str| {
        form.iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| panic!("no {k} in {form:?}"))
    };
    assert_eq!(get("To"), "+447911123456");
    assert_eq!(get("From"), "+15005550006");
    let twiml = get("Twiml");
    // Digit by digit, said three times with pauses between.
    let digits: String = twiml
        .split("</Say>")
        .next()
        .unwrap()
        .chars()
        .filter(char::is_ascii_digit)
        .collect();
    assert_eq!(digits.len(), 4, "{twiml}");
    let spoken = digits
        .chars()
        .map(String::from)
        .collect::<Vec<_>>()
        .join(", ");
    let say = format!("<Say language=\"en-US\">Your otpgate verification code is {spoken}.</Say>");
    assert_eq!(
        twiml,
        format!("<Response>{say}<Pause length=\"1\"/>{say}<Pause length=\"1\"/>{say}</Response>")
    );
    wait_status(&s.db, &id, DeliveryStatus::Sent).await;
    let m = open_store(&s.db)
        .await
        .outbox_for_verification(VerificationId::parse(&id).unwrap())
        .await
        .unwrap()
        .unwrap();
    assert!(m.gateway_id.unwrap().starts_with("CA"));
    assert_eq!(s.validate(&id, &digits).await["responseCode"], 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_email_send_arrives_at_the_smtp_server_in_the_templates_language() {
    let test = "an_email_send_arrives_at_the_smtp_server_in_the_templates_language";
    let dir = TempDir::new("email");
    let Some(sink) = SmtpSink::start(test, &dir) else {
        return;
    };
    let port = sink.port;
    let s = Setup::new("email", Some((dir, port))).await;

    // No address, or a bad one, is a 400 with the reason; nothing is sent.
    let base = [
        ("countryCode", "91"),
        ("mobileNumber", "9876543210"),
        ("flowType", "EMAIL"),
    ];
    let v = s.send(&base).await;
    assert_eq!(v["responseCode"], 400, "{v}");
    assert!(v["errorMessage"].as_str().unwrap().contains("email"), "{v}");
    let mut bad = base.to_vec();
    bad.push(("email", "not an address"));
    let v = s.send(&bad).await;
    assert_eq!(v["responseCode"], 400, "{v}");
    assert!(v["errorMessage"].as_str().unwrap().contains("email"), "{v}");

    let mut fr = base.to_vec();
    fr.extend([
        ("email", "user@example.com"),
        ("langId", "fr"),
        ("otpLength", "6"),
    ]);
    let id = id_of(&s.send(&fr).await);
    let mail = sink
        .wait_for("user@example.com", Duration::from_secs(15))
        .await;
    assert_eq!(mail["subject"], "Votre code otpgate", "{mail}");
    assert_eq!(mail["mail_from"], "otp@example.com");
    let text = mail["text"].as_str().unwrap();
    assert!(text.starts_with("Votre code est "), "{text}");
    assert!(text.contains("Il expire dans 1 min."), "{text}");
    let code = code_in(text, 6);
    let html = mail["html"].as_str().unwrap();
    assert!(html.contains(&format!("<b>{code}</b>")), "{html}");
    assert_eq!(s.validate(&id, &code).await["responseCode"], 200);

    // The default language, without HTML (none configured for it).
    let en = [
        ("countryCode", "91"),
        ("mobileNumber", "9876543211"),
        ("flowType", "EMAIL"),
        ("email", "other@example.org"),
    ];
    let id = id_of(&s.send(&en).await);
    let mail = sink
        .wait_for("other@example.org", Duration::from_secs(15))
        .await;
    assert_eq!(mail["subject"], "Your otpgate code");
    assert!(mail["html"].is_null(), "{mail}");
    let code = code_in(mail["text"].as_str().unwrap(), 4);
    assert_eq!(s.validate(&id, &code).await["responseCode"], 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flow_with_no_route_gets_400_with_the_reason() {
    let s = Setup::new("noroute", None).await;
    for flow in ["RCS", "SAUTH"] {
        let v = s.send_flow("91", "9876543210", flow, &[]).await;
        assert_eq!(v["responseCode"], 400, "{v}");
        assert_eq!(
            v["errorMessage"],
            format!("flowType {flow} is not enabled on this server"),
            "{v}"
        );
    }
    let v = s.send_flow("91", "9876543210", "PIGEON", &[]).await;
    assert_eq!(v["responseCode"], 400, "{v}");
    assert!(v["errorMessage"].as_str().unwrap().contains("EMAIL"), "{v}");
    assert!(s.standin.seen("").is_empty(), "nothing was sent");
}

/// The SMS gateway accepts the message and never delivers it: the same code
/// goes by WhatsApp after the route's delay, and validates under the id the
/// send returned.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_sms_black_holed_the_code_arrives_by_whatsapp_after_the_delay() {
    let s = Setup::new("fallback-hole", None).await;
    let sent_at = Instant::now();
    let (id, sms) = s.send_sms("9876543212").await;
    let sms_code = code_in(sms.json()["text"].as_str().unwrap(), 6);
    let wa = s
        .standin
        .wait_for("/messages", "919876543212", Duration::from_secs(15))
        .await;
    let waited = wa.at.duration_since(sent_at);
    assert!(
        waited >= Duration::from_millis(FALLBACK_AFTER_SECS * 1000 - 100),
        "WhatsApp went after {waited:?}, before the delay"
    );
    let wa_code = wa.json()["template"]["components"][0]["parameters"][0]["text"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(wa_code, sms_code, "the same code on both channels");

    // Each attempt and its channel, in the server's log and the store.
    let log_line = |step: &str, flow: &str, channel: &str| {
        s.server.log_text().lines().any(|l| {
            l.contains("message handed to gateway")
                && l.contains(&format!("verification={id}"))
                && l.contains(&format!("step={step}"))
                && l.contains(&format!("flow={flow}"))
                && (l.contains(&format!("channel=\"{channel}\""))
                    || l.contains(&format!("channel={channel}")))
        })
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while !(log_line("0", "SMS", "sms") && log_line("1", "WHATSAPP", "wa")) {
        assert!(
            Instant::now() < deadline,
            "each attempt is logged with its channel:\n{}",
            s.server.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let store = open_store(&s.db).await;
    let steps = store
        .outbox_attempts(VerificationId::parse(&id).unwrap())
        .await
        .unwrap();
    let summary: Vec<_> = steps
        .iter()
        .map(|m| (m.step, m.flow_type.as_str(), m.channel.as_deref(), m.status))
        .collect();
    assert_eq!(
        summary,
        [
            (0, "SMS", Some("sms"), DeliveryStatus::Sent),
            (1, "WHATSAPP", Some("wa"), DeliveryStatus::Sent)
        ]
    );
    assert!(
        steps.iter().all(|m| m.text.is_none()),
        "no code left on disk"
    );

    // Validate is unchanged: the original id, the code from WhatsApp; the
    // account was charged once.
    assert_eq!(s.validate(&id, &wa_code).await["responseCode"], 200);
    let v = common::verification_of(store.as_ref(), &s.cid, &id).await;
    assert_eq!(v.cost, 1, "one verification, one charge");
}

/// The SMS gateway delivers and says so: the WhatsApp step is cancelled and
/// its text (which holds the code) erased; nothing goes to the Cloud API.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_sms_working_no_whatsapp_message_is_sent() {
    let s = Setup::new("fallback-ok", None).await;
    let sent_at = Instant::now();
    let (id, sms) = s.send_sms("9876543213").await;
    let code = code_in(sms.json()["text"].as_str().unwrap(), 6);
    wait_status(&s.db, &id, DeliveryStatus::Sent).await;
    // The gateway's delivery receipt, as its callback would send it.
    let r: serde_json::Value = s
        .http
        .post(format!("{}/receipts/sms", s.server.base))
        .form(&[
            ("token", SMS_RECEIPT_TOKEN),
            ("id", "sms-1"),
            ("status", "delivered"),
        ])
        .reply_json()
        .await;
    assert_eq!(r["status"], "recorded", "{r}");
    assert!(
        sent_at.elapsed() < Duration::from_secs(FALLBACK_AFTER_SECS),
        "the receipt came before the fallback's delay (else this test proves nothing)"
    );
    let store = open_store(&s.db).await;
    let steps = store
        .outbox_attempts(VerificationId::parse(&id).unwrap())
        .await
        .unwrap();
    assert_eq!(steps.len(), 2);
    assert_eq!(steps[1].status, DeliveryStatus::Cancelled);
    assert!(steps[1].text.is_none(), "the held step's code is erased");
    // Well past the delay: still nothing on WhatsApp.
    tokio::time::sleep(Duration::from_secs(FALLBACK_AFTER_SECS + 1)).await;
    assert!(s.standin.seen("/messages").is_empty());
    assert_eq!(s.validate(&id, &code).await["responseCode"], 200);
}

/// The fallback step is in the outbox from the send on: a server killed
/// between the two attempts sends it after restarting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fallback_survives_a_crash_between_attempts() {
    let mut s = Setup::new("fallback-crash", None).await;
    let (id, _) = s.send_sms("9876543214").await;
    // SIGKILL before the WhatsApp step is due, then a fresh process.
    s.server.child.kill().unwrap();
    s.server.child.wait().unwrap();
    s.server = Setup::serve(&s.config, &s.db);
    let wa = s
        .standin
        .wait_for("/messages", "919876543214", Duration::from_secs(15))
        .await;
    let code = wa.json()["template"]["components"][0]["parameters"][0]["text"]
        .as_str()
        .unwrap()
        .to_owned();
    s.token = token(&s.http, &s.server.base, &s.cid).await;
    assert_eq!(s.validate(&id, &code).await["responseCode"], 200);
    drop(s.dir);
}

/// A CA and a certificate for 127.0.0.1 signed by it, made with `openssl`;
/// `None` when it is missing (skipped, or a failure in CI).
fn test_certificate(test: &str, dir: &TempDir) -> Option<(PathBuf, PathBuf, PathBuf)> {
    let d = &dir.0;
    let run = |args: &[&str]| {
        Command::new("openssl")
            .args(args)
            .current_dir(d)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    std::fs::write(
        d.join("ext"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    let ok = run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=otpgate-test-ca",
    ]) && run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "leaf.key",
        "-out",
        "leaf.csr",
        "-subj",
        "/CN=127.0.0.1",
    ]) && run(&[
        "x509",
        "-req",
        "-in",
        "leaf.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "leaf.pem",
        "-days",
        "2",
        "-extfile",
        "ext",
    ]);
    if !ok {
        assert!(!require_services(), "{test}: needs openssl");
        eprintln!("skipped {test}: no openssl");
        return None;
    }
    Some((d.join("ca.pem"), d.join("leaf.pem"), d.join("leaf.key")))
}

/// STARTTLS (required by the server) with SMTP AUTH: the channel trusts the
/// server's private CA through `tls_ca_file` and logs in with its password.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_email_goes_over_starttls_with_smtp_auth() {
    let test = "an_email_goes_over_starttls_with_smtp_auth";
    let dir = TempDir::new("email-tls");
    let Some((ca, cert, key)) = test_certificate(test, &dir) else {
        return;
    };
    let Some(sink) = SmtpSink::start_with(
        test,
        &dir,
        &[
            cert.to_str().unwrap(),
            key.to_str().unwrap(),
            "otp@example.com:smtp password",
        ],
    ) else {
        return;
    };
    let config = dir.write(
        "otpgate.toml",
        format!(
            r#"
[channels.mail]
type = "email"
host = "127.0.0.1"
port = {port}
security = "starttls"
tls_ca_file = "{ca}"
username = "otp@example.com"
password_env = "E2E_SMTP_PASSWORD"
from = "otp@example.com"

[[routes]]
flow_types = ["EMAIL"]
channels = ["mail"]
"#,
            port = sink.port,
            ca = ca.display(),
        ),
    );
    let db = dir.sqlite_url();
    let cid = create_account(&db, Some(1000));
    let server = start(
        &["--config", config.to_str().unwrap(), "--database", &db],
        &[("E2E_SMTP_PASSWORD", "smtp password")],
    );
    let http = reqwest::Client::new();
    let t = token(&http, &server.base, &cid).await;
    let v: serde_json::Value = http
        .post(format!("{}/verification/v3/send", server.base))
        .header("authToken", &t)
        .query(&[
            ("countryCode", "91"),
            ("mobileNumber", "9876543210"),
            ("flowType", "EMAIL"),
            ("email", "tls@example.com"),
        ])
        .reply_json()
        .await;
    let id = id_of(&v);
    let mail = sink
        .wait_for("tls@example.com", Duration::from_secs(15))
        .await;
    assert_eq!(mail["subject"], "Your otpgate verification code");
    let code = code_in(mail["text"].as_str().unwrap(), 4);
    let html = mail["html"].as_str().unwrap();
    assert!(html.contains(&format!("<strong>{code}</strong>")), "{html}");
    let r = common::validate(&http, &server.base, &t, &id, &code).await;
    assert_eq!(r["responseCode"], 200, "{r}");
}
