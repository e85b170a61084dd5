//! otpgate-sms against real peers: the SMSC simulator (tools/smsc-sim, on
//! the independent npm `smpp` implementation), local HTTP gateways, and a
//! real SQLite store. One test binary, modules per subject.

mod common;
mod config;
mod handoff;
mod http;
mod smpp;
mod worker;
