//! The records the store keeps and the requests it takes. Plain data: the
//! rules that produce and read them live in `otpgate-core` and the server.

use otpgate_core::fraud::{BlockScope, FraudPolicy, RefusalKind};
use otpgate_core::{
    CodeHash, CustomerId, DeliveryStatus, PhoneNumber, VerificationId, VerificationState,
};
use serde::{Deserialize, Serialize};

/// An account's own settings (the console's Settings page). Stored as one
/// JSON document so adding a setting needs no migration on either backend.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct AccountSettings {
    /// Brand name put into the message text; `None` uses the server default.
    pub brand_name: Option<String>,
    /// Default validity in seconds when a send gives no `timeout`.
    pub default_timeout_secs: Option<u32>,
    /// Default code length when a send gives no `otpLength`.
    pub default_otp_length: Option<u8>,
    /// Dialing codes this account may send to; `None` allows all (others
    /// get 511).
    pub allowed_country_codes: Option<Vec<u16>>,
    /// Sends per destination per window; `None` uses the server default.
    pub per_number_send_limit: Option<u32>,
}

#[derive(Debug, Clone)]
pub struct NewAccount {
    pub customer_id: CustomerId,
    /// Argon2id PHC string.
    pub password_hash: String,
    pub email: Option<String>,
    pub country: Option<String>,
    pub credits: i64,
    pub test_credits: i64,
    /// Its settings from the start (a console sign-up's own country only).
    pub settings: AccountSettings,
    pub created_at: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub customer_id: CustomerId,
    pub password_hash: String,
    pub email: Option<String>,
    pub country: Option<String>,
    /// Paid credits.
    pub credits: i64,
    /// Credits granted on sign-up; spent before paid ones.
    pub test_credits: i64,
    /// Bumped to revoke every token issued before (see `otpgate_core::token`).
    pub token_epoch: i64,
    pub disabled: bool,
    pub settings: AccountSettings,
    pub created_at: i64,
}

// The send's limits and kind are the core's (`otpgate_core::send`), where
// the decision that reads them lives.
pub use otpgate_core::send::{SendKind, SendLimits};

#[derive(Debug, Clone)]
pub struct NewVerification {
    /// The id to store under, with `code_hash` (the hash binds the code to
    /// its id).
    pub id: VerificationId,
    pub customer_id: CustomerId,
    pub destination: PhoneNumber,
    pub flow_type: String,
    pub code_hash: CodeHash,
    /// Further (id, hash of the same code under that id) candidates, tried
    /// in order inside the same transaction when an id is already taken:
    /// random ids in a 31-bit space do collide once many verifications are
    /// stored, and a collision must cost a retry, not the send.
    pub spare_ids: Vec<(VerificationId, CodeHash)>,
    pub otp_length: u8,
    pub max_attempts: u32,
    pub created_at: i64,
    pub expires_at: i64,
    pub transaction_id: String,
    /// Credits this message costs (destination country's price).
    pub price: i64,
    /// The text queued for delivery. It holds the code: the store keeps it
    /// only until the message is delivered or abandoned.
    pub message_text: String,
    /// The first step's recipient when it is not the phone number (an
    /// e-mail address for the `EMAIL` flow).
    pub address: Option<String>,
    /// The request's `langId`, for channels that pick a template language
    /// at the gateway (WhatsApp, voice).
    pub lang: Option<String>,
    /// The fallback steps of the route's workflow, in order: each is queued
    /// now, held until `due_at`, and cancelled if an earlier step is
    /// delivered first. Not charged: a verification costs its price once.
    pub fallbacks: Vec<NewFallback>,
    pub limits: SendLimits,
    /// The destination's prefix as the conversion guard counts it
    /// (`otpgate_core::fraud::prefix_of`).
    pub prefix: String,
    /// The fraud defences' thresholds (`otpgate_core::fraud::decide_send`).
    pub fraud: FraudPolicy,
    pub kind: SendKind,
}

/// A later step of a fallback workflow, its text rendered at send time (the
/// code is not stored anywhere else in plaintext).
#[derive(Debug, Clone)]
pub struct NewFallback {
    pub flow_type: String,
    pub text: String,
    pub address: Option<String>,
    /// When the step goes out unless an earlier one was delivered (or
    /// failed: then at once).
    pub due_at: i64,
}

/// A send's first message, stored already claimed by the sending node's own
/// delivery worker (see
/// [`crate::VerificationStore::verification_create_leased`]): the worker
/// takes it in memory, with no claim of its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxLease {
    /// The worker that holds the message, as in an `outbox_claim`.
    pub worker: String,
    /// When the lease runs out: should the worker die before recording a
    /// result, any worker claims the message again from then on, exactly as
    /// after a claim whose holder died.
    pub until: i64,
}

