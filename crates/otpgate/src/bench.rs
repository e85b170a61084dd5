//! `otpgate bench`: measures a running server in phases, each against the
//! same server's `GET /healthz` from the same run, so every figure comes
//! with a ratio that does not depend on how busy the machine is:
//!
//! - `healthz`: the baseline, C connections for D seconds;
//! - `send`: C connections sending for one account to distinct valid
//!   numbers for D seconds; then the time until the outbox is empty
//!   (delivery keeping up), and the server's RSS idle and under the sends;
//! - `validate`: C connections validating the codes of those sends (read
//!   from the inbox channel), each right code used once;
//! - `flows`: U virtual users each looping token → send → code from the
//!   inbox → validate for D seconds.
//!
//! With `--server-pid`, each phase also reports the server's CPU time per
//! request (user and system, all threads): the work a request costs, which
//! a busy shared machine disturbs far less than it disturbs req/s. For
//! `send` it counts until the outbox is empty, so it includes delivery.
//!
//! It prints a table and, with `--json FILE`, adds its figures under
//! `--label` to that file (an object of runs by label) for comparison
//! between runs. Every phase is bounded in time and count; it measures and
//! prints, and asserts nothing.

use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
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
use serde_json::{Value, json};

/// Requests one phase makes at most, whatever its duration.
const MAX_PER_PHASE: u64 = 500_000;
/// The longest the bench waits for the outbox to empty after the sends.
const DRAIN_LIMIT: Duration = Duration::from_secs(30);

#[derive(Args)]
pub struct BenchArgs {
    /// Base URL of the server under test.
    #[arg(long, env = "OTPGATE_URL")]
    url: String,
    #[arg(long, env = "OTPGATE_CUSTOMER_ID")]
    customer_id: String,
    #[arg(long, env = "OTPGATE_PASSWORD")]
    password: String,
    /// Database of the server (to read codes from its inbox channel and the
    /// outbox's depth).
    #[arg(long = "inbox-database")]
    inbox_database: String,
    /// Connections of the healthz, send and validate phases.
    #[arg(long, short = 'c', default_value_t = 64, value_parser = clap::value_parser!(u16).range(1..=1024))]
    concurrency: u16,
    /// Virtual users of the flows phase.
    #[arg(long, short = 'u', default_value_t = 16, value_parser = clap::value_parser!(u16).range(1..=1024))]
    users: u16,
    /// Seconds of each timed phase (1 to 60).
    #[arg(long, short = 'd', default_value_t = 8, value_parser = clap::value_parser!(u64).range(1..=60))]
    duration: u64,
    /// Phases to run, in this order.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "healthz,send,validate,flows"
    )]
    phases: Vec<String>,
    /// The server's process id, for its resident memory and CPU time
    /// (Linux `/proc`).
    #[arg(long)]
    server_pid: Option<u32>,
    /// Name of this run in the JSON file (e.g. the backend).
    #[arg(long, default_value = "run")]
    label: String,
    /// Adds this run's figures to FILE (created if missing).
    #[arg(long)]
    json: Option<PathBuf>,
}

/// One phase's latencies (µs) and how long it ran.
struct Phase {
    latencies: Vec<u64>,
    errors: u64,
    secs: f64,
    /// The CPU counters when it started, and what was used until it ended
    /// (for send, until its outbox was empty).
    started: Cpu,
    cpu: CpuUsed,
}

/// CPU time (µs) of the server and of this bench, from `/proc`.
#[derive(Clone, Copy, Default)]
struct CpuUsed {
    server: Option<u64>,
    bench: Option<u64>,
}

/// CPU counters read when a phase started.
#[derive(Clone, Copy)]
struct Cpu {
    pid: Option<u32>,
    at: CpuUsed,
}

impl CpuUsed {
    /// What the server (`pid`) and this bench have used since they started.
    fn now(pid: Option<u32>) -> Self {
        Self {
            server: pid.and_then(|p| cpu_us(&p.to_string())),
            bench: cpu_us("self"),
        }
    }
}

impl Cpu {
    fn start(pid: Option<u32>) -> Self {
        Self {
            pid,
            at: CpuUsed::now(pid),
        }
    }

    /// What each process used from [`Cpu::start`] until now.
    fn since(&self) -> CpuUsed {
        let now = CpuUsed::now(self.pid);
        let d = |a: Option<u64>, b: Option<u64>| Some(b?.saturating_sub(a?));
        CpuUsed {
            server: d(self.at.server, now.server),
            bench: d(self.at.bench, now.bench),
        }
    }
}

impl Phase {
    fn rps(&self) -> f64 {
        self.latencies.len() as f64 / self.secs.max(0.001)
    }

