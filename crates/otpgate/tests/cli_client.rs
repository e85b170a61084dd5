//! The SDK (`otpgate-client`) and the client commands (`otpgate token`,
//! `send`, `validate`, `verify`) against the real otpgate server: every
//! outcome of the contract as the server produces it, token expiry and
//! refresh, a 506 reused, one token fetch for 20 concurrent calls, and
//! `otpgate verify` end to end against `otpgate serve --dev` with the code
//! read from the inbox and typed into its standard input.
//!
//! SDK tests run the server in-process (`Application` on port 0, a fresh
//! SQLite file each) behind a small TCP relay that counts token requests and
//! 401 answers on the wire. CLI tests run the built binary.

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use otpgate_client::{Client, ClientBuilder, Error, SendOtp, SendOutcome, Validation};
use otpgate_core::{Clock, CustomerId, ManualClock, SystemClock, VerificationId};
use otpgate_server::{Settings, accounts};
use otpgate_store::Store;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

mod common;
#[path = "../../otpgate-server/tests/common/mod.rs"]
mod server_common;

use common::{Logged, TempDir, create_account_with, otpgate};
use server_common::{RejectAll, Running, run_app, test_settings};

const PASSWORD: &str = "client test password";

// ---- support ------------------------------------------------------------------

/// Counts, on the wire, what passes between the SDK and the server.
#[derive(Default)]
struct WireCounts {
    token_requests: AtomicUsize,
    sends: AtomicUsize,
    unauthorized: AtomicUsize,
}

/// Occurrences of `pattern` in a stream read chunk by chunk; `carry` holds
/// the tail of the previous chunk so a match across two chunks is seen once.
fn count_in(carry: &mut Vec<u8>, chunk: &[u8], pattern: &[u8]) -> usize {
    carry.extend_from_slice(chunk);
    let n = carry
        .windows(pattern.len())
        .filter(|w| *w == pattern)
        .count();
    let keep = pattern.len() - 1;
    if carry.len() > keep {
        carry.drain(..carry.len() - keep);
    }
    n
}

