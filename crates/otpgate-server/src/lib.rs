//! otpgate's HTTP server: the Verify Now API (token, send, validate), health
//! endpoints, metrics, and the delivery and webhook workers beside them.
#![forbid(unsafe_code)]

pub mod account_cache;
pub mod accounts;
pub mod auth;
pub mod client;
pub mod config;
pub mod conn;
pub mod console;
pub mod cors;
pub mod error;
pub mod events;
pub mod limits;
pub mod metrics;
pub mod multipart;
pub mod params;
pub mod password;
pub mod retention;
pub mod routes;
pub mod service;
pub mod startup;
pub mod state;
pub mod store;
pub mod time;

pub use config::Settings;
pub use startup::Application;
