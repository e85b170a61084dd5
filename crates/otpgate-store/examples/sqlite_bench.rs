//! Sends per second and latency of the SQLite store's `verification_create`
//! (the write every send makes), with group commit and without it, for 1 and
//! 64 concurrent senders, in one process and one run so the two compare on
//! equal terms.
//!
//! "Without" is the same store opened with at most one write per batch: each
//! send is then its own `begin immediate … commit`, one fsync each, as
//! before group commit. Both keep `synchronous = FULL`.
//!
//! ```text
//! cargo run --release -p otpgate-store --example sqlite_bench -- \
//!     [--seconds 3] [--rounds 3] [--dir PATH] [--rows N]
//! ```
//!
//! Ids and destinations are scattered as the server's are (its ids are
//! random, its users' numbers are), so each send lands on random pages of
//! the tables and indexes keyed on them. `--rows N` (default 0) starts every
//! case from a database that already holds N such earlier sends and their
//! outbox rows: a table far past SQLite's page cache, where each of those
//! random pages costs a read, as on a server that has run for a while.
//!
//! Each case runs for `--seconds` on a fresh database file under `--dir`
//! (default: the system temporary directory, which must be on the disk you
//! mean to measure: fsync on tmpfs costs nothing). A disk's flush time
//! wanders, so the cases run `--rounds` times, interleaved, and each figure
//! is the median over the rounds.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use otpgate_core::{CustomerId, PhoneNumber, VerificationId};
use otpgate_store::prelude::*;
use otpgate_store::sqlite::{MAX_BATCH, SqliteStore};
use otpgate_store::testkit::plain_send;
use otpgate_store::{CreateOutcome, NewAccount, NewVerification};

const T0: i64 = 1_764_100_000_000;
/// The one account every case sends for.
const CUSTOMER: &str = "C-00000000000BE7C";
const SENDERS: [usize; 2] = [1, 64];

struct Case {
    max_batch: usize,
    senders: usize,
}

/// One run of one case.
struct Outcome {
    sends: usize,
    per_sec: f64,
    p50_ms: f64,
    p99_ms: f64,
    commits: u64,
    /// Bytes the process read and wrote through system calls during the
    /// case (`/proc/self/io`): SQLite's page reads and its WAL writes.
    io: Io,
}

/// A case's rounds, summed (sends, commits) or as medians (the rest).
struct Summary {
    sends: usize,
    commits: u64,
    per_sec: f64,
    p50_ms: f64,
    p99_ms: f64,
    io: Io,
}

fn summarise(runs: &[Outcome]) -> Summary {
    let median = |f: fn(&Outcome) -> f64| {
        let mut v: Vec<f64> = runs.iter().map(f).collect();
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
    };
    Summary {
        sends: runs.iter().map(|o| o.sends).sum(),
        commits: runs.iter().map(|o| o.commits).sum(),
        io: Io {
            read: runs.iter().map(|o| o.io.read).sum(),
            written: runs.iter().map(|o| o.io.written).sum(),
        },
        per_sec: median(|o| o.per_sec),
        p50_ms: median(|o| o.p50_ms),
        p99_ms: median(|o| o.p99_ms),
    }
}

