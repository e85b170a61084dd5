//! otpgate's delivery: the [`Channel`] trait every SMS route implements, the
//! outbox worker that feeds channels from the store, and the channels
//! themselves (`inbox` for development; SMPP and HTTP gateways).
//!
//! The request path never talks to a gateway: a send commits its message to
//! the outbox, and the worker delivers it from there (at-least-once).
#![forbid(unsafe_code)]

pub mod channel;
pub mod inbox;
pub mod worker;

pub use channel::{Accepted, Channel, ChannelError, ChannelHealth, Outgoing};
pub use inbox::InboxChannel;
pub use worker::{Delivery, DeliveryConfig};