/// Result of [`crate::VerificationStore::verification_create`].
#[derive(Debug, Clone)]
pub enum CreateOutcome {
    Created(Verification),
    /// 506: a verification to this destination is still pending.
    AlreadyPending(Verification),
    /// 800: a limit was hit; retry after this many seconds (at least 1).
    RateLimited {
        retry_after_secs: u64,
    },
    /// 402
    InsufficientBalance,
    /// The account is missing or disabled (the caller answers 401).
    AccountUnavailable,
    /// 402: only test credits would pay, and they pay only for the
    /// account's own verified numbers.
    TestCreditsRestricted,
    /// 800: a fraud defence refused the send (a cap, or a block). Nothing
    /// was charged or queued; a block the send itself triggered was stored.
    Blocked {
        kind: RefusalKind,
        retry_after_secs: u64,
        reason: String,
        /// The block this send recorded, if it triggered one.
        new_block: Option<BlockScope>,
    },
}

/// A fraud-guard block as stored (active or not).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FraudBlock {
    pub scope: BlockScope,
    /// The prefix digits, or `CUSTOMER:CC` for an (account, country) block.
    pub key: String,
    pub reason: String,
    pub strikes: u32,
    pub until: i64,
    pub lifted_at: Option<i64>,
    pub created_at: i64,
}

/// A safe-list entry: E.164 digits of a number or of a prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SafeEntry {
    pub entry: String,
    pub note: String,
    pub created_at: i64,
}

/// A number an account proved is its own (test credits pay for it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnNumber {
    /// E.164 digits.
    pub destination: String,
    pub verified_at: i64,
}

/// Sends and completions of one country or prefix, for the console.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConversionRow {
    /// The dialing code, or the prefix digits.
    pub key: String,
    pub sent: u64,
    pub completed: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verification {
    pub id: VerificationId,
    pub customer_id: CustomerId,
    pub destination: PhoneNumber,
    pub flow_type: String,
    pub code_hash: CodeHash,
    pub otp_length: u8,
    pub state: VerificationState,
    pub wrong_attempts: u32,
    pub max_attempts: u32,
    pub created_at: i64,
    pub expires_at: i64,
    pub completed_at: Option<i64>,
    pub transaction_id: String,
    /// Credits charged (0 once refunded).
    pub cost: i64,
    /// Of `cost`, how much came from test credits (refunds go back there).
    pub cost_test: i64,
    pub delivery: DeliveryStatus,
    /// Channel that took the message, if any yet.
    pub channel: Option<String>,
    /// The gateway's message id, for support.
    pub gateway_id: Option<String>,
    /// Last delivery error or receipt detail.
    pub delivery_detail: Option<String>,
}

impl Verification {
    /// Pending, unexpired and not dead: the state in which a new send to the
    /// same destination answers 506.
    pub fn is_live(&self, now: i64) -> bool {
        self.state == VerificationState::Pending
            && now < self.expires_at
            && self.wrong_attempts < self.max_attempts
    }
}

/// What a validation writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValidationAction {
    /// The right code: state becomes completed.
    Complete,
    /// A wrong code: `wrong_attempts` + 1.
    Wrong,
}

#[derive(Debug, Clone, Default)]
pub struct VerificationFilter {
    /// Substring of the destination's E.164 digits.
    pub number: Option<String>,
    pub state: Option<VerificationState>,
    /// `created_at` in `[since, until)`.
    pub since: Option<i64>,
    pub until: Option<i64>,
}

/// What one retention sweep deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Purged {
    /// Verifications (with their phone numbers and outbox rows).
    pub verifications: u64,
    /// Outbox rows (delivered or abandoned messages).
    pub outbox: u64,
    /// Development inbox rows.
    pub inbox: u64,
    /// Webhook events (of the purged verifications, and any older than the
    /// cutoff).
    pub events: u64,
}

