//! `otpgate bench`: C concurrent virtual users, each looping token → send →
//! read the code from the inbox → validate for D seconds against a running
//! server, after a baseline phase of `GET /healthz` with the same
//! concurrency, so every figure comes with a ratio from the same run. It
//! measures and prints; it asserts nothing.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use clap::Args;
use otpgate_api::{
    AUTH_TOKEN_HEADER, FlowType, SendRequest, TokenRequest, ValidateRequest, WireRequest, paths,
};
use otpgate_store::Store;
use rand::RngExt;
use tokio::sync::Mutex;

#[derive(Args)]
pub struct BenchArgs {
    /// Base URL of the server under test.
    #[arg(long, env = "OTPGATE_URL")]
    url: String,
    #[arg(long, env = "OTPGATE_CUSTOMER_ID")]
    customer_id: String,
    #[arg(long, env = "OTPGATE_PASSWORD")]
    password: String,
    /// Database of the server (to read codes from its inbox channel).
    #[arg(long = "inbox-database")]
    inbox_database: String,
    /// Concurrent virtual users.
    #[arg(long, short = 'c', default_value_t = 8)]
    concurrency: usize,
    /// Seconds of the flow phase.
    #[arg(long, short = 'd', default_value_t = 10)]
    duration: u64,
    /// Seconds of the /healthz baseline phase (0 to skip).
    #[arg(long, default_value_t = 5)]
    baseline: u64,
}

#[derive(Default)]
struct Samples {
    healthz: Vec<u64>,
    token: Vec<u64>,
    send: Vec<u64>,
    inbox: Vec<u64>,
    validate: Vec<u64>,
    flows: u64,
    errors: u64,
}

