//! What the SQLite and PostgreSQL backends do alike outside SQL: a shared
//! transaction's error for each of its callers, bounding
//! stored error text, folding e-mail keys, Retry-After arithmetic, the day
//! grid of `daily_stats`, and reading stored values back into domain types
//! (a value that no longer parses is corruption: `Internal`, never a panic).

use otpgate_core::{
    CustomerId, DeliveryStatus, PhoneNumber, SecretString, VerificationId, VerificationState,
};

use otpgate_core::fraud::{self, BlockScope};
use otpgate_core::send;

use crate::{
    AccountSettings, ChannelStats, ConversionRow, CreateOutcome, DailyStats, EventAttempt,
    EventBacklog, EventKind, EventOutcome, EventRecord, FraudBlock, NewVerification, OutboxDepth,
    OutboxMessage, OwnNumber, PendingEvent, SafeEntry, StoreError, StoreResult, Verification,
    Webhook,
};

/// The first step's message of a send stored leased (outbox row `id`), as
/// the worker's claim would have read it back: attempt 1, nothing sent yet.
pub(crate) fn leased_message(req: &NewVerification, v: &Verification, id: i64) -> OutboxMessage {
    OutboxMessage {
        id,
        verification_id: v.id,
        customer_id: v.customer_id.clone(),
        destination: v.destination.clone(),
        flow_type: v.flow_type.clone(),
        step: 0,
        address: req.address.clone(),
        lang: req.lang.clone(),
        text: Some(req.message_text.clone()),
        status: DeliveryStatus::Queued,
        attempts: 1,
        next_attempt_at: v.created_at,
        expires_at: v.expires_at,
        channel: None,
        gateway_id: None,
        last_error: None,
        created_at: v.created_at,
    }
}

/// The key a block of `scope` has for this send.
pub(crate) fn block_key(req: &NewVerification, scope: BlockScope) -> String {
    match scope {
        BlockScope::Prefix => req.prefix.clone(),
        BlockScope::Country => {
            fraud::country_key(req.customer_id.as_str(), req.destination.country_code())
        }
    }
}

/// The terms [`send::decide`] weighs for this request.
pub(crate) fn terms(req: &NewVerification) -> send::SendTerms {
    send::SendTerms {
        price: req.price,
        kind: req.kind,
        limits: req.limits,
        fraud: req.fraud,
    }
}

/// The outcome of a refused send. `pending` is the verification the backend
/// read for 506; a block (`Refused::Block`) must have been recorded first.
pub(crate) fn refusal(
    refused: send::Refused,
    pending: Option<Verification>,
    now: i64,
) -> StoreResult<CreateOutcome> {
    use send::Refused as R;
    Ok(match refused {
        R::AccountUnavailable => CreateOutcome::AccountUnavailable,
        R::AlreadyPending => CreateOutcome::AlreadyPending(
            pending.ok_or_else(|| StoreError::Internal("506 without its verification".into()))?,
        ),
        R::RateLimited { wait_ms } => CreateOutcome::RateLimited {
            retry_after_secs: retry_after_secs(wait_ms),
        },
        R::Fraud(r) => CreateOutcome::Blocked {
            kind: r.kind,
            retry_after_secs: retry_after_secs(r.until_ms.saturating_sub(now)),
            reason: r.reason,
            new_block: None,
        },
        R::Block(b) => CreateOutcome::Blocked {
            kind: match b.scope {
                BlockScope::Prefix => fraud::RefusalKind::PrefixBlocked,
                BlockScope::Country => fraud::RefusalKind::CountryBlocked,
            },
            retry_after_secs: retry_after_secs(b.until_ms.saturating_sub(now)),
            reason: fraud::blocked_text(b.scope, &b.reason),
            new_block: Some(b.scope),
        },
        R::InsufficientBalance => CreateOutcome::InsufficientBalance,
        R::TestCreditsRestricted => CreateOutcome::TestCreditsRestricted,
    })
}

/// A unique violation creating an account, as its caller is told it: the
/// e-mail (its key's index) or else the customer id is taken.
pub(crate) fn account_conflict(e: StoreError) -> StoreError {
    match e {
        StoreError::Conflict(msg) if msg.contains("email_key") => {
            StoreError::Conflict("e-mail already in use".into())
        }
        StoreError::Conflict(_) => StoreError::Conflict("customerId already exists".into()),
        other => other,
    }
}

// ---- rows both backends read alike ------------------------------------------

