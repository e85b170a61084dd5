//! The Verify Now wire contract (`docs/api.md`) as Rust types: the
//! requests and their parameter names, the response envelopes, their `data`
//! objects and the response codes. The
//! server serialises them and the SDK deserialises them, so the two cannot
//! drift. Deserialisation is lenient in the ways the hosted service is known
//! to vary (ids as strings or numbers, `timeout` as `"60"` or `"60.0"`, fields
//! present or absent); serialisation is exact.
#![forbid(unsafe_code)]

mod code;
mod flex;
mod request;

pub use code::ResponseCode;
pub use flex::{WireId, WireSeconds};
pub use request::{FlowType, SendRequest, TokenRequest, ValidateRequest, WireRequest, param};

use serde::{Deserialize, Serialize};

/// Paths of the contract, for the server's router and the SDK alike.
pub mod paths {
    pub const TOKEN: &str = "/auth/v1/authentication/token";
    pub const SEND_V2: &str = "/verification/v2/verification/send";
    pub const SEND_V3: &str = "/verification/v3/send";
    pub const VALIDATE_V2: &str = "/verification/v2/verification/validateOtp";
    pub const VALIDATE_V3: &str = "/verification/v3/validateOtp";
    /// Extension: the state and delivery of one verification.
    pub const STATUS_V2: &str = "/verification/v2/verification/status";
    /// Extension: as [`STATUS_V2`].
    pub const STATUS_V3: &str = "/verification/v3/status";
    /// Extension: this server's OpenAPI description.
    pub const OPENAPI: &str = "/openapi.json";
}

/// The header that carries the token (case-insensitive on the wire).
pub const AUTH_TOKEN_HEADER: &str = "authToken";

/// §1: the token endpoint's body, success (`token`) or failure (`error`).
/// The hosted service has been seen to send a failure inside an HTTP 200, so
/// a reader must look at `status`, not only the HTTP status.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenResponse {
    pub status: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// §2–§4: every send and validate response. A failure has no `data`
/// (clients test for it), except 506, whose `data` is [`PendingData`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Envelope<T> {
    pub response_code: ResponseCode,
    #[serde(default)]
    pub message: String,
    #[serde(default = "none", skip_serializing_if = "Option::is_none")]
    pub data: Option<T>,
    /// Extension: a human-readable reason on failures.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_message: Option<String>,
}

fn none<T>() -> Option<T> {
    None
}

/// §2: `data` of a successful send.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SendData {
    pub verification_id: WireId,
    #[serde(default)]
    pub mobile_number: Option<String>,
    #[serde(default, serialize_with = "code::as_string")]
    pub response_code: Option<ResponseCode>,
    #[serde(default)]
    pub error_message: Option<String>,
    #[serde(default)]
    pub timeout: Option<WireSeconds>,
    #[serde(default, rename = "smsCLI")]
    pub sms_cli: Option<String>,
    #[serde(default)]
    pub transaction_id: Option<String>,
    #[serde(default)]
    pub reference_id: Option<String>,
    #[serde(default)]
    pub flow_type: Option<String>,
}

/// §3: `data` of a successful validation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ValidateData {
    pub verification_id: WireId,
    #[serde(default)]
    pub mobile_number: Option<String>,
    #[serde(default)]
    pub verification_status: Option<String>,
    #[serde(default, serialize_with = "code::as_string")]
    pub response_code: Option<ResponseCode>,
    #[serde(default)]
    pub error_message: Option<String>,
    #[serde(default)]
    pub transaction_id: Option<String>,
    #[serde(default)]
    pub reference_id: Option<String>,
    #[serde(default)]
    pub auth_token: Option<String>,
}

/// §4 "506 in detail": the pending verification a repeated send points at.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PendingData {
    pub verification_id: WireId,
    #[serde(default)]
    pub mobile_number: Option<String>,
    #[serde(default, serialize_with = "code::as_string")]
    pub response_code: Option<ResponseCode>,
    #[serde(default)]
    pub error_message: Option<String>,
    #[serde(default)]
    pub timeout: Option<WireSeconds>,
}