    /// µs of `used` CPU per request answered.
    fn per_request(&self, used: Option<u64>) -> Option<f64> {
        let n = self.latencies.len();
        #[allow(clippy::cast_precision_loss)]
        used.filter(|_| n > 0).map(|u| round(u as f64 / n as f64))
    }

    fn json(&mut self, baseline: Option<f64>) -> Value {
        let rps = self.rps();
        json!({
            "server_cpu_us_per_req": self.per_request(self.cpu.server),
            "bench_cpu_us_per_req": self.per_request(self.cpu.bench),
            "count": self.latencies.len(),
            "errors": self.errors,
            "seconds": round(self.secs),
            "per_sec": round(rps),
            "ratio_to_healthz": baseline.filter(|b| *b > 0.0).map(|b| round(rps / b)),
            "p50_ms": round(pct(&mut self.latencies, 0.50)),
            "p99_ms": round(pct(&mut self.latencies, 0.99)),
        })
    }
}

struct Bench {
    http: reqwest::Client,
    base: String,
    cid: String,
    key: String,
    store: Arc<dyn Store>,
    /// Distinct national numbers for every send of the run.
    next_number: AtomicU64,
    /// Each step's latency (µs) in the flows: token, send, inbox, validate.
    steps: std::sync::Mutex<[Vec<u64>; 4]>,
}

impl Bench {
    async fn token(&self) -> anyhow::Result<String> {
        let request = TokenRequest {
            customer_id: Some(self.cid.clone()),
            key: Some(self.key.clone()),
            ..TokenRequest::default()
        };
        let url = format!("{}{}", self.base, paths::TOKEN);
        let body = call(self.http.get(url), &request).await?;
        Ok(body["token"]
            .as_str()
            .with_context(|| format!("no token: {body}"))?
            .to_owned())
    }

    /// A send to a number no other send of this run uses; its
    /// verification id and the destination's E.164 digits.
    async fn send(&self, token: &str) -> anyhow::Result<(String, String)> {
        let n = self.next_number.fetch_add(1, Ordering::Relaxed) % 100_000_000;
        let national = format!("98{n:08}");
        let request = SendRequest {
            country_code: Some("91".into()),
            mobile_number: Some(national.clone()),
            flow_type: Some(FlowType::Sms.as_str().into()),
            otp_length: Some("6".into()),
            ..SendRequest::default()
        };
        let url = format!("{}{}", self.base, paths::SEND_V3);
        let body = call(
            self.http.post(url).header(AUTH_TOKEN_HEADER, token),
            &request,
        )
        .await?;
        let id = body["data"]["verificationId"]
            .as_str()
            .with_context(|| format!("send failed: {body}"))?
            .to_owned();
        Ok((id, format!("91{national}")))
    }

    async fn validate(&self, token: &str, id: &str, code: &str) -> anyhow::Result<()> {
        let request = ValidateRequest {
            verification_id: Some(id.to_owned()),
            code: Some(code.to_owned()),
            customer_id: None,
        };
        let url = format!("{}{}", self.base, paths::VALIDATE_V3);
        let body = call(
            self.http.get(url).header(AUTH_TOKEN_HEADER, token),
            &request,
        )
        .await?;
        anyhow::ensure!(body["responseCode"] == 200, "validate failed: {body}");
        Ok(())
    }

    /// The code of verification `id`, once delivery has put it in the inbox.
    ///
    /// It polls every millisecond at first, then every 5 ms: a fixed 5 ms
    /// poll made each flow wait for the next poll after delivery (the
    /// inbox step was 6.1 ms p50 with it, 2.1 ms without, on SQLite), which
    /// measured the bench, not the server; the back-off bounds the polling
    /// once a message is late.
    async fn code_from_inbox(&self, to: &str, id: &str) -> anyhow::Result<String> {
        let t = Instant::now();
        let mut polls = 0u32;
        loop {
            let entries = self.store.inbox_list(None, Some(to), 5).await?;
            let hit = entries
                .iter()
                .find(|e| e.verification_id.is_some_and(|v| v.get().to_string() == id));
            if let Some(e) = hit {
                return code_in(&e.text);
            }
            anyhow::ensure!(
                t.elapsed() < Duration::from_secs(10),
                "message never reached the inbox"
            );
            polls += 1;
            let pause = if polls <= 10 { 1 } else { 5 };
            tokio::time::sleep(Duration::from_millis(pause)).await;
        }
    }

