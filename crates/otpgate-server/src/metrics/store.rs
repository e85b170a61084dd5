//! The store as the server uses it: every operation timed
//! (`otpgate_store_operation_duration_seconds{op}`, failures in
//! `otpgate_store_errors{op}`) and delivery receipts counted,
//! which reach the store by whichever path they came (an SMPP session, an
//! HTTP callback). The forwarding is the store crate's
//! ([`otpgate_store::Observed`], written once for every operation); this
//! only says what an operation's end records.

use std::sync::Arc;
use std::time::Duration;

use otpgate_core::DeliveryStatus;
use otpgate_store::{Observed, Observer, Store, StoreResult};

use super::Metrics;

/// A [`otpgate_store::Store`] recording into [`Metrics`].
pub type MeteredStore = Observed<StoreMetrics>;

/// Wraps `store` so that it records into `metrics`.
pub fn metered(store: Arc<dyn Store>, metrics: Arc<Metrics>) -> MeteredStore {
    Observed::new(store, StoreMetrics(metrics))
}

/// The [`Observer`] the server's store reports to.
pub struct StoreMetrics(Arc<Metrics>);

impl Observer for StoreMetrics {
    fn operation(&self, op: &'static str, elapsed: Duration, ok: bool) {
        self.0.store_op(op, elapsed, ok);
    }

    fn receipt(
        &self,
        result: &StoreResult<Option<i64>>,
        channel: &str,
        _gateway_id: &str,
        status: DeliveryStatus,
        _detail: &str,
        now: i64,
    ) {
        if let Ok(Some(accepted_at)) = result {
            self.0
                .receipt(channel, status, now.saturating_sub(*accepted_at));
        }
    }
}
