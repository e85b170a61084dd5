//! Webhook events: the worker that delivers the store's event queue to
//! each account's endpoint, signed by the Standard Webhooks convention.
//!
//! The queue is the `events` table: a row is written in the same
//! transaction as the change it tells of, so a crash loses neither. Any
//! node's worker leases due rows (like the outbox), POSTs each, and records
//! the answer: a 2xx delivers it; 410 Gone gives it up; anything else (or no
//! answer) retries with exponential backoff and jitter, honouring
//! `Retry-After`, capped at `events.retry_max_ms`, until the event is
//! `events.max_age_secs` old. Delivery is at least once: a node that dies
//! after the receiver answered but before recording it leaves the lease to
//! run out, and the event is sent again, with the same `webhook-id`.
//!
//! `verification.expired` has no transaction of its own to ride in: a
//! verification expires by time passing. A sweep (every
//! `events.sweep_interval_ms`, on every node, safe to run concurrently)
//! writes it for each verification that expired since the last sweep while
//! still pending, with attempts left, and that had a `created` event.

pub mod sign;
pub mod target;

use std::sync::Arc;
use std::time::Duration;

use otpgate_core::Clock;
use otpgate_sms::leased::{Slots, backoff_ms};
use otpgate_store::{EventAttempt, EventOutcome, PendingEvent, Store};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::config::EventSettings;
use crate::metrics::Metrics;

/// The most of a receiver's answer kept for the console.
const MAX_RESPONSE_BYTES: usize = 400;
/// The least time between a claim that found no event and the next claim.
/// Each claim is a write job of its own, and every send and validation
/// wakes the worker: with a claim per wake, flows for an account without a
/// webhook made 670 empty claims a second on SQLite at 1,600 flows a second
/// (measured). This pause caps them at 40 a second, and delays an event
/// committed during it by at most this much.
const EMPTY_CLAIM_PAUSE: Duration = Duration::from_millis(25);

/// The webhook worker of one node.
pub struct Events {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    settings: EventSettings,
    worker_id: String,
    client: reqwest::Client,
    metrics: Arc<Metrics>,
    slots: Slots,
}

impl Events {
    /// # Errors
    /// When the HTTP client cannot be built.
    pub fn new(
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        settings: EventSettings,
        worker_id: String,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Arc<Self>> {
        let mut client = reqwest::Client::builder()
            .timeout(Duration::from_millis(settings.timeout_ms))
            .connect_timeout(Duration::from_millis(settings.timeout_ms.min(5_000)))
            // A redirect would take the request somewhere the URL check
            // never saw; the convention counts a 3xx as a failure anyway.
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .user_agent(concat!("otpgate/", env!("CARGO_PKG_VERSION")));
        if !settings.allow_private_addresses {
            client = client.dns_resolver(Arc::new(target::PublicOnly));
        }
        Ok(Arc::new(Self {
            client: client.build()?,
            store,
            clock,
            worker_id,
            slots: Slots::new(settings.concurrency),
            settings,
            metrics,
        }))
    }

    /// Wakes the worker: an event was just committed on this node.
    pub fn notify(&self) {
        self.slots.wake();
    }

    /// Runs until `shutdown`, then lets deliveries in hand record their
    /// results (bounded).
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        info!(worker = %self.worker_id, "webhook worker started");
        let sweep_every = i64::try_from(self.settings.sweep_interval_ms).unwrap_or(i64::MAX);
        let mut next_sweep = 0i64;
        loop {
            if shutdown.is_cancelled() {
                break;
            }
            let now = self.clock.now_ms();
            if now >= next_sweep {
                next_sweep = now.saturating_add(sweep_every);
                match self.store.events_sweep_expired(now).await {
                    Ok(0) => {}
                    Ok(n) => debug!(events = n, "queued verification.expired events"),
                    Err(e) => warn!(error = %e, "the expiry sweep failed"),
                }
            }
            let free = self.slots.free();
            if free > 0 {
                let found = match self
                    .store
                    .events_claim(&self.worker_id, free, self.settings.lease_ms, now)
                    .await
                {
                    Ok(batch) => {
                        let found = !batch.is_empty();
                        self.slots.spawn_each(batch, |ev| {
                            let me = self.clone();
                            async move { me.deliver(ev).await }
                        });
                        found
                    }
                    Err(e) => {
                        warn!(error = %e, "claiming webhook events failed");
                        false
                    }
                };
                // A wake that comes during the pause is kept for the wait
                // below.
                if !found {
                    tokio::select! {
                        () = shutdown.cancelled() => break,
                        () = tokio::time::sleep(EMPTY_CLAIM_PAUSE) => {}
                    }
                }
            }
            let poll = Duration::from_millis(self.settings.poll_ms);
            if !self.slots.idle(poll, &shutdown).await {
                break;
            }
        }
        let grace = Duration::from_millis(self.settings.timeout_ms.saturating_add(1000));
        if !self.slots.drain(grace).await {
            warn!("webhook deliveries still in flight at shutdown; their leases will run out");
        }
        info!("webhook worker stopped");
    }