/// `scope, key, reason, strikes, blocked_until, lifted_at, created_at` of
/// `fraud_blocks`.
pub(crate) type FraudBlockRow = (String, String, String, i64, i64, Option<i64>, i64);

pub(crate) fn fraud_block(row: FraudBlockRow) -> StoreResult<FraudBlock> {
    let (scope_text, key, reason, strikes, until, lifted_at, created_at) = row;
    Ok(FraudBlock {
        scope: scope(&scope_text)?,
        key,
        reason,
        strikes: count(strikes, "strikes")?,
        until,
        lifted_at,
        created_at,
    })
}

/// `entry, note, created_at` of `safe_list`.
pub(crate) fn safe_entry((entry, note, created_at): (String, String, i64)) -> SafeEntry {
    SafeEntry {
        entry,
        note,
        created_at,
    }
}

/// `destination, min(verified_at)` of `own_numbers`.
pub(crate) fn own_number((destination, verified_at): (String, i64)) -> OwnNumber {
    OwnNumber {
        destination,
        verified_at,
    }
}

/// `channel, attempted, succeeded, failed` of an account's outbox.
pub(crate) fn channel_stats(row: (String, i64, i64, i64)) -> ChannelStats {
    let (channel, attempted, succeeded, failed) = row;
    ChannelStats {
        channel,
        attempted: to_u64(attempted),
        succeeded: to_u64(succeeded),
        failed: to_u64(failed),
    }
}

/// The conversion report from its (key, sent, completed) rows: by dialing
/// code, and by prefix.
pub(crate) fn conversion_rows(
    by_country: Vec<(i64, i64, i64)>,
    by_prefix: Vec<(String, i64, i64)>,
) -> (Vec<ConversionRow>, Vec<ConversionRow>) {
    let row = |(key, sent, completed): (String, i64, i64)| ConversionRow {
        key,
        sent: to_u64(sent),
        completed: to_u64(completed),
    };
    (
        by_country
            .into_iter()
            .map(|(cc, sent, done)| row((cc.to_string(), sent, done)))
            .collect(),
        by_prefix.into_iter().map(row).collect(),
    )
}

/// `customer_id, url, secret, created_at, updated_at` of `webhooks`.
pub(crate) type WebhookRow = (String, String, String, i64, i64);

pub(crate) fn webhook(row: WebhookRow) -> StoreResult<Webhook> {
    let (customer, url, secret, created_at, updated_at) = row;
    Ok(Webhook {
        customer_id: customer_id(&customer)?,
        url,
        secret: SecretString::new(secret),
        created_at,
        updated_at,
    })
}

/// The outbox's queued, leased and oldest queued message, and its failed
/// count.
pub(crate) fn outbox_depth(
    (queued, in_flight, oldest, failed): (i64, i64, Option<i64>, i64),
) -> OutboxDepth {
    OutboxDepth {
        queued: to_u64(queued),
        in_flight: to_u64(in_flight),
        failed: to_u64(failed),
        oldest_queued_at: oldest,
    }
}

/// `count(*), min(created_at)` of the pending events.
pub(crate) fn event_backlog((pending, oldest): (i64, Option<i64>)) -> EventBacklog {
    EventBacklog {
        pending: to_u64(pending),
        oldest_at: oldest,
    }
}

/// Decodes a stored block scope.
pub(crate) fn scope(s: &str) -> StoreResult<BlockScope> {
    BlockScope::parse(s).ok_or_else(|| corrupt("block scope"))
}

/// Longest error text kept per message: enough to diagnose, bounded so a
/// chatty gateway cannot grow rows without limit.
pub(crate) const MAX_ERROR_LEN: usize = 500;

