//! What the delivery worker tells whoever counts its work (the server's
//! metrics), without this crate knowing how it is counted. The server hands
//! its implementation to [`crate::Delivery::observed`]; without one nothing
//! is recorded.

/// Observations of the outbox worker. Every method has an empty default, so
/// an observer implements only what it counts; all are called on the
/// worker's tasks and must not block.
pub trait DeliveryObserver: Send + Sync + 'static {
    /// An attempt ended. `status` is `sent` (a gateway took it), `retry`
    /// (tried again later) or `failed` (given up; refunded); `channel` is the
    /// channel that took it, or the last one tried, or `""` when none was.
    fn attempt(&self, _channel: &str, _status: &'static str) {}

    /// A gateway accepted a message `latency_ms` after its send was accepted
    /// (the verification's creation).
    fn gateway_accepted(&self, _channel: &str, _latency_ms: i64) {}
}

/// Records nothing.
pub struct NoObserver;

impl DeliveryObserver for NoObserver {}
