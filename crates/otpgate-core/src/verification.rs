//! A verification's identity, state and the rule that turns a validation
//! attempt into an outcome, with the contract's precedence (§4):
//! 505 → 703 → 800 → 705 → 700 → 702 → 200. 505 is the caller's (the record
//! was not found); everything after it is decided here.

use std::fmt;

use rand::{CryptoRng, RngExt};

/// A verification id: a decimal integer in 1..2^53, so it survives a
/// JavaScript number and a Java long (contract §2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct VerificationId(u64);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VerificationIdError {
    #[error("verificationId must be a positive decimal integer below 2^53")]
    Malformed,
}

impl VerificationId {
    pub const LIMIT: u64 = 1 << 53;

    /// # Errors
    /// [`VerificationIdError::Malformed`] for zero, 2^53 and above, or any
    /// non-digit (a sign, a decimal point, white space inside).
    pub fn parse(s: &str) -> Result<Self, VerificationIdError> {
        let s = s.trim();
        if s.is_empty() || s.len() > 16 || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(VerificationIdError::Malformed);
        }
        let n: u64 = s.parse().map_err(|_| VerificationIdError::Malformed)?;
        Self::new(n)
    }

    /// # Errors
    /// [`VerificationIdError::Malformed`] outside 1..2^53.
    pub fn new(n: u64) -> Result<Self, VerificationIdError> {
        if n == 0 || n >= Self::LIMIT {
            Err(VerificationIdError::Malformed)
        } else {
            Ok(Self(n))
        }
    }

    /// The default width of new ids: below 2^31, so they fit the signed
    /// 32-bit integers clients in the wild keep them in (contract §2).
    pub const DEFAULT_BITS: u8 = 31;

    /// A random id in 1..2^53: unguessable, and it says nothing of how many
    /// verifications the server has made.
    pub fn generate<R: CryptoRng + ?Sized>(rng: &mut R) -> Self {
        Self::generate_bits(rng, 53)
    }

    /// A random id in 1..2^`bits` (`bits` clamped to 1..=53), uniform, so it
    /// is as unguessable as that range allows. Uniqueness is the store's:
    /// it tries another candidate when one is taken.
    pub fn generate_bits<R: CryptoRng + ?Sized>(rng: &mut R, bits: u8) -> Self {
        let limit = 1u64 << bits.clamp(1, 53);
        Self(rng.random_range(1..limit.max(2)))
    }

    pub fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Display for VerificationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Where a verification stands, apart from expiry and attempts, which are
/// derived from time and counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VerificationState {
    Pending,
    Completed,
    /// Its message could not be delivered (permanent failure or validity ran
    /// out while retrying).
    Failed,
    Cancelled,
}

impl VerificationState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Completed => "completed",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "pending" => Self::Pending,
            "completed" => Self::Completed,
            "failed" => Self::Failed,
            "cancelled" => Self::Cancelled,
            _ => return None,
        })
    }
}

/// What is known of a verification's message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryStatus {
    /// In the outbox, not yet accepted by a gateway.
    Queued,
    /// Accepted by a gateway; no receipt yet.
    Sent,
    Delivered,
    Undeliverable,
    Expired,
    Rejected,
    /// Given up: a permanent error, or validity ran out while retrying.
    Failed,
    /// A fallback step that was not needed (an earlier step was delivered,
    /// a later one went out, or the verification completed): never sent.
    Cancelled,
}

impl DeliveryStatus {
    /// A gateway took the message (the channel statistics' "succeeded").
    pub const SUCCEEDED: [Self; 2] = [Self::Sent, Self::Delivered];
    /// The message will not arrive by this step: a receipt in one of these
    /// fails the step (and, with no other step left, its verification).
    pub const FINAL_FAILURES: [Self; 4] = [
        Self::Undeliverable,
        Self::Expired,
        Self::Rejected,
        Self::Failed,
    ];

    /// See [`Self::FINAL_FAILURES`].
    pub fn is_final_failure(self) -> bool {
        Self::FINAL_FAILURES.contains(&self)
    }

    /// A step in this status may still bring the code (queued, out with a
    /// gateway, or delivered), so its verification is not failed yet.
    pub fn may_still_arrive(self) -> bool {
        matches!(self, Self::Queued | Self::Sent | Self::Delivered)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Sent => "sent",
            Self::Delivered => "delivered",
            Self::Undeliverable => "undeliverable",
            Self::Expired => "expired",
            Self::Rejected => "rejected",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "queued" => Self::Queued,
            "sent" => Self::Sent,
            "delivered" => Self::Delivered,
            "undeliverable" => Self::Undeliverable,
            "expired" => Self::Expired,
            "rejected" => Self::Rejected,
            "failed" => Self::Failed,
            "cancelled" => Self::Cancelled,
            _ => return None,
        })
    }
}