    /// token → send → code → validate.
    async fn flow(&self) -> anyhow::Result<()> {
        let mut t = Instant::now();
        let mut times = [0; 4];
        let mut lap = |i: usize| {
            times[i] = micros(t);
            t = Instant::now();
        };
        let token = self.token().await?;
        lap(0);
        let (id, to) = self.send(&token).await?;
        lap(1);
        let code = self.code_from_inbox(&to, &id).await?;
        lap(2);
        self.validate(&token, &id, &code).await?;
        lap(3);
        if let Ok(mut steps) = self.steps.lock() {
            for (v, x) in steps.iter_mut().zip(times) {
                v.push(x);
            }
        }
        Ok(())
    }

    /// Queued or in-flight messages in the outbox.
    async fn undelivered(&self) -> anyhow::Result<u64> {
        let d = self.store.outbox_depth().await?;
        Ok(d.queued + d.in_flight)
    }
}

/// One call of the contract: `request`'s parameters in the query, the JSON
/// answer back.
async fn call(http: reqwest::RequestBuilder, request: &impl WireRequest) -> anyhow::Result<Value> {
    Ok(http
        .query(&request.to_params())
        .send()
        .await?
        .json()
        .await?)
}

/// The code in a message's text (the bench asks for 6 digits).
fn code_in(text: &str) -> anyhow::Result<String> {
    Ok(text
        .split(|c: char| !c.is_ascii_digit())
        .find(|w| w.len() == 6)
        .context("no code in the message")?
        .to_owned())
}

/// Runs `job` on `workers` tasks until `secs` have passed, `MAX_PER_PHASE`
/// jobs have run, or a job answers `Ok(false)` (no work left), timing each.
async fn load<F, Fut>(workers: usize, secs: u64, pid: Option<u32>, job: F) -> Phase
where
    F: Fn() -> Fut + Clone + Send + 'static,
    Fut: Future<Output = anyhow::Result<bool>> + Send,
{
    let cpu = Cpu::start(pid);
    let started = Instant::now();
    let until = started + Duration::from_secs(secs);
    let budget = Arc::new(AtomicU64::new(MAX_PER_PHASE));
    let printed = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = (0..workers)
        .map(|_| {
            let (job, budget, printed) = (job.clone(), budget.clone(), printed.clone());
            tokio::spawn(async move {
                let (mut ok, mut errors) = (Vec::new(), 0u64);
                while Instant::now() < until
                    && budget
                        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| b.checked_sub(1))
                        .is_ok()
                {
                    let t = Instant::now();
                    match job().await {
                        Ok(true) => ok.push(micros(t)),
                        Ok(false) => break,
                        Err(e) => {
                            errors += 1;
                            if printed.fetch_add(1, Ordering::Relaxed) < 3 {
                                eprintln!("request failed: {e:#}");
                            }
                        }
                    }
                }
                (ok, errors)
            })
        })
        .collect();
    let mut phase = Phase {
        latencies: Vec::new(),
        errors: 0,
        secs: 0.0,
        started: cpu,
        cpu: CpuUsed::default(),
    };
    for t in tasks {
        if let Ok((ok, errors)) = t.await {
            phase.latencies.extend(ok);
            phase.errors += errors;
        }
    }
    phase.secs = started.elapsed().as_secs_f64();
    phase.cpu = cpu.since();
    phase
}