/// Keeps at most [`MAX_ERROR_LEN`] bytes, cut on a character boundary.
pub(crate) fn clip(s: &str) -> &str {
    if s.len() <= MAX_ERROR_LEN {
        return s;
    }
    let mut end = MAX_ERROR_LEN;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// The key `account_by_email` looks up: Unicode lower case, folded here
/// rather than by the database, whose folding depends on its locale, so
/// both backends fold alike.
pub(crate) fn email_key(email: &str) -> String {
    email.to_lowercase()
}

pub(crate) fn settings_json(s: &AccountSettings) -> StoreResult<String> {
    serde_json::to_string(s).map_err(|e| StoreError::Internal(format!("settings: {e}")))
}

/// A verification id as stored; below 2^53 by construction, so in range.
pub(crate) fn id_i64(id: VerificationId) -> i64 {
    i64::try_from(id.get()).unwrap_or(i64::MAX)
}

pub(crate) fn to_u64(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

/// `ms` as the contract's `Retry-After`: whole seconds, rounded up, at
/// least 1.
pub(crate) fn retry_after_secs(ms: i64) -> u64 {
    to_u64(ms.max(1)).div_ceil(1000)
}

pub(crate) const DAY_MS: i64 = 86_400_000;
/// The widest range `daily_stats` answers, in days (ten years); a wider one
/// is cut to its latest days rather than building millions of rows.
pub(crate) const MAX_STATS_DAYS: i64 = 3660;

/// The UTC days `daily_stats` reports for `[since, until)`: the first and
/// last day numbers (every day the range overlaps, at most
/// [`MAX_STATS_DAYS`] of them, the latest); `None` for an empty range.
pub(crate) fn stats_days(since: i64, until: i64) -> Option<(i64, i64)> {
    if until <= since {
        return None;
    }
    let last_day = (until - 1).div_euclid(DAY_MS);
    let first_day = since.div_euclid(DAY_MS).max(last_day - MAX_STATS_DAYS + 1);
    Some((first_day, last_day))
}

/// The UTC day number (days since the Unix epoch, floor division) of `ms`.
pub(crate) fn day_of(ms: i64) -> i64 {
    ms.div_euclid(DAY_MS)
}

/// One row per day from `first_day` to `last_day`, taking (day, sends,
/// completed) from `found` (ascending by day) and zero for days it lacks.
pub(crate) fn fill_days(
    first_day: i64,
    last_day: i64,
    found: Vec<(i64, i64, i64)>,
) -> Vec<DailyStats> {
    let mut found = found.into_iter().peekable();
    (first_day..=last_day)
        .map(|day| {
            let (sends, completed) = match found.next_if(|&(d, _, _)| d == day) {
                Some((_, s, c)) => (to_u64(s), to_u64(c)),
                None => (0, 0),
            };
            DailyStats {
                day_start: day.saturating_mul(DAY_MS),
                sends,
                completed,
            }
        })
        .collect()
}

/// A status group of the core ([`DeliveryStatus::SUCCEEDED`], …) as the
/// names the database stores, to bind rather than spell in SQL.
pub(crate) fn status_names(group: &[DeliveryStatus]) -> Vec<&'static str> {
    group.iter().map(|s| s.as_str()).collect()
}

/// [`status_names`] as a JSON array, for SQLite's `json_each`.
pub(crate) fn status_names_json(group: &[DeliveryStatus]) -> String {
    serde_json::Value::from(status_names(group)).to_string()
}

pub(crate) fn corrupt(what: &str) -> StoreError {
    StoreError::Internal(format!("stored {what} does not parse"))
}

pub(crate) fn customer_id(s: &str) -> StoreResult<CustomerId> {
    CustomerId::parse(s).map_err(|_| corrupt("customer id"))
}

pub(crate) fn verification_id(n: i64) -> StoreResult<VerificationId> {
    u64::try_from(n)
        .ok()
        .and_then(|n| VerificationId::new(n).ok())
        .ok_or_else(|| corrupt("verification id"))
}

pub(crate) fn delivery(s: &str) -> StoreResult<DeliveryStatus> {
    DeliveryStatus::parse(s).ok_or_else(|| corrupt("delivery status"))
}

pub(crate) fn count(n: i64, what: &str) -> StoreResult<u32> {
    u32::try_from(n).map_err(|_| corrupt(what))
}

/// A destination from its stored dialing code and national number.
pub(crate) fn phone(country_code: i64, national: String) -> StoreResult<PhoneNumber> {
    let cc = u16::try_from(country_code).map_err(|_| corrupt("country code"))?;
    Ok(PhoneNumber::from_trusted_parts(cc, national))
}

// ---- events -----------------------------------------------------------------

/// The columns [`pending_event`] reads, from `events e left join webhooks w`.
macro_rules! pending_event_columns {
    () => {
        "e.id, e.event_id, e.customer_id, e.verification_id, e.kind, e.detail, \
         e.attempts, e.created_at, w.url, w.secret"
    };
}

/// The columns [`event_record`] reads.
macro_rules! event_record_columns {
    () => {
        "event_id, verification_id, kind, status, attempts, response_status, response, \
         created_at, updated_at, delivered_at"
    };
}

pub(crate) use {event_record_columns, pending_event_columns};

/// A row of [`PENDING_EVENT_COLUMNS`], as both backends decode it.
pub(crate) type PendingEventRow = (
    i64,
    String,
    String,
    i64,
    String,
    String,
    i64,
    i64,
    Option<String>,
    Option<String>,
);

pub(crate) fn event_kind(s: &str) -> StoreResult<EventKind> {
    EventKind::parse(s).ok_or_else(|| corrupt("event kind"))
}

pub(crate) fn pending_event(row: PendingEventRow) -> StoreResult<PendingEvent> {
    let (id, event_id, customer, vid, kind, detail, attempts, created_at, url, secret) = row;
    Ok(PendingEvent {
        id,
        event_id,
        customer_id: customer_id(&customer)?,
        verification_id: verification_id(vid)?,
        kind: event_kind(&kind)?,
        detail,
        attempts: count(attempts, "event attempts")?,
        created_at,
        endpoint: url.zip(secret.map(SecretString::new)),
    })
}

pub(crate) type EventRecordRow = (
    String,
    i64,
    String,
    String,
    i64,
    Option<i64>,
    Option<String>,
    i64,
    i64,
    Option<i64>,
);

pub(crate) fn event_record(row: EventRecordRow) -> StoreResult<EventRecord> {
    let (event_id, vid, kind, status, attempts, code, response, created, updated, delivered) = row;
    Ok(EventRecord {
        event_id,
        verification_id: verification_id(vid)?,
        kind: event_kind(&kind)?,
        status,
        attempts: count(attempts, "event attempts")?,
        response_status: code.and_then(|c| u16::try_from(c).ok()),
        response,
        created_at: created,
        updated_at: updated,
        delivered_at: delivered,
    })
}

/// What an attempt writes: (status, next attempt time or none, delivered_at).
pub(crate) fn event_outcome(
    attempt: &EventAttempt,
    now: i64,
) -> (&'static str, Option<i64>, Option<i64>) {
    match attempt.outcome {
        EventOutcome::Delivered => ("delivered", None, Some(now)),
        EventOutcome::Retry { next_attempt_at } => ("pending", Some(next_attempt_at), None),
        EventOutcome::Failed => ("failed", None, None),
        EventOutcome::Dropped => ("dropped", None, None),
    }
}

/// The detail of `verification.created`.
pub(crate) fn created_detail(req: &crate::NewVerification) -> String {
    serde_json::json!({
        "countryCode": req.destination.country_code().to_string(),
        "flowType": req.flow_type,
        "expiresAt": req.expires_at,
    })
    .to_string()
}

/// The status a delivery receipt of `status` moves its message to: none for
/// one saying "queued", which tells nothing new about the message's fate
/// (its detail is kept, its status is not moved backwards).
pub(crate) fn receipt_status(status: DeliveryStatus) -> Option<&'static str> {
    (status != DeliveryStatus::Queued).then(|| status.as_str())
}

