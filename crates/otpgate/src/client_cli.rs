//! The client commands (`token`, `send`, `validate`, `verify`): the SDK
//! (`otpgate-client`) driven from a shell, against otpgate or the hosted
//! service.
//!
//! Exit status, so scripts can tell outcomes apart: 0 the thing asked for
//! happened; 1 the service answered with a failure outcome (wrong code,
//! expired, a code already pending, no balance, rate limited, a fault on its
//! side); 2 the request could not be made as asked (usage, a bad number,
//! refused credentials, no connection, a response that makes no sense).
//! `--json` prints the service's response body exactly as received.

use std::io::{BufRead, IsTerminal, Read, Write};
use std::time::Duration;

use clap::{Args, Subcommand, ValueEnum};
use otpgate_client::{ApiVersion, Client, Error, Flow, SendOtp, SendOutcome, Sent, Validation};
use otpgate_core::PhoneNumber;

/// Where the service is and how to sign in. The password and token are best
/// passed in the environment: flags show up in process listings.
#[derive(Args, Clone)]
pub struct Connection {
    /// Base URL of the Verify Now service.
    #[arg(long, env = "OTPGATE_URL", default_value = "http://127.0.0.1:8080")]
    url: String,
    /// The account's customerId.
    #[arg(long, env = "OTPGATE_CUSTOMER_ID")]
    customer_id: Option<String>,
    /// The account's password (base64-encoded for you).
    #[arg(long, env = "OTPGATE_PASSWORD", hide_env_values = true)]
    password: Option<String>,
    /// A token obtained earlier; used instead of fetching one.
    #[arg(long, env = "OTPGATE_AUTH_TOKEN", hide_env_values = true)]
    auth_token: Option<String>,
    /// Which API paths to call.
    #[arg(long, value_enum, default_value_t = Api::V3)]
    api: Api,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Api {
    V2,
    V3,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum FlowArg {
    Sms,
    Whatsapp,
    Rcs,
    Sauth,
}

/// The client commands, for the binary's top-level `Command` enum
/// (`#[command(flatten)]`).
#[derive(Subcommand)]
pub enum ClientCommand {
    /// Get an auth token (prints it; `--json` prints the whole response).
    Token(TokenArgs),
    /// Send a code to a phone.
    Send(SendArgs),
    /// Check a code against a verification.
    Validate(ValidateArgs),
    /// Send a code, read it from standard input, and validate it.
    Verify(VerifyArgs),
}

#[derive(Args)]
pub struct TokenArgs {
    #[command(flatten)]
    conn: Connection,
    /// Print the service's response body as received.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct SendOptions {
    /// Destination in E.164, e.g. +919876543210.
    #[arg(long)]
    to: String,
    /// Digits in the code.
    #[arg(long, value_parser = clap::value_parser!(u8).range(4..=8))]
    length: Option<u8>,
    /// Seconds the code stays valid.
    #[arg(long)]
    timeout: Option<u64>,
    /// Channel to send on.
    #[arg(long, value_enum, default_value_t = FlowArg::Sms)]
    flow: FlowArg,
}

#[derive(Args)]
pub struct SendArgs {
    #[command(flatten)]
    conn: Connection,
    #[command(flatten)]
    send: SendOptions,
    /// Print the service's response body as received.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct ValidateArgs {
    #[command(flatten)]
    conn: Connection,
    /// The verificationId from `send`.
    #[arg(long)]
    id: u64,
    /// The code the person received.
    #[arg(long)]
    code: String,
    /// Print the service's response body as received.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct VerifyArgs {
    #[command(flatten)]
    conn: Connection,
    #[command(flatten)]
    send: SendOptions,
}

/// Runs one client command; returns the process exit status.
pub async fn run(command: ClientCommand) -> u8 {
    match command {
        ClientCommand::Token(a) => token(a).await,
        ClientCommand::Send(a) => send(a).await,
        ClientCommand::Validate(a) => validate(a).await,
        ClientCommand::Verify(a) => verify(a).await,
    }
}

/// Writes a line to stdout; a closed pipe (`| head`) is not worth a panic.
fn out(line: &str) {
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "{line}");
}

fn err(line: &str) {
    let mut stderr = std::io::stderr().lock();
    let _ = writeln!(stderr, "{line}");
}

fn client(conn: &Connection) -> Result<Client, u8> {
    let mut b = Client::builder()
        .base_url(conn.url.clone())
        .api_version(match conn.api {
            Api::V2 => ApiVersion::V2,
            Api::V3 => ApiVersion::V3,
        })
        .connect_timeout(Duration::from_secs(10))
        .request_timeout(Duration::from_secs(30));
    if let Some(id) = &conn.customer_id {
        b = b.customer_id(id.clone());
    }
    if let Some(p) = &conn.password {
        b = b.password(p.clone());
    }
    if let Some(t) = &conn.auth_token {
        b = b.auth_token(t.clone());
    }
    b.build().map_err(|e| {
        err(&format!(
            "error: {e}\n(set OTPGATE_CUSTOMER_ID and OTPGATE_PASSWORD, or OTPGATE_AUTH_TOKEN)"
        ));
        2
    })
}

/// Reports an SDK error and picks the exit status (module docs).
fn fail(e: &Error, json: bool) -> u8 {
    if json && let Some(body) = e.body() {
        out(body);
    }
    err(&format!("error: {e}"));
    match e {
        Error::RateLimited { .. } | Error::InsufficientBalance { .. } | Error::Server { .. } => 1,
        _ => 2,
    }
}

fn phone(to: &str) -> Result<PhoneNumber, u8> {
    PhoneNumber::parse_e164(to).map_err(|e| {
        err(&format!(
            "error: --to {to:?}: {e} (expected E.164, e.g. +919876543210)"
        ));
        2
    })
}

fn send_request(opts: &SendOptions, to: &PhoneNumber) -> SendOtp {
    let mut req =
        SendOtp::sms(to.country_code().to_string(), to.national()).with_flow(match opts.flow {
            FlowArg::Sms => Flow::Sms,
            FlowArg::Whatsapp => Flow::WhatsApp,
            FlowArg::Rcs => Flow::Rcs,
            FlowArg::Sauth => Flow::Sauth,
        });
    req.otp_length = opts.length;
    req.timeout = opts.timeout.map(Duration::from_secs);
    req
}

fn describe_sent(s: &Sent, to: &PhoneNumber) -> String {
    let validity = s
        .timeout
        .map(|t| format!(", valid for {} s", t.as_secs()))
        .unwrap_or_default();
    format!(
        "Sent a code to +{}{}: verification {}{validity}.",
        to.country_code(),
        to.national(),
        s.verification_id
    )
}

fn describe_pending(id: u64, seconds_left: Option<u64>) -> String {
    let left = seconds_left
        .map(|s| format!(", {s} s left"))
        .unwrap_or_default();
    format!("A code sent earlier is still pending: verification {id}{left}. Nothing new was sent.")
}

async fn token(args: TokenArgs) -> u8 {
    let client = match client(&args.conn) {
        Ok(c) => c,
        Err(code) => return code,
    };
    match client.fetch_token().await {
        Ok(reply) if args.json => {
            out(&reply.body);
            0
        }
        Ok(reply) => {
            out(reply.value.expose());
            if let Some(left) = reply
                .value
                .expires_at()
                .and_then(|at| at.duration_since(std::time::SystemTime::now()).ok())
            {
                err(&format!("(valid for {})", human_duration(left)));
            }
            0
        }
        Err(e) => fail(&e, args.json),
    }
}

fn human_duration(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..=119 => format!("{s} s"),
        120..=7199 => format!("{} min", s / 60),
        7200..=172_799 => format!("{} h", s / 3600),
        // Rounded: a 7-day token a second old still reads "7 days".
        _ => format!("{} days", (s + 43_200) / 86_400),
    }
}

