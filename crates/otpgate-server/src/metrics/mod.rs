//! The server's metrics, in one home: every series otpgate exports, the
//! functions that move them, and the `/metrics` endpoint that renders them
//! in the Prometheus/OpenMetrics text format (through `prometheus-client`,
//! the Prometheus project's own Rust client).
//!
//! Counters are per process: Prometheus sums them over nodes. The gauges of
//! shared state (outbox depth, oldest message, pending events) come from the
//! store, so every node reports the same value (aggregate them with `max`);
//! a scrape reads them at most once a second, however often it is scraped,
//! so `/metrics` cannot be used to load the database.
//!
//! Where they are moved: sends and validations in `service`, token failures
//! in `service` and `auth`, delivery attempts by the SMS worker through
//! [`otpgate_sms::DeliveryObserver`], receipts and store latency by
//! [`store::MeteredStore`] (every receipt, SMPP or HTTP, passes through the
//! store), webhook deliveries in `events`, and the fraud defence's counters
//! by the send path through [`fraud_refused`], [`fraud_block`] and
//! [`number_type_refused`] (process-wide, so it needs no handle).

pub mod store;

use std::sync::LazyLock;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use otpgate_core::DeliveryStatus;
use otpgate_core::fraud::{BlockScope, RefusalKind};
use otpgate_store::Store;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// The exposition's content type (the encoder writes OpenMetrics text).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// How long store-derived gauges are reused between scrapes.
const GAUGE_TTL: Duration = Duration::from_secs(1);

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SendLabels {
    outcome: &'static str,
    country: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CountryLabel {
    country: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DeliveryLabels {
    channel: String,
    status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ChannelLabel {
    channel: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OpLabel {
    op: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;
type FloatGauge = Gauge<f64, AtomicU64>;

/// Delivery latencies: 50 ms to about 14 minutes.
fn delivery_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.05, 2.0, 15))
}

/// Store operations: 0.5 ms to about 8 s.
fn store_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 15))
}

/// Registers each series in `$r` under its name and help, in the order
/// given (the exposition's), binding the handle the struct keeps to its
/// name (`_` for a process-wide series only registered here).
macro_rules! register {
    ($r:ident; $($var:tt = $make:expr => $name:literal, $help:literal;)*) => {
        $(let $var = {
            let metric = $make;
            $r.register($name, $help, metric.clone());
            metric
        };)*
    };
}