/// The detail of `verification.failed` (`reason` is `undeliverable` or
/// `too_many_attempts`) and of `verification.delivered`.
pub(crate) fn delivery_detail(
    reason: Option<&str>,
    status: DeliveryStatus,
    detail: &str,
) -> String {
    let mut d = serde_json::json!({ "deliveryStatus": status.as_str() });
    if let Some(r) = reason {
        d["reason"] = r.into();
    }
    if !detail.is_empty() {
        d["detail"] = clip(detail).into();
    }
    d.to_string()
}

pub(crate) fn attempts_detail() -> String {
    serde_json::json!({ "reason": "too_many_attempts" }).to_string()
}

/// A shared transaction's error as each of its callers gets it (SQLite's
/// group commit, PostgreSQL's groups of one account's sends). A key
/// collision at commit time is not any one caller's, so only `Unavailable`
/// keeps its kind.
pub(crate) fn fan_out(e: &StoreError) -> StoreError {
    match e {
        StoreError::Unavailable(m) => StoreError::Unavailable(m.clone()),
        other => StoreError::Internal(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_rounds_up_and_is_never_zero() {
        assert_eq!(retry_after_secs(1), 1);
        assert_eq!(retry_after_secs(1000), 1);
        assert_eq!(retry_after_secs(1001), 2);
        assert_eq!(retry_after_secs(0), 1);
        assert_eq!(retry_after_secs(-5), 1);
        assert_eq!(retry_after_secs(60_000), 60);
    }

    #[test]
    fn clip_cuts_on_a_character_boundary() {
        let s = "é".repeat(400);
        let c = clip(&s);
        assert!(c.len() <= MAX_ERROR_LEN && c.len() >= MAX_ERROR_LEN - 1);
        assert!(s.starts_with(c));
        assert_eq!(clip("short"), "short");
    }

    #[test]
    fn day_grid_fills_gaps_and_caps_its_width() {
        assert_eq!(stats_days(5, 5), None);
        let (first, last) = stats_days(DAY_MS + 5, 3 * DAY_MS).unwrap();
        assert_eq!((first, last), (1, 2));
        assert_eq!((day_of(-1), day_of(0), day_of(DAY_MS)), (-1, 0, 1));
        let rows = fill_days(first, last, vec![(2, 3, 1)]);
        assert_eq!(rows.len(), 2);
        assert_eq!((rows[0].sends, rows[1].sends, rows[1].completed), (0, 3, 1));
        let (first, last) = stats_days(i64::MIN, i64::MAX).unwrap();
        assert_eq!(last - first + 1, MAX_STATS_DAYS);
    }
}

/// What a failed step of a fallback workflow does to its verification
/// (both backends apply this verdict to the facts they read).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct StepFailed {
    /// The outbox row of the next held step, to send at once rather than at
    /// its due time: the channel before it has already failed.
    pub wake: Option<i64>,
    /// No other step is still queued, out with a gateway or delivered: the
    /// code can no longer arrive, so the verification fails and is refunded.
    pub fail_verification: bool,
}

/// The verdict on step `message_id` of a workflow failing, from the
/// workflow's stored steps as (row id, step, status).
pub(crate) fn step_verdict(
    message_id: i64,
    steps: Vec<(i64, i64, String)>,
) -> StoreResult<StepFailed> {
    let mut this = 0;
    let mut others = Vec::with_capacity(steps.len());
    for (id, step, status) in steps {
        let step = count(step, "step")?;
        if id == message_id {
            this = step;
        } else {
            others.push((id, step, delivery(&status)?));
        }
    }
    Ok(step_failed(this, &others))
}

/// What an undeliverable message does to its verification, from the
/// verification's stored `customer_id, state, cost, cost_test` (read before
/// any change: the refund is the charge as it was); with the account to
/// refund.
pub(crate) fn undeliverable(
    (customer, state, cost, cost_test): (String, String, i64, i64),
) -> StoreResult<(String, send::Undeliverable)> {
    let state = VerificationState::parse(&state).ok_or_else(|| corrupt("state"))?;
    Ok((
        customer,
        send::undeliverable(state, send::Charged { cost, cost_test }),
    ))
}

/// The verdict on a verification whose step `step` just failed, given its
/// other steps as (row id, step, status).
pub(crate) fn step_failed(step: u32, others: &[(i64, u32, DeliveryStatus)]) -> StepFailed {
    let wake = others
        .iter()
        .filter(|(_, s, st)| *s > step && *st == DeliveryStatus::Queued)
        .min_by_key(|(_, s, _)| *s)
        .map(|(id, _, _)| *id);
    let alive = others
        .iter()
        .any(|(_, s, st)| *s != step && st.may_still_arrive());
    StepFailed {
        wake,
        fail_verification: !alive,
    }
}

#[cfg(test)]
mod step_tests {
    use super::*;
    use DeliveryStatus::{Cancelled, Delivered, Failed, Queued, Sent};

    #[test]
    fn a_failed_step_wakes_the_next_held_one_and_keeps_the_verification() {
        let v = step_failed(0, &[(11, 1, Queued), (12, 2, Queued)]);
        assert_eq!(
            v,
            StepFailed {
                wake: Some(11),
                fail_verification: false
            }
        );
    }

    #[test]
    fn the_last_step_failing_fails_the_verification() {
        let v = step_failed(1, &[(10, 0, Failed)]);
        assert_eq!(
            v,
            StepFailed {
                wake: None,
                fail_verification: true
            }
        );
        assert!(step_failed(0, &[]).fail_verification, "no workflow at all");
        assert!(step_failed(0, &[(11, 1, Cancelled)]).fail_verification);
    }

    #[test]
    fn a_step_still_out_keeps_the_verification_alive() {
        for st in [Sent, Delivered, Queued] {
            let v = step_failed(1, &[(10, 0, st)]);
            assert_eq!(v.wake, None, "earlier steps are never woken");
            assert!(!v.fail_verification, "{st:?}");
        }
    }
}