    async fn deliver(&self, ev: PendingEvent) {
        let attempt = match &ev.endpoint {
            None => EventAttempt {
                outcome: EventOutcome::Dropped,
                response_status: None,
                response: "the account has no webhook".into(),
            },
            Some((url, secret)) => match sign::key_of(secret.expose()) {
                None => EventAttempt {
                    outcome: EventOutcome::Failed,
                    response_status: None,
                    response: "the webhook secret is not a whsec_ secret".into(),
                },
                Some(key) => self.post(&ev, url, &key).await,
            },
        };
        self.metrics.webhook(match attempt.outcome {
            EventOutcome::Delivered => "delivered",
            EventOutcome::Retry { .. } => "retry",
            EventOutcome::Failed => "failed",
            EventOutcome::Dropped => "dropped",
        });
        let now = self.clock.now_ms();
        match self
            .store
            .event_record(ev.id, &self.worker_id, &attempt, now)
            .await
        {
            Ok(true) => {}
            Ok(false) => debug!(event = %ev.event_id, "lease lost before the result was recorded"),
            Err(e) => warn!(error = %e, "could not record a webhook result"),
        }
    }

    async fn post(&self, ev: &PendingEvent, url: &str, key: &[u8]) -> EventAttempt {
        if let Err(why) = target::check_url(url, self.settings.allow_private_addresses) {
            return EventAttempt {
                outcome: EventOutcome::Failed,
                response_status: None,
                response: why,
            };
        }
        let body = body(ev);
        let timestamp = self.clock.now_ms().div_euclid(1000);
        let signature = sign::signature(key, &ev.event_id, timestamp, body.as_bytes());
        let sent = self
            .client
            .post(url)
            .header("content-type", "application/json")
            .header("webhook-id", &ev.event_id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .body(body)
            .send()
            .await;
        let resp = match sent {
            Ok(r) => r,
            Err(e) => {
                // Without the URL: it may carry a token in its query.
                let why = if e.is_timeout() {
                    "no answer within the timeout".to_owned()
                } else if e.is_connect() {
                    "could not connect".to_owned()
                } else {
                    "the request failed".to_owned()
                };
                return self.retry_or_give_up(ev, None, why, None);
            }
        };
        let status = resp.status();
        let retry_after = resp
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<i64>().ok())
            .map(|s| s.saturating_mul(1000));
        let text = read_some(resp).await;
        let code = Some(status.as_u16());
        if status.is_success() {
            EventAttempt {
                outcome: EventOutcome::Delivered,
                response_status: code,
                response: text,
            }
        } else if status == reqwest::StatusCode::GONE {
            EventAttempt {
                outcome: EventOutcome::Failed,
                response_status: code,
                response: text,
            }
        } else {
            self.retry_or_give_up(ev, code, text, retry_after)
        }
    }

    fn retry_or_give_up(
        &self,
        ev: &PendingEvent,
        response_status: Option<u16>,
        response: String,
        retry_after_ms: Option<i64>,
    ) -> EventAttempt {
        let now = self.clock.now_ms();
        let delay = retry_after_ms
            .filter(|d| *d > 0)
            .unwrap_or_else(|| self.backoff(ev.attempts))
            .min(self.settings.retry_max_ms);
        let max_age =
            i64::try_from(self.settings.max_age_secs.saturating_mul(1000)).unwrap_or(i64::MAX);
        let outcome = if now.saturating_add(delay).saturating_sub(ev.created_at) > max_age {
            EventOutcome::Failed
        } else {
            EventOutcome::Retry {
                next_attempt_at: now.saturating_add(delay),
            }
        };
        EventAttempt {
            outcome,
            response_status,
            response,
        }
    }

    /// Exponential backoff, jittered in its upper half, capped.
    fn backoff(&self, attempts: u32) -> i64 {
        let s = &self.settings;
        backoff_ms(s.retry_base_ms, s.retry_max_ms, attempts, 30)
    }
}

/// The start of a receiver's answer, bounded however much it sends.
async fn read_some(mut resp: reqwest::Response) -> String {
    let mut buf = Vec::new();
    while buf.len() < MAX_RESPONSE_BYTES {
        match resp.chunk().await {
            Ok(Some(chunk)) => buf.extend_from_slice(&chunk),
            _ => break,
        }
    }
    buf.truncate(MAX_RESPONSE_BYTES);
    String::from_utf8_lossy(&buf).into_owned()
}

/// The body of an event: the same bytes on every attempt (it depends only
/// on the stored row). `{"type", "timestamp", "data"}` as the convention
/// suggests; `data` carries the ids and the facts captured when it happened.
pub fn body(ev: &PendingEvent) -> String {
    let mut data = serde_json::Map::new();
    data.insert(
        "verificationId".into(),
        ev.verification_id.get().to_string().into(),
    );
    data.insert("customerId".into(), ev.customer_id.as_str().into());
    if let Ok(serde_json::Value::Object(detail)) = serde_json::from_str(&ev.detail) {
        data.extend(detail);
    }
    serde_json::json!({
        "type": ev.kind.as_str(),
        "timestamp": crate::time::rfc3339(ev.created_at),
        "data": data,
    })
    .to_string()
}