async fn send(args: SendArgs) -> u8 {
    let (to, client) = match phone(&args.send.to).and_then(|to| Ok((to, client(&args.conn)?))) {
        Ok(pair) => pair,
        Err(code) => return code,
    };
    match client.send_raw(&send_request(&args.send, &to)).await {
        Ok(reply) => {
            if args.json {
                out(&reply.body);
            }
            match reply.value {
                SendOutcome::Sent(s) => {
                    if !args.json {
                        out(&describe_sent(&s, &to));
                    }
                    0
                }
                SendOutcome::AlreadyPending {
                    verification_id,
                    seconds_left,
                } => {
                    if !args.json {
                        out(&describe_pending(verification_id, seconds_left));
                    }
                    1
                }
                _ => 1,
            }
        }
        Err(e) => fail(&e, args.json),
    }
}

/// A sentence for each outcome, and its exit status.
fn describe_validation(v: Validation, id: u64) -> (String, u8) {
    match v {
        Validation::Verified => ("Verified.".into(), 0),
        Validation::WrongCode {
            attempts_left: Some(n),
        } => (
            format!(
                "Wrong code; {n} attempt{} left.",
                if n == 1 { "" } else { "s" }
            ),
            1,
        ),
        Validation::WrongCode {
            attempts_left: None,
        } => ("Wrong code.".into(), 1),
        Validation::AlreadyVerified => (
            format!("Already verified: verification {id} was completed earlier."),
            1,
        ),
        Validation::Expired => (
            format!("Expired: verification {id} is no longer valid; send a new code."),
            1,
        ),
        Validation::TooManyAttempts => (
            format!("Too many wrong codes: verification {id} is closed; send a new code."),
            1,
        ),
        Validation::Failed => (
            format!(
                "Failed: the code for verification {id} could not be delivered, or it was cancelled."
            ),
            1,
        ),
        Validation::UnknownVerification => {
            (format!("Unknown verification {id} (for this account)."), 1)
        }
        _ => ("Not verified.".into(), 1),
    }
}

