//! The contract's response codes (§4 table) with their messages and HTTP
//! statuses. Unknown codes from a newer hosted service survive as `Other`.

use serde::{Deserialize, Deserializer, Serialize, Serializer};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ResponseCode {
    Success,
    BadRequest,
    Unauthorized,
    InsufficientBalance,
    DuplicateResource,
    ServerError,
    InvalidCustomerId,
    ServiceUnavailable,
    InvalidVerificationId,
    RequestAlreadyExists,
    InvalidCountryCode,
    VerificationFailed,
    WrongOtpProvided,
    AlreadyVerified,
    VerificationExpired,
    MaximumLimitReached,
    Other(i64),
}

const TABLE: &[(ResponseCode, i64, &str, u16)] = &[
    (ResponseCode::Success, 200, "SUCCESS", 200),
    (ResponseCode::BadRequest, 400, "BAD_REQUEST", 400),
    (ResponseCode::Unauthorized, 401, "UNAUTHORIZED", 401),
    (
        ResponseCode::InsufficientBalance,
        402,
        "INSUFFICIENT_BALANCE",
        402,
    ),
    (
        ResponseCode::DuplicateResource,
        409,
        "DUPLICATE_RESOURCE",
        409,
    ),
    (ResponseCode::ServerError, 500, "SERVER_ERROR", 500),
    (
        ResponseCode::InvalidCustomerId,
        501,
        "INVALID_CUSTOMER_ID",
        400,
    ),
    (
        ResponseCode::ServiceUnavailable,
        503,
        "SERVICE_UNAVAILABLE",
        503,
    ),
    (
        ResponseCode::InvalidVerificationId,
        505,
        "INVALID_VERIFICATION_ID",
        400,
    ),
    (
        ResponseCode::RequestAlreadyExists,
        506,
        "REQUEST_ALREADY_EXISTS",
        400,
    ),
    (
        ResponseCode::InvalidCountryCode,
        511,
        "INVALID_COUNTRY_CODE",
        400,
    ),
    (
        ResponseCode::VerificationFailed,
        700,
        "VERIFICATION_FAILED",
        400,
    ),
    (
        ResponseCode::WrongOtpProvided,
        702,
        "WRONG_OTP_PROVIDED",
        400,
    ),
    (ResponseCode::AlreadyVerified, 703, "ALREADY_VERIFIED", 400),
    (
        ResponseCode::VerificationExpired,
        705,
        "VERIFICATION_EXPIRED",
        400,
    ),
    (
        ResponseCode::MaximumLimitReached,
        800,
        "MAXIMUM_LIMIT_REACHED",
        429,
    ),
];

impl ResponseCode {
    pub fn from_code(code: i64) -> Self {
        TABLE
            .iter()
            .find(|row| row.1 == code)
            .map_or(Self::Other(code), |row| row.0)
    }

    pub fn code(self) -> i64 {
        match self {
            Self::Other(c) => c,
            known => TABLE.iter().find(|row| row.0 == known).map_or(0, |r| r.1),
        }
    }

    /// The `message` string of the envelope; `UNKNOWN` for `Other`.
    pub fn message(self) -> &'static str {
        TABLE
            .iter()
            .find(|row| row.0 == self)
            .map_or("UNKNOWN", |r| r.2)
    }

    /// The HTTP status the contract pairs with this code.
    pub fn http_status(self) -> u16 {
        TABLE.iter().find(|row| row.0 == self).map_or(500, |r| r.3)
    }

    pub fn is_success(self) -> bool {
        self == Self::Success
    }
}

impl Serialize for ResponseCode {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_i64(self.code())
    }
}

/// Accepts `702` and `"702"`: the envelope carries a number, `data` a string.
impl<'de> Deserialize<'de> for ResponseCode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let n = crate::flex::integer(d)?;
        Ok(Self::from_code(n))
    }
}

/// `data.responseCode` is a string on the wire (`"200"`), unlike the
/// envelope's number.
#[allow(clippy::ref_option)]
pub(crate) fn as_string<S: Serializer>(
    code: &Option<ResponseCode>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match code {
        Some(c) => s.collect_str(&c.code()),
        None => s.serialize_none(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_row_round_trips() {
        for row in TABLE {
            assert_eq!(ResponseCode::from_code(row.1), row.0);
            assert_eq!(row.0.code(), row.1);
        }
        assert_eq!(ResponseCode::from_code(999), ResponseCode::Other(999));
        assert_eq!(ResponseCode::Other(999).code(), 999);
    }
}