/// Every series, registered once.
pub struct Metrics {
    registry: Registry,
    sends: Family<SendLabels, Counter>,
    validations: Family<OutcomeLabel, Counter>,
    completed: Family<CountryLabel, Counter>,
    deliveries: Family<DeliveryLabels, Counter>,
    gateway_latency: Histograms<ChannelLabel>,
    receipt_latency: Histograms<ChannelLabel>,
    outbox: Family<StateLabel, Gauge>,
    outbox_oldest: FloatGauge,
    store_latency: Histograms<OpLabel>,
    store_errors: Family<OpLabel, Counter>,
    token_failures: Family<ReasonLabel, Counter>,
    webhooks: Family<ResultLabel, Counter>,
    events_pending: Gauge,
    events_oldest: FloatGauge,
    /// When the store-derived gauges were last read.
    refreshed: tokio::sync::Mutex<Option<Instant>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut r = Registry::default();
        register! { r;
            sends = Family::default()
                => "otpgate_sends", "Send requests by outcome (created, pending, rate_limited, insufficient_balance, refused, error) and destination dialing code";
            validations = Family::default()
                => "otpgate_validations", "Validations by outcome (completed, wrong_code, already_verified, too_many_attempts, expired, failed, not_found, invalid, error)";
            completed = Family::default()
                => "otpgate_verifications_completed", "Verifications completed, by destination dialing code; conversion = this / otpgate_sends_total{outcome=\"created\"}";
            deliveries = Family::default()
                => "otpgate_deliveries", "Message outcomes by channel and status: sent, retry, failed (worker attempts) and delivered, undeliverable, expired, rejected (receipts)";
            gateway_latency = Histograms::<ChannelLabel>::new_with_constructor(delivery_buckets)
                => "otpgate_delivery_gateway_latency_seconds", "From a send being accepted to a gateway accepting its message";
            receipt_latency = Histograms::<ChannelLabel>::new_with_constructor(delivery_buckets)
                => "otpgate_delivery_receipt_latency_seconds", "From a send being accepted to its final delivery receipt";
            outbox = Family::default()
                => "otpgate_outbox_messages", "Outbox messages by state (queued, in_flight, failed); shared by all nodes";
            outbox_oldest = FloatGauge::default()
                => "otpgate_outbox_oldest_message_age_seconds", "Age of the oldest queued outbox message (0 when none)";
            store_latency = Histograms::<OpLabel>::new_with_constructor(store_buckets)
                => "otpgate_store_operation_duration_seconds", "Store operations by name";
            store_errors = Family::default()
                => "otpgate_store_errors", "Store operations that failed, by name";
            token_failures = Family::default()
                => "otpgate_token_failures", "Rejected credentials: token requests (bad_credentials, throttled) and authToken checks (invalid_token)";
            _ = FRAUD.refused.clone()
                => "otpgate_fraud_refused", "Sends refused by a fraud defence, by kind (account_hourly_cap, account_daily_cap, destination_cap, prefix, country)";
            _ = FRAUD.blocks.clone()
                => "otpgate_fraud_blocks", "Blocks the fraud defence triggered, by kind (prefix, country)";
            _ = FRAUD.number_type.clone()
                => "otpgate_number_type_refused", "Sends refused for their number type (premium-rate, fixed-line, …)";
            webhooks = Family::default()
                => "otpgate_webhook_deliveries", "Webhook delivery attempts by result (delivered, retry, failed, dropped)";
            events_pending = Gauge::default()
                => "otpgate_events_pending", "Webhook events waiting for delivery; shared by all nodes";
            events_oldest = FloatGauge::default()
                => "otpgate_events_oldest_pending_age_seconds", "Age of the oldest webhook event waiting for delivery (0 when none)";
        }
        Self {
            registry: r,
            sends,
            validations,
            completed,
            deliveries,
            gateway_latency,
            receipt_latency,
            outbox,
            outbox_oldest,
            store_latency,
            store_errors,
            token_failures,
            webhooks,
            events_pending,
            events_oldest,
            refreshed: tokio::sync::Mutex::new(None),
        }
    }

    /// A send's outcome; `country` is the destination's dialing code.
    pub fn send(&self, outcome: &'static str, country: u16) {
        self.sends
            .get_or_create(&SendLabels {
                outcome,
                country: country.to_string(),
            })
            .inc();
    }

    pub fn validation(&self, outcome: &'static str) {
        self.validations
            .get_or_create(&OutcomeLabel { outcome })
            .inc();
    }

    pub fn completed(&self, country: u16) {
        self.completed
            .get_or_create(&CountryLabel {
                country: country.to_string(),
            })
            .inc();
    }

    /// A token request or an `authToken` check was refused.
    pub fn token_failure(&self, reason: &'static str) {
        self.token_failures
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }

    /// A webhook delivery attempt's result.
    pub fn webhook(&self, result: &'static str) {
        self.webhooks.get_or_create(&ResultLabel { result }).inc();
    }

    /// A receipt matched a message accepted at `accepted_at`.
    pub fn receipt(&self, channel: &str, status: DeliveryStatus, latency_ms: i64) {
        self.deliveries
            .get_or_create(&DeliveryLabels {
                channel: channel.to_owned(),
                status: status.as_str(),
            })
            .inc();
        self.receipt_latency
            .get_or_create(&ChannelLabel {
                channel: channel.to_owned(),
            })
            .observe(seconds(latency_ms));
    }

    pub fn store_op(&self, op: &'static str, elapsed: Duration, ok: bool) {
        self.store_latency
            .get_or_create(&OpLabel { op })
            .observe(elapsed.as_secs_f64());
        if !ok {
            self.store_errors.get_or_create(&OpLabel { op }).inc();
        }
    }

    /// Reads the store-derived gauges, unless they were read within the
    /// last second. A failure leaves the previous values.
    async fn refresh(&self, store: &dyn Store, now_ms: i64) {
        let mut last = self.refreshed.lock().await;
        if last.is_some_and(|t| t.elapsed() < GAUGE_TTL) {
            return;
        }
        *last = Some(Instant::now());
        let age = |oldest: Option<i64>| oldest.map_or(0.0, |t| seconds(now_ms - t).max(0.0));
        if let Ok(d) = store.outbox_depth().await {
            for (state, n) in [
                ("queued", d.queued),
                ("in_flight", d.in_flight),
                ("failed", d.failed),
            ] {
                self.outbox
                    .get_or_create(&StateLabel { state })
                    .set(i64::try_from(n).unwrap_or(i64::MAX));
            }
            self.outbox_oldest.set(age(d.oldest_queued_at));
        }
        if let Ok(b) = store.event_backlog().await {
            self.events_pending
                .set(i64::try_from(b.pending).unwrap_or(i64::MAX));
            self.events_oldest.set(age(b.oldest_at));
        }
    }

    /// The exposition text, gauges refreshed.
    pub async fn render(&self, store: &dyn Store, now_ms: i64) -> String {
        self.refresh(store, now_ms).await;
        self.encode()
    }

    /// The exposition text as the series stand.
    fn encode(&self) -> String {
        let mut out = String::with_capacity(16 * 1024);
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

impl otpgate_sms::DeliveryObserver for Metrics {
    fn attempt(&self, channel: &str, status: &'static str) {
        self.deliveries
            .get_or_create(&DeliveryLabels {
                channel: channel.to_owned(),
                status,
            })
            .inc();
    }

    fn gateway_accepted(&self, channel: &str, latency_ms: i64) {
        self.gateway_latency
            .get_or_create(&ChannelLabel {
                channel: channel.to_owned(),
            })
            .observe(seconds(latency_ms));
    }
}

fn seconds(ms: i64) -> f64 {
    // Millisecond counts of any real latency fit f64 exactly.
    #[allow(clippy::cast_precision_loss)]
    let s = ms.max(0) as f64 / 1000.0;
    s
}

/// The fraud defence's counters. Process-wide, so the send path counts
/// without a handle; every [`Metrics`] registry exports the same series.
struct Fraud {
    refused: Family<KindLabel, Counter>,
    blocks: Family<KindLabel, Counter>,
    number_type: Counter,
}

static FRAUD: LazyLock<Fraud> = LazyLock::new(|| Fraud {
    refused: Family::default(),
    blocks: Family::default(),
    number_type: Counter::default(),
});

/// A send was refused by a cap or an active block.
pub fn fraud_refused(kind: RefusalKind) {
    FRAUD
        .refused
        .get_or_create(&KindLabel {
            kind: kind.as_str().to_owned(),
        })
        .inc();
}

/// A send triggered a new block of `scope`.
pub fn fraud_block(scope: BlockScope) {
    FRAUD
        .blocks
        .get_or_create(&KindLabel {
            kind: scope.as_str().to_owned(),
        })
        .inc();
}

/// A send was refused for its number type.
pub fn number_type_refused() {
    FRAUD.number_type.inc();
}

#[cfg(test)]
mod tests {
    use super::*;
    use otpgate_sms::DeliveryObserver;

    #[test]
    fn series_are_named_and_labelled_as_documented() {
        let m = Metrics::new();
        m.send("created", 91);
        m.attempt("smsc-a", "sent");
        m.receipt("smsc-a", DeliveryStatus::Delivered, 1500);
        fraud_block(BlockScope::Prefix);
        fraud_refused(RefusalKind::PrefixBlocked);
        let text = m.encode();
        for line in [
            r#"otpgate_sends_total{outcome="created",country="91"} 1"#,
            r#"otpgate_deliveries_total{channel="smsc-a",status="sent"} 1"#,
            r#"otpgate_deliveries_total{channel="smsc-a",status="delivered"} 1"#,
            r#"otpgate_delivery_receipt_latency_seconds_bucket{le="1.6",channel="smsc-a"} 1"#,
            r#"otpgate_delivery_receipt_latency_seconds_bucket{le="0.8",channel="smsc-a"} 0"#,
            r#"otpgate_fraud_blocks_total{kind="prefix"}"#,
            r#"otpgate_fraud_refused_total{kind="prefix"}"#,
        ] {
            assert!(text.contains(line), "{line} not in\n{text}");
        }
        assert!(text.ends_with("# EOF\n"));
    }
}
