//! The OpenAPI description against the live binary: schemathesis (PyPI,
//! pinned in `tools/python/requirements.txt`, found through
//! `OTPGATE_PYTHON`) generates requests from `/openapi.json` — valid ones
//! and deliberately broken ones, in the query, form and multipart bodies —
//! and checks every answer: no 5xx, every status, content type, header and
//! body as the document says. Bounded: a few dozen examples per operation
//! and 30 s of fuzzing; loopback only.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{TempDir, create_account, require_services, start, token};

/// Test cases per operation and phase (coverage, fuzzing).
const MAX_EXAMPLES: &str = "25";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_no_server_error_and_no_schema_violation() {
    let python = std::env::var("OTPGATE_PYTHON").unwrap_or_default();
    let runs = !python.is_empty()
        && Command::new(&python)
            .args(["-c", "import schemathesis"])
            .output()
            .is_ok_and(|o| o.status.success());
    if !runs {
        let why = "schemathesis is not installed (set OTPGATE_PYTHON to target/python/bin/python after \
             `pip install -r tools/python/requirements.txt`)";
        assert!(!require_services(), "{why}");
        println!("SKIPPED schemathesis_finds_no_server_error_and_no_schema_violation: {why}");
        return;
    }

    let dir = TempDir::new("schemathesis");
    let db = dir.sqlite_url();
    // Enough credits that sends fail for what they are, not for money.
    let cid = create_account(&db, Some(1_000_000));
    let server = start(&["--database", &db], &[]);
    let http = reqwest::Client::new();
    let t = token(&http, &server.base, &cid).await;
    let schema = dir.0.join("openapi.json");
    let doc = http
        .get(format!("{}/openapi.json", server.base))
        .send()
        .await
        .expect("openapi.json")
        .bytes()
        .await
        .expect("openapi body");
    std::fs::write(&schema, &doc).expect("write the schema");

    let started = Instant::now();
    let out = tokio::task::spawn_blocking({
        let (python, base, schema, dir) = (
            python.clone(),
            server.base.clone(),
            schema.clone(),
            dir.0.clone(),
        );
        move || {
            Command::new(python)
                .current_dir(&dir)
                .args(["-m", "schemathesis.cli", "run"])
                .arg(&schema)
                .args(["--url", &base])
                .args(["--header", &format!("authToken: {t}")])
                .args([
                    "--checks",
                    "not_a_server_error,status_code_conformance,content_type_conformance,\
                     response_headers_conformance,response_schema_conformance",
                ])
                .args(["--max-examples", MAX_EXAMPLES])
                .args(["--phases", "coverage,fuzzing"])
                .args(["--max-time", "30", "--request-timeout", "10"])
                .args(["--workers", "2", "--seed", "13", "--no-color"])
                .args(["--generation-database", "none"])
                .env("SCHEMATHESIS_TELEMETRY", "false")
                .env("NO_COLOR", "1")
                .output()
                .expect("run schemathesis")
        }
    })
    .await
    .expect("schemathesis task");
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // The summary's line: "622 generated, 622 passed" (", N failed" and
    // ", N errored" follow when there are any).
    let summary = text
        .lines()
        .map(str::trim)
        .find(|l| l.contains(" generated, "))
        .unwrap_or("")
        .to_owned();
    let count = |word: &str| {
        summary
            .split(", ")
            .find_map(|part| part.strip_suffix(word)?.trim().parse::<u64>().ok())
            .unwrap_or(0)
    };
    let (generated, passed) = (count(" generated"), count(" passed"));
    println!(
        "schemathesis: {generated} generated requests, {passed} passed, in {:.1?} ({})",
        started.elapsed(),
        out.status
    );
    assert!(
        out.status.success() && generated > 0 && passed == generated,
        "schemathesis found server errors or schema violations ({summary}):\n{text}\n--- server log ---\n{}",
        server.log_text()
    );
    assert!(
        generated >= 200,
        "only {generated} requests generated:\n{text}"
    );
    assert!(started.elapsed() < Duration::from_secs(120));
}