async fn validate(args: ValidateArgs) -> u8 {
    let client = match client(&args.conn) {
        Ok(c) => c,
        Err(code) => return code,
    };
    match client.validate_raw(args.id, &args.code).await {
        Ok(reply) => {
            let (text, code) = describe_validation(reply.value, args.id);
            if args.json {
                out(&reply.body);
            } else {
                out(&text);
            }
            code
        }
        Err(e) => fail(&e, args.json),
    }
}

/// Codes are short; a longer line is not one, and reading stops there so a
/// runaway pipe cannot fill memory.
const MAX_LINE: u64 = 256;

async fn verify(args: VerifyArgs) -> u8 {
    let (to, client) = match phone(&args.send.to).and_then(|to| Ok((to, client(&args.conn)?))) {
        Ok(pair) => pair,
        Err(code) => return code,
    };
    let id = match client.send(send_request(&args.send, &to)).await {
        Ok(SendOutcome::Sent(s)) => {
            out(&describe_sent(&s, &to));
            s.verification_id
        }
        Ok(SendOutcome::AlreadyPending {
            verification_id,
            seconds_left,
        }) => {
            let left = seconds_left
                .map(|s| format!(", {s} s left"))
                .unwrap_or_default();
            out(&format!(
                "A code sent earlier is still pending (verification {verification_id}{left}): enter that one."
            ));
            verification_id
        }
        Ok(_) => {
            err("error: the service answered the send in a way this version does not know");
            return 2;
        }
        Err(e) => return fail(&e, false),
    };

    let interactive = std::io::stdin().is_terminal();
    loop {
        if interactive {
            let mut stderr = std::io::stderr().lock();
            let _ = write!(stderr, "Code: ");
            let _ = stderr.flush();
        }
        let code = match next_code().await {
            Ok(Some(code)) => code,
            Ok(None) => {
                err("error: no code entered (end of input)");
                return 2;
            }
            Err(e) => {
                err(&format!("error: cannot read the code: {e}"));
                return 2;
            }
        };
        if code.is_empty() {
            continue;
        }
        match client.validate(id, &code).await {
            Ok(v) => {
                let (text, status) = describe_validation(v, id);
                out(&text);
                let again = matches!(
                    v,
                    Validation::WrongCode { attempts_left } if attempts_left != Some(0)
                );
                if !again {
                    return status;
                }
            }
            Err(e) => return fail(&e, false),
        }
    }
}

