//! What a caller hands the SDK and what it gets back: the send request, the
//! typed outcomes of send and validate (contract §2–§4), and [`Reply`], which
//! keeps the response body beside the outcome for callers that show it.

use std::fmt;
use std::time::Duration;

/// Which path family to call (contract §2, §3). Both behave the same on
/// otpgate; the hosted service documents v3 for new integrations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ApiVersion {
    /// `/verification/v2/verification/send` and `.../validateOtp`.
    V2,
    /// `/verification/v3/send` and `/verification/v3/validateOtp`.
    #[default]
    V3,
}

/// The channel the code travels on (`flowType`, contract §2): the wire
/// crate's own enum, so the SDK and the server spell the values once.
pub use otpgate_api::FlowType as Flow;

/// A request to send a code (contract §2).
///
/// ```
/// use std::time::Duration;
/// use otpgate_client::SendOtp;
///
/// let req = SendOtp::sms("91", "9876543210")
///     .with_otp_length(6)
///     .with_timeout(Duration::from_secs(120));
/// assert_eq!(req.otp_length, Some(6));
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct SendOtp {
    /// Dialing code of the destination, e.g. `91`; a leading `+` is dropped.
    pub country_code: String,
    /// The national number, e.g. `9876543210`.
    pub mobile_number: String,
    /// Digits in the code, 4 to 8; the service's default (4) when `None`.
    pub otp_length: Option<u8>,
    pub flow: Flow,
    /// How long the code stays valid (an otpgate extension, 20 to 300 s;
    /// whole seconds are sent). The service's default when `None`.
    pub timeout: Option<Duration>,
}

impl SendOtp {
    /// An SMS to `country_code` + `mobile_number` with the service's defaults.
    pub fn sms(country_code: impl Into<String>, mobile_number: impl Into<String>) -> Self {
        Self {
            country_code: country_code.into(),
            mobile_number: mobile_number.into(),
            otp_length: None,
            flow: Flow::Sms,
            timeout: None,
        }
    }

    #[must_use]
    pub fn with_otp_length(mut self, digits: u8) -> Self {
        self.otp_length = Some(digits);
        self
    }

    #[must_use]
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    #[must_use]
    pub fn with_flow(mut self, flow: Flow) -> Self {
        self.flow = flow;
        self
    }
}

impl fmt::Debug for SendOtp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SendOtp")
            .field("country_code", &self.country_code)
            .field("mobile_number", &mask(&self.mobile_number))
            .field("otp_length", &self.otp_length)
            .field("flow", &self.flow)
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// A code was sent (contract §2, HTTP 200).
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Sent {
    /// What [`Client::validate`](crate::Client::validate) needs.
    pub verification_id: u64,
    /// The national number as the service echoed it (the requested one when
    /// the response left it out).
    pub mobile_number: String,
    /// How long the code is valid, when the service said.
    pub timeout: Option<Duration>,
    /// A UUID per send, when the service gave one.
    pub transaction_id: Option<String>,
    pub reference_id: Option<String>,
}

impl fmt::Debug for Sent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sent")
            .field("verification_id", &self.verification_id)
            .field("mobile_number", &mask(&self.mobile_number))
            .field("timeout", &self.timeout)
            .field("transaction_id", &self.transaction_id)
            .field("reference_id", &self.reference_id)
            .finish()
    }
}

/// The two answers to a send that are not errors.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SendOutcome {
    /// A new verification was created and its message queued.
    Sent(Sent),
    /// 506 `REQUEST_ALREADY_EXISTS`: a verification to this number is still
    /// pending, nothing was sent or charged, and this is its id, which the
    /// caller can validate against (contract §4, "506 in detail").
    AlreadyPending {
        verification_id: u64,
        /// Seconds left on the pending verification, when the service said.
        seconds_left: Option<u64>,
    },
}

impl SendOutcome {
    /// The verification to validate against, new or pending.
    pub fn verification_id(&self) -> u64 {
        match self {
            Self::Sent(s) => s.verification_id,
            Self::AlreadyPending {
                verification_id, ..
            } => *verification_id,
        }
    }
}

/// The outcome of a validation (contract §3, §4). Only `Verified` means the
/// person proved they hold the phone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Validation {
    /// 200: the code was right, and is now used up.
    Verified,
    /// 702: the code was wrong; more tries are allowed. `attempts_left` comes
    /// from the `errorMessage` extension when the service sends one.
    WrongCode { attempts_left: Option<u32> },
    /// 703: the verification was completed earlier.
    AlreadyVerified,
    /// 705: the code's validity elapsed.
    Expired,
    /// 800: too many wrong codes; the verification is dead.
    TooManyAttempts,
    /// 700: the message could not be delivered, or the verification was
    /// cancelled.
    Failed,
    /// 505: no such verification for this account.
    UnknownVerification,
}

impl Validation {
    pub fn is_verified(self) -> bool {
        self == Self::Verified
    }
}

/// An outcome together with the response it was read from, for callers that
/// show or store what the service said (the CLI's `--json`).
#[derive(Clone)]
#[non_exhaustive]
pub struct Reply<T> {
    pub value: T,
    /// The HTTP status of the response.
    pub status: u16,
    /// The response body exactly as received.
    pub body: String,
}

impl<T: fmt::Debug> fmt::Debug for Reply<T> {
    // The body is left out: a token response's body holds the token.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reply")
            .field("value", &self.value)
            .field("status", &self.status)
            .field("body_len", &self.body.len())
            .finish()
    }
}

/// Keeps the last four digits, as otpgate's own logs do.
fn mask(number: &str) -> String {
    let chars: Vec<char> = number.chars().collect();
    let keep = chars.len().min(4);
    let hidden = chars.len() - keep;
    let tail: String = chars[hidden..].iter().collect();
    format!("{}{tail}", "*".repeat(hidden))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_masks_the_number() {
        let s = format!("{:?}", SendOtp::sms("91", "9876543210"));
        assert!(s.contains("******3210"), "{s}");
        assert!(!s.contains("9876543210"), "{s}");
        assert_eq!(mask("12"), "12");
        assert_eq!(mask(""), "");
    }
}
