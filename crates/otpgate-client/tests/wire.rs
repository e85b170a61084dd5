//! Wire tests: a local stand-in for the hosted service (axum on 127.0.0.1:0)
//! replays the response shapes the contract publishes, and the variants the
//! hosted service is known to send, and the SDK must read each into the right
//! typed outcome. The stand-in counts requests, so token caching, the single
//! shared refresh, the one retry after a 401 and the retry rules on broken
//! connections are checked by what actually reached the wire.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Body;
use axum::extract::{Query, Request, State};
use axum::http::StatusCode;
use axum::response::Response;
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use otpgate_client::{
    ApiVersion, Client, ClientBuilder, Error, ResponseCode, SendOtp, SendOutcome, Validation,
};
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;

const CUSTOMER: &str = "C-6D16D900FA3044F";
/// Not ASCII and with characters whose base64 differs between alphabets, so
/// a wrong encoding is caught.
const PASSWORD: &str = "pä ss?>~w0rd";

const SEND_SAMPLE: &str = r#"{"responseCode":200,"message":"SUCCESS","data":{"verificationId":"5915384","mobileNumber":"9876543210","responseCode":"200","errorMessage":null,"timeout":"60","smsCLI":null,"transactionId":"2065cc84-0d76-40fe-a434-2f1907ef07a2","referenceId":"2065cc84-0d76-40fe-a434-2f1907ef07a2","flowType":"SMS"}}"#;
const VALIDATE_V3_SAMPLE: &str = r#"{"responseCode":200,"message":"SUCCESS","data":{"verificationId":5915384,"mobileNumber":"9876543210","verificationStatus":"VERIFICATION_COMPLETED","responseCode":"200","errorMessage":null,"transactionId":"2065cc84-0d76-40fe-a434-2f1907ef07a2","referenceId":"2065cc84-0d76-40fe-a434-2f1907ef07a2","authToken":null}}"#;
const VALIDATE_V2_SAMPLE: &str = r#"{"responseCode":200,"message":"SUCCESS","data":{"verificationId":"5915384","mobileNumber":"9876543210","verificationStatus":"VERIFICATION_COMPLETED","responseCode":"200","errorMessage":null,"transactionId":"2065cc84-0d76-40fe-a434-2f1907ef07a2","referenceId":"2065cc84-0d76-40fe-a434-2f1907ef07a2","authToken":null}}"#;
const PENDING_SAMPLE: &str = r#"{"responseCode":506,"message":"REQUEST_ALREADY_EXISTS","data":{"verificationId":"5915384","mobileNumber":"9876543210","responseCode":"506","errorMessage":"REQUEST_ALREADY_EXISTS","timeout":"41"}}"#;

/// A scripted response.
#[derive(Clone)]
struct Canned {
    status: u16,
    body: String,
    retry_after: Option<&'static str>,
}

fn canned(status: u16, body: &str) -> Canned {
    Canned {
        status,
        body: body.to_owned(),
        retry_after: None,
    }
}

/// One request as the stand-in saw it.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    path: String,
    query: HashMap<String, String>,
    auth: Option<String>,
    content_type: Option<String>,
}

