//! otpgate's delivery: the [`Channel`] trait every route's channels
//! implement, the outbox worker that feeds channels from the store, and the
//! channels themselves (`inbox` for development; SMPP 3.4 and HTTP SMS
//! gateways; WhatsApp, voice and e-mail), with routing, failover, fallback
//! workflows and delivery receipts.
//!
//! The request path never talks to a gateway: a send commits its message to
//! the outbox, and the worker delivers it from there (at-least-once).
//!
//! Configuration ([`config::SmsConfig`], built by [`config::build`]) names
//! channels and routes; see `examples/smpp.toml`, `examples/http.toml`,
//! `examples/channels.toml` (WhatsApp, voice, e-mail) and
//! `examples/fallback.toml`.
#![forbid(unsafe_code)]

pub mod channel;
pub mod config;
pub mod email;
pub mod gateway;
pub mod http;
pub mod inbox;
pub mod leased;
pub mod observe;
pub mod receipt;
pub mod router;
pub mod setup;
pub mod smpp;
pub mod voice;
pub mod whatsapp;
pub mod worker;

pub use channel::{Accepted, Channel, ChannelError, ChannelHealth, Outgoing};
pub use config::{ConfigError, SmsConfig, build};
pub use http::HttpChannel;
pub use inbox::InboxChannel;
pub use observe::{DeliveryObserver, NoObserver};
pub use receipt::{ReceiptError, ReceiptOutcome, handle_http_receipt};
pub use router::RouteTable;
pub use smpp::SmppChannel;
pub use worker::{Delivery, DeliveryConfig, Router, SingleRoute};
