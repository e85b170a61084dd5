//! Operations tests: `/metrics` and webhook events, on the real server
//! (SQLite, real clock) delivering over SMPP to the SMSC simulator
//! (`tools/smsc-sim`), with a local webhook receiver that checks every
//! signature itself. One binary, one module per area.

#[path = "../common/mod.rs"]
mod common;
mod support;

mod events;
mod metrics;

use otpgate_testkit::sim;