#[derive(Default)]
struct Script {
    token_fetches: AtomicUsize,
    sends: AtomicUsize,
    validates: AtomicUsize,
    unauthorized: AtomicUsize,
    /// JWTs with this lifetime; opaque tokens when `None`.
    token_lifetime_secs: Mutex<Option<u64>>,
    token_delay: Mutex<Duration>,
    /// Accepted tokens and when they stop being accepted.
    valid: Mutex<HashMap<String, Option<Instant>>>,
    /// Refuse every token on send/validate.
    refuse_all: AtomicBool,
    token_replies: Mutex<VecDeque<Canned>>,
    send_replies: Mutex<VecDeque<Canned>>,
    validate_replies: Mutex<VecDeque<Canned>>,
    seen: Mutex<Vec<Seen>>,
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn reply(c: Canned) -> Response {
    let mut b = Response::builder()
        .status(StatusCode::from_u16(c.status).unwrap())
        .header("content-type", "application/json");
    if let Some(r) = c.retry_after {
        b = b.header("retry-after", r);
    }
    b.body(Body::from(c.body)).unwrap()
}

async fn handle(State(s): State<Arc<Script>>, req: Request) -> Response {
    // Only the head is needed; `Body` is not `Sync`, so keep it out of the
    // future's state.
    let (req, _body) = req.into_parts();
    let query: HashMap<String, String> = Query::try_from_uri(&req.uri)
        .map(|Query(q)| q)
        .unwrap_or_default();
    let header = |name: &str| {
        req.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let seen = Seen {
        method: req.method.to_string(),
        path: req.uri.path().to_owned(),
        query: query.clone(),
        auth: header("authtoken"),
        content_type: header("content-type"),
    };
    s.seen.lock().unwrap().push(seen.clone());

    if seen.path == "/auth/v1/authentication/token" {
        s.token_fetches.fetch_add(1, Ordering::SeqCst);
        let delay = *s.token_delay.lock().unwrap();
        tokio::time::sleep(delay).await;
        if let Some(c) = s.token_replies.lock().unwrap().pop_front() {
            return reply(c);
        }
        let right_key = STANDARD.encode(PASSWORD.as_bytes());
        if query.get("customerId").map(String::as_str) != Some(CUSTOMER)
            || query.get("key") != Some(&right_key)
        {
            return reply(canned(
                401,
                r#"{"status":401,"error":"unknown customerId or wrong key"}"#,
            ));
        }
        let n = s.token_fetches.load(Ordering::SeqCst);
        let lifetime = *s.token_lifetime_secs.lock().unwrap();
        let (token, deadline) = match lifetime {
            Some(life) => {
                let iat = now_secs();
                let payload = format!(r#"{{"sub":"{CUSTOMER}","iat":{iat},"exp":{}}}"#, iat + life);
                let token = format!(
                    "{}.{}.sig{n}",
                    URL_SAFE_NO_PAD.encode(r#"{"alg":"HS512"}"#),
                    URL_SAFE_NO_PAD.encode(payload)
                );
                (token, Some(Instant::now() + Duration::from_secs(life)))
            }
            None => (format!("opaque-token-{n}"), None),
        };
        s.valid.lock().unwrap().insert(token.clone(), deadline);
        return reply(canned(
            200,
            &format!(r#"{{"status":200,"token":"{token}"}}"#),
        ));
    }

    let accepted = !s.refuse_all.load(Ordering::SeqCst)
        && seen.auth.as_ref().is_some_and(|t| {
            s.valid
                .lock()
                .unwrap()
                .get(t)
                .is_some_and(|d| d.is_none_or(|d| Instant::now() < d))
        });
    let (counter, replies, default) = match seen.path.as_str() {
        "/verification/v3/send" | "/verification/v2/verification/send" => {
            (&s.sends, &s.send_replies, SEND_SAMPLE)
        }
        "/verification/v3/validateOtp" => (&s.validates, &s.validate_replies, VALIDATE_V3_SAMPLE),
        "/verification/v2/verification/validateOtp" => {
            (&s.validates, &s.validate_replies, VALIDATE_V2_SAMPLE)
        }
        _ => return reply(canned(404, r#"{"responseCode":404}"#)),
    };
    counter.fetch_add(1, Ordering::SeqCst);
    if !accepted {
        s.unauthorized.fetch_add(1, Ordering::SeqCst);
        return reply(canned(
            401,
            r#"{"responseCode":401,"message":"UNAUTHORIZED","errorMessage":"authToken expired or revoked"}"#,
        ));
    }
    let next = replies.lock().unwrap().pop_front();
    reply(next.unwrap_or_else(|| canned(200, default)))
}

struct StandIn {
    addr: SocketAddr,
    s: Arc<Script>,
}

impl StandIn {
    /// A stand-in and a client of it.
    async fn with_client() -> (Self, Client) {
        let app = Self::start().await;
        let client = app.client();
        (app, client)
    }

    async fn start() -> Self {
        let s = Arc::new(Script::default());
        let app = Router::new().fallback(handle).with_state(s.clone());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Self { addr, s }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn builder(&self) -> ClientBuilder {
        Client::builder()
            .base_url(self.url())
            .customer_id(CUSTOMER)
            .password(PASSWORD)
            .connect_retries(2, Duration::from_millis(10))
            .request_timeout(Duration::from_secs(10))
    }

    fn client(&self) -> Client {
        self.builder().build().unwrap()
    }

    fn push_send(&self, c: Canned) {
        self.s.send_replies.lock().unwrap().push_back(c);
    }

    fn push_validate(&self, c: Canned) {
        self.s.validate_replies.lock().unwrap().push_back(c);
    }

    fn push_token(&self, c: Canned) {
        self.s.token_replies.lock().unwrap().push_back(c);
    }

    fn revoke_all_tokens(&self) {
        self.s.valid.lock().unwrap().clear();
    }

    fn token_fetches(&self) -> usize {
        self.s.token_fetches.load(Ordering::SeqCst)
    }

    fn sends(&self) -> usize {
        self.s.sends.load(Ordering::SeqCst)
    }

    fn validates(&self) -> usize {
        self.s.validates.load(Ordering::SeqCst)
    }

    fn unauthorized(&self) -> usize {
        self.s.unauthorized.load(Ordering::SeqCst)
    }

    fn last(&self, path_suffix: &str) -> Seen {
        self.s
            .seen
            .lock()
            .unwrap()
            .iter()
            .rev()
            .find(|r| r.path.ends_with(path_suffix))
            .cloned()
            .expect("no such request")
    }
}

fn sms() -> SendOtp {
    SendOtp::sms("91", "9876543210")
}

// ---- §2 send ---------------------------------------------------------------

#[tokio::test]
async fn send_decodes_the_contract_sample_and_sends_parameters_in_the_query() {
    let (app, client) = StandIn::with_client().await;
    let req = SendOtp::sms("+91", "9876543210")
        .with_otp_length(6)
        .with_timeout(Duration::from_secs(120));
    let reply = client.send_raw(&req).await.unwrap();
    assert_eq!(reply.body, SEND_SAMPLE, "the body is kept as received");
    let SendOutcome::Sent(sent) = reply.value else {
        panic!("expected Sent, got {:?}", reply.value)
    };
    assert_eq!(sent.verification_id, 5_915_384);
    assert_eq!(sent.mobile_number, "9876543210");
    assert_eq!(sent.timeout, Some(Duration::from_secs(60)));
    assert_eq!(
        sent.transaction_id.as_deref(),
        Some("2065cc84-0d76-40fe-a434-2f1907ef07a2")
    );

    let r = app.last("/verification/v3/send");
    assert_eq!(r.method, "POST");
    assert_eq!(r.query["countryCode"], "91", "the + is dropped");
    assert_eq!(r.query["mobileNumber"], "9876543210");
    assert_eq!(r.query["flowType"], "SMS");
    assert_eq!(r.query["otpLength"], "6");
    assert_eq!(r.query["timeout"], "120");
    assert_eq!(r.query["customerId"], CUSTOMER);
    assert_eq!(r.content_type.as_deref(), Some("application/json"));
    let token = app.last("/auth/v1/authentication/token");
    assert_eq!(token.query["scope"], "NEW");
    assert!(r.auth.is_some_and(|a| a == "opaque-token-1"));
}

#[tokio::test]
async fn send_reads_numeric_ids_fractional_timeouts_and_missing_optional_fields() {
    let app = StandIn::start().await;
    app.push_send(canned(
        200,
        r#"{"responseCode":200,"message":"SUCCESS","data":{"verificationId":5915384,"timeout":"60.0"}}"#,
    ));
    app.push_send(canned(
        200,
        r#"{"responseCode":"200","data":{"verificationId":"77","mobileNumber":"9876543210","timeout":45,"smsCLI":"VM-OTPGTE","referenceId":"r-1","flowType":"SMS","transactionId":null}}"#,
    ));
    let client = app.client();

    let SendOutcome::Sent(a) = client.send(sms()).await.unwrap() else {
        panic!("expected Sent")
    };
    assert_eq!(a.verification_id, 5_915_384);
    assert_eq!(a.timeout, Some(Duration::from_secs(60)));
    assert_eq!(a.mobile_number, "9876543210", "falls back to the request");
    assert_eq!(a.transaction_id, None);

    let SendOutcome::Sent(b) = client.send(sms()).await.unwrap() else {
        panic!("expected Sent")
    };
    assert_eq!(b.verification_id, 77);
    assert_eq!(b.timeout, Some(Duration::from_secs(45)));
    assert_eq!(b.reference_id.as_deref(), Some("r-1"));
}

#[tokio::test]
async fn send_v2_uses_the_v2_path() {
    let app = StandIn::start().await;
    let client = app.builder().api_version(ApiVersion::V2).build().unwrap();
    let out = client.send(sms()).await.unwrap();
    assert_eq!(out.verification_id(), 5_915_384);
    assert_eq!(app.last("/send").path, "/verification/v2/verification/send");
}

#[tokio::test]
async fn a_506_is_an_already_pending_outcome_with_the_reusable_id() {
    let app = StandIn::start().await;
    app.push_send(canned(400, PENDING_SAMPLE));
    app.push_send(canned(
        400,
        &PENDING_SAMPLE.replace(r#""timeout":"41""#, r#""timeout":"41.0""#),
    ));
    let client = app.client();
    for _ in 0..2 {
        let out = client.send(sms()).await.unwrap();
        assert_eq!(
            out,
            SendOutcome::AlreadyPending {
                verification_id: 5_915_384,
                seconds_left: Some(41)
            }
        );
    }
}

#[tokio::test]
async fn a_506_without_data_is_unexpected_and_keeps_the_body() {
    let app = StandIn::start().await;
    let body = r#"{"responseCode":506,"message":"REQUEST_ALREADY_EXISTS"}"#;
    app.push_send(canned(400, body));
    let e = app.client().send(sms()).await.unwrap_err();
    assert!(
        matches!(&e, Error::Unexpected { status: 400, body: b, .. } if b == body),
        "{e:?}"
    );
}

#[tokio::test]
async fn send_failures_are_typed_by_cause() {
    let (app, client) = StandIn::with_client().await;
    // The send's error when the stand-in answers `status` with `body`.
    let refused = async |status, body| {
        app.push_send(canned(status, body));
        client.send(sms()).await.unwrap_err()
    };

    // Input the service refused: the code and the reason it gave (its
    // `errorMessage`, else its `message`).
    for (body, want_code, want_message) in [
        (
            r#"{"responseCode":400,"message":"BAD_REQUEST","errorMessage":"mobileNumber is not a valid number for countryCode"}"#,
            ResponseCode::BadRequest,
            "mobileNumber is not a valid number for countryCode",
        ),
        (
            r#"{"responseCode":501,"message":"INVALID_CUSTOMER_ID"}"#,
            ResponseCode::InvalidCustomerId,
            "INVALID_CUSTOMER_ID",
        ),
        (
            r#"{"responseCode":511,"message":"INVALID_COUNTRY_CODE","data":null}"#,
            ResponseCode::InvalidCountryCode,
            "INVALID_COUNTRY_CODE",
        ),
    ] {
        let e = refused(400, body).await;
        assert!(
            matches!(&e, Error::InvalidInput { code, message, .. }
                if *code == want_code && message == want_message),
            "{e:?}"
        );
    }

    let e = refused(402, r#"{"responseCode":402,"message":"INSUFFICIENT_BALANCE","errorMessage":"credits do not cover this message"}"#).await;
    assert!(
        matches!(&e, Error::InsufficientBalance { message, .. } if message == "credits do not cover this message"),
        "{e:?}"
    );

    app.push_send(Canned {
        status: 429,
        body: r#"{"responseCode":800,"message":"MAXIMUM_LIMIT_REACHED","errorMessage":"too many codes to this number"}"#.into(),
        retry_after: Some("30"),
    });
    let e = client.send(sms()).await.unwrap_err();
    assert!(
        matches!(&e, Error::RateLimited { retry_after: Some(d), .. } if *d == Duration::from_secs(30)),
        "{e:?}"
    );
    assert!(e.to_string().contains("retry after 30 s"), "{e}");

    let e = refused(
        503,
        r#"{"responseCode":503,"message":"SERVICE_UNAVAILABLE"}"#,
    )
    .await;
    assert!(
        matches!(
            &e,
            Error::Server {
                status: 503,
                code: ResponseCode::ServiceUnavailable,
                ..
            }
        ),
        "{e:?}"
    );

    let e = refused(502, "<html>Bad Gateway</html>").await;
    assert!(matches!(&e, Error::Server { status: 502, .. }), "{e:?}");
    assert_eq!(e.body(), Some("<html>Bad Gateway</html>"));

    let e = refused(200, r#"{"unexpected":true}"#).await;
    assert!(
        matches!(&e, Error::Unexpected { status: 200, body, .. } if body == r#"{"unexpected":true}"#),
        "{e:?}"
    );

    let e = refused(
        400,
        r#"{"responseCode":702,"message":"WRONG_OTP_PROVIDED"}"#,
    )
    .await;
    assert!(matches!(&e, Error::Unexpected { .. }), "{e:?}");
    // Every one of these was a single request: no failure is retried.
    assert_eq!(app.sends(), 9);
}

// ---- §3 validate -------------------------------------------------------------

#[tokio::test]
async fn validate_decodes_the_v3_and_v2_samples() {
    let app = StandIn::start().await;
    let v3 = app.client();
    let reply = v3.validate_raw(5_915_384, "4711").await.unwrap();
    assert_eq!(reply.value, Validation::Verified);
    assert_eq!(reply.body, VALIDATE_V3_SAMPLE);
    let r = app.last("validateOtp");
    assert_eq!(r.method, "GET");
    assert_eq!(r.path, "/verification/v3/validateOtp");
    assert_eq!(r.query["verificationId"], "5915384");
    assert_eq!(r.query["code"], "4711");
    assert_eq!(r.query["customerId"], CUSTOMER);

    let v2 = app.builder().api_version(ApiVersion::V2).build().unwrap();
    assert_eq!(
        v2.validate(5_915_384, "4711").await.unwrap(),
        Validation::Verified
    );
    assert_eq!(
        app.last("validateOtp").path,
        "/verification/v2/verification/validateOtp"
    );
}

#[tokio::test]
async fn validate_failures_decode_with_or_without_data() {
    let (app, client) = StandIn::with_client().await;
    let cases: &[(u16, &str, Validation)] = &[
        (
            400,
            r#"{"responseCode":702,"message":"WRONG_OTP_PROVIDED","errorMessage":"wrong code; 4 attempts left"}"#,
            Validation::WrongCode {
                attempts_left: Some(4),
            },
        ),
        (
            400,
            r#"{"responseCode":702,"message":"WRONG_OTP_PROVIDED"}"#,
            Validation::WrongCode {
                attempts_left: None,
            },
        ),
        // The hosted service's style: the failure inside `data`, HTTP 200.
        (
            200,
            r#"{"responseCode":702,"message":"WRONG_OTP_PROVIDED","data":{"verificationId":"5915384","mobileNumber":"9876543210","verificationStatus":"VERIFICATION_FAILED","responseCode":"702","errorMessage":"1 attempt left","transactionId":null,"authToken":null}}"#,
            Validation::WrongCode {
                attempts_left: Some(1),
            },
        ),
        (
            400,
            r#"{"responseCode":703,"message":"ALREADY_VERIFIED"}"#,
            Validation::AlreadyVerified,
        ),
        (
            400,
            r#"{"responseCode":"703","message":"ALREADY_VERIFIED","data":null}"#,
            Validation::AlreadyVerified,
        ),
        (
            400,
            r#"{"responseCode":705,"message":"VERIFICATION_EXPIRED","errorMessage":"the code expired"}"#,
            Validation::Expired,
        ),
        (
            200,
            r#"{"responseCode":705,"message":"VERIFICATION_EXPIRED","data":{"verificationId":5915384,"responseCode":"705","errorMessage":"VERIFICATION_EXPIRED"}}"#,
            Validation::Expired,
        ),
        (
            429,
            r#"{"responseCode":800,"message":"MAXIMUM_LIMIT_REACHED","errorMessage":"too many wrong codes"}"#,
            Validation::TooManyAttempts,
        ),
        (
            400,
            r#"{"responseCode":700,"message":"VERIFICATION_FAILED"}"#,
            Validation::Failed,
        ),
        (
            400,
            r#"{"responseCode":505,"message":"INVALID_VERIFICATION_ID","errorMessage":"no such verification"}"#,
            Validation::UnknownVerification,
        ),
    ];
    for (status, body, want) in cases {
        app.push_validate(canned(*status, body));
        let reply = client.validate_raw(5_915_384, "0000").await.unwrap();
        assert_eq!(reply.value, *want, "{body}");
        assert_eq!(reply.status, *status);
        assert_eq!(reply.body, *body);
    }
    assert_eq!(app.token_fetches(), 1, "the token was cached throughout");
}

#[tokio::test]
async fn a_success_without_data_is_not_taken_as_verified() {
    let app = StandIn::start().await;
    app.push_validate(canned(200, r#"{"responseCode":200,"message":"SUCCESS"}"#));
    let e = app.client().validate(1, "1234").await.unwrap_err();
    assert!(matches!(e, Error::Unexpected { status: 200, .. }), "{e:?}");
}

#[tokio::test]
async fn validate_input_errors_carry_the_message() {
    let app = StandIn::start().await;
    app.push_validate(canned(
        400,
        r#"{"responseCode":400,"message":"BAD_REQUEST","errorMessage":"code must be 4 to 8 digits"}"#,
    ));
    let e = app.client().validate(1, "x").await.unwrap_err();
    assert!(
        matches!(&e, Error::InvalidInput { message, .. } if message == "code must be 4 to 8 digits"),
        "{e:?}"
    );
}

// ---- §1 token ----------------------------------------------------------------

#[tokio::test]
async fn the_password_is_sent_as_standard_base64_and_the_raw_body_is_kept() {
    let app = StandIn::start().await;
    let reply = app.client().fetch_token().await.unwrap();
    assert_eq!(reply.value.expose(), "opaque-token-1");
    assert_eq!(reply.body, r#"{"status":200,"token":"opaque-token-1"}"#);
    let seen = app.last("/token");
    assert_eq!(seen.query["key"], STANDARD.encode(PASSWORD.as_bytes()));
    assert_eq!(seen.method, "GET");

    let wrong = app.builder().password("wrong").build().unwrap();
    let e = wrong.fetch_token().await.unwrap_err();
    assert!(matches!(e, Error::Unauthorized { .. }), "{e:?}");
}

#[tokio::test]
async fn token_failures_inside_http_200_and_rate_limits_are_typed() {
    let app = StandIn::start().await;
    let client = app
        .builder()
        .email("dev@example.com")
        .country("IN")
        .build()
        .unwrap();
    app.push_token(canned(
        200,
        r#"{"status":400,"error":"key is not valid base64"}"#,
    ));
    let e = client.fetch_token().await.unwrap_err();
    assert!(
        matches!(&e, Error::InvalidInput { message, .. } if message == "key is not valid base64"),
        "{e:?}"
    );
    let seen = app.last("/token");
    assert_eq!(seen.query["email"], "dev@example.com");
    assert_eq!(seen.query["country"], "IN");

    app.push_token(Canned {
        status: 429,
        body: r#"{"status":429,"error":"too many failed attempts"}"#.into(),
        retry_after: Some("120"),
    });
    let e = client.fetch_token().await.unwrap_err();
    assert!(
        matches!(&e, Error::RateLimited { retry_after: Some(d), .. } if d.as_secs() == 120),
        "{e:?}"
    );

    // A failed token fetch fails the call that needed it, typed the same.
    app.push_token(canned(
        401,
        r#"{"status":401,"error":"unknown customerId or wrong key"}"#,
    ));
    let e = client.validate(1, "1234").await.unwrap_err();
    assert!(
        matches!(&e, Error::Unauthorized { message, .. } if message == "unknown customerId or wrong key"),
        "{e:?}"
    );
    assert_eq!(app.validates(), 0);
}

// ---- token caching and refresh -------------------------------------------------

/// Validates ids 1000 to 1019 at once through `client`; each must verify.
async fn twenty_concurrent_validations_verify(client: &Client) {
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..20u64 {
        let c = client.clone();
        calls.spawn(async move { c.validate(1000 + i, "1234").await });
    }
    while let Some(r) = calls.join_next().await {
        assert_eq!(r.unwrap().unwrap(), Validation::Verified);
    }
}

#[tokio::test]
async fn a_401_on_send_triggers_exactly_one_refresh_and_one_retry() {
    let (app, client) = StandIn::with_client().await;
    client.token().await.unwrap();
    assert_eq!(app.token_fetches(), 1);
    app.revoke_all_tokens();

    let out = client.send(sms()).await.unwrap();
    assert_eq!(out.verification_id(), 5_915_384);
    assert_eq!(app.token_fetches(), 2, "one refresh");
    assert_eq!(app.sends(), 2, "the refused send and one retry");
    assert_eq!(app.unauthorized(), 1);
    assert_eq!(
        app.last("/send").auth.as_deref(),
        Some("opaque-token-2"),
        "the retry used the new token"
    );
}

#[tokio::test]
async fn a_second_401_is_returned_not_retried_again() {
    let (app, client) = StandIn::with_client().await;
    app.s.refuse_all.store(true, Ordering::SeqCst);
    let e = client.send(sms()).await.unwrap_err();
    assert!(matches!(e, Error::Unauthorized { .. }), "{e:?}");
    assert_eq!(app.sends(), 2);
    assert_eq!(app.token_fetches(), 2);
}

#[tokio::test]
async fn twenty_concurrent_calls_trigger_exactly_one_token_fetch() {
    let app = StandIn::start().await;
    *app.s.token_delay.lock().unwrap() = Duration::from_millis(200);
    let client = app.client();
    twenty_concurrent_validations_verify(&client).await;
    assert_eq!(app.token_fetches(), 1);
    assert_eq!(app.validates(), 20);
}

#[tokio::test]
async fn twenty_concurrent_401s_share_one_refresh() {
    let (app, client) = StandIn::with_client().await;
    client.token().await.unwrap();
    app.revoke_all_tokens();
    *app.s.token_delay.lock().unwrap() = Duration::from_millis(100);
    twenty_concurrent_validations_verify(&client).await;
    assert_eq!(app.token_fetches(), 2, "the first token and one refresh");
}

#[tokio::test]
async fn the_token_is_refreshed_ahead_of_its_exp() {
    let app = StandIn::start().await;
    // Four seconds: the token is fresh for the first two, then replaced.
    *app.s.token_lifetime_secs.lock().unwrap() = Some(4);
    let client = app.client();

    client.validate(1, "1234").await.unwrap();
    let first = client.token().await.unwrap();
    assert!(first.expires_at().is_some(), "a JWT's exp is read");
    client.validate(2, "1234").await.unwrap();
    assert_eq!(app.token_fetches(), 1, "cached while far from exp");

    // Past half the lifetime but before exp: the old token still works at
    // the stand-in, so only the refresh-ahead rule makes a new fetch.
    tokio::time::sleep(Duration::from_millis(2600)).await;
    client.validate(3, "1234").await.unwrap();
    assert_eq!(app.token_fetches(), 2, "refreshed ahead of exp");
    assert_eq!(app.unauthorized(), 0, "no call was refused");
    assert_ne!(client.token().await.unwrap(), first);
}

#[tokio::test]
async fn an_opaque_token_is_cached_until_a_401() {
    let (app, client) = StandIn::with_client().await;
    for i in 0..3 {
        client.validate(i, "1234").await.unwrap();
    }
    assert_eq!(app.token_fetches(), 1);
    app.revoke_all_tokens();
    client.validate(9, "1234").await.unwrap();
    assert_eq!(app.token_fetches(), 2);
}

#[tokio::test]
async fn a_given_token_is_used_and_its_subject_names_the_customer() {
    let app = StandIn::start().await;
    let payload = format!(
        r#"{{"sub":"{CUSTOMER}","iat":1,"exp":{}}}"#,
        now_secs() + 3600
    );
    let token = format!(
        "{}.{}.sig",
        URL_SAFE_NO_PAD.encode(r#"{"alg":"HS512"}"#),
        URL_SAFE_NO_PAD.encode(payload)
    );
    app.s.valid.lock().unwrap().insert(token.clone(), None);
    let client = Client::builder()
        .base_url(app.url())
        .auth_token(token.clone())
        .build()
        .unwrap();
    assert!(!format!("{client:?}").contains(&token));
    client.send(sms()).await.unwrap();
    let r = app.last("/send");
    assert_eq!(r.auth.as_deref(), Some(token.as_str()));
    assert_eq!(r.query["customerId"], CUSTOMER);
    assert_eq!(app.token_fetches(), 0);

    // Refused, and no credentials to get another: Unauthorized, no fetch.
    app.revoke_all_tokens();
    let e = client.send(sms()).await.unwrap_err();
    assert!(matches!(e, Error::Unauthorized { .. }), "{e:?}");
    assert_eq!(app.token_fetches(), 0);
    assert_eq!(app.sends(), 2);
}

// ---- retries on broken connections ---------------------------------------------

/// Resolves every name to the next address in `plan` (the last one repeats)
/// and counts resolutions, which is how many connections were attempted.
struct CountingResolver {
    plan: Mutex<VecDeque<SocketAddr>>,
    count: AtomicUsize,
}

impl reqwest::dns::Resolve for CountingResolver {
    fn resolve(&self, _name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        self.count.fetch_add(1, Ordering::SeqCst);
        let mut plan = self.plan.lock().unwrap();
        let addr = if plan.len() > 1 {
            plan.pop_front()
        } else {
            plan.front().copied()
        };
        let addrs: reqwest::dns::Addrs = Box::new(addr.into_iter());
        Box::pin(async move { Ok(addrs) })
    }
}

/// A loopback address where nothing listens: connecting is refused.
async fn refused_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], otpgate_testkit::free_port()))
}

fn via_resolver(plan: Vec<SocketAddr>) -> (Arc<CountingResolver>, ClientBuilder) {
    let resolver = Arc::new(CountingResolver {
        plan: Mutex::new(plan.into()),
        count: AtomicUsize::new(0),
    });
    let http = reqwest::Client::builder()
        .dns_resolver(resolver.clone())
        .build()
        .unwrap();
    let builder = Client::builder()
        .base_url("http://verifynow.test")
        .http_client(http)
        .connect_retries(2, Duration::from_millis(10));
    (resolver, builder)
}

#[tokio::test]
async fn send_is_never_retried_when_the_connection_fails() {
    let (resolver, builder) = via_resolver(vec![refused_addr().await]);
    let client = builder.auth_token("opaque").build().unwrap();
    let e = client.send(sms()).await.unwrap_err();
    assert!(e.is_transport(), "{e:?}");
    assert_eq!(resolver.count.load(Ordering::SeqCst), 1, "one attempt only");
}

/// Accepts connections, reads the request, and hangs up without answering:
/// the request may have been acted on, and the client cannot know.
async fn hang_up_server() -> (SocketAddr, Arc<AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let a = accepted.clone();
    tokio::spawn(async move {
        for _ in 0..50 {
            let Ok((mut sock, _)) = l.accept().await else {
                return;
            };
            a.fetch_add(1, Ordering::SeqCst);
            let mut buf = [0u8; 4096];
            let _ = tokio::time::timeout(Duration::from_secs(1), sock.read(&mut buf)).await;
            drop(sock);
        }
    });
    (addr, accepted)
}

/// A client (with a given token, two connection retries) of a
/// [`hang_up_server`], and the server's count of accepted connections.
async fn hung_up_on() -> (Client, Arc<AtomicUsize>) {
    let (addr, accepted) = hang_up_server().await;
    let client = Client::builder()
        .base_url(format!("http://{addr}"))
        .auth_token("opaque")
        .connect_retries(2, Duration::from_millis(10))
        .build()
        .unwrap();
    (client, accepted)
}

#[tokio::test]
async fn send_is_never_retried_when_the_connection_breaks_off() {
    let (client, accepted) = hung_up_on().await;
    let e = client.send(sms()).await.unwrap_err();
    assert!(e.is_transport(), "{e:?}");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn validate_is_not_retried_once_the_request_may_have_arrived() {
    let (client, accepted) = hung_up_on().await;
    let e = client.validate(1, "1234").await.unwrap_err();
    assert!(e.is_transport(), "{e:?}");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn validate_is_retried_on_connection_failure_and_the_retries_are_bounded() {
    let (resolver, builder) = via_resolver(vec![refused_addr().await]);
    let client = builder.auth_token("opaque").build().unwrap();
    let e = client.validate(1, "1234").await.unwrap_err();
    assert!(e.is_transport(), "{e:?}");
    assert_eq!(
        resolver.count.load(Ordering::SeqCst),
        3,
        "the first try and two retries"
    );
}

#[tokio::test]
async fn validate_succeeds_when_a_retry_connects() {
    let app = StandIn::start().await;
    app.s.valid.lock().unwrap().insert("opaque".into(), None);
    let (resolver, builder) = via_resolver(vec![refused_addr().await, app.addr]);
    let client = builder.auth_token("opaque").build().unwrap();
    assert_eq!(
        client.validate(1, "1234").await.unwrap(),
        Validation::Verified
    );
    assert_eq!(resolver.count.load(Ordering::SeqCst), 2);
    assert_eq!(app.validates(), 1, "the code reached the service once");
}

#[tokio::test]
async fn token_fetches_are_retried_on_connection_failure() {
    let app = StandIn::start().await;
    let dead = refused_addr().await;
    let (resolver, builder) = via_resolver(vec![dead, dead, app.addr]);
    let client = builder
        .customer_id(CUSTOMER)
        .password(PASSWORD)
        .build()
        .unwrap();
    client.send(sms()).await.unwrap();
    assert_eq!(app.token_fetches(), 1);
    assert_eq!(app.sends(), 1);
    // Two refused connections, then the one that worked; the send then
    // reuses that pooled connection or opens one more.
    let resolves = resolver.count.load(Ordering::SeqCst);
    assert!(
        (3..=4).contains(&resolves),
        "{resolves} connection attempts"
    );
}

#[tokio::test]
async fn waiters_share_a_failed_token_fetch_instead_of_repeating_it() {
    let app = StandIn::start().await;
    *app.s.token_delay.lock().unwrap() = Duration::from_millis(200);
    let client = app.builder().password("wrong").build().unwrap();
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..10u64 {
        let c = client.clone();
        calls.spawn(async move { c.validate(i, "1234").await });
    }
    while let Some(r) = calls.join_next().await {
        let e = r.unwrap().unwrap_err();
        assert!(matches!(e, Error::Unauthorized { .. }), "{e:?}");
    }
    assert_eq!(app.token_fetches(), 1, "no lockout from ten failed fetches");
}

// ---- secrets stay out of logs ----------------------------------------------------

#[tokio::test]
async fn neither_password_nor_key_nor_token_appear_in_debug_or_errors() {
    let key = STANDARD.encode(PASSWORD.as_bytes());
    let (_r, builder) = via_resolver(vec![refused_addr().await]);
    let builder = builder.customer_id(CUSTOMER).password(PASSWORD);
    let shown = format!("{builder:?}");
    assert!(
        !shown.contains(PASSWORD) && !shown.contains(&key),
        "{shown}"
    );
    let client = builder.build().unwrap();
    let shown = format!("{client:?}");
    assert!(
        !shown.contains(PASSWORD) && !shown.contains(&key),
        "{shown}"
    );

    let e = client.fetch_token().await.unwrap_err();
    let text = format!("{e} {e:?}");
    assert!(e.is_transport());
    assert!(!text.contains(&key), "the token URL leaked: {text}");

    let (_app, client) = StandIn::with_client().await;
    let reply = client.fetch_token().await.unwrap();
    let token = reply.value.expose().to_owned();
    assert!(!format!("{reply:?}").contains(&token));
    assert!(!format!("{:?}", client.token().await.unwrap()).contains(&token));
}

#[tokio::test]
async fn configuration_errors_are_reported_at_build() {
    for b in [
        Client::builder().base_url("http://x"),
        Client::builder().base_url("http://x").password("p"),
        Client::builder()
            .base_url("ftp://x")
            .customer_id(CUSTOMER)
            .password("p"),
        Client::builder()
            .base_url("not a url")
            .customer_id(CUSTOMER)
            .password("p"),
    ] {
        assert!(matches!(b.build(), Err(Error::Config(_))));
    }
}