/// One line, trimmed; `None` at end of input.
fn read_code(input: &mut impl BufRead) -> std::io::Result<Option<String>> {
    let mut line = Vec::new();
    let n = input.take(MAX_LINE).read_until(b'\n', &mut line)?;
    if n == 0 {
        return Ok(None);
    }
    Ok(Some(String::from_utf8_lossy(&line).trim().to_owned()))
}

/// Reads the next code from standard input on a blocking thread (std's
/// stdin keeps its buffer between calls, so piped lines are not lost).
async fn next_code() -> std::io::Result<Option<String>> {
    tokio::task::spawn_blocking(|| read_code(&mut std::io::stdin().lock()))
        .await
        .map_err(std::io::Error::other)?
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, Parser};

    #[derive(Parser)]
    struct Cli {
        #[command(subcommand)]
        command: ClientCommand,
    }

    #[test]
    fn the_commands_parse() {
        Cli::command().debug_assert();
        let cli = Cli::try_parse_from([
            "otpgate",
            "send",
            "--to",
            "+919876543210",
            "--length",
            "6",
            "--timeout",
            "120",
            "--json",
            "--url",
            "http://x",
            "--customer-id",
            "C-1",
            "--password",
            "pw",
        ])
        .unwrap();
        let ClientCommand::Send(a) = cli.command else {
            panic!("not send")
        };
        assert_eq!(a.send.length, Some(6));
        assert_eq!(a.send.timeout, Some(120));
        assert!(a.json);
        assert!(Cli::try_parse_from(["otpgate", "send", "--to", "+91", "--length", "9"]).is_err());
        assert!(Cli::try_parse_from(["otpgate", "validate", "--id", "x", "--code", "1"]).is_err());
    }

    #[test]
    fn the_request_is_split_from_e164() {
        let to = PhoneNumber::parse_e164("+919876543210").unwrap();
        let opts = SendOptions {
            to: "+919876543210".into(),
            length: Some(6),
            timeout: Some(120),
            flow: FlowArg::Sms,
        };
        let req = send_request(&opts, &to);
        assert_eq!(req.country_code, "91");
        assert_eq!(req.mobile_number, "9876543210");
        assert_eq!(req.otp_length, Some(6));
        assert_eq!(req.timeout, Some(Duration::from_secs(120)));
    }

    #[test]
    fn only_verified_exits_zero() {
        assert_eq!(describe_validation(Validation::Verified, 1).1, 0);
        for v in [
            Validation::WrongCode {
                attempts_left: Some(4),
            },
            Validation::AlreadyVerified,
            Validation::Expired,
            Validation::TooManyAttempts,
            Validation::Failed,
            Validation::UnknownVerification,
        ] {
            assert_eq!(describe_validation(v, 1).1, 1, "{v:?}");
        }
        assert_eq!(
            describe_validation(
                Validation::WrongCode {
                    attempts_left: Some(1)
                },
                1
            )
            .0,
            "Wrong code; 1 attempt left."
        );
    }

    #[test]
    fn codes_are_read_a_line_at_a_time_and_bounded() {
        let mut input: &[u8] = b" 1234 \r\n5678\n";
        assert_eq!(read_code(&mut input).unwrap().as_deref(), Some("1234"));
        assert_eq!(read_code(&mut input).unwrap().as_deref(), Some("5678"));
        assert_eq!(read_code(&mut input).unwrap(), None);
        let long = vec![b'1'; 10_000];
        let mut input: &[u8] = &long;
        let first = read_code(&mut input).unwrap().unwrap();
        assert_eq!(first.len(), 256);
    }
}
