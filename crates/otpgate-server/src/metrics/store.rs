//! [`MeteredStore`]: the store as the server uses it, timing every
//! operation (`otpgate_store_operation_duration_seconds{op}`) and counting
//! delivery receipts, which reach the store by whichever path they came
//! (an SMPP session, an HTTP callback).

use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use otpgate_core::{CustomerId, DeliveryStatus, VerificationId};
use otpgate_store::*;

use super::Metrics;

/// Wraps a [`Store`], recording into [`Metrics`].
pub struct MeteredStore {
    inner: Arc<dyn Store>,
    metrics: Arc<Metrics>,
}

impl MeteredStore {
    pub fn new(inner: Arc<dyn Store>, metrics: Arc<Metrics>) -> Self {
        Self { inner, metrics }
    }

    async fn timed<T>(
        &self,
        op: &'static str,
        fut: impl Future<Output = StoreResult<T>>,
    ) -> StoreResult<T> {
        let start = Instant::now();
        let r = fut.await;
        self.metrics.store_op(op, start.elapsed(), r.is_ok());
        r
    }
}

#[async_trait]
impl Store for MeteredStore {
    fn backend(&self) -> &'static str {
        self.inner.backend()
    }

    async fn outbox_receipt(
        &self,
        channel: &str,
        gateway_id: &str,
        status: DeliveryStatus,
        detail: &str,
        now: i64,
    ) -> StoreResult<Option<i64>> {
        let r = self
            .timed(
                "outbox_receipt",
                self.inner
                    .outbox_receipt(channel, gateway_id, status, detail, now),
            )
            .await;
        if let Ok(Some(accepted_at)) = &r {
            self.metrics
                .receipt(channel, status, now.saturating_sub(*accepted_at));
        }
        r
    }

    async fn ping(&self) -> StoreResult<()> {
        self.timed("ping", self.inner.ping()).await
    }

    async fn secret_get_or_init(&self, name: &str, candidate: &[u8]) -> StoreResult<Vec<u8>> {
        self.timed(
            "secret_get_or_init",
            self.inner.secret_get_or_init(name, candidate),
        )
        .await
    }

    async fn account_create(&self, new: NewAccount) -> StoreResult<Account> {
        self.timed("account_create", self.inner.account_create(new))
            .await
    }

    async fn account_get(&self, id: &CustomerId) -> StoreResult<Option<Account>> {
        self.timed("account_get", self.inner.account_get(id)).await
    }

    async fn account_by_email(&self, email: &str) -> StoreResult<Option<Account>> {
        self.timed("account_by_email", self.inner.account_by_email(email))
            .await
    }

    async fn account_list(&self, limit: u32, offset: u32) -> StoreResult<Vec<Account>> {
        self.timed("account_list", self.inner.account_list(limit, offset))
            .await
    }

    async fn account_add_credits(&self, id: &CustomerId, credits: i64) -> StoreResult<Account> {
        self.timed(
            "account_add_credits",
            self.inner.account_add_credits(id, credits),
        )
        .await
    }

    async fn account_set_password(
        &self,
        id: &CustomerId,
        password_hash: &str,
    ) -> StoreResult<Account> {
        self.timed(
            "account_set_password",
            self.inner.account_set_password(id, password_hash),
        )
        .await
    }

    async fn account_revoke_tokens(&self, id: &CustomerId) -> StoreResult<Account> {
        self.timed(
            "account_revoke_tokens",
            self.inner.account_revoke_tokens(id),
        )
        .await
    }

    async fn account_set_disabled(&self, id: &CustomerId, disabled: bool) -> StoreResult<Account> {
        self.timed(
            "account_set_disabled",
            self.inner.account_set_disabled(id, disabled),
        )
        .await
    }

    async fn account_set_settings(
        &self,
        id: &CustomerId,
        settings: &AccountSettings,
    ) -> StoreResult<Account> {
        self.timed(
            "account_set_settings",
            self.inner.account_set_settings(id, settings),
        )
        .await
    }

    async fn verification_create(&self, req: NewVerification) -> StoreResult<CreateOutcome> {
        self.timed("verification_create", self.inner.verification_create(req))
            .await
    }

    async fn verification_get(
        &self,
        customer: &CustomerId,
        id: VerificationId,
    ) -> StoreResult<Option<Verification>> {
        self.timed(
            "verification_get",
            self.inner.verification_get(customer, id),
        )
        .await
    }

    async fn verification_apply(
        &self,
        customer: &CustomerId,
        id: VerificationId,
        expected_wrong_attempts: u32,
        action: ValidationAction,
        now: i64,
    ) -> StoreResult<bool> {
        self.timed(
            "verification_apply",
            self.inner
                .verification_apply(customer, id, expected_wrong_attempts, action, now),
        )
        .await
    }

    async fn wrong_codes_since(
        &self,
        customer: &CustomerId,
        destination_e164: &str,
        since: i64,
    ) -> StoreResult<u32> {
        self.timed(
            "wrong_codes_since",
            self.inner
                .wrong_codes_since(customer, destination_e164, since),
        )
        .await
    }

    async fn verification_list(
        &self,
        customer: &CustomerId,
        filter: &VerificationFilter,
        limit: u32,
        offset: u32,
    ) -> StoreResult<Vec<Verification>> {
        self.timed(
            "verification_list",
            self.inner
                .verification_list(customer, filter, limit, offset),
        )
        .await
    }

    async fn daily_stats(
        &self,
        customer: &CustomerId,
        since: i64,
        until: i64,
    ) -> StoreResult<Vec<DailyStats>> {
        self.timed(
            "daily_stats",
            self.inner.daily_stats(customer, since, until),
        )
        .await
    }

    async fn channel_stats(
        &self,
        customer: &CustomerId,
        since: i64,
        until: i64,
    ) -> StoreResult<Vec<ChannelStats>> {
        self.timed(
            "channel_stats",
            self.inner.channel_stats(customer, since, until),
        )
        .await
    }

    async fn purge_before(&self, cutoff: i64, max: u32) -> StoreResult<Purged> {
        self.timed("purge_before", self.inner.purge_before(cutoff, max))
            .await
    }

    // Forwarded, not left to the trait's no-op default: SQLite's scrub
    // empties the WAL.
    async fn scrub(&self) -> StoreResult<()> {
        self.timed("scrub", self.inner.scrub()).await
    }

    async fn outbox_claim(
        &self,
        worker: &str,
        max: u32,
        lease_ms: i64,
        now: i64,
    ) -> StoreResult<Vec<OutboxMessage>> {
        self.timed(
            "outbox_claim",
            self.inner.outbox_claim(worker, max, lease_ms, now),
        )
        .await
    }

    async fn outbox_sent(
        &self,
        message_id: i64,
        worker: &str,
        sent: &SentInfo,
        now: i64,
    ) -> StoreResult<bool> {
        self.timed(
            "outbox_sent",
            self.inner.outbox_sent(message_id, worker, sent, now),
        )
        .await
    }

    async fn outbox_retry(
        &self,
        message_id: i64,
        worker: &str,
        next_attempt_at: i64,
        error: &str,
        now: i64,
    ) -> StoreResult<bool> {
        self.timed(
            "outbox_retry",
            self.inner
                .outbox_retry(message_id, worker, next_attempt_at, error, now),
        )
        .await
    }

    async fn outbox_failed(
        &self,
        message_id: i64,
        worker: &str,
        error: &str,
        now: i64,
    ) -> StoreResult<bool> {
        self.timed(
            "outbox_failed",
            self.inner.outbox_failed(message_id, worker, error, now),
        )
        .await
    }

    async fn outbox_depth(&self) -> StoreResult<OutboxDepth> {
        self.timed("outbox_depth", self.inner.outbox_depth()).await
    }

    async fn outbox_for_verification(
        &self,
        id: VerificationId,
    ) -> StoreResult<Option<OutboxMessage>> {
        self.timed(
            "outbox_for_verification",
            self.inner.outbox_for_verification(id),
        )
        .await
    }

    async fn webhook_get(&self, customer: &CustomerId) -> StoreResult<Option<Webhook>> {
        self.timed("webhook_get", self.inner.webhook_get(customer))
            .await
    }

    async fn webhook_set(
        &self,
        customer: &CustomerId,
        url: &str,
        secret: &str,
        now: i64,
    ) -> StoreResult<Webhook> {
        self.timed(
            "webhook_set",
            self.inner.webhook_set(customer, url, secret, now),
        )
        .await
    }

    async fn webhook_delete(&self, customer: &CustomerId) -> StoreResult<()> {
        self.timed("webhook_delete", self.inner.webhook_delete(customer))
            .await
    }

    async fn events_claim(
        &self,
        worker: &str,
        max: u32,
        lease_ms: i64,
        now: i64,
    ) -> StoreResult<Vec<PendingEvent>> {
        self.timed(
            "events_claim",
            self.inner.events_claim(worker, max, lease_ms, now),
        )
        .await
    }

    async fn event_record(
        &self,
        id: i64,
        worker: &str,
        attempt: &EventAttempt,
        now: i64,
    ) -> StoreResult<bool> {
        self.timed(
            "event_record",
            self.inner.event_record(id, worker, attempt, now),
        )
        .await
    }

    async fn events_sweep_expired(&self, now: i64) -> StoreResult<u64> {
        self.timed("events_sweep_expired", self.inner.events_sweep_expired(now))
            .await
    }

    async fn event_list(&self, customer: &CustomerId, limit: u32) -> StoreResult<Vec<EventRecord>> {
        self.timed("event_list", self.inner.event_list(customer, limit))
            .await
    }

    async fn event_backlog(&self) -> StoreResult<EventBacklog> {
        self.timed("event_backlog", self.inner.event_backlog())
            .await
    }

    async fn outbox_attempts(&self, id: VerificationId) -> StoreResult<Vec<OutboxMessage>> {
        self.timed("outbox_attempts", self.inner.outbox_attempts(id))
            .await
    }

    async fn inbox_put(&self, msg: &InboxEntry) -> StoreResult<()> {
        self.timed("inbox_put", self.inner.inbox_put(msg)).await
    }

    async fn inbox_list(
        &self,
        customer: Option<&CustomerId>,
        to: Option<&str>,
        limit: u32,
    ) -> StoreResult<Vec<InboxEntry>> {
        self.timed("inbox_list", self.inner.inbox_list(customer, to, limit))
            .await
    }
    async fn fraud_blocks_active(&self, now: i64, limit: u32) -> StoreResult<Vec<FraudBlock>> {
        self.timed(
            "fraud_blocks_active",
            self.inner.fraud_blocks_active(now, limit),
        )
        .await
    }

    async fn fraud_block_lift(
        &self,
        scope: otpgate_core::fraud::BlockScope,
        key: &str,
        now: i64,
    ) -> StoreResult<bool> {
        self.timed(
            "fraud_block_lift",
            self.inner.fraud_block_lift(scope, key, now),
        )
        .await
    }

    async fn safe_list(&self) -> StoreResult<Vec<SafeEntry>> {
        self.timed("safe_list", self.inner.safe_list()).await
    }

    async fn safe_list_add(&self, entry: &str, note: &str, now: i64) -> StoreResult<()> {
        self.timed("safe_list_add", self.inner.safe_list_add(entry, note, now))
            .await
    }

    async fn safe_list_remove(&self, entry: &str) -> StoreResult<bool> {
        self.timed("safe_list_remove", self.inner.safe_list_remove(entry))
            .await
    }

    async fn own_numbers(&self, customer: &CustomerId) -> StoreResult<Vec<OwnNumber>> {
        self.timed("own_numbers", self.inner.own_numbers(customer))
            .await
    }

    async fn own_number_confirm(
        &self,
        customer: &CustomerId,
        id: VerificationId,
        now: i64,
    ) -> StoreResult<bool> {
        self.timed(
            "own_number_confirm",
            self.inner.own_number_confirm(customer, id, now),
        )
        .await
    }

    async fn own_number_remove(
        &self,
        customer: &CustomerId,
        destination: &str,
    ) -> StoreResult<bool> {
        self.timed(
            "own_number_remove",
            self.inner.own_number_remove(customer, destination),
        )
        .await
    }

    async fn conversion_report(
        &self,
        since: i64,
        limit: u32,
    ) -> StoreResult<(Vec<ConversionRow>, Vec<ConversionRow>)> {
        self.timed(
            "conversion_report",
            self.inner.conversion_report(since, limit),
        )
        .await
    }

    async fn inbox_purge(&self, before_ms: i64) -> StoreResult<u64> {
        self.timed("inbox_purge", self.inner.inbox_purge(before_ms))
            .await
    }
}