pub async fn run(args: BenchArgs) -> anyhow::Result<u8> {
    let settings = otpgate_server::Settings {
        database_url: args.inbox_database.clone(),
        ..Default::default()
    };
    let store = otpgate_server::store::open(&settings).await?;
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(args.concurrency * 2)
        .build()
        .context("failed to build the HTTP client")?;
    let base = args.url.trim_end_matches('/').to_owned();
    let samples = Arc::new(Mutex::new(Samples::default()));

    if args.baseline > 0 {
        let until = Instant::now() + Duration::from_secs(args.baseline);
        let mut tasks = Vec::new();
        for _ in 0..args.concurrency {
            let (http, base, samples) = (http.clone(), base.clone(), samples.clone());
            tasks.push(tokio::spawn(async move {
                let mut mine = Vec::new();
                while Instant::now() < until {
                    let t = Instant::now();
                    if http.get(format!("{base}/healthz")).send().await.is_ok() {
                        mine.push(micros(t));
                    }
                }
                samples.lock().await.healthz.extend(mine);
            }));
        }
        for t in tasks {
            let _ = t.await;
        }
    }

    let key = STANDARD.encode(args.password.as_bytes());
    let started = Instant::now();
    let until = started + Duration::from_secs(args.duration);
    let mut tasks = Vec::new();
    for _ in 0..args.concurrency {
        let (http, base, samples, store) =
            (http.clone(), base.clone(), samples.clone(), store.clone());
        let (cid, key) = (args.customer_id.clone(), key.clone());
        tasks.push(tokio::spawn(async move {
            let mut local = Samples::default();
            while Instant::now() < until {
                match flow(&http, &base, &cid, &key, store.as_ref(), &mut local).await {
                    Ok(()) => local.flows += 1,
                    Err(e) => {
                        local.errors += 1;
                        if local.errors <= 3 {
                            eprintln!("flow failed: {e:#}");
                        }
                    }
                }
            }
            let mut s = samples.lock().await;
            s.token.extend(local.token);
            s.send.extend(local.send);
            s.inbox.extend(local.inbox);
            s.validate.extend(local.validate);
            s.flows += local.flows;
            s.errors += local.errors;
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let mut s = std::mem::take(&mut *samples.lock().await);
    #[allow(clippy::cast_precision_loss)]
    let flows_per_sec = s.flows as f64 / elapsed;
    println!(
        "otpgate bench: {} virtual users, {:.1}s, {} flows ({:.1} flows/s), {} errors",
        args.concurrency, elapsed, s.flows, flows_per_sec, s.errors
    );
    println!(
        "{:<10} {:>8} {:>10} {:>10} {:>10}",
        "endpoint", "count", "req/s", "p50 ms", "p99 ms"
    );
    let healthz_p50 = pct(&mut s.healthz, 0.50);
    #[allow(clippy::cast_precision_loss)]
    let healthz_rps = s.healthz.len() as f64 / (args.baseline.max(1)) as f64;
    let rows: [(&str, &mut Vec<u64>, f64); 5] = [
        ("healthz", &mut s.healthz, args.baseline.max(1) as f64),
        ("token", &mut s.token, elapsed),
        ("send", &mut s.send, elapsed),
        ("inbox", &mut s.inbox, elapsed),
        ("validate", &mut s.validate, elapsed),
    ];
    for (name, v, secs) in rows {
        #[allow(clippy::cast_precision_loss)]
        let rps = v.len() as f64 / secs;
        println!(
            "{name:<10} {:>8} {:>10.1} {:>10.2} {:>10.2}",
            v.len(),
            rps,
            pct(v, 0.50),
            pct(v, 0.99)
        );
    }
    if args.baseline > 0 && healthz_rps > 0.0 {
        println!(
            "ratio: flows/s ÷ healthz req/s = {:.4}; send p50 ÷ healthz p50 = {:.1}; validate p50 ÷ healthz p50 = {:.1}",
            flows_per_sec / healthz_rps,
            pct(&mut s.send, 0.50) / healthz_p50.max(0.001),
            pct(&mut s.validate, 0.50) / healthz_p50.max(0.001),
        );
    }
    Ok(0)
}

async fn flow(
    http: &reqwest::Client,
    base: &str,
    cid: &str,
    key: &str,
    store: &dyn Store,
    s: &mut Samples,
) -> anyhow::Result<()> {
    let t = Instant::now();
    let token_request = TokenRequest {
        customer_id: Some(cid.to_owned()),
        key: Some(key.to_owned()),
        ..TokenRequest::default()
    };
    let body = call(http.get(format!("{base}{}", paths::TOKEN)), &token_request).await?;
    s.token.push(micros(t));
    let token = body["token"]
        .as_str()
        .with_context(|| format!("no token: {body}"))?
        .to_owned();

    let national = format!("98{:08}", rand::rng().random_range(0..100_000_000u32));
    let t = Instant::now();
    let send = SendRequest {
        country_code: Some("91".into()),
        mobile_number: Some(national.clone()),
        flow_type: Some(FlowType::Sms.as_str().into()),
        otp_length: Some("6".into()),
        ..SendRequest::default()
    };
    let url = format!("{base}{}", paths::SEND_V3);
    let body = call(http.post(url).header(AUTH_TOKEN_HEADER, &token), &send).await?;
    s.send.push(micros(t));
    let id = body["data"]["verificationId"]
        .as_str()
        .with_context(|| format!("send failed: {body}"))?
        .to_owned();

    let t = Instant::now();
    let to = format!("91{national}");
    let code = loop {
        let entries = store.inbox_list(None, Some(&to), 5).await?;
        let hit = entries
            .iter()
            .find(|e| e.verification_id.is_some_and(|v| v.get().to_string() == id));
        if let Some(e) = hit {
            break e
                .text
                .split(|c: char| !c.is_ascii_digit())
                .find(|w| w.len() == 6)
                .context("no code in the message")?
                .to_owned();
        }
        anyhow::ensure!(
            t.elapsed() < Duration::from_secs(10),
            "message never reached the inbox"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    s.inbox.push(micros(t));

    let t = Instant::now();
    let validate = ValidateRequest {
        verification_id: Some(id),
        code: Some(code),
        customer_id: None,
    };
    let url = format!("{base}{}", paths::VALIDATE_V3);
    let body = call(http.get(url).header(AUTH_TOKEN_HEADER, &token), &validate).await?;
    s.validate.push(micros(t));
    anyhow::ensure!(body["responseCode"] == 200, "validate failed: {body}");
    Ok(())
}

/// One call of the contract: `request`'s parameters in the query, the JSON
/// answer back.
async fn call(
    http: reqwest::RequestBuilder,
    request: &impl WireRequest,
) -> anyhow::Result<serde_json::Value> {
    Ok(http
        .query(&request.to_params())
        .send()
        .await?
        .json()
        .await?)
}

fn micros(t: Instant) -> u64 {
    u64::try_from(t.elapsed().as_micros()).unwrap_or(u64::MAX)
}

/// The `q` quantile in milliseconds (nearest rank).
fn pct(v: &mut [u64], q: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_unstable();
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss
    )]
    let i = ((v.len() as f64 * q).ceil() as usize).clamp(1, v.len()) - 1;
    #[allow(clippy::cast_precision_loss)]
    let ms = v[i] as f64 / 1000.0;
    ms
}