pub async fn run(args: BenchArgs) -> anyhow::Result<u8> {
    let settings = otpgate_server::Settings {
        database_url: args.inbox_database.clone(),
        ..Default::default()
    };
    let store = otpgate_server::store::open(&settings).await?;
    let c = usize::from(args.concurrency);
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(c.max(usize::from(args.users)) * 2)
        .timeout(Duration::from_secs(20))
        .build()
        .context("failed to build the HTTP client")?;
    let bench = Arc::new(Bench {
        http,
        base: args.url.trim_end_matches('/').to_owned(),
        cid: args.customer_id.clone(),
        key: STANDARD.encode(args.password.as_bytes()),
        store,
        // A random start, so runs against one database use new numbers.
        next_number: AtomicU64::new(rand::rng().random_range(0..100_000_000)),
        steps: std::sync::Mutex::new(Default::default()),
    });
    let d = args.duration;
    let load_before = load_average();
    let rss_idle = args.server_pid.and_then(rss_kb);
    let mut report = serde_json::Map::new();
    let mut rows: Vec<(String, Phase)> = Vec::new();
    let mut notes = Vec::new();
    let mut sent: Vec<String> = Vec::new();

    for phase in &args.phases {
        match phase.as_str() {
            "healthz" => {
                let b = bench.clone();
                let p = load(c, d, args.server_pid, move || {
                    let b = b.clone();
                    async move {
                        let r = b.http.get(format!("{}/healthz", b.base)).send().await?;
                        anyhow::ensure!(r.status().is_success(), "healthz: {}", r.status());
                        Ok(true)
                    }
                })
                .await;
                rows.push(("healthz".into(), p));
            }
            "send" => {
                let token: Arc<str> = bench.token().await?.into();
                let out = Arc::new(std::sync::Mutex::new(Vec::new()));
                let (b, o) = (bench.clone(), out.clone());
                let sampler = args.server_pid.map(|pid| tokio::spawn(peak_rss(pid, d)));
                let mut p = load(c, d, args.server_pid, move || {
                    let (b, o, token) = (b.clone(), o.clone(), token.clone());
                    async move {
                        let (id, _) = b.send(&token).await?;
                        o.lock().map_err(|_| anyhow::anyhow!("poisoned"))?.push(id);
                        Ok(true)
                    }
                })
                .await;
                let stopped = Instant::now();
                let at_stop = bench.undelivered().await?;
                let drained = loop {
                    if bench.undelivered().await? == 0 {
                        break Some(stopped.elapsed());
                    }
                    if stopped.elapsed() > DRAIN_LIMIT {
                        break None;
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                };
                // A send's cost includes delivering it.
                p.cpu = p.started.since();
                let peak = match sampler {
                    Some(s) => s.await.ok().flatten(),
                    None => None,
                };
                report.insert(
                    "drain".into(),
                    json!({
                        "undelivered_at_stop": at_stop,
                        "seconds": drained.map(|t| round(t.as_secs_f64())),
                    }),
                );
                report.insert("rss_send_peak_mb".into(), json!(peak.map(mb)));
                notes.push(format!(
                    "outbox: {at_stop} of {} sends undelivered when the sends stopped; empty after {}",
                    p.latencies.len(),
                    drained.map_or(format!("more than {}s", DRAIN_LIMIT.as_secs()), |t| {
                        format!("{:.2}s", t.as_secs_f64())
                    })
                ));
                if let Some(peak) = peak {
                    notes.push(format!("rss under the sends: peak {:.1} MB", mb(peak)));
                }
                sent = std::mem::take(&mut *out.lock().map_err(|_| anyhow::anyhow!("poisoned"))?);
                rows.push(("send".into(), p));
            }
            "validate" => {
                let codes = codes_of(&bench, &sent).await?;
                let work = Arc::new(std::sync::Mutex::new(codes));
                let token: Arc<str> = bench.token().await?.into();
                let b = bench.clone();
                let p = load(c, d, args.server_pid, move || {
                    let (b, work, token) = (b.clone(), work.clone(), token.clone());
                    async move {
                        let next = work.lock().map_err(|_| anyhow::anyhow!("poisoned"))?.pop();
                        let Some((id, code)) = next else {
                            return Ok(false);
                        };
                        b.validate(&token, &id, &code).await?;
                        Ok(true)
                    }
                })
                .await;
                if p.latencies.len() < sent.len() {
                    notes.push(format!(
                        "validate: {} of {} codes used before the phase's time ran out",
                        p.latencies.len(),
                        sent.len()
                    ));
                }
                rows.push(("validate".into(), p));
            }
            "flows" => {
                let b = bench.clone();
                let p = load(usize::from(args.users), d, args.server_pid, move || {
                    let b = b.clone();
                    async move { b.flow().await.map(|()| true) }
                })
                .await;
                let mut steps = std::mem::take(
                    &mut *bench
                        .steps
                        .lock()
                        .map_err(|_| anyhow::anyhow!("poisoned"))?,
                );
                let names = ["token", "send", "inbox", "validate"];
                let mut parts = Vec::new();
                let mut j = serde_json::Map::new();
                for (name, v) in names.iter().zip(steps.iter_mut()) {
                    let (p50, p99) = (pct(v, 0.50), pct(v, 0.99));
                    parts.push(format!("{name} {p50:.2}/{p99:.2}"));
                    j.insert(
                        (*name).into(),
                        json!({ "p50_ms": round(p50), "p99_ms": round(p99) }),
                    );
                }
                notes.push(format!("flow steps, p50/p99 ms: {}", parts.join(", ")));
                report.insert("flow_steps".into(), Value::Object(j));
                rows.push(("flows".into(), p));
            }
            other => anyhow::bail!("unknown phase {other} (healthz, send, validate, flows)"),
        }
    }

    let load_after = load_average();
    let baseline = rows
        .iter()
        .find(|(n, _)| n == "healthz")
        .map(|(_, p)| p.rps());
    println!(
        "otpgate bench [{}]: {} connections ({} flow users), {d}s per phase, load average {} → {}",
        args.label,
        args.concurrency,
        args.users,
        load_before.as_deref().unwrap_or("?"),
        load_after.as_deref().unwrap_or("?"),
    );
    println!(
        "{:<10} {:>8} {:>7} {:>10} {:>9} {:>9} {:>9} {:>9}",
        "phase", "count", "errors", "req/s", "×healthz", "p50 ms", "p99 ms", "cpu µs"
    );
    let mut phases = serde_json::Map::new();
    for (name, mut p) in rows {
        let j = p.json(baseline);
        println!(
            "{name:<10} {:>8} {:>7} {:>10.1} {:>9} {:>9.2} {:>9.2} {:>9}",
            p.latencies.len(),
            p.errors,
            p.rps(),
            j["ratio_to_healthz"]
                .as_f64()
                .map_or("-".into(), |r| format!("{r:.3}")),
            pct(&mut p.latencies, 0.50),
            pct(&mut p.latencies, 0.99),
            j["server_cpu_us_per_req"]
                .as_f64()
                .map_or("-".into(), |u| format!("{u:.1}")),
        );
        phases.insert(name, j);
    }
    if let Some(idle) = rss_idle {
        notes.insert(0, format!("rss idle: {:.1} MB", mb(idle)));
    }
    for n in &notes {
        println!("{n}");
    }
    report.insert("phases".into(), Value::Object(phases));
    report.insert("connections".into(), json!(args.concurrency));
    report.insert("flow_users".into(), json!(args.users));
    report.insert("seconds_per_phase".into(), json!(d));
    report.insert("load_average_before".into(), json!(load_before));
    report.insert("load_average_after".into(), json!(load_after));
    report.insert("rss_idle_mb".into(), json!(rss_idle.map(mb)));
    if let Some(path) = &args.json {
        save(path, &args.label, Value::Object(report))?;
    }
    Ok(0)
}

/// The codes of `sent` from the inbox, as (verification id, code); sends
/// whose message is not there are left out.
async fn codes_of(bench: &Bench, sent: &[String]) -> anyhow::Result<Vec<(String, String)>> {
    let cid = otpgate_core::CustomerId::parse(&bench.cid).context("bad customer id")?;
    let limit = u32::try_from(sent.len() + 1000).unwrap_or(u32::MAX);
    let entries = bench.store.inbox_list(Some(&cid), None, limit).await?;
    let mut by_id = HashMap::with_capacity(entries.len());
    for e in entries {
        if let (Some(v), Ok(code)) = (e.verification_id, code_in(&e.text)) {
            by_id.insert(v.get().to_string(), code);
        }
    }
    Ok(sent
        .iter()
        .filter_map(|id| by_id.get(id).map(|code| (id.clone(), code.clone())))
        .collect())
}

/// Adds `run` under `label` to the JSON object in `path`.
fn save(path: &PathBuf, label: &str, run: Value) -> anyhow::Result<()> {
    let mut all = std::fs::read(path)
        .ok()
        .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
        .filter(Value::is_object)
        .unwrap_or_else(|| json!({}));
    all[label] = run;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).ok();
    }
    std::fs::write(path, serde_json::to_vec_pretty(&all)?)
        .with_context(|| format!("failed to write {}", path.display()))?;
    println!("figures added to {} as {label:?}", path.display());
    Ok(())
}