/// Extension: `data` of the status endpoint, for clients that poll. Ids are
/// as on validate (a number on v3, a string on v2).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StatusData {
    pub verification_id: WireId,
    #[serde(default)]
    pub mobile_number: Option<String>,
    /// `VERIFICATION_PENDING`, `VERIFICATION_COMPLETED`,
    /// `VERIFICATION_EXPIRED`, `VERIFICATION_FAILED`,
    /// `VERIFICATION_CANCELLED` or `VERIFICATION_BLOCKED` (no attempts left).
    pub verification_status: String,
    /// `QUEUED`, `SENT`, `DELIVERED`, `UNDELIVERABLE`, `EXPIRED`,
    /// `REJECTED` or `FAILED`: what is known of the message.
    pub delivery_status: String,
    /// The channel that took the message, once one has.
    #[serde(default)]
    pub channel: Option<String>,
    #[serde(default)]
    pub flow_type: Option<String>,
    /// Wrong codes the verification still takes.
    pub attempts_left: u32,
    /// Seconds of validity left (0 once expired), as a string like send's.
    pub timeout: WireSeconds,
    /// Milliseconds since the Unix epoch.
    pub created_at: i64,
    pub expires_at: i64,
    #[serde(default)]
    pub completed_at: Option<i64>,
    #[serde(default, serialize_with = "code::as_string")]
    pub response_code: Option<ResponseCode>,
    #[serde(default)]
    pub error_message: Option<String>,
    #[serde(default)]
    pub transaction_id: Option<String>,
    #[serde(default)]
    pub reference_id: Option<String>,
}

/// A send response's `data`: success or the 506 pointer. Untagged because the
/// wire carries no tag; the envelope's `responseCode` tells which it is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum SendResponseData {
    Sent(SendData),
    Pending(PendingData),
}

pub type SendResponse = Envelope<SendData>;
pub type PendingResponse = Envelope<PendingData>;
pub type ValidateResponse = Envelope<ValidateData>;
pub type StatusResponse = Envelope<StatusData>;

/// `verificationStatus` of a completed validation.
pub const VERIFICATION_COMPLETED: &str = "VERIFICATION_COMPLETED";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_serialises_without_data() {
        let e: Envelope<SendData> = Envelope {
            response_code: ResponseCode::WrongOtpProvided,
            message: ResponseCode::WrongOtpProvided.message().to_owned(),
            data: None,
            error_message: Some("wrong code; 4 attempts left".into()),
        };
        let v = serde_json::to_value(&e).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"responseCode":702,"message":"WRONG_OTP_PROVIDED","errorMessage":"wrong code; 4 attempts left"})
        );
    }

    #[test]
    fn decodes_the_contracts_samples() {
        let send: SendResponse = serde_json::from_str(r#"{"responseCode":200,"message":"SUCCESS","data":{"verificationId":"5915384","mobileNumber":"9876543210","responseCode":"200","errorMessage":null,"timeout":"60","smsCLI":null,"transactionId":"2065cc84-0d76-40fe-a434-2f1907ef07a2","referenceId":"2065cc84-0d76-40fe-a434-2f1907ef07a2","flowType":"SMS"}}"#).unwrap();
        let d = send.data.unwrap();
        assert_eq!(d.verification_id.value(), Some(5_915_384));
        assert_eq!(d.timeout.unwrap().0, 60);
        assert_eq!(d.response_code, Some(ResponseCode::Success));

        let val: ValidateResponse = serde_json::from_str(r#"{"responseCode":200,"message":"SUCCESS","data":{"verificationId":5915384,"mobileNumber":"9876543210","verificationStatus":"VERIFICATION_COMPLETED","responseCode":"200","errorMessage":null,"transactionId":"2065cc84-0d76-40fe-a434-2f1907ef07a2","referenceId":"2065cc84-0d76-40fe-a434-2f1907ef07a2","authToken":null}}"#).unwrap();
        assert_eq!(val.data.unwrap().verification_id.value(), Some(5_915_384));

        let pending: PendingResponse = serde_json::from_str(r#"{"responseCode":506,"message":"REQUEST_ALREADY_EXISTS","data":{"verificationId":"5915384","mobileNumber":"9876543210","responseCode":"506","errorMessage":"REQUEST_ALREADY_EXISTS","timeout":"41.0"}}"#).unwrap();
        assert_eq!(pending.response_code, ResponseCode::RequestAlreadyExists);
        assert_eq!(pending.data.unwrap().timeout.unwrap().0, 41);

        let fail: ValidateResponse =
            serde_json::from_str(r#"{"responseCode":702,"message":"WRONG_OTP_PROVIDED"}"#).unwrap();
        assert!(fail.data.is_none());
    }

    #[test]
    fn ids_serialise_as_the_path_wants() {
        assert_eq!(serde_json::to_string(&WireId::string(5)).unwrap(), r#""5""#);
        assert_eq!(serde_json::to_string(&WireId::number(5)).unwrap(), "5");
        assert_eq!(serde_json::to_string(&WireSeconds(60)).unwrap(), r#""60""#);
    }
}
