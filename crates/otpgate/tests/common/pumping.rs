//! The SMS-pumping scenario of the fraud defence, run against real
//! servers (one SQLite node, or three nodes on one PostgreSQL): 1,000 sends
//! at 20 per second to distinct numbers that share all but their last four
//! digits, none validated, interleaved with 500 legitimate sends (10 per
//! second, to 100 prefixes) of which 85% are validated 1–9 s after their
//! send. Sends go round-robin over the nodes given.

use std::sync::Arc;
use std::time::{Duration, Instant};

use otpgate_store::Store;
use serde_json::Value;

/// What the scenario measured.
#[derive(Debug)]
pub struct Pumped {
    /// Attack sends answered 200 (each queued a message).
    pub attack_accepted: usize,
    /// Attack messages that reached the channel (the inbox).
    pub attack_delivered: usize,
    /// Attack sends answered 800.
    pub attack_refused: usize,
    /// From the first attack send to the first 800 answer it got.
    pub block_after: Option<Duration>,
    /// No attack send made after that answer got 200.
    pub block_held: bool,
    pub legit_sent: usize,
    pub legit_accepted: usize,
    pub legit_validated: usize,
    /// Answers to legitimate sends other than 200, by code.
    pub legit_refusals: Vec<String>,
    pub elapsed: Duration,
}

/// The prefix every attack number shares (E.164 digits): `+91 987650 ····`.
pub const ATTACK_PREFIX: &str = "91987650";

async fn send(http: &reqwest::Client, base: &str, token: &str, national: &str) -> (u16, Value) {
    match super::send_request(http, base, token, "91", national)
        .send()
        .await
    {
        Ok(r) => {
            let status = r.status().as_u16();
            (status, r.json().await.unwrap_or(Value::Null))
        }
        Err(e) => (0, Value::String(e.to_string())),
    }
}

/// Spawns `task(i)` for each `i` in `0..n`, one every `every` (a late tick
/// is caught up at once, so the rate holds on average); the spawned tasks,
/// in order.
async fn paced<Fut>(
    every: Duration,
    n: usize,
    mut task: impl FnMut(usize) -> Fut,
) -> Vec<tokio::task::JoinHandle<Fut::Output>>
where
    Fut: Future + Send + 'static,
    Fut::Output: Send + 'static,
{
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        tick.tick().await;
        tasks.push(tokio::spawn(task(i)));
    }
    tasks
}