/// Copies `from` to `to` until either side closes, showing each chunk to
/// `count` first with two carry buffers of its own (for patterns split
/// across chunks); then shuts `to` down.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut count: impl FnMut((&mut Vec<u8>, &mut Vec<u8>), &[u8]) + Send + 'static,
) {
    let (mut carry_a, mut carry_b) = (Vec::new(), Vec::new());
    let mut buf = vec![0u8; 16 * 1024];
    while let Ok(n) = from.read(&mut buf).await {
        if n == 0 {
            break;
        }
        let chunk = &buf[..n];
        count((&mut carry_a, &mut carry_b), chunk);
        if to.write_all(chunk).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}

/// A TCP relay to `upstream` that counts token requests, sends and 401s.
async fn counting_relay(upstream: SocketAddr) -> (SocketAddr, Arc<WireCounts>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let counts = Arc::new(WireCounts::default());
    let c = counts.clone();
    tokio::spawn(async move {
        for _ in 0..1000 {
            let Ok((client, _)) = listener.accept().await else {
                return;
            };
            let Ok(server) = TcpStream::connect(upstream).await else {
                return;
            };
            let (cr, cw) = client.into_split();
            let (sr, sw) = server.into_split();
            let up = c.clone();
            tokio::spawn(pump(cr, sw, move |carry, chunk| {
                let (carry_t, carry_s) = carry;
                up.token_requests.fetch_add(
                    count_in(carry_t, chunk, b"GET /auth/v1/authentication/token?"),
                    Ordering::SeqCst,
                );
                up.sends.fetch_add(
                    count_in(carry_s, chunk, b"POST /verification/v3/send?"),
                    Ordering::SeqCst,
                );
            }));
            let down = c.clone();
            tokio::spawn(pump(sr, cw, move |(carry, _), chunk| {
                down.unauthorized
                    .fetch_add(count_in(carry, chunk, b"HTTP/1.1 401 "), Ordering::SeqCst);
            }));
        }
    });
    (addr, counts)
}

/// The real server, in-process, with one account.
struct Server {
    addr: SocketAddr,
    store: Arc<dyn Store>,
    settings: Settings,
    customer: CustomerId,
    _running: Running,
    _dir: TempDir,
}

async fn start_server(
    mut settings: Settings,
    clock: Arc<dyn Clock>,
    router: Option<Arc<dyn otpgate_sms::Router>>,
) -> Server {
    let dir = TempDir::new("sdk");
    settings.database_url = dir.sqlite_url();
    let running = run_app(settings, clock, router).await;
    let customer = new_account(&running.store, &running.settings, None).await;
    Server {
        addr: SocketAddr::from(([127, 0, 0, 1], running.port)),
        store: running.store.clone(),
        settings: running.settings.clone(),
        customer,
        _running: running,
        _dir: dir,
    }
}

async fn new_account(
    store: &Arc<dyn Store>,
    settings: &Settings,
    credits: Option<i64>,
) -> CustomerId {
    server_common::create_account(store.as_ref(), &SystemClock, settings, PASSWORD, credits)
        .await
        .customer_id
}

impl Server {
    fn builder_for(&self, addr: SocketAddr, customer: &CustomerId) -> ClientBuilder {
        Client::builder()
            .base_url(format!("http://{addr}"))
            .customer_id(customer.as_str())
            .password(PASSWORD)
            .request_timeout(Duration::from_secs(20))
    }

    fn client(&self) -> Client {
        self.builder_for(self.addr, &self.customer).build().unwrap()
    }

    /// The code the inbox channel delivered for `id` (the first run of
    /// digits in the default template), waiting for the delivery worker.
    async fn code_for(&self, to: &str, id: u64) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let entries = self.store.inbox_list(None, Some(to), 50).await.unwrap();
            if let Some(e) = entries
                .iter()
                .find(|e| e.verification_id.map(VerificationId::get) == Some(id))
            {
                return first_digits(&e.text);
            }
            assert!(Instant::now() < deadline, "no inbox message for {id}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn first_digits(text: &str) -> String {
    text.split(|c: char| !c.is_ascii_digit())
        .find(|w| !w.is_empty())
        .expect("a code in the message")
        .to_owned()
}

/// A code guaranteed to differ from `code`.
fn wrong(code: &str) -> String {
    let flipped: String = code
        .chars()
        .map(|c| if c == '0' { '1' } else { '0' })
        .collect();
    flipped
}

fn sms(national: &str) -> SendOtp {
    SendOtp::sms("91", national)
}

fn sent_id(out: &SendOutcome) -> u64 {
    match out {
        SendOutcome::Sent(s) => s.verification_id,
        other => panic!("expected Sent, got {other:?}"),
    }
}

// ---- SDK against the server -----------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_reads_every_validation_outcome_the_server_gives() {
    let clock = ManualClock::new(SystemClock.now_ms());
    let server = start_server(test_settings(), Arc::new(clock.clone()), None).await;
    let client = server.client();

    // Verified, then already verified; a wrong code first.
    let sent = client.send(sms("9876500001")).await.unwrap();
    let SendOutcome::Sent(s) = &sent else {
        panic!("{sent:?}")
    };
    assert_eq!(s.mobile_number, "9876500001");
    assert_eq!(s.timeout, Some(Duration::from_secs(60)));
    assert!(s.transaction_id.is_some());
    let id = s.verification_id;
    let code = server.code_for("919876500001", id).await;
    assert_eq!(
        client.validate(id, &wrong(&code)).await.unwrap(),
        Validation::WrongCode {
            attempts_left: Some(4)
        }
    );
    assert_eq!(
        client.validate(id, &code).await.unwrap(),
        Validation::Verified
    );
    assert_eq!(
        client.validate(id, &code).await.unwrap(),
        Validation::AlreadyVerified
    );

    // Unknown.
    assert_eq!(
        client.validate(id + 1_000_000, "1234").await.unwrap(),
        Validation::UnknownVerification
    );

    // Too many wrong codes: the right one no longer works either.
    let id = sent_id(&client.send(sms("9876500002")).await.unwrap());
    let code = server.code_for("919876500002", id).await;
    for left in (0..5).rev() {
        assert_eq!(
            client.validate(id, &wrong(&code)).await.unwrap(),
            Validation::WrongCode {
                attempts_left: Some(left)
            }
        );
    }
    assert_eq!(
        client.validate(id, &code).await.unwrap(),
        Validation::TooManyAttempts
    );

    // Expired, on the server's clock.
    let id = sent_id(&client.send(sms("9876500003")).await.unwrap());
    let code = server.code_for("919876500003", id).await;
    clock.advance_ms(61_000);
    assert_eq!(
        client.validate(id, &code).await.unwrap(),
        Validation::Expired
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_reuses_a_pending_verification_from_a_506() {
    let server = start_server(test_settings(), Arc::new(SystemClock), None).await;
    let client = server.client();
    let req = sms("9876500010").with_otp_length(6);
    let first = sent_id(&client.send(req.clone()).await.unwrap());

    let again = client.send_raw(&req).await.unwrap();
    assert_eq!(again.status, 400);
    assert!(
        again.body.contains("REQUEST_ALREADY_EXISTS"),
        "{}",
        again.body
    );
    let SendOutcome::AlreadyPending {
        verification_id,
        seconds_left,
    } = again.value
    else {
        panic!("expected AlreadyPending, got {:?}", again.value)
    };
    assert_eq!(verification_id, first);
    assert!(
        seconds_left.is_some_and(|s| s > 0 && s <= 60),
        "{seconds_left:?}"
    );

    let code = server.code_for("919876500010", first).await;
    assert_eq!(code.len(), 6);
    assert_eq!(
        client.validate(verification_id, &code).await.unwrap(),
        Validation::Verified
    );
    // Completed, so the next send is a new verification.
    let next = sent_id(&client.send(req).await.unwrap());
    assert_ne!(next, first);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_reads_a_failed_delivery_as_failed() {
    let router = otpgate_sms::SingleRoute(vec![Arc::new(RejectAll(None))]);
    let server = start_server(
        test_settings(),
        Arc::new(SystemClock),
        Some(Arc::new(router)),
    )
    .await;
    let client = server.client();
    let id = sent_id(&client.send(sms("9876500020")).await.unwrap());
    let vid = VerificationId::parse(&id.to_string()).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let m = server.store.outbox_for_verification(vid).await.unwrap();
        if m.is_some_and(|m| m.status == otpgate_core::DeliveryStatus::Failed) {
            break;
        }
        assert!(Instant::now() < deadline, "the delivery never failed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        client.validate(id, "1234").await.unwrap(),
        Validation::Failed
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_errors_are_typed_as_the_server_answers() {
    let mut s = test_settings();
    s.limits.per_number_max = 1;
    let server = start_server(s, Arc::new(SystemClock), None).await;
    let client = server.client();

    let e = client.send(sms("123")).await.unwrap_err();
    assert!(matches!(e, Error::InvalidInput { .. }), "{e:?}");
    let e = client
        .send(SendOtp::sms("999", "9876543210"))
        .await
        .unwrap_err();
    assert!(matches!(e, Error::InvalidInput { .. }), "{e:?}");
    let e = client
        .send(sms("9876500030").with_otp_length(12))
        .await
        .unwrap_err();
    assert!(matches!(e, Error::InvalidInput { .. }), "{e:?}");

    // The per-number limit: one send, completed; the next is 800 with
    // Retry-After.
    let id = sent_id(&client.send(sms("9876500031")).await.unwrap());
    let code = server.code_for("919876500031", id).await;
    assert!(client.validate(id, &code).await.unwrap().is_verified());
    let e = client.send(sms("9876500031")).await.unwrap_err();
    assert!(
        matches!(
            e,
            Error::RateLimited {
                retry_after: Some(_),
                ..
            }
        ),
        "{e:?}"
    );

    // No credits.
    let broke = new_account(&server.store, &server.settings, Some(0)).await;
    let poor = server.builder_for(server.addr, &broke).build().unwrap();
    let e = poor.send(sms("9876500032")).await.unwrap_err();
    assert!(matches!(e, Error::InsufficientBalance { .. }), "{e:?}");

    // Wrong password.
    let bad = server
        .builder_for(server.addr, &server.customer)
        .password("not the password")
        .build()
        .unwrap();
    let e = bad.send(sms("9876500033")).await.unwrap_err();
    assert!(matches!(e, Error::Unauthorized { .. }), "{e:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_concurrent_sdk_calls_fetch_exactly_one_token() {
    let server = start_server(test_settings(), Arc::new(SystemClock), None).await;
    let (relay, counts) = counting_relay(server.addr).await;
    let client = server.builder_for(relay, &server.customer).build().unwrap();
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..20u32 {
        let c = client.clone();
        calls.spawn(async move { c.send(sms(&format!("98765001{i:02}"))).await });
    }
    while let Some(r) = calls.join_next().await {
        sent_id(&r.unwrap().unwrap());
    }
    assert_eq!(counts.token_requests.load(Ordering::SeqCst), 1);
    assert_eq!(counts.sends.load(Ordering::SeqCst), 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_lived_token_is_refreshed_before_it_expires() {
    let mut s = test_settings();
    // Four seconds: fresh for the first two (half the life), then replaced.
    s.token.lifetime_secs = 4;
    let server = start_server(s, Arc::new(SystemClock), None).await;
    let (relay, counts) = counting_relay(server.addr).await;
    let client = server.builder_for(relay, &server.customer).build().unwrap();

    for i in 0..3 {
        assert_eq!(
            client.validate(1_000 + i, "1234").await.unwrap(),
            Validation::UnknownVerification
        );
    }
    assert_eq!(counts.token_requests.load(Ordering::SeqCst), 1);
    let token = client.token().await.unwrap();
    assert!(token.expires_at().is_some(), "otpgate's token is a JWT");

    // Past half its life: replaced before the server would refuse it.
    tokio::time::sleep(Duration::from_millis(2600)).await;
    client.validate(1, "1234").await.unwrap();
    assert_eq!(counts.token_requests.load(Ordering::SeqCst), 2);

    // And across its whole expiry, still no call is refused.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    client.validate(2, "1234").await.unwrap();
    assert_eq!(counts.token_requests.load(Ordering::SeqCst), 3);
    assert_eq!(counts.unauthorized.load(Ordering::SeqCst), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_token_costs_one_401_one_refresh_and_one_retry() {
    let server = start_server(test_settings(), Arc::new(SystemClock), None).await;
    let (relay, counts) = counting_relay(server.addr).await;
    let client = server.builder_for(relay, &server.customer).build().unwrap();
    client.token().await.unwrap();
    // Setting the password (even to the same one) revokes every token.
    accounts::set_password(server.store.as_ref(), &server.customer, PASSWORD)
        .await
        .unwrap();

    sent_id(&client.send(sms("9876500040")).await.unwrap());
    assert_eq!(counts.unauthorized.load(Ordering::SeqCst), 1);
    assert_eq!(counts.token_requests.load(Ordering::SeqCst), 2);
    assert_eq!(counts.sends.load(Ordering::SeqCst), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_v2_paths_work_the_same() {
    let server = start_server(test_settings(), Arc::new(SystemClock), None).await;
    let client = server
        .builder_for(server.addr, &server.customer)
        .api_version(otpgate_client::ApiVersion::V2)
        .build()
        .unwrap();
    let id = sent_id(&client.send(sms("9876500050")).await.unwrap());
    let code = server.code_for("919876500050", id).await;
    let reply = client.validate_raw(id, &code).await.unwrap();
    assert_eq!(reply.value, Validation::Verified);
    assert!(
        reply.body.contains(&format!(r#""verificationId":"{id}""#)),
        "v2 sends the id as a string: {}",
        reply.body
    );
}

// ---- the binary -------------------------------------------------------------------

/// `otpgate serve --dev` on an ephemeral port, with one account made by
/// `otpgate customer create`.
struct DevServer {
    url: String,
    database: String,
    customer: String,
    _run: Logged,
    _dir: TempDir,
}

fn start_dev_server() -> DevServer {
    let dir = TempDir::new("bin");
    let database = dir.sqlite_url();
    let customer = create_account_with(PASSWORD, &database, None);
    let mut run = Logged::spawn(
        otpgate()
            .args(["serve", "--dev", "--listen", "127.0.0.1:0"])
            .args(["--database", &database])
            .env("OTPGATE_LOG", "info")
            .env("OTPGATE_DELIVERY__POLL_MS", "20"),
    );
    let url = run.wait_for_address(Duration::from_secs(60));
    DevServer {
        url,
        database,
        customer,
        _run: run,
        _dir: dir,
    }
}

impl DevServer {
    /// A client command with this server's URL and credentials in the
    /// environment, as a user would set them.
    fn client_cmd(&self, args: &[&str]) -> Command {
        let mut c = otpgate();
        c.args(args)
            .env("OTPGATE_URL", &self.url)
            .env("OTPGATE_CUSTOMER_ID", &self.customer)
            .env("OTPGATE_PASSWORD", PASSWORD)
            .stdin(Stdio::null());
        c
    }

    fn run(&self, args: &[&str]) -> (i32, String, String) {
        let out = self.client_cmd(args).output().expect("run otpgate");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// The code for verification `id`, read with `otpgate inbox --json`.
    fn code_from_inbox(&self, to: &str, id: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let out = otpgate_testkit::process::output_ok(otpgate().args([
                "inbox",
                "--to",
                to,
                "--json",
                "--database",
                &self.database,
            ]));
            let rows: serde_json::Value = serde_json::from_slice(&out).expect("inbox json");
            let found = rows.as_array().and_then(|rows| {
                rows.iter()
                    .find(|r| r["verificationId"].as_str() == Some(id))
                    .and_then(|r| r["text"].as_str())
                    .map(first_digits)
            });
            if let Some(code) = found {
                return code;
            }
            assert!(Instant::now() < deadline, "no inbox message for {id}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// The word after `verification ` in a line of human output.
fn id_in(line: &str) -> String {
    let i = line.find("verification ").expect("an id in the output") + "verification ".len();
    line[i..].chars().take_while(char::is_ascii_digit).collect()
}

#[test]
fn otpgate_verify_end_to_end_with_the_code_from_the_inbox() {
    let server = start_dev_server();
    let mut child = server
        .client_cmd(&["verify", "--to", "+919876500060"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start otpgate verify");
    let mut stdin = child.stdin.take().unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let next = || {
        rx.recv_timeout(Duration::from_secs(30))
            .expect("otpgate verify printed nothing")
    };

    let sent = next();
    assert!(sent.starts_with("Sent a code to +919876500060"), "{sent}");
    let id = id_in(&sent);
    let code = server.code_from_inbox("919876500060", &id);

    writeln!(stdin, "{}", wrong(&code)).unwrap();
    assert_eq!(next(), "Wrong code; 4 attempts left.");
    writeln!(stdin, "{code}").unwrap();
    assert_eq!(next(), "Verified.");
    drop(stdin);
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0));
}

#[test]
fn otpgate_verify_stops_at_end_of_input_with_status_2() {
    let server = start_dev_server();
    let out = server
        .client_cmd(&["verify", "--to", "+919876500061"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("no code entered"), "{stderr}");
}

#[test]
fn client_commands_print_outcomes_and_exit_by_them() {
    let server = start_dev_server();

    // token: the token alone, or the body as received.
    let (code, out, _) = server.run(&["token"]);
    assert_eq!(code, 0);
    assert_eq!(out.trim().split('.').count(), 3, "a JWT: {out}");
    let (code, out, _) = server.run(&["token", "--json"]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["status"], 200);

    // send --json prints the server's body; the id is a string there.
    let (code, out, err) = server.run(&["send", "--to", "+919876500070", "--json"]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["responseCode"], 200);
    let id = v["data"]["verificationId"].as_str().unwrap().to_owned();

    // A second send while pending: nothing sent, the pending id, status 1.
    let (code, out, _) = server.run(&["send", "--to", "+919876500070"]);
    assert_eq!(code, 1);
    assert!(out.contains("still pending"), "{out}");
    assert_eq!(id_in(&out), id);

    let real = server.code_from_inbox("919876500070", &id);
    let (code, out, _) = server.run(&["validate", "--id", &id, "--code", &wrong(&real)]);
    assert_eq!(code, 1);
    assert_eq!(out.trim(), "Wrong code; 4 attempts left.");
    let (code, out, _) = server.run(&["validate", "--id", &id, "--code", &real, "--json"]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["data"]["verificationStatus"], "VERIFICATION_COMPLETED");
    let (code, out, _) = server.run(&["validate", "--id", &id, "--code", &real]);
    assert_eq!(code, 1);
    assert!(out.starts_with("Already verified"), "{out}");

    // Send with length and timeout, in human form.
    let (code, out, _) = server.run(&[
        "send",
        "--to",
        "+919876500071",
        "--length",
        "6",
        "--timeout",
        "120",
    ]);
    assert_eq!(code, 0);
    assert!(out.contains("valid for 120 s"), "{out}");
    let id = id_in(&out);
    assert_eq!(server.code_from_inbox("919876500071", &id).len(), 6);

    // Usage and connection problems are status 2.
    let (code, _, err) = server.run(&["send", "--to", "9876500072"]);
    assert_eq!(code, 2, "not E.164: {err}");
    let (code, _, err) = server.run(&["send", "--to", "+91123"]);
    assert_eq!(code, 2, "not a valid number: {err}");
    let (code, _, err) = server.run(&["token", "--password", "wrong password"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("unauthorized"), "{err}");
    assert!(
        !err.contains("wrong password"),
        "the password is not echoed"
    );
    let (code, _, err) = server.run(&["token", "--url", "http://127.0.0.1:1"]);
    assert_eq!(code, 2, "{err}");
    let out = otpgate()
        .args(["token", "--url", &server.url])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "no credentials");
}

#[test]
fn a_token_from_the_environment_is_used_as_is() {
    let server = start_dev_server();
    let (code, token, _) = server.run(&["token"]);
    assert_eq!(code, 0);
    let out = otpgate()
        .args(["validate", "--id", "424242", "--code", "1234"])
        .env("OTPGATE_URL", &server.url)
        .env("OTPGATE_AUTH_TOKEN", token.trim())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stdout).starts_with("Unknown verification 424242"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let out = otpgate()
        .args(["validate", "--id", "424242", "--code", "1234"])
        .env("OTPGATE_URL", &server.url)
        .env("OTPGATE_AUTH_TOKEN", "not-a-token")
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(2),
        "a refused token is a usage error"
    );
}
