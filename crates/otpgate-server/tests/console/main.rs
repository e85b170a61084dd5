//! Console tests: the real server on an ephemeral port with a fresh SQLite
//! database per test. `http` tests drive the console as a browser would at
//! the HTTP level (cookies kept by hand); `browser` tests drive headless
//! Chromium through chromedriver and save a screenshot when they fail.

mod browser;
#[path = "../common/mod.rs"]
mod common;
mod helpers;

mod accounts;
mod browser_flows;
mod log;
mod retention;
mod screenshots;
mod security;
mod webhooks;
