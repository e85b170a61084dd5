//! Headless Chromium for browser tests: starts chromedriver on a free
//! loopback port and Chromium with a fresh profile, one browser test at a
//! time (two cores). Without Chromium or chromedriver a test prints
//! `SKIPPED <name>: <why>` and returns, unless OTPGATE_REQUIRE_SERVICES is
//! set, when it fails. A failing test leaves a screenshot in
//! `target/console-screenshots/`.

use std::any::Any;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use futures::FutureExt;
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::json;
use tokio::process::{Child, Command};
use tokio::sync::{Mutex, MutexGuard};

use crate::helpers::{ConsoleApp, PASSWORD, TempDir};
use otpgate_testkit::{free_port, require_services};

pub const CHROMIUM: &str = "/usr/bin/chromium";
pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
pub const DESKTOP: (u32, u32) = (1280, 800);
pub const PHONE: (u32, u32) = (390, 844);

/// One browser at a time: each is a few hundred MB and a core's worth of
/// start-up.
static ONE_AT_A_TIME: Mutex<()> = Mutex::const_new(());

pub struct Browser {
    pub client: Client,
    name: String,
    driver: Child,
    _profile: TempDir,
    _turn: MutexGuard<'static, ()>,
}

/// Where screenshots go: `<workspace>/target/console-screenshots/`.
pub fn screenshot_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target"),
        PathBuf::from,
    );
    let dir = target.join("console-screenshots");
    std::fs::create_dir_all(&dir).expect("create screenshot dir");
    dir
}

impl Browser {
    /// A browser for test `name`, or `None` (after printing why) when
    /// Chromium is not installed and services are not required.
    pub async fn start(name: &str) -> Option<Self> {
        for bin in [CHROMIUM, CHROMEDRIVER] {
            if !Path::new(bin).exists() {
                let why =
                    format!("{bin} is not installed (apt-get install chromium chromium-driver)");
                assert!(
                    !require_services(),
                    "{name}: {why}, and OTPGATE_REQUIRE_SERVICES is set"
                );
                println!("SKIPPED {name}: {why}");
                return None;
            }
        }
        let turn = ONE_AT_A_TIME.lock().await;
        let port = free_port();
        let driver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .arg("--allowed-ips=127.0.0.1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("{name}: failed to start chromedriver: {e}"));
        let profile = TempDir::new("chromium");
        let caps = json!({
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": [
                    "--headless",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-quic",
                    "--no-first-run",
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--disable-sync",
                    format!("--user-data-dir={}", profile.0.display()),
                    format!("--window-size={},{}", DESKTOP.0, DESKTOP.1),
                ],
            },
        });
        let caps = caps.as_object().cloned().expect("an object");
        let url = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(30);
        let client = loop {
            let mut builder = ClientBuilder::new(HttpConnector::new());
            builder.capabilities(caps.clone());
            match builder.connect(&url).await {
                Ok(c) => break c,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("{name}: chromedriver did not start a browser: {e}"),
            }
        };
        Some(Self {
            client,
            name: name.to_owned(),
            driver,
            _profile: profile,
            _turn: turn,
        })
    }

    /// Runs test `name`: starts a browser (or skips, as [`Browser::start`]
    /// says), then the server `app` makes, then `flow` on both, and ends
    /// as [`Browser::finish`] does.
    pub async fn run(
        name: &str,
        app: impl Future<Output = ConsoleApp>,
        flow: impl AsyncFnOnce(&Browser, &ConsoleApp),
    ) {
        let Some(b) = Browser::start(name).await else {
            return;
        };
        let app = app.await;
        let outcome = AssertUnwindSafe(flow(&b, &app)).catch_unwind().await;
        b.finish(outcome).await;
    }

    /// Fills the sign-up form on the current page (`email`, [`PASSWORD`]
    /// twice, country IN) and submits it.
    pub async fn fill_sign_up(&self, email: &str) {
        self.fill("email", email).await;
        self.fill("password", PASSWORD).await;
        self.fill("confirm", PASSWORD).await;
        self.fill("country", "IN").await;
        self.click("form[action=\"/console/signup\"] button[type=submit]")
            .await;
    }

    /// Ends the test: on a panic, saves a screenshot first; then closes the
    /// browser and chromedriver, and re-raises the panic.
    pub async fn finish(mut self, outcome: Result<(), Box<dyn Any + Send>>) {
        if outcome.is_err() {
            let path = screenshot_dir().join(format!("FAILED-{}.png", self.name));
            match self.client.screenshot().await {
                Ok(png) => {
                    let _ = std::fs::write(&path, png);
                    eprintln!("{}: screenshot saved to {}", self.name, path.display());
                }
                Err(e) => eprintln!("{}: no screenshot: {e}", self.name),
            }
        }
        let _ = self.client.clone().close().await;
        let _ = self.driver.kill().await;
        if let Err(panic) = outcome {
            std::panic::resume_unwind(panic);
        }
    }

    /// Saves a screenshot of the viewport as `<dir>/<file>.png`.
    pub async fn screenshot(&self, file: &str) -> PathBuf {
        let path = screenshot_dir().join(format!("{file}.png"));
        let png = self.client.screenshot().await.expect("screenshot");
        std::fs::write(&path, png).expect("write screenshot");
        path
    }

    pub async fn goto(&self, url: &str) {
        self.client.goto(url).await.expect("goto");
    }

    /// Waits (up to 10 s) for an element.
    pub async fn find(&self, css: &str) -> fantoccini::elements::Element {
        self.client
            .wait()
            .at_most(Duration::from_secs(10))
            .for_element(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("no element {css}: {e}"))
    }

    pub async fn text(&self, css: &str) -> String {
        self.find(css).await.text().await.expect("text")
    }

    /// Types into the field named `name` (clearing it first).
    pub async fn fill(&self, name: &str, value: &str) {
        let el = self.find(&format!("[name=\"{name}\"]")).await;
        el.clear().await.expect("clear");
        el.send_keys(value).await.expect("type");
    }

    pub async fn click(&self, css: &str) {
        self.find(css).await.click().await.expect("click");
    }

    pub async fn source(&self) -> String {
        self.client.source().await.expect("source")
    }

    /// `window.__pwned`, which an injected script would set.
    pub async fn pwned(&self) -> serde_json::Value {
        self.client
            .execute(
                "return window.__pwned === undefined ? null : window.__pwned;",
                vec![],
            )
            .await
            .expect("execute")
    }

    pub async fn resize(&self, (w, h): (u32, u32)) {
        self.client.set_window_size(w, h).await.expect("resize");
    }
}
