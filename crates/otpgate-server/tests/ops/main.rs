//! Operations tests: `/metrics` and webhook events, on the real server
//! (SQLite, real clock) delivering over SMPP to the SMSC simulator
//! (`tools/smsc-sim`), with a local webhook receiver that checks every
//! signature itself. One binary, one module per area.

mod support;

mod events;
mod metrics;

/// What the shared simulator wrapper asks of its test crate.
mod common {
    pub fn require_services() -> bool {
        std::env::var("OTPGATE_REQUIRE_SERVICES").is_ok_and(|v| !v.is_empty() && v != "0")
    }
}

#[path = "../../../otpgate/tests/sim/mod.rs"]
mod sim;
