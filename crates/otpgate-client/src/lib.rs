//! A Rust SDK for Verify Now OTP APIs: otpgate (self-hosted) and Message
//! Central's hosted service alike, following the wire contract in
//! `docs/api.md`.
//!
//! The client fetches, caches and refreshes its auth token by itself, turns
//! every response shape the hosted service is known to send into a typed
//! outcome, and never repeats a send on its own.
//!
//! ```no_run
//! use otpgate_client::{Client, SendOtp, SendOutcome, Validation};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), otpgate_client::Error> {
//! let client = Client::builder()
//!     .base_url("https://otp.example.com") // or otpgate_client::PRODUCTION_URL
//!     .customer_id("C-6D16D900FA3044F")
//!     .password("s3cret")
//!     .build()?;
//!
//! let outcome = client.send(SendOtp::sms("91", "9876543210")).await?;
//! // A 506 (a code to this number is still pending) is an outcome, not an
//! // error: its id is as good as a new one.
//! if let SendOutcome::AlreadyPending { seconds_left, .. } = &outcome {
//!     println!("reusing the pending code, {seconds_left:?} s left");
//! }
//! let id = outcome.verification_id();
//!
//! match client.validate(id, "4711").await? {
//!     Validation::Verified => println!("verified"),
//!     Validation::WrongCode { attempts_left } => println!("wrong code, {attempts_left:?} left"),
//!     other => println!("not verified: {other:?}"),
//! }
//! # Ok(())
//! # }
//! ```
#![forbid(unsafe_code)]

mod client;
mod decode;
mod error;
mod model;
mod token;

pub use client::{Client, ClientBuilder};
pub use error::{Error, Result};
pub use model::{ApiVersion, Flow, Reply, SendOtp, SendOutcome, Sent, Validation};
pub use otpgate_api::ResponseCode;
pub use token::AuthToken;

/// The hosted service's production base URL (contract, top).
pub const PRODUCTION_URL: &str = "https://cpaas.messagecentral.com";

/// The hosted service's staging base URL (contract, top).
pub const STAGING_URL: &str = "https://cpaas-staging.messagecentral.com";

const USER_AGENT: &str = concat!("otpgate-client/", env!("CARGO_PKG_VERSION"));
