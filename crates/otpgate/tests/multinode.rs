//! Several `otpgate serve` processes on one PostgreSQL database behave as one
//! service (contract §3 "exactly one 200", §4 506/800, §5 "balance never goes
//! negative, even under concurrent sends from several server nodes"):
//! - tokens from any node work on every node, and a password change on one
//!   revokes them on all;
//! - a verification sent through one node validates through another; of 20
//!   concurrent right codes spread over three nodes exactly one wins; sends
//!   from all nodes never overdraw an account; the 506 check and the
//!   per-number limit hold across nodes;
//! - a node killed with SIGKILL while it holds outbox leases loses nothing:
//!   another node delivers its messages once the leases expire;
//! - PostgreSQL going away turns into prompt 503s (and `/readyz` 503), and
//!   the same processes serve again once it is back;
//! - a node refuses a database whose schema is newer than it knows.
//!
//! Each test takes a fresh database on one throwaway server shared by this
//! binary (`otpgate_store::testkit`); the outage test runs its own server,
//! since it stops it. Without PostgreSQL (or Node, for the SMPP test) a test
//! prints `SKIPPED` and passes, unless `OTPGATE_REQUIRE_SERVICES` is set.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{
    BIN, PASSWORD, Server, Simulator, TempDir, code_in, create_account, open_store, readyz, start,
    token,
};
use otpgate_core::{Clock, CustomerId, DeliveryStatus, SystemClock, VerificationId};
use otpgate_store::Store;
use otpgate_testkit::{TempPostgres, TestkitError, require_services};
use serde_json::Value;
use tokio::sync::Barrier;

/// The two load tests (the mixed load of three nodes, the pumping scenario)
/// take turns: together on a small shared machine they starve each other's
/// database connections into 503s, which is not what either measures.
static LOAD: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The shared throwaway server, or `None` after printing why the test is
/// skipped.
fn server(test: &str) -> Option<&'static TempPostgres> {
    match TempPostgres::shared() {
        Ok(pg) => Some(pg),
        Err(e) => skip_or_fail(test, &e),
    }
}

/// For the load tests: their turn (see [`LOAD`]), a fresh database, three
/// nodes started on it at once (racing to migrate it) with log tag `tag`
/// and the settings `extra`, and their addresses; `None` as [`server`] says.
async fn three_nodes(
    test: &str,
    tag: &str,
    extra: &[(&str, &str)],
) -> Option<(
    tokio::sync::MutexGuard<'static, ()>,
    String,
    Vec<Server>,
    Vec<String>,
)> {
    let pg = server(test)?;
    let turn = LOAD.lock().await;
    let db = pg.fresh_database();
    let nodes = start_nodes(&db, 3, tag, extra);
    let bases = nodes.iter().map(|n| n.base.clone()).collect();
    Some((turn, db, nodes, bases))
}

/// How many of `tasks` answered each `status/responseCode`; `what` names a
/// task that panicked.
async fn tally(
    tasks: Vec<tokio::task::JoinHandle<(u16, Value)>>,
    what: &str,
) -> HashMap<String, usize> {
    let mut outcomes = HashMap::new();
    for task in tasks {
        let (status, body) = task.await.expect(what);
        *outcomes
            .entry(format!("{status}/{}", body["responseCode"]))
            .or_default() += 1;
    }
    outcomes
}

fn skip_or_fail<T>(test: &str, e: &TestkitError) -> Option<T> {
    if e.is_missing() && !require_services() {
        println!("SKIPPED {test}: {e}");
        None
    } else {
        panic!("{test}: {e}")
    }
}

/// Every request has a deadline, so a hung node fails the test instead of
/// hanging it.
fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("HTTP client")
}