/// The server's highest resident memory over `secs`, sampled every 100 ms.
async fn peak_rss(pid: u32, secs: u64) -> Option<u64> {
    let until = Instant::now() + Duration::from_secs(secs);
    let mut peak = None;
    while Instant::now() < until {
        peak = peak.max(rss_kb(pid));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    peak
}

/// Resident memory of process `pid` in kB, from `/proc`.
fn rss_kb(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// CPU time (user and system, all threads, µs) that process `pid` (or
/// `self`) has used. `/proc/PID/stat` counts it in USER_HZ ticks, which
/// Linux fixes at 100 a second for what it shows userland.
fn cpu_us(pid: &str) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses; the
    // fields after its last `)` are plain numbers, field 3 first.
    let mut f = stat.rsplit_once(')')?.1.split_whitespace();
    let utime: u64 = f.nth(11)?.parse().ok()?;
    let stime: u64 = f.next()?.parse().ok()?;
    Some((utime + stime) * 10_000)
}

/// The 1-, 5- and 15-minute load averages.
fn load_average() -> Option<String> {
    let s = std::fs::read_to_string("/proc/loadavg").ok()?;
    Some(s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
}

fn mb(kb: u64) -> f64 {
    round(kb as f64 / 1024.0)
}

fn round(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
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
