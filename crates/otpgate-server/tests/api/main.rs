//! API tests: the real server on an ephemeral port with a fresh database per
//! test, driven over HTTP. One binary, one module per area.

#[macro_use]
mod helpers;
#[path = "../common/mod.rs"]
mod common;

mod bad_input;
mod extensions;
mod openapi;
mod receipts;
mod send;
mod token;
mod validate;