/// Starts `n` nodes on `db` at once (they race to migrate a fresh database,
/// as a rolling start would), each with its own worker id and `extra` env.
fn start_nodes(db: &str, n: usize, tag: &str, extra: &[(&str, &str)]) -> Vec<Server> {
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..n)
            .map(|i| {
                s.spawn(move || {
                    let worker = format!("{tag}-{i}");
                    let mut envs = vec![("OTPGATE_DELIVERY__WORKER_ID", worker.as_str())];
                    envs.extend_from_slice(extra);
                    start(&["--database", db], &envs)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("start a node"))
            .collect()
    })
}

async fn raw_db(db: &str) -> sqlx::PgConnection {
    use sqlx::Connection;
    tokio::time::timeout(Duration::from_secs(10), sqlx::PgConnection::connect(db))
        .await
        .expect("connect in time")
        .expect("connect to PostgreSQL")
}

/// HTTP status and JSON body of a response.
async fn status_json(r: reqwest::Response) -> (u16, Value) {
    let status = r.status().as_u16();
    let body = r.json().await.unwrap_or(Value::Null);
    (status, body)
}

async fn send(http: &reqwest::Client, base: &str, token: &str, national: &str) -> (u16, Value) {
    let r = common::send_request(http, base, token, "91", national)
        .send()
        .await
        .expect("send request");
    status_json(r).await
}

async fn validate(
    http: &reqwest::Client,
    base: &str,
    token: &str,
    id: &str,
    code: &str,
) -> (u16, Value) {
    let r = http
        .get(format!("{base}/verification/v3/validateOtp"))
        .header("authToken", token)
        .query(&[("verificationId", id), ("code", code)])
        .send()
        .await
        .expect("validate request");
    status_json(r).await
}

/// The verification id of a successful send.
fn vid_of(body: &Value) -> String {
    assert_eq!(body["responseCode"], 200, "send failed: {body}");
    body["data"]["verificationId"]
        .as_str()
        .unwrap_or_else(|| panic!("no verificationId: {body}"))
        .to_owned()
}