/// Runs the scenario; `bases` are the nodes, `token` an account's token.
pub async fn run(bases: &[String], token: &str, store: Arc<dyn Store>) -> Pumped {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("HTTP client");
    let started = Instant::now();

    // The attack: 1,000 sends, one every 50 ms, never validated.
    let attack = {
        let (http, bases, token) = (http.clone(), bases.to_vec(), token.to_owned());
        tokio::spawn(async move {
            let tasks = paced(Duration::from_millis(50), 1000, |i| {
                let (http, base, token) =
                    (http.clone(), bases[i % bases.len()].clone(), token.clone());
                let sent_at = started.elapsed();
                async move {
                    let (status, body) = send(&http, &base, &token, &format!("987650{i:04}")).await;
                    (sent_at, started.elapsed(), status, body)
                }
            })
            .await;
            let mut out = Vec::new();
            for t in tasks {
                out.push(t.await.expect("attack send"));
            }
            out
        })
    };

    // The legitimate traffic: 500 sends, one every 100 ms, to 100 prefixes
    // (5 numbers each); 17 of every 20 are validated 1–9 s later.
    let legit = {
        let (http, bases, token, store) = (
            http.clone(),
            bases.to_vec(),
            token.to_owned(),
            store.clone(),
        );
        tokio::spawn(async move {
            let tasks = paced(Duration::from_millis(100), 500, |i| {
                let (http, base, token, store) = (
                    http.clone(),
                    bases[(i + 1) % bases.len()].clone(),
                    token.clone(),
                    store.clone(),
                );
                async move {
                    let national = format!("98{:04}{:04}", 1000 + i % 100, 1000 + i);
                    let (status, body) = send(&http, &base, &token, &national).await;
                    if status != 200 {
                        return (false, false, format!("{status}/{}", body["responseCode"]));
                    }
                    if i % 20 >= 17 {
                        return (true, false, String::new());
                    }
                    let id = body["data"]["verificationId"]
                        .as_str()
                        .expect("verificationId")
                        .to_owned();
                    let delay = Duration::from_millis(1000 + (i as u64 * 7919) % 8000);
                    tokio::time::sleep(delay).await;
                    let code = super::inbox_code(
                        store.as_ref(),
                        &format!("91{national}"),
                        &id,
                        4,
                        // Generous: on a loaded machine the message may be
                        // late; the validation still counts.
                        Duration::from_secs(60),
                    )
                    .await;
                    let r = super::validate(&http, &base, &token, &id, &code).await;
                    (true, r["responseCode"] == 200, String::new())
                }
            })
            .await;
            let mut out = Vec::new();
            for t in tasks {
                out.push(t.await.expect("legitimate send"));
            }
            out
        })
    };

    let attack = attack.await.expect("attack");
    let legit = legit.await.expect("legitimate traffic");
    let elapsed = started.elapsed();
    // Let the delivery workers take whatever was queued.
    tokio::time::sleep(Duration::from_secs(2)).await;

    // Requests overlap: the block holds from its first 800 answer on, for
    // every send made after it.
    let first_refusal = attack
        .iter()
        .filter(|(_, _, s, _)| *s == 429)
        .map(|(_, answered, _, _)| *answered)
        .min();
    let block_held = first_refusal.is_some_and(|first| {
        attack
            .iter()
            .filter(|(sent, _, _, _)| *sent > first)
            .all(|(_, _, s, _)| *s != 200)
    });
    for (_, _, status, body) in &attack {
        assert!(
            *status == 200 || (*status == 429 && body["responseCode"] == 800),
            "an attack send got neither 200 nor 800: {status} {body}"
        );
    }
    let delivered = store
        .inbox_list(None, None, 5000)
        .await
        .expect("read the inbox")
        .into_iter()
        .filter(|e| e.destination.starts_with(ATTACK_PREFIX))
        .count();
    Pumped {
        attack_accepted: attack.iter().filter(|(_, _, s, _)| *s == 200).count(),
        attack_delivered: delivered,
        attack_refused: attack.iter().filter(|(_, _, s, _)| *s == 429).count(),
        block_after: first_refusal,
        block_held,
        legit_sent: legit.len(),
        legit_accepted: legit.iter().filter(|(ok, _, _)| *ok).count(),
        legit_validated: legit.iter().filter(|(_, v, _)| *v).count(),
        legit_refusals: legit
            .iter()
            .filter(|(ok, _, _)| !ok)
            .map(|(_, _, why)| why.clone())
            .collect(),
        elapsed,
    }
}

/// The bounds: at most 50 attack messages reach a channel, at
/// least 99% of the legitimate sends are accepted, and the block holds.
pub fn assert_bounds(p: &Pumped) {
    eprintln!(
        "pumping: {} attack messages delivered ({} accepted, {} refused), block after {:?} \
         (held: {}); legitimate sends accepted {}/{} ({} refused: {:?}), {} validated; {:?} in all",
        p.attack_delivered,
        p.attack_accepted,
        p.attack_refused,
        p.block_after,
        p.block_held,
        p.legit_accepted,
        p.legit_sent,
        p.legit_sent - p.legit_accepted,
        p.legit_refusals,
        p.legit_validated,
        p.elapsed
    );
    assert!(p.attack_delivered <= 50, "{p:?}");
    assert!(p.attack_accepted <= 50, "{p:?}");
    assert!(p.block_held, "{p:?}");
    assert!(p.legit_accepted * 100 >= p.legit_sent * 99, "{p:?}");
    assert!(p.legit_validated * 100 >= p.legit_sent * 80, "{p:?}");
}
