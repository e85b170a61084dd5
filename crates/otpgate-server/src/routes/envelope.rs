//! The service's answers in the contract's envelope: which response code,
//! HTTP status and `Retry-After` each refusal gets (contract §1, §4). The
//! reason a client reads is the refusal's own text.

use otpgate_api::ResponseCode;
use otpgate_core::{PhoneError, RequestError, SendRefusal, TimeoutOutOfRange, TimeoutRange};

use crate::error::{ApiError, TokenApiError};
use crate::service::{SendError, TokenRefusal, ValidateError};

/// A request the core could not parse: 400, or 511 for an unknown dialing
/// code. `range` words a malformed `timeout` as an out-of-range one.
pub fn request_error(e: RequestError, range: TimeoutRange) -> ApiError {
    match e {
        RequestError::Phone(PhoneError::UnknownCountryCode) => {
            ApiError::new(ResponseCode::InvalidCountryCode, e.to_string())
        }
        RequestError::Timeout => ApiError::bad_request(TimeoutOutOfRange(range).to_string()),
        e => ApiError::bad_request(e.to_string()),
    }
}

impl From<SendError> for ApiError {
    fn from(e: SendError) -> Self {
        let reason = e.to_string();
        let code = match e {
            SendError::WrongCustomer => ResponseCode::InvalidCustomerId,
            SendError::Refused(
                SendRefusal::CountryBlocked
                | SendRefusal::NoSmsRoute
                | SendRefusal::CountryNotAllowed,
            ) => ResponseCode::InvalidCountryCode,
            SendError::BadEmail(_) | SendError::Refused(_) => ResponseCode::BadRequest,
            SendError::RateLimited {
                retry_after_secs, ..
            } => return ApiError::rate_limited(reason, retry_after_secs),
            SendError::InsufficientBalance | SendError::TestCreditsRestricted => {
                ResponseCode::InsufficientBalance
            }
            SendError::AccountDisabled => ResponseCode::Unauthorized,
            SendError::Store(e) => return e.into(),
            SendError::Internal(cause) => return ApiError::internal(&cause),
        };
        ApiError::new(code, reason)
    }
}

impl From<ValidateError> for ApiError {
    fn from(e: ValidateError) -> Self {
        let reason = e.to_string();
        let code = match e {
            ValidateError::WrongCustomer => ResponseCode::InvalidCustomerId,
            ValidateError::NotFound => ResponseCode::InvalidVerificationId,
            ValidateError::AlreadyVerified => ResponseCode::AlreadyVerified,
            ValidateError::TooManyAttempts { retry_after_secs } => {
                return ApiError::rate_limited(reason, retry_after_secs);
            }
            ValidateError::Expired => ResponseCode::VerificationExpired,
            ValidateError::Failed => ResponseCode::VerificationFailed,
            ValidateError::Wrong { .. } => ResponseCode::WrongOtpProvided,
            ValidateError::Contention => ResponseCode::ServiceUnavailable,
            ValidateError::Store(e) => return e.into(),
        };
        ApiError::new(code, reason)
    }
}

impl From<TokenRefusal> for TokenApiError {
    fn from(e: TokenRefusal) -> Self {
        ApiError::from(e).into()
    }
}

impl From<TokenRefusal> for ApiError {
    fn from(e: TokenRefusal) -> Self {
        match e {
            TokenRefusal::Throttled { retry_after_secs } => {
                ApiError::rate_limited(e.to_string(), retry_after_secs)
            }
            TokenRefusal::BadCredentials => ApiError::unauthorized(e.to_string()),
            TokenRefusal::Busy => ApiError::busy(),
            TokenRefusal::Store(e) => e.into(),
        }
    }
}