fn mode(max_batch: usize) -> String {
    if max_batch == 1 {
        "one per commit".to_owned()
    } else {
        format!("group ({max_batch})")
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (seconds, rounds, dir, rows) = args()?;
    let dir = dir.join(format!("otpgate-sqlite-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    println!(
        "verification_create on SQLite (synchronous=FULL, WAL), {seconds} s per case, \
         {rounds} rounds, {rows} earlier sends, in {}",
        dir.display()
    );
    let template = dir.join("template.db");
    let t = Instant::now();
    make_template(&template, rows).await?;
    println!(
        "  the starting database: {:.0} MB, made in {:.1} s",
        std::fs::metadata(&template)?.len() as f64 / 1e6,
        t.elapsed().as_secs_f64()
    );
    let cases: Vec<Case> = SENDERS
        .into_iter()
        .flat_map(|senders| [MAX_BATCH, 1].map(|max_batch| Case { max_batch, senders }))
        .collect();
    let mut runs: Vec<Vec<Outcome>> = cases.iter().map(|_| Vec::new()).collect();
    for round in 1..=rounds {
        for (case, runs) in cases.iter().zip(&mut runs) {
            let file = dir.join(format!("b{}-s{}.db", case.max_batch, case.senders));
            std::fs::copy(&template, &file)?;
            let out = run(case, &file, Duration::from_secs(seconds)).await;
            for suffix in ["", "-wal", "-shm"] {
                let _ = std::fs::remove_file(format!("{}{suffix}", file.display()));
            }
            let out = out?;
            println!(
                "  round {round}: {:<14} {:>2} sender(s): {:>6.0} sends/s, p50 {:.2} ms, \
                 p99 {:.2} ms",
                mode(case.max_batch),
                case.senders,
                out.per_sec,
                out.p50_ms,
                out.p99_ms
            );
            runs.push(out);
        }
    }
    let _ = std::fs::remove_file(&template);
    let _ = std::fs::remove_dir(&dir);

    println!();
    println!(
        "{:<14} {:>7} {:>8} {:>9} {:>8} {:>8} {:>8} {:>10} {:>12}",
        "mode",
        "senders",
        "sends",
        "sends/s",
        "p50 ms",
        "p99 ms",
        "commits",
        "per commit",
        "KiB r/w each"
    );
    let summaries: Vec<Summary> = runs.iter().map(|r| summarise(r)).collect();
    for (case, s) in cases.iter().zip(&summaries) {
        let per_send = |bytes: u64| bytes as f64 / 1024.0 / s.sends.max(1) as f64;
        println!(
            "{:<14} {:>7} {:>8} {:>9.0} {:>8.2} {:>8.2} {:>8} {:>10.1} {:>5.1}/{:<6.1}",
            mode(case.max_batch),
            case.senders,
            s.sends,
            s.per_sec,
            s.p50_ms,
            s.p99_ms,
            s.commits,
            s.sends as f64 / s.commits.max(1) as f64,
            per_send(s.io.read),
            per_send(s.io.written),
        );
    }
    println!();
    // Cases come in pairs per sender count: group commit, then one per commit.
    for (case, pair) in cases.chunks(2).zip(summaries.chunks(2)) {
        if let [group, alone] = pair {
            println!(
                "{:>2} sender(s), group commit / one per commit: sends/s x{:.2}, \
                 p50 x{:.2}, p99 x{:.2}",
                case[0].senders,
                group.per_sec / alone.per_sec,
                group.p50_ms / alone.p50_ms,
                group.p99_ms / alone.p99_ms,
            );
        }
    }
    Ok(())
}

/// `value` as a number in `range`, or `why`.
fn in_range<T: std::str::FromStr + PartialOrd>(
    value: &str,
    range: std::ops::RangeInclusive<T>,
    why: &str,
) -> Result<T, String> {
    value
        .parse()
        .ok()
        .filter(|v| range.contains(v))
        .ok_or_else(|| why.to_owned())
}

/// `--seconds N` (1 to 60), `--rounds N` (1 to 10), `--dir PATH` and
/// `--rows N` (0 to 10 million).
fn args() -> Result<(u64, usize, PathBuf, u64), String> {
    let mut seconds = 3;
    let mut rounds = 3;
    let mut rows = 0;
    let mut dir = std::env::temp_dir();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let value = args.next().ok_or(format!("{arg} needs a value"))?;
        match arg.as_str() {
            "--seconds" => seconds = in_range(&value, 1..=60, "--seconds takes 1 to 60")?,
            "--rounds" => rounds = in_range(&value, 1..=10, "--rounds takes 1 to 10")?,
            "--dir" => dir = value.into(),
            "--rows" => rows = in_range(&value, 0..=10_000_000, "--rows takes 0 to 10000000")?,
            _ => return Err(format!("unknown argument {arg}")),
        }
    }
    Ok((seconds, rounds, dir, rows))
}

/// The database every case starts from: the schema, the account and `rows`
/// earlier sends (completed, their messages sent), written in one
/// transaction straight into the tables, as many sends would have left them.
async fn make_template(file: &PathBuf, rows: u64) -> Result<(), String> {
    let store = SqliteStore::open_path(file)
        .await
        .map_err(|e| e.to_string())?;
    store
        .account_create(NewAccount {
            customer_id: CustomerId::parse(CUSTOMER).map_err(|e| format!("{e:?}"))?,
            password_hash: "unused".into(),
            email: None,
            country: None,
            credits: i64::MAX / 2,
            test_credits: 0,
            settings: Default::default(),
            created_at: T0,
        })
        .await
        .map_err(|e| e.to_string())?;
    store.close().await;
    let mut conn = rusqlite::Connection::open(file).map_err(|e| e.to_string())?;
    let tx = conn.transaction().map_err(|e| e.to_string())?;
    {
        let mut verification = tx
            .prepare(
                "insert into verifications
                     (id, customer_id, country_code, national, destination, flow_type,
                      code_hash, otp_length, state, wrong_attempts, max_attempts, created_at,
                      expires_at, completed_at, transaction_id, cost, cost_test, delivery,
                      channel, prefix)
                 values (?1, ?2, 91, ?3, ?4, 'SMS', ?5, 4, 'completed', 0, 5, ?6, ?6 + 600000,
                         ?6 + 20000, ?7, 1, 0, 'delivered', 'inbox', ?8)",
            )
            .map_err(|e| e.to_string())?;
        let mut outbox = tx
            .prepare(
                "insert into outbox (verification_id, customer_id, step, status, attempts,
                                     next_attempt_at, channel, created_at, updated_at)
                 values (?1, ?2, 0, 'delivered', 1, ?3, 'inbox', ?3, ?3)",
            )
            .map_err(|e| e.to_string())?;
        for i in 0..rows {
            // Seeded apart from the cases' own ids and numbers.
            let seed = mix(i ^ 0x5eed_0000_0000_0000);
            let id = (seed >> 11).max(1) as i64;
            let national = format!("98{:08}", mix(seed) % 100_000_000);
            let destination = format!("91{national}");
            let created_at = T0 - 1_000 - (rows - i) as i64;
            verification
                .execute(rusqlite::params![
                    id,
                    CUSTOMER,
                    national,
                    destination,
                    &[7u8; 32][..],
                    created_at,
                    format!("old-{i}"),
                    &destination[..8],
                ])
                .map_err(|e| e.to_string())?;
            outbox
                .execute(rusqlite::params![id, CUSTOMER, created_at])
                .map_err(|e| e.to_string())?;
        }
    }
    tx.commit().map_err(|e| e.to_string())?;
    conn.execute_batch("pragma wal_checkpoint(truncate)")
        .map_err(|e| e.to_string())
}