/// The code of verification `id`, from the inbox channel (whichever node's
/// worker delivered it).
async fn inbox_code(store: &dyn Store, cid: &str, national: &str, id: &str) -> String {
    let customer = CustomerId::parse(cid).expect("customerId");
    let to = format!("91{national}");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let entries = store
            .inbox_list(Some(&customer), Some(&to), 20)
            .await
            .expect("read the inbox");
        if let Some(e) = entries
            .iter()
            .find(|e| e.verification_id.map(|v| v.get().to_string()).as_deref() == Some(id))
        {
            return code_in(&e.text, 4);
        }
        assert!(
            Instant::now() < deadline,
            "verification {id} never reached the inbox"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// A distinct Indian mobile number per (block, i): every test and phase
/// sends to its own numbers. (The `98765` range is one libphonenumber
/// accepts; not every `9…` is.)
fn number(block: usize, i: usize) -> String {
    format!("98765{block}{i:04}")
}

/// A code that is certainly wrong: the right one with its first digit moved.
fn wrong(code: &str) -> String {
    let first = code.as_bytes()[0] - b'0';
    format!("{}{}", (first + 1) % 10, &code[1..])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_nodes_on_one_database_behave_as_one_service() {
    let test = "three_nodes_on_one_database_behave_as_one_service";
    // The three nodes raced to migrate the empty database; only one may have.
    // The conversion guard off: the mixed load below sends 30 codes to one
    // prefix at once, and how many have been validated when the last ones
    // are sent depends only on how fast the sends are. By the guard's rule
    // (at least 20 recent sends, under 35% converted) that can be pumping;
    // the guard has its own test below.
    let guard_off = [("OTPGATE_FRAUD__GUARD", "false")];
    let Some((_turn, db, _nodes, bases)) = three_nodes(test, "load", &guard_off).await else {
        return;
    };
    let http = http();
    let store = open_store(&db).await;
    let cid = create_account(&db, Some(1000));

    // The token secret lives in the database: a token from any node is
    // accepted by every node. (505 for an unknown id is past the token
    // check; a token another node could not verify would be 401.)
    let mut tokens = Vec::new();
    for from in &bases {
        let t = token(&http, from, &cid).await;
        for on in &bases {
            let (status, body) = validate(&http, on, &t, "4242424242", "1234").await;
            assert_eq!(
                body["responseCode"], 505,
                "token from {from} used on {on}: HTTP {status} {body}"
            );
        }
        tokens.push(t);
    }
    let t = tokens[0].clone();

    // Mixed load: 30 verifications at once, each sent through one node,
    // given a wrong code through the next, the right one through the third,
    // and the right one again through the first. The code key lives in the
    // database too, so any node can check a code another node stored.
    let mut tasks = Vec::new();
    for k in 0..30usize {
        let (http, bases, t, store, cid) = (
            http.clone(),
            bases.clone(),
            t.clone(),
            store.clone(),
            cid.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let national = number(0, k);
            let (a, b, c) = (&bases[k % 3], &bases[(k + 1) % 3], &bases[(k + 2) % 3]);
            let (_, sent) = send(&http, a, &t, &national).await;
            let id = vid_of(&sent);
            let code = inbox_code(store.as_ref(), &cid, &national, &id).await;
            let (_, r) = validate(&http, b, &t, &id, &wrong(&code)).await;
            assert_eq!(r["responseCode"], 702, "wrong code via {b}: {r}");
            let (status, r) = validate(&http, c, &t, &id, &code).await;
            assert_eq!((status, &r["responseCode"]), (200, &200.into()), "{r}");
            assert_eq!(r["data"]["verificationStatus"], "VERIFICATION_COMPLETED");
            let (_, r) = validate(&http, a, &t, &id, &code).await;
            assert_eq!(r["responseCode"], 703, "second right code via {a}: {r}");
        }));
    }
    for task in tasks {
        task.await.expect("mixed-load task");
    }

    // 20 concurrent right codes for one verification, spread over the three
    // nodes and released together: exactly one 200, nineteen 703.
    let national = &number(1, 0);
    let (_, sent) = send(&http, &bases[0], &t, national).await;
    let id = vid_of(&sent);
    let code = inbox_code(store.as_ref(), &cid, national, &id).await;
    let barrier = Arc::new(Barrier::new(20));
    let mut tasks = Vec::new();
    for i in 0..20usize {
        let (http, base, t, id, code, barrier) = (
            http.clone(),
            bases[i % 3].clone(),
            t.clone(),
            id.clone(),
            code.clone(),
            barrier.clone(),
        );
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            validate(&http, &base, &t, &id, &code).await
        }));
    }
    let outcomes = tally(tasks, "validate task").await;
    assert_eq!(outcomes.get("200/200"), Some(&1), "{outcomes:?}");
    assert_eq!(outcomes.get("400/703"), Some(&19), "{outcomes:?}");
    assert_eq!(outcomes.len(), 2, "{outcomes:?}");

    // The 506 check and the per-number limit (default 5 per 10 minutes) see
    // every node's sends: in each round the three nodes send to one number
    // at once; one creates the verification, the others get 506 pointing at
    // it. Validating it ends the round. A sixth round is over the limit on
    // every node.
    let national = &number(2, 0);
    for round in 0..5usize {
        let results = futures::future::join_all(
            bases
                .iter()
                .map(|b| send(&http, b, &t, national))
                .collect::<Vec<_>>(),
        )
        .await;
        let created: Vec<&Value> = results
            .iter()
            .map(|(_, b)| b)
            .filter(|b| b["responseCode"] == 200)
            .collect();
        assert_eq!(created.len(), 1, "round {round}: {results:?}");
        let id = vid_of(created[0]);
        for (status, b) in &results {
            if b["responseCode"] != 200 {
                assert_eq!((*status, &b["responseCode"]), (400, &506.into()), "{b}");
                assert_eq!(b["data"]["verificationId"], id.as_str(), "{b}");
            }
        }
        let code = inbox_code(store.as_ref(), &cid, national, &id).await;
        let (_, r) = validate(&http, &bases[round % 3], &t, &id, &code).await;
        assert_eq!(r["responseCode"], 200, "round {round}: {r}");
    }
    for base in &bases {
        let r = common::send_request(&http, base, &t, "91", national)
            .send()
            .await
            .expect("send request");
        assert!(r.headers().contains_key("retry-after"), "{base}");
        let (status, body) = status_json(r).await;
        assert_eq!(
            (status, &body["responseCode"]),
            (429, &800.into()),
            "sixth send via {base}: {body}"
        );
    }

    // An account with exactly 10 credits and 30 sends racing from all three
    // nodes: exactly 10 succeed, the rest are 402, and it ends at 0.
    let poor = create_account(&db, Some(10));
    let tp = token(&http, &bases[1], &poor).await;
    let barrier = Arc::new(Barrier::new(30));
    let mut tasks = Vec::new();
    for i in 0..30usize {
        let (http, base, tp, barrier) = (
            http.clone(),
            bases[i % 3].clone(),
            tp.clone(),
            barrier.clone(),
        );
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            send(&http, &base, &tp, &number(3, i)).await
        }));
    }
    let outcomes = tally(tasks, "send task").await;
    assert_eq!(outcomes.get("200/200"), Some(&10), "{outcomes:?}");
    assert_eq!(outcomes.get("402/402"), Some(&20), "{outcomes:?}");
    assert_eq!(outcomes.len(), 2, "{outcomes:?}");
    let account = common::account_of(store.as_ref(), &poor).await;
    assert_eq!((account.credits, account.test_credits), (0, 0));
}

