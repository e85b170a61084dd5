//! Reading responses into outcomes. Pure functions over (status, headers,
//! body), so every shape the hosted service is known to send is tested here
//! without a network.
//!
//! The envelope's `responseCode` decides (contract §4); the HTTP status is the
//! fallback when a body has none, because the hosted service and proxies in
//! front of it do not always pair the two as the contract's table does.

use std::time::Duration;

use otpgate_api::{PendingData, ResponseCode, SendData, VERIFICATION_COMPLETED};
use serde_json::{Map, Value};

use crate::error::{Error, Result};
use crate::model::{SendOutcome, Sent, Validation};
use crate::token::AuthToken;

/// A response as it came off the wire.
#[derive(Debug, Clone)]
pub(crate) struct RawResponse {
    pub(crate) status: u16,
    /// `Retry-After` in seconds, when the header had that form.
    pub(crate) retry_after: Option<Duration>,
    pub(crate) body: String,
}

/// The parts of a send/validate envelope that decide the outcome.
struct Parsed {
    code: ResponseCode,
    message: String,
    /// Top-level `errorMessage`, else `data.errorMessage`.
    error_message: Option<String>,
    data: Option<Value>,
}

impl Parsed {
    /// The best human-readable reason the response gave.
    fn reason(&self) -> String {
        self.error_message
            .clone()
            .filter(|m| !m.is_empty())
            .or_else(|| Some(self.message.clone()).filter(|m| !m.is_empty()))
            .unwrap_or_else(|| format!("response code {}", self.code.code()))
    }
}

fn object(body: &str) -> Option<Map<String, Value>> {
    match serde_json::from_str(body).ok()? {
        Value::Object(map) => Some(map),
        _ => None,
    }
}

fn string(map: &Map<String, Value>, key: &str) -> Option<String> {
    map.get(key)?.as_str().map(str::to_owned)
}

/// An integer written as a number or as a string of digits.
fn integer(v: &Value) -> Option<i64> {
    v.as_i64()
        .or_else(|| v.as_str().and_then(|s| s.trim().parse().ok()))
}

fn parse(raw: &RawResponse) -> Option<Parsed> {
    let map = object(&raw.body)?;
    let code = map
        .get("responseCode")
        .and_then(|v| serde_json::from_value::<ResponseCode>(v.clone()).ok())
        .unwrap_or_else(|| ResponseCode::from_code(i64::from(raw.status)));
    let data = map.get("data").filter(|d| !d.is_null()).cloned();
    let error_message = string(&map, "errorMessage")
        .or_else(|| string(&map, "error"))
        .or_else(|| {
            data.as_ref()
                .and_then(Value::as_object)
                .and_then(|d| string(d, "errorMessage"))
        });
    Some(Parsed {
        code,
        message: string(&map, "message").unwrap_or_default(),
        error_message,
        data,
    })
}

fn unexpected(raw: &RawResponse, reason: impl Into<String>) -> Error {
    Error::Unexpected {
        status: raw.status,
        reason: reason.into(),
        body: raw.body.clone(),
    }
}

/// A body that is not a JSON object: only the HTTP status can say anything.
fn from_status_only(raw: &RawResponse) -> Error {
    let message = format!("HTTP {} without a JSON body", raw.status);
    match raw.status {
        401 | 403 => Error::Unauthorized {
            message,
            body: Some(raw.body.clone()),
        },
        429 => Error::RateLimited {
            retry_after: raw.retry_after,
            message,
            body: raw.body.clone(),
        },
        500..=599 => Error::Server {
            status: raw.status,
            code: ResponseCode::Other(i64::from(raw.status)),
            message,
            body: raw.body.clone(),
        },
        _ => unexpected(raw, "the body is not a JSON object"),
    }
}

/// The failures send and validate share (contract §4 table).
fn failure(raw: &RawResponse, p: &Parsed) -> Error {
    let message = p.reason();
    let body = raw.body.clone();
    match p.code {
        ResponseCode::Unauthorized => Error::Unauthorized {
            message,
            body: Some(body),
        },
        ResponseCode::InsufficientBalance => Error::InsufficientBalance { message, body },
        ResponseCode::MaximumLimitReached => Error::RateLimited {
            retry_after: raw.retry_after,
            message,
            body,
        },
        ResponseCode::BadRequest
        | ResponseCode::InvalidCustomerId
        | ResponseCode::InvalidCountryCode => Error::InvalidInput {
            code: p.code,
            message,
            body,
        },
        ResponseCode::ServerError | ResponseCode::ServiceUnavailable => Error::Server {
            status: raw.status,
            code: p.code,
            message,
            body,
        },
        _ if raw.status == 401 => Error::Unauthorized {
            message,
            body: Some(body),
        },
        _ if raw.status == 429 => Error::RateLimited {
            retry_after: raw.retry_after,
            message,
            body,
        },
        _ if raw.status >= 500 => Error::Server {
            status: raw.status,
            code: p.code,
            message,
            body,
        },
        code => unexpected(
            raw,
            format!(
                "response code {} ({message}) was not expected here",
                code.code()
            ),
        ),
    }
}