/// SplitMix64's finaliser: scatters consecutive numbers over 64 bits.
fn mix(n: u64) -> u64 {
    let mut z = n.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

async fn run(case: &Case, file: &PathBuf, length: Duration) -> Result<Outcome, String> {
    let store = SqliteStore::open_path_with_max_batch(file, case.max_batch)
        .await
        .map_err(|e| e.to_string())?;
    let customer = CustomerId::parse(CUSTOMER).map_err(|e| format!("{e:?}"))?;
    let before = store.write_stats();
    let io_before = Io::now();
    let next_id = Arc::new(AtomicU64::new(1));
    let started = Instant::now();
    let deadline = started + length;
    let tasks: Vec<_> = (0..case.senders)
        .map(|_| {
            let (store, customer, next_id) = (store.clone(), customer.clone(), next_id.clone());
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                while Instant::now() < deadline {
                    let req = request(&customer, next_id.fetch_add(1, Ordering::Relaxed))?;
                    let t = Instant::now();
                    match store.verification_create(req).await {
                        Ok(CreateOutcome::Created(_)) => latencies.push(t.elapsed()),
                        other => return Err(format!("send failed: {other:?}")),
                    }
                }
                Ok::<_, String>(latencies)
            })
        })
        .collect();
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await.map_err(|e| e.to_string())??);
    }
    let elapsed = started.elapsed();
    let commits = store.write_stats().commits - before.commits;
    let io = Io::now().since(&io_before);
    store.close().await;
    latencies.sort_unstable();
    let at = |q: f64| {
        let i = ((latencies.len() as f64 * q).ceil() as usize).clamp(1, latencies.len().max(1));
        ms(latencies.get(i - 1).copied().unwrap_or_default())
    };
    Ok(Outcome {
        sends: latencies.len(),
        per_sec: latencies.len() as f64 / elapsed.as_secs_f64(),
        p50_ms: at(0.50),
        p99_ms: at(0.99),
        commits,
        io,
    })
}

/// `rchar` and `wchar` of `/proc/self/io`: every byte read or written by a
/// system call, whether or not it reached the disk (a page SQLite misses in
/// its own cache is a read even when the kernel has it). Zero where the
/// file does not exist.
#[derive(Default)]
struct Io {
    read: u64,
    written: u64,
}

impl Io {
    fn now() -> Io {
        let text = std::fs::read_to_string("/proc/self/io").unwrap_or_default();
        let field = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0)
        };
        Io {
            read: field("rchar:"),
            written: field("wchar:"),
        }
    }

    fn since(&self, before: &Io) -> Io {
        Io {
            read: self.read.saturating_sub(before.read),
            written: self.written.saturating_sub(before.written),
        }
    }
}

/// A send to a destination of its own, so none answers 506: `n` times an
/// odd number not divisible by 5 is a permutation of 0..10^8, which spreads
/// the numbers over the index as real users' are. Its id is scattered the
/// same way, as the server's random ids are.
fn request(customer: &CustomerId, n: u64) -> Result<NewVerification, String> {
    let id = VerificationId::new((mix(n) >> 11).max(1)).map_err(|e| format!("{e:?}"))?;
    let national = format!("98{:08}", n.wrapping_mul(54_435_761) % 100_000_000);
    let prefix = format!("91{}", &national[..6]);
    let to = PhoneNumber::from_trusted_parts(91, national);
    let text = format!("Your code is {:04}", n % 10_000);
    Ok(NewVerification {
        expires_at: T0 + 600_000,
        transaction_id: format!("bench-{n}"),
        prefix,
        ..plain_send(id, customer, &to, &text, T0)
    })
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
