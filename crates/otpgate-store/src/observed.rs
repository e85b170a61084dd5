//! [`Observed`]: a store that reports every operation it runs to an
//! [`Observer`] (the server's metrics), written once for all operations by
//! the `resource_traits!` declaration in the crate root rather than as one
//! hand-written forwarder per operation.

use std::sync::Arc;
use std::time::Duration;

use otpgate_core::DeliveryStatus;

use crate::{Store, StoreResult};

/// What an [`Observed`] store reports.
pub trait Observer: Send + Sync + 'static {
    /// An operation (named as its method) finished after `elapsed`; `ok`
    /// unless it returned an error.
    fn operation(&self, op: &'static str, elapsed: Duration, ok: bool);

    /// A delivery receipt was recorded (`OutboxStore::outbox_receipt`, its
    /// result and arguments): by whichever path receipts come, they pass
    /// here.
    fn receipt(
        &self,
        result: &StoreResult<Option<i64>>,
        channel: &str,
        gateway_id: &str,
        status: DeliveryStatus,
        detail: &str,
        now: i64,
    ) {
        let _ = (result, channel, gateway_id, status, detail, now);
    }
}

/// `inner`, reporting to `observer`; a [`Store`] itself.
pub struct Observed<O> {
    pub(crate) inner: Arc<dyn Store>,
    pub(crate) observer: O,
}

impl<O: Observer> Observed<O> {
    pub fn new(inner: Arc<dyn Store>, observer: O) -> Self {
        Self { inner, observer }
    }
}