/// The facts [`decide`] needs about one verification.
#[derive(Debug, Clone, Copy)]
pub struct VerificationView {
    pub state: VerificationState,
    pub expires_at_ms: i64,
    pub wrong_attempts: u32,
    pub max_attempts: u32,
    /// The destination's wrong-code budget across verifications is spent.
    pub wrong_code_budget_spent: bool,
}

/// The outcome of one validation attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// 200: the code is right; the caller must complete the verification
    /// atomically and only answer 200 if that write won.
    Complete,
    /// 702: the caller must record the wrong attempt.
    Wrong { attempts_left: u32 },
    /// 703
    AlreadyVerified,
    /// 800
    TooManyAttempts,
    /// 705
    Expired,
    /// 700
    Failed,
}

/// Decides a validation by the contract's precedence. `code_matches` is only
/// called when the answer depends on it, so a dead or expired verification
/// costs no hashing and reveals nothing about the code.
pub fn decide(v: &VerificationView, now_ms: i64, code_matches: impl FnOnce() -> bool) -> Decision {
    if v.state == VerificationState::Completed {
        return Decision::AlreadyVerified;
    }
    if v.wrong_attempts >= v.max_attempts || v.wrong_code_budget_spent {
        return Decision::TooManyAttempts;
    }
    if now_ms >= v.expires_at_ms {
        return Decision::Expired;
    }
    if matches!(
        v.state,
        VerificationState::Failed | VerificationState::Cancelled
    ) {
        return Decision::Failed;
    }
    if code_matches() {
        Decision::Complete
    } else {
        Decision::Wrong {
            attempts_left: v.max_attempts - v.wrong_attempts - 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(state: VerificationState, wrong: u32) -> VerificationView {
        VerificationView {
            state,
            expires_at_ms: 1000,
            wrong_attempts: wrong,
            max_attempts: 5,
            wrong_code_budget_spent: false,
        }
    }

    #[test]
    fn ids_are_below_2_pow_53_and_positive() {
        assert!(VerificationId::parse("5915384").is_ok());
        assert!(VerificationId::parse("0").is_err());
        assert!(VerificationId::parse("9007199254740992").is_err());
        assert!(VerificationId::parse("9007199254740991").is_ok());
        assert!(VerificationId::parse("-1").is_err());
        assert!(VerificationId::parse("1.0").is_err());
        assert!(VerificationId::parse("").is_err());
        let mut rng = rand::rng();
        for _ in 0..1000 {
            let id = VerificationId::generate(&mut rng);
            assert_eq!(VerificationId::parse(&id.to_string()), Ok(id));
        }
    }

    #[test]
    fn right_code_completes_and_wrong_counts_down() {
        use VerificationState::Pending;
        assert_eq!(decide(&view(Pending, 0), 0, || true), Decision::Complete);
        assert_eq!(
            decide(&view(Pending, 0), 0, || false),
            Decision::Wrong { attempts_left: 4 }
        );
        assert_eq!(
            decide(&view(Pending, 4), 0, || false),
            Decision::Wrong { attempts_left: 0 }
        );
        assert_eq!(
            decide(&view(Pending, 5), 0, || true),
            Decision::TooManyAttempts
        );
    }

    #[test]
    fn precedence_is_completed_dead_expired_failed_wrong() {
        use VerificationState::*;
        assert_eq!(
            decide(&view(Completed, 5), 5000, || false),
            Decision::AlreadyVerified
        );
        assert_eq!(
            decide(&view(Failed, 5), 5000, || true),
            Decision::TooManyAttempts
        );
        assert_eq!(decide(&view(Failed, 0), 5000, || true), Decision::Expired);
        assert_eq!(decide(&view(Failed, 0), 0, || true), Decision::Failed);
        assert_eq!(decide(&view(Cancelled, 0), 0, || false), Decision::Failed);
        let mut spent = view(Pending, 0);
        spent.wrong_code_budget_spent = true;
        assert_eq!(decide(&spent, 0, || true), Decision::TooManyAttempts);
    }

    #[test]
    fn code_is_not_checked_when_the_answer_does_not_depend_on_it() {
        use VerificationState::*;
        for v in [view(Completed, 0), view(Pending, 5), view(Failed, 0)] {
            decide(&v, 0, || panic!("checked the code needlessly"));
        }
        decide(&view(Pending, 0), 5000, || {
            panic!("checked an expired code")
        });
    }
}