/// Contract §1. The hosted service has sent `{"status":400,"error":...}`
/// inside an HTTP 200, so the body's `status` wins over the HTTP status when
/// it reports a failure.
pub(crate) fn token(raw: &RawResponse) -> Result<AuthToken> {
    let Some(map) = object(&raw.body) else {
        return Err(from_status_only(raw));
    };
    let body_status = map.get("status").and_then(integer);
    let status = match body_status {
        Some(s) if s != 200 => s,
        _ => i64::from(raw.status),
    };
    let message = string(&map, "error")
        .or_else(|| string(&map, "message"))
        .unwrap_or_else(|| format!("token request failed with status {status}"));
    let body = raw.body.clone();
    match status {
        200..=299 => match string(&map, "token").filter(|t| !t.trim().is_empty()) {
            Some(t) => Ok(AuthToken::new(t.trim())),
            None => Err(unexpected(
                raw,
                "a successful token response without a token",
            )),
        },
        400 => Err(Error::InvalidInput {
            code: ResponseCode::BadRequest,
            message,
            body,
        }),
        401 | 403 => Err(Error::Unauthorized {
            message,
            body: Some(body),
        }),
        429 => Err(Error::RateLimited {
            retry_after: raw.retry_after,
            message,
            body,
        }),
        500..=599 => Err(Error::Server {
            status: raw.status,
            code: ResponseCode::from_code(status),
            message,
            body,
        }),
        _ => Err(unexpected(raw, format!("token status {status}: {message}"))),
    }
}

/// Contract §2 and §4. `requested_mobile` stands in when a success leaves
/// `mobileNumber` out.
pub(crate) fn send(raw: &RawResponse, requested_mobile: &str) -> Result<SendOutcome> {
    let Some(p) = parse(raw) else {
        return Err(from_status_only(raw));
    };
    match p.code {
        ResponseCode::Success => {
            let d: SendData = data_of(raw, &p, "a successful send without `data`", "send")?;
            Ok(SendOutcome::Sent(Sent {
                verification_id: d.verification_id.get(),
                mobile_number: d
                    .mobile_number
                    .unwrap_or_else(|| requested_mobile.to_owned()),
                timeout: d.timeout.map(|s| Duration::from_secs(s.0)),
                transaction_id: d.transaction_id,
                reference_id: d.reference_id,
            }))
        }
        ResponseCode::RequestAlreadyExists => {
            let d: PendingData = data_of(
                raw,
                &p,
                "506 without `data`: the pending verification is unknown",
                "506",
            )?;
            Ok(SendOutcome::AlreadyPending {
                verification_id: d.verification_id.get(),
                seconds_left: d.timeout.map(|s| s.0),
            })
        }
        _ => Err(failure(raw, &p)),
    }
}

/// The `data` of `p` as `T`: `missing` when there is none, `what` names it
/// when it does not decode.
fn data_of<T: serde::de::DeserializeOwned>(
    raw: &RawResponse,
    p: &Parsed,
    missing: &str,
    what: &str,
) -> Result<T> {
    let data = p.data.as_ref().ok_or_else(|| unexpected(raw, missing))?;
    serde_json::from_value(data.clone())
        .map_err(|e| unexpected(raw, format!("{what} `data` does not decode: {e}")))
}

/// Contract §3 and §4.
pub(crate) fn validate(raw: &RawResponse) -> Result<Validation> {
    let Some(p) = parse(raw) else {
        return Err(from_status_only(raw));
    };
    match p.code {
        ResponseCode::Success => {
            // Clients test for `data` to detect success (§4); a 200 without
            // it, or with a status other than completed, is not taken as a
            // proof of possession.
            let data = p
                .data
                .as_ref()
                .and_then(Value::as_object)
                .ok_or_else(|| unexpected(raw, "a successful validation without `data`"))?;
            match data.get("verificationStatus") {
                None | Some(Value::Null) => Ok(Validation::Verified),
                Some(Value::String(s)) if s == VERIFICATION_COMPLETED => Ok(Validation::Verified),
                Some(other) => Err(unexpected(
                    raw,
                    format!("a successful validation with verificationStatus {other}"),
                )),
            }
        }
        ResponseCode::WrongOtpProvided => Ok(Validation::WrongCode {
            attempts_left: p.error_message.as_deref().and_then(attempts_left),
        }),
        ResponseCode::AlreadyVerified => Ok(Validation::AlreadyVerified),
        ResponseCode::VerificationExpired => Ok(Validation::Expired),
        // On validate, 800 is the per-verification limit, not a rate limit.
        ResponseCode::MaximumLimitReached => Ok(Validation::TooManyAttempts),
        ResponseCode::VerificationFailed => Ok(Validation::Failed),
        ResponseCode::InvalidVerificationId => Ok(Validation::UnknownVerification),
        _ => Err(failure(raw, &p)),
    }
}