impl Purged {
    /// Whether nothing was deleted.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// Per UTC day of one account: kept in a table of its own, maintained by
/// every send and completion, so it outlives the verifications retention
/// deletes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DailyStats {
    /// Midnight UTC of the day, in ms.
    pub day_start: i64,
    pub sends: u64,
    pub completed: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelStats {
    pub channel: String,
    pub attempted: u64,
    /// Sent or delivered.
    pub succeeded: u64,
    pub failed: u64,
}

/// A queued message as a worker sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxMessage {
    pub id: i64,
    pub verification_id: VerificationId,
    pub customer_id: CustomerId,
    pub destination: PhoneNumber,
    /// This step's flow (the verification's, or a fallback's).
    pub flow_type: String,
    /// 0 for the requested flow, 1.. for fallback steps.
    pub step: u32,
    /// The recipient when it is not the phone number (e-mail).
    pub address: Option<String>,
    /// The send request's `langId`.
    pub lang: Option<String>,
    /// `None` once erased (sent or abandoned).
    pub text: Option<String>,
    pub status: DeliveryStatus,
    /// Delivery attempts so far (including the one being made).
    pub attempts: u32,
    pub next_attempt_at: i64,
    /// The verification's expiry: retrying past it is pointless.
    pub expires_at: i64,
    pub channel: Option<String>,
    pub gateway_id: Option<String>,
    pub last_error: Option<String>,
    pub created_at: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentInfo {
    pub channel: String,
    pub gateway_id: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OutboxDepth {
    /// Queued and not leased.
    pub queued: u64,
    /// Leased to a worker right now.
    pub in_flight: u64,
    /// Failed permanently (all time).
    pub failed: u64,
    /// `created_at` of the oldest queued message, if any.
    pub oldest_queued_at: Option<i64>,
}

/// A message the `inbox` channel received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboxEntry {
    /// The account whose verification sent it (the console shows each
    /// account only its own).
    pub customer_id: Option<CustomerId>,
    /// E.164 digits without `+`.
    pub destination: String,
    pub text: String,
    pub verification_id: Option<VerificationId>,
    pub created_at: i64,
}

/// The five things that happen to a verification that an account can be
/// told of (its webhook). Each happens at most once per verification: the
/// store keeps one event per (verification, kind).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventKind {
    /// A send was accepted (written with the verification).
    Created,
    /// A receipt said the message reached the phone.
    Delivered,
    /// The verification can no longer complete: its message could not be
    /// delivered, or its wrong attempts ran out.
    Failed,
    /// The right code was entered.
    Completed,
    /// Validity ran out while it was still pending (found by a sweep).
    Expired,
}

impl EventKind {
    pub const ALL: [Self; 5] = [
        Self::Created,
        Self::Delivered,
        Self::Failed,
        Self::Completed,
        Self::Expired,
    ];

    /// The Standard Webhooks `type`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Created => "verification.created",
            Self::Delivered => "verification.delivered",
            Self::Failed => "verification.failed",
            Self::Completed => "verification.completed",
            Self::Expired => "verification.expired",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// An account's webhook endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Webhook {
    pub customer_id: CustomerId,
    pub url: String,
    /// `whsec_<base64>` (Standard Webhooks): the HMAC key, kept readable
    /// because signing needs it.
    pub secret: otpgate_core::SecretString,
    pub created_at: i64,
    pub updated_at: i64,
}

/// An event a worker has leased for delivery, with the endpoint it goes to
/// (`None` when the account has since removed its webhook).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingEvent {
    /// Row id, for recording the result.
    pub id: i64,
    /// The `webhook-id`: the same on every attempt, the receiver's
    /// idempotency key.
    pub event_id: String,
    pub customer_id: CustomerId,
    pub verification_id: VerificationId,
    pub kind: EventKind,
    /// Facts captured when it happened (a JSON object), so every attempt
    /// sends the same body.
    pub detail: String,
    /// Attempts so far, including the one being made.
    pub attempts: u32,
    /// When it happened.
    pub created_at: i64,
    pub endpoint: Option<(String, otpgate_core::SecretString)>,
}

/// What one delivery attempt of an event came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventOutcome {
    /// A 2xx answer.
    Delivered,
    /// Try again at this time.
    Retry { next_attempt_at: i64 },
    /// Given up (attempts or age ran out, or the receiver said 410 Gone).
    Failed,
    /// The account has no webhook any more: nothing to deliver to.
    Dropped,
}

/// The result of an attempt as recorded for the console.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventAttempt {
    pub outcome: EventOutcome,
    /// The receiver's HTTP status, when it answered.
    pub response_status: Option<u16>,
    /// The start of the receiver's body, or why no answer came.
    pub response: String,
}

/// An event as the console's deliveries page shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventRecord {
    pub event_id: String,
    pub verification_id: VerificationId,
    pub kind: EventKind,
    /// `pending`, `delivered`, `failed` or `dropped`.
    pub status: String,
    pub attempts: u32,
    pub response_status: Option<u16>,
    pub response: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
    pub delivered_at: Option<i64>,
}

/// Events waiting for delivery, for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EventBacklog {
    pub pending: u64,
    /// `created_at` of the oldest pending event.
    pub oldest_at: Option<i64>,
}