/// A token request with an explicit password.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_change_revokes_tokens_on_every_node_as_soon_as_it_hears_of_it() {
    let test = "a_password_change_revokes_tokens_on_every_node_as_soon_as_it_hears_of_it";
    let Some(pg) = server(test) else { return };
    let db = pg.fresh_database();
    let nodes = start_nodes(&db, 3, "revoke", &[]);
    let http = http();
    let cid = create_account(&db, Some(1000));
    let old = token(&http, &nodes[0].base, &cid).await;
    // Each node has checked the old password once, so each has it in its
    // key cache: the change must beat the caches too.
    for n in &nodes {
        let (status, _) = common::token_status(&http, &n.base, &cid, PASSWORD).await;
        assert_eq!(status, 200);
    }
    otpgate_testkit::process::output_ok(
        Command::new(BIN)
            .args(["customer", "set-password", &cid, "--password", "a new one"])
            .args(["--database", &db]),
    );
    // Another node hears of the change by its notification, a round trip
    // after the CLI's commit (`auth.account_cache_ms` says so): the first
    // request can beat it. So each node is asked until it refuses, within
    // the cache's lifetime (1 s), which bounds it even if the news is lost.
    let changed = Instant::now();
    for n in &nodes {
        loop {
            let (status, body) = validate(&http, &n.base, &old, "4242424242", "1234").await;
            if (status, &body["responseCode"]) == (401, &401.into()) {
                break;
            }
            assert!(
                changed.elapsed() < Duration::from_millis(1500),
                "old token still taken on {} after {:?}: {body}",
                n.base,
                changed.elapsed()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let (status, body) = common::token_status(&http, &n.base, &cid, PASSWORD).await;
        assert_eq!(status, 401, "old password on {}: {body}", n.base);
    }
    let (status, body) = common::token_status(&http, &nodes[2].base, &cid, "a new one").await;
    assert_eq!(status, 200, "{body}");
    let fresh = body["token"].as_str().expect("token").to_owned();
    let (_, body) = validate(&http, &nodes[0].base, &fresh, "4242424242", "1234").await;
    assert_eq!(body["responseCode"], 505, "{body}");
}

/// One outbox row as the lease logic sees it.
#[derive(Debug)]
struct OutboxRow {
    lease_owner: Option<String>,
    lease_until: Option<i64>,
    status: String,
    attempts: i32,
}

impl OutboxRow {
    fn held_by(&self, worker: &str) -> bool {
        self.lease_owner.as_deref() == Some(worker) && self.status == "queued"
    }
}

/// Every outbox row, by verification id.
async fn outbox_rows(db: &str) -> HashMap<i64, OutboxRow> {
    let mut conn = raw_db(db).await;
    type Raw = (i64, Option<String>, Option<i64>, String, i32);
    let rows: Vec<Raw> = sqlx::query_as(
        "select verification_id, lease_owner, lease_until, status, attempts from outbox",
    )
    .fetch_all(&mut conn)
    .await
    .expect("read the outbox");
    rows.into_iter()
        .map(
            |(verification_id, lease_owner, lease_until, status, attempts)| {
                let row = OutboxRow {
                    lease_owner,
                    lease_until,
                    status,
                    attempts,
                };
                (verification_id, row)
            },
        )
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_mid_delivery_loses_nothing_another_delivers_after_the_lease() {
    let test = "a_node_killed_mid_delivery_loses_nothing_another_delivers_after_the_lease";
    let Some(pg) = server(test) else { return };
    // The SMSC holds every submit_sm_resp for two minutes: a node that
    // submitted is stuck holding its leases, as one would be mid-delivery.
    let Some(mut sim) = Simulator::start(test, &["--delay-ms", "120000"]) else {
        return;
    };
    let db = pg.fresh_database();
    let dir = TempDir::new("multinode-kill");
    // A window of 8: of 10 claimed messages, 8 are at the SMSC awaiting a
    // response and 2 wait for a window slot when the node dies.
    let config = dir.write(
        "otpgate.toml",
        otpgate_testkit::settings::smpp_channel(
            "smsc",
            sim.port,
            "window = 8\nrequest_timeout_ms = 60000",
        ),
    );
    let cfg = config.to_str().unwrap();
    let lease_ms = 3000i64;
    let lease = lease_ms.to_string();
    let node = |worker: &str, batch: &str, poll_ms: &str| {
        start(
            &["--config", cfg, "--database", &db],
            &[
                ("OTPGATE_DELIVERY__WORKER_ID", worker),
                ("OTPGATE_DELIVERY__LEASE_MS", &lease),
                ("OTPGATE_DELIVERY__BATCH", batch),
                ("OTPGATE_DELIVERY__POLL_MS", poll_ms),
            ],
        )
    };
    // Sends go through an API-only node (batch 0: its worker claims
    // nothing), so they do not wake node A's worker one message at a time.
    // A worker round waits for every message it claimed, so A must take all
    // ten in one claim: it polls every 4 s, and the ten are sent between
    // two of its polls, once its SMPP bind is up.
    let api = node("api-only", "0", "100");
    let http = http();
    let cid = create_account(&db, Some(1000));
    let t = token(&http, &api.base, &cid).await;
    let mut a = node("node-a", "64", "4000");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, ready) = status_json(readyz(&http, &a.base).send().await.expect("readyz")).await;
        if ready["channels"][0]["up"] == true {
            break;
        }
        assert!(Instant::now() < deadline, "node A never bound: {ready}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut sent = Vec::new();
    for i in 0..10usize {
        let national = number(4, i);
        let (_, body) = send(&http, &api.base, &t, &national).await;
        sent.push((vid_of(&body), national));
    }

    // Wait until A holds all ten and eight are at the SMSC.
    let deadline = Instant::now() + Duration::from_secs(30);
    let leases = loop {
        let rows = outbox_rows(&db).await;
        let held = rows
            .values()
            .filter(|r| r.held_by("node-a") && r.attempts == 1)
            .count();
        if held == 10 && sim.accepted_submits().len() >= 8 {
            break rows;
        }
        assert!(
            Instant::now() < deadline,
            "node A never held all ten: {rows:?}, {} submits",
            sim.accepted_submits().len()
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    };
    assert_eq!(
        sim.accepted_submits().len(),
        8,
        "the window caps what A submitted"
    );
    let (_, ready) = status_json(readyz(&http, &a.base).send().await.expect("readyz")).await;
    assert_eq!(ready["outbox"]["inFlight"], 10, "{ready}");

    // SIGKILL: no shutdown hook releases anything.
    a.child.kill().expect("kill -9 node A");
    a.child.wait().expect("reap node A");
    let killed_at = SystemClock.now_ms();
    let rows = outbox_rows(&db).await;
    assert!(
        rows.len() == 10 && rows.values().all(|r| r.held_by("node-a")),
        "A's leases outlive it: {rows:?}"
    );

    // The SMSC answers at once from now on; node B takes over.
    sim.control("delay-ms", "0");
    let b = node("node-b", "64", "100");

    // Every message reaches the SMSC from B, and not before its lease ran
    // out; the code it carries validates.
    let store = open_store(&db).await;
    let mut takeover = Vec::new();
    for (id, national) in &sent {
        let dest = format!("91{national}");
        let vid: i64 = id.parse().unwrap();
        let lease_until = leases[&vid].lease_until.expect("lease_until");
        let deadline = Instant::now() + Duration::from_secs(60);
        let submit = loop {
            let found = sim.accepted_submits().into_iter().find(|s| {
                s["destination_addr"] == dest.as_str()
                    && s["t"].as_i64().is_some_and(|t| t >= killed_at)
            });
            if let Some(s) = found {
                break s;
            }
            assert!(
                Instant::now() < deadline,
                "message {id} to {dest} never reached the SMSC after the kill"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        };
        let t_submit = submit["t"].as_i64().unwrap();
        assert!(
            t_submit >= lease_until,
            "{id} was taken {} ms before A's lease expired",
            lease_until - t_submit
        );
        takeover.push(t_submit - lease_until);
        // B records the message as sent before its code is used: a right
        // code completes the verification and cancels a row still in
        // flight, so validating first would race B's own bookkeeping.
        let v = VerificationId::parse(id).unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let m = store
                .outbox_for_verification(v)
                .await
                .unwrap()
                .expect("outbox row");
            if matches!(m.status, DeliveryStatus::Sent | DeliveryStatus::Delivered) {
                assert_eq!(m.attempts, 2, "one attempt by A, one by B: {m:?}");
                break;
            }
            assert!(Instant::now() < deadline, "{id} never recorded sent: {m:?}");
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        let code = code_in(submit["text"].as_str().unwrap(), 4);
        let (_, r) = validate(&http, &b.base, &t, id, &code).await;
        assert_eq!(r["responseCode"], 200, "{id}: {r}");
    }
    // At least once: the eight A submitted reach the SMSC twice, the two
    // that waited for the window once.
    let submits = sim.accepted_submits();
    for (id, national) in &sent {
        let dest = format!("91{national}");
        let n = submits
            .iter()
            .filter(|s| s["destination_addr"] == dest.as_str())
            .count();
        assert!((1..=2).contains(&n), "{id}: {n} submits");
    }
    assert_eq!(submits.len(), 18, "8 from A and 10 from B");
    eprintln!(
        "node B resubmitted A's messages {}..{} ms after their leases expired",
        takeover.iter().min().unwrap_or(&0),
        takeover.iter().max().unwrap_or(&0)
    );
    drop(b);
    drop(api);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_down_is_a_prompt_503_and_the_same_nodes_recover_when_it_returns() {
    let test = "postgres_down_is_a_prompt_503_and_the_same_nodes_recover_when_it_returns";
    // Its own server: this test stops it.
    let pg = match tokio::task::spawn_blocking(TempPostgres::start_new)
        .await
        .expect("start_new")
    {
        Ok(pg) => Arc::new(pg),
        Err(e) => {
            skip_or_fail::<()>(test, &e);
            return;
        }
    };
    let db = pg.fresh_database();
    let nodes = start_nodes(
        &db,
        2,
        "outage",
        &[
            ("OTPGATE_POSTGRES__STATEMENT_TIMEOUT_MS", "1000"),
            ("OTPGATE_POSTGRES__CONNECT_TIMEOUT_MS", "1000"),
        ],
    );
    let http = http();
    let cid = create_account(&db, Some(1000));
    let t = token(&http, &nodes[0].base, &cid).await;
    let store = open_store(&db).await;
    let (_, body) = send(&http, &nodes[0].base, &t, &number(5, 0)).await;
    let before = vid_of(&body);
    let before_code = inbox_code(store.as_ref(), &cid, &number(5, 0), &before).await;

    let stopper = pg.clone();
    tokio::task::spawn_blocking(move || stopper.stop())
        .await
        .unwrap();

    // Every endpoint on every node answers, and answers 503 in its envelope,
    // well within 10 s — three rounds, so a pool stuck after the first
    // failures would show.
    let bound = Duration::from_secs(10);
    let mut slowest = Duration::ZERO;
    for round in 0..3 {
        for n in &nodes {
            let base = &n.base;
            let started = Instant::now();
            let (status, body) = send(&http, base, &t, &number(5, 1)).await;
            let took = started.elapsed();
            assert!(took < bound, "send on {base} took {took:?}");
            slowest = slowest.max(took);
            assert_eq!(status, 503, "round {round} send on {base}: {body}");
            assert_eq!(body["responseCode"], 503, "{body}");
            assert_eq!(body["message"], "SERVICE_UNAVAILABLE", "{body}");
            assert!(body.get("data").is_none(), "no data on failure: {body}");

            let started = Instant::now();
            let (status, body) = validate(&http, base, &t, &before, &before_code).await;
            let took = started.elapsed();
            assert!(took < bound, "validate on {base} took {took:?}");
            slowest = slowest.max(took);
            assert_eq!(
                (status, &body["responseCode"], &body["message"]),
                (503, &503.into(), &"SERVICE_UNAVAILABLE".into()),
                "round {round} validate on {base}: {body}"
            );

            let started = Instant::now();
            let (status, body) = common::token_status(&http, base, &cid, PASSWORD).await;
            let took = started.elapsed();
            assert!(took < bound, "token on {base} took {took:?}");
            slowest = slowest.max(took);
            assert_eq!((status, &body["status"]), (503, &503.into()), "{body}");

            let started = Instant::now();
            let (status, body) = status_json(readyz(&http, base).send().await.unwrap()).await;
            let took = started.elapsed();
            assert!(took < bound, "readyz on {base} took {took:?}");
            slowest = slowest.max(took);
            assert_eq!(status, 503, "readyz on {base}: {body}");
            assert_eq!(body["store"]["ok"], false, "{body}");
        }
    }

    eprintln!("during the outage the slowest answer took {slowest:?}");

    let starter = pg.clone();
    tokio::task::spawn_blocking(move || starter.start())
        .await
        .unwrap()
        .expect("restart PostgreSQL");

    // The same processes, not restarted: ready again, and serving.
    for n in &nodes {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let r = readyz(&http, &n.base).send().await;
            if r.is_ok_and(|r| r.status() == 200) {
                break;
            }
            assert!(Instant::now() < deadline, "{} never ready again", n.base);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    // What was sent before the outage validates on the other node.
    let (status, body) = validate(&http, &nodes[1].base, &t, &before, &before_code).await;
    assert_eq!(status, 200, "{body}");
    let (status, _) = common::token_status(&http, &nodes[1].base, &cid, PASSWORD).await;
    assert_eq!(status, 200);
    // New sends work, and their messages are delivered (the workers came
    // back too).
    for (i, n) in nodes.iter().enumerate() {
        let national = number(5, 10 + i);
        let (status, body) = send(&http, &n.base, &t, &national).await;
        assert_eq!(status, 200, "{body}");
        let id = vid_of(&body);
        let code = inbox_code(store.as_ref(), &cid, &national, &id).await;
        let other = &nodes[(i + 1) % nodes.len()].base;
        let (status, body) = validate(&http, other, &t, &id, &code).await;
        assert_eq!(status, 200, "{body}");
    }
    // Nodes that outlived the outage are still the processes started above.
    for n in &nodes {
        assert!(
            std::fs::metadata(format!("/proc/{}", n.child.id())).is_ok(),
            "node {} restarted or died",
            n.base
        );
    }
    drop(nodes);
}

/// Runs `otpgate` with `args` until it exits (killed after 60 s); returns
/// whether it succeeded and what it wrote to stderr.
fn run_to_exit(args: &[&str]) -> (Option<i32>, String) {
    let mut child = Command::new(BIN)
        .args(args)
        .env("OTPGATE_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start otpgate");
    let stderr = child.stderr.take().expect("stderr");
    // Read on a thread so a chatty child can never block on a full pipe.
    let reader = std::thread::spawn(move || {
        BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
            .collect::<Vec<_>>()
            .join("\n")
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait for otpgate") {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("otpgate {args:?} did not exit within 60 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    (status.code(), reader.join().unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_refuses_a_database_whose_schema_is_newer_than_it_knows() {
    let test = "a_node_refuses_a_database_whose_schema_is_newer_than_it_knows";
    let Some(pg) = server(test) else { return };
    let db = pg.fresh_database();
    let version = otpgate_store::postgres::migrate(&db)
        .await
        .expect("migrate");
    let newer = version + 1;
    // What a newer build's migration would have left behind.
    let mut conn = raw_db(&db).await;
    sqlx::query("insert into schema_version (version, name, created_at) values ($1, $2, 0)")
        .bind(newer)
        .bind("from a newer build")
        .execute(&mut conn)
        .await
        .expect("bump the schema version");

    let (code, stderr) = run_to_exit(&["serve", "--listen", "127.0.0.1:0", "--database", &db]);
    assert!(
        code.is_some_and(|c| c != 0),
        "serve exited with {code:?}; stderr:\n{stderr}"
    );
    let expected = format!("database schema version {newer} is newer than this build's {version}");
    assert!(
        stderr.contains(&expected),
        "stderr does not say why:\n{stderr}"
    );
    assert!(
        !stderr.contains("otpgate listening"),
        "it must not serve first:\n{stderr}"
    );
    // `otpgate migrate` refuses the same way, and nothing was rolled back.
    let (code, stderr) = run_to_exit(&["migrate", "--database", &db]);
    assert!(code.is_some_and(|c| c != 0), "migrate exited {code:?}");
    assert!(stderr.contains(&expected), "{stderr}");
    let max: i64 = sqlx::query_scalar("select max(version) from schema_version")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(max, newer);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pumping_spread_over_three_nodes_is_blocked_within_the_same_bounds() {
    let test = "pumping_spread_over_three_nodes_is_blocked_within_the_same_bounds";
    let Some((_turn, db, nodes, bases)) = three_nodes(test, "pump", &[]).await else {
        return;
    };
    let http = http();
    let cid = create_account(&db, Some(100_000));
    let t = token(&http, &bases[0], &cid).await;
    let store = open_store(&db).await;
    // The attack's and the legitimate sends go round-robin over the nodes:
    // the counts and the block live in the database, so every node sees
    // every other node's sends.
    let p = common::pumping::run(&bases, &t, store.clone()).await;
    common::pumping::assert_bounds(&p);
    let account = common::account_of(store.as_ref(), &cid).await;
    let accepted = i64::try_from(p.attack_accepted + p.legit_accepted).unwrap();
    assert_eq!(
        account.credits,
        100_000 - accepted,
        "refused sends cost nothing"
    );
    let blocks = store
        .fraud_blocks_active(SystemClock.now_ms(), 10)
        .await
        .expect("blocks");
    assert_eq!(blocks.len(), 1, "{blocks:?}");
    assert_eq!(blocks[0].key, common::pumping::ATTACK_PREFIX);
    drop(nodes);
}