/// Reads the attempts left from otpgate's `errorMessage` extension:
/// "wrong code; 4 attempts left", "1 attempt remaining", "attempts left: 2".
pub(crate) fn attempts_left(message: &str) -> Option<u32> {
    let words: Vec<String> = message
        .split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_ascii_lowercase)
        .collect();
    let is_attempt = |w: &str| w == "attempt" || w == "attempts" || w == "tries" || w == "try";
    let is_left = |w: &str| w == "left" || w == "remaining" || w == "remain";
    let number = |i: Option<usize>| i.and_then(|i| words.get(i)).and_then(|w| w.parse().ok());
    (0..words.len()).find_map(|i| {
        if !is_attempt(&words[i]) {
            return None;
        }
        let next_is_left = words.get(i + 1).is_some_and(|w| is_left(w));
        if !next_is_left {
            return None;
        }
        number(i.checked_sub(1)).or_else(|| number(Some(i + 2)))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(status: u16, body: &str) -> RawResponse {
        RawResponse {
            status,
            retry_after: None,
            body: body.to_owned(),
        }
    }

    #[test]
    fn reads_attempts_left_in_the_forms_seen() {
        assert_eq!(attempts_left("wrong code; 4 attempts left"), Some(4));
        assert_eq!(attempts_left("Wrong code. 1 attempt left."), Some(1));
        assert_eq!(attempts_left("attempts remaining: 2"), Some(2));
        assert_eq!(attempts_left("WRONG_OTP_PROVIDED"), None);
        assert_eq!(attempts_left("5 attempts allowed"), None);
        assert_eq!(attempts_left("attempts left"), None);
        assert_eq!(attempts_left(""), None);
        assert_eq!(attempts_left("99999999999999999999 attempts left"), None);
    }

    #[test]
    fn token_failure_inside_http_200_is_an_error() {
        let e = token(&raw(200, r#"{"status":400,"error":"key is not base64"}"#)).unwrap_err();
        assert!(
            matches!(&e, Error::InvalidInput { message, .. } if message == "key is not base64"),
            "{e:?}"
        );
        let e = token(&raw(200, r#"{"status":"401","error":"nope"}"#)).unwrap_err();
        assert!(matches!(e, Error::Unauthorized { .. }), "{e:?}");
    }

    #[test]
    fn token_without_json_goes_by_http_status() {
        assert!(matches!(
            token(&raw(401, "<html>")).unwrap_err(),
            Error::Unauthorized { .. }
        ));
        assert!(matches!(
            token(&raw(502, "bad gateway")).unwrap_err(),
            Error::Server { status: 502, .. }
        ));
        assert!(matches!(
            token(&raw(200, r#"{"status":200}"#)).unwrap_err(),
            Error::Unexpected { status: 200, .. }
        ));
    }

    #[test]
    fn validation_success_needs_data_and_completed_status() {
        assert!(validate(&raw(200, r#"{"responseCode":200,"message":"SUCCESS"}"#)).is_err());
        assert!(
            validate(&raw(
                200,
                r#"{"responseCode":200,"data":{"verificationStatus":"VERIFICATION_PENDING"}}"#
            ))
            .is_err()
        );
        assert_eq!(
            validate(&raw(
                200,
                r#"{"responseCode":"200","data":{"verificationId":"1"}}"#
            ))
            .unwrap(),
            Validation::Verified
        );
    }

    #[test]
    fn garbage_never_panics() {
        for body in [
            "",
            "null",
            "[]",
            "{",
            r#"{"responseCode":{}}"#,
            r#"{"responseCode":200,"data":[]}"#,
            r#"{"responseCode":200,"data":{"verificationId":-1}}"#,
            r#"{"responseCode":506,"data":{"verificationId":"x"}}"#,
            r#"{"responseCode":1e400}"#,
        ] {
            for status in [200, 400, 401, 429, 500, 302] {
                let _ = send(&raw(status, body), "1");
                let _ = validate(&raw(status, body));
                let _ = token(&raw(status, body));
            }
        }
    }
}
