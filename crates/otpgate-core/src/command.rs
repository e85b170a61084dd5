//! The contract's three requests as commands: the wire request
//! (`otpgate_api`) parsed once, by a pure `TryFrom`, into domain values; and
//! the one policy step ([`SendCommand::plan`]) that applies the account's and
//! the server's defaults and rules to a send. Nothing here reads a setting,
//! a store or a router: the caller hands in what they say.

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
pub use otpgate_api::FlowType;
use otpgate_api::{SendRequest, TokenRequest, ValidateRequest, param};

use crate::code::{CodeError, OtpCode, OtpLength};
use crate::fraud::NumberKind;
use crate::phone::{PhoneError, PhoneNumber};
use crate::verification::{VerificationId, VerificationIdError};

/// The validity a send may ask for, in whole seconds (`otp.min_timeout_secs`
/// to `otp.max_timeout_secs`): the one rule the API and the console's
/// settings page both apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeoutRange {
    pub min: u32,
    pub max: u32,
}

/// A validity outside the range, or not a whole number of seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("timeout must be a whole number of seconds from {} to {}", .0.min, .0.max)]
pub struct TimeoutOutOfRange(pub TimeoutRange);

impl TimeoutRange {
    pub fn contains(self, secs: u32) -> bool {
        (self.min..=self.max).contains(&secs)
    }

    /// # Errors
    /// [`TimeoutOutOfRange`] outside the range.
    pub fn check(self, secs: u32) -> Result<u32, TimeoutOutOfRange> {
        if self.contains(secs) {
            Ok(secs)
        } else {
            Err(TimeoutOutOfRange(self))
        }
    }

    /// Parses `"120"` and checks it.
    ///
    /// # Errors
    /// [`TimeoutOutOfRange`] for anything but a whole number in range.
    pub fn parse(self, s: &str) -> Result<u32, TimeoutOutOfRange> {
        s.trim()
            .parse::<u32>()
            .map_err(|_| TimeoutOutOfRange(self))
            .and_then(|t| self.check(t))
    }
}

/// What is wrong with a request, found before anything is looked up.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("{0} is required")]
    Missing(&'static str),
    #[error("flowType must be one of {}", flow_names())]
    UnknownFlow,
    #[error("flowType EMAIL needs the email parameter")]
    EmailMissing,
    #[error(transparent)]
    Phone(#[from] PhoneError),
    #[error(transparent)]
    Code(#[from] CodeError),
    /// `timeout` is not a whole number of seconds (its range is the
    /// server's: [`TimeoutRange`]).
    #[error("timeout must be a whole number of seconds")]
    Timeout,
    #[error(transparent)]
    VerificationId(#[from] VerificationIdError),
    /// The token request's `key` is not base64; the customerId as given is
    /// kept for the audit line.
    #[error("key must be the base64 of the password")]
    KeyNotBase64 { customer_id: String },
}

fn flow_names() -> String {
    FlowType::ALL.map(FlowType::as_str).join(", ")
}

fn required(value: Option<String>, name: &'static str) -> Result<String, RequestError> {
    value.ok_or(RequestError::Missing(name))
}

/// `customerId`, when given, must be the token's account (contract §2, 501).
pub fn customer_matches(given: Option<&str>, account: &crate::CustomerId) -> bool {
    given.is_none_or(|c| c == account.as_str())
}

// ---- §1 token ---------------------------------------------------------------

/// A token request: the customerId as given (it is only looked up, so any
/// text may stand there) and the decoded key.
pub struct TokenCommand {
    pub customer_id: String,
    pub key: Vec<u8>,
}

impl fmt::Debug for TokenCommand {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenCommand")
            .field("customer_id", &self.customer_id)
            .finish_non_exhaustive()
    }
}

impl TryFrom<TokenRequest> for TokenCommand {
    type Error = RequestError;

    fn try_from(r: TokenRequest) -> Result<Self, RequestError> {
        let customer_id = required(r.customer_id, param::CUSTOMER_ID)?;
        let key = required(r.key, param::KEY)?;
        match decode_key(&key) {
            Some(key) => Ok(Self { customer_id, key }),
            None => Err(RequestError::KeyNotBase64 { customer_id }),
        }
    }
}

/// Standard base64 with or without padding (contract §1), bounded.
fn decode_key(s: &str) -> Option<Vec<u8>> {
    if s.len() > 1024 {
        return None;
    }
    STANDARD
        .decode(s)
        .or_else(|_| STANDARD_NO_PAD.decode(s))
        .ok()
        .filter(|k| !k.is_empty())
}

// ---- §2 send -----------------------------------------------------------------

/// A send request after parsing; what is not given is `None` until
/// [`SendCommand::plan`] fills it from the account's and the server's
/// defaults.
#[derive(Debug, Clone)]
pub struct SendCommand {
    pub destination: PhoneNumber,
    pub flow: FlowType,
    pub otp_length: Option<OtpLength>,
    pub timeout_secs: Option<u32>,
    /// Bounded: it is stored with each outbox row.
    pub lang: Option<String>,
    /// The `email` parameter as given (required for `EMAIL`); its syntax is
    /// checked where addresses are understood.
    pub email: Option<String>,
    pub customer_id: Option<String>,
}

/// Longest `langId` kept.
const MAX_LANG_CHARS: usize = 35;

impl TryFrom<SendRequest> for SendCommand {
    type Error = RequestError;

    fn try_from(r: SendRequest) -> Result<Self, RequestError> {
        let country_code = required(r.country_code, param::COUNTRY_CODE)?;
        let mobile = required(r.mobile_number, param::MOBILE_NUMBER)?;
        let flow = FlowType::parse(&required(r.flow_type, param::FLOW_TYPE)?)
            .ok_or(RequestError::UnknownFlow)?;
        let email = r.email.filter(|e| !e.trim().is_empty());
        if flow == FlowType::Email && email.is_none() {
            return Err(RequestError::EmailMissing);
        }
        Ok(Self {
            destination: PhoneNumber::parse(&country_code, &mobile)?,
            flow,
            otp_length: r.otp_length.as_deref().map(OtpLength::parse).transpose()?,
            timeout_secs: r
                .timeout
                .map(|t| t.trim().parse::<u32>().map_err(|_| RequestError::Timeout))
                .transpose()?,
            lang: r.lang_id.map(|l| l.chars().take(MAX_LANG_CHARS).collect()),
            email,
            customer_id: r.customer_id,
        })
    }
}

/// What the server and the account say about a send to this destination:
/// their defaults and rules, looked up by the caller.
#[derive(Debug, Clone, Copy)]
pub struct SendRules<'a> {
    pub server_length: OtpLength,
    pub server_timeout_secs: u32,
    pub timeout_range: TimeoutRange,
    pub account_length: Option<u8>,
    pub account_timeout_secs: Option<u32>,
    /// The countries the account may send to (all when `None`).
    pub allowed_country_codes: Option<&'a [u16]>,
    pub blocked_country_codes: &'a [u16],
    /// E.164 prefixes nothing is sent to (a leading `+` is ignored).
    pub blocked_prefixes: &'a [String],
    /// The destination's fixed code, when it is one of the server's test
    /// numbers.
    pub test_code: Option<&'a str>,
}

/// What routing says about this destination and flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteFacts {
    /// A configured route serves the flow to the destination's country.
    pub flow_served: bool,
    /// The route takes the destination's number type.
    pub number_type_allowed: bool,
}

/// A send that may go, every default applied.
#[derive(Debug, Clone)]
pub struct SendPlan {
    pub destination: PhoneNumber,
    pub flow: FlowType,
    pub otp_length: OtpLength,
    pub timeout_secs: u32,
    pub lang: Option<String>,
    pub email: Option<String>,
    /// A test number's fixed code: nothing is sent, nothing charged.
    pub test_code: Option<String>,
}

/// Why the rules refuse a send.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendRefusal {
    #[error("this server does not send to that country")]
    CountryBlocked,
    #[error("this server does not send to numbers starting +{0}")]
    PrefixBlocked(String),
    #[error("no SMS route serves this country")]
    NoSmsRoute,
    #[error("flowType {0} is not enabled on this server")]
    FlowNotEnabled(FlowType),
    #[error(
        "mobileNumber is a {0} number{unknown}; this server sends codes to mobile numbers only",
        unknown = if *.0 == NumberKind::Unknown { " (its type is unknown)" } else { "" }
    )]
    NumberType(NumberKind),
    #[error("this account may not send to that country")]
    CountryNotAllowed,
    #[error(transparent)]
    Timeout(#[from] TimeoutOutOfRange),
}

impl SendCommand {
    /// The policy step: a test number takes its fixed code and the default
    /// validity and skips every rule (it never leaves the server); any other
    /// destination passes the server's blocks, routing, number types, the
    /// account's countries and the validity range, in that order, and takes
    /// the account's defaults before the server's.
    ///
    /// # Errors
    /// The first rule that refuses.
    pub fn plan(self, rules: &SendRules<'_>, route: RouteFacts) -> Result<SendPlan, SendRefusal> {
        let cc = self.destination.country_code();
        if let Some(code) = rules.test_code {
            return Ok(SendPlan {
                otp_length: OtpLength::new(u8::try_from(code.len()).unwrap_or(0))
                    .unwrap_or(OtpLength::DEFAULT),
                timeout_secs: rules
                    .account_timeout_secs
                    .unwrap_or(rules.server_timeout_secs),
                lang: None,
                email: None,
                test_code: Some(code.to_owned()),
                destination: self.destination,
                flow: self.flow,
            });
        }
        if rules.blocked_country_codes.contains(&cc) {
            return Err(SendRefusal::CountryBlocked);
        }
        let e164 = self.destination.e164_digits();
        if let Some(p) = rules
            .blocked_prefixes
            .iter()
            .map(|p| p.trim_start_matches('+'))
            .find(|p| e164.starts_with(p))
        {
            return Err(SendRefusal::PrefixBlocked(p.to_owned()));
        }
        if !route.flow_served {
            return Err(match self.flow {
                FlowType::Sms => SendRefusal::NoSmsRoute,
                other => SendRefusal::FlowNotEnabled(other),
            });
        }
        // (An EMAIL flow's code goes to an address; the number only keys it.)
        if self.flow != FlowType::Email && !route.number_type_allowed {
            return Err(SendRefusal::NumberType(self.destination.kind()));
        }
        if let Some(allowed) = rules.allowed_country_codes
            && !allowed.contains(&cc)
        {
            return Err(SendRefusal::CountryNotAllowed);
        }
        let otp_length = self.otp_length.unwrap_or_else(|| {
            rules
                .account_length
                .and_then(|n| OtpLength::new(n).ok())
                .unwrap_or(rules.server_length)
        });
        let timeout_secs = match self.timeout_secs {
            Some(t) => rules.timeout_range.check(t)?,
            None => rules
                .account_timeout_secs
                .filter(|t| rules.timeout_range.contains(*t))
                .unwrap_or(rules.server_timeout_secs),
        };
        Ok(SendPlan {
            destination: self.destination,
            flow: self.flow,
            otp_length,
            timeout_secs,
            lang: self.lang,
            email: self.email,
            test_code: None,
        })
    }
}

// ---- §3 validate, and the status extension -----------------------------------

/// A validation: which verification, and the code typed.
#[derive(Debug)]
pub struct ValidateCommand {
    pub id: VerificationId,
    pub code: OtpCode,
    pub customer_id: Option<String>,
}

impl TryFrom<ValidateRequest> for ValidateCommand {
    type Error = RequestError;

    fn try_from(r: ValidateRequest) -> Result<Self, RequestError> {
        let id = VerificationId::parse(&required(r.verification_id, param::VERIFICATION_ID)?)?;
        let code = OtpCode::parse(&required(r.code, param::CODE)?)?;
        Ok(Self {
            id,
            code,
            customer_id: r.customer_id,
        })
    }
}

/// A status poll: validate's parameters but the code.
#[derive(Debug, Clone)]
pub struct StatusCommand {
    pub id: VerificationId,
    pub customer_id: Option<String>,
}

impl TryFrom<ValidateRequest> for StatusCommand {
    type Error = RequestError;

    fn try_from(r: ValidateRequest) -> Result<Self, RequestError> {
        Ok(Self {
            id: VerificationId::parse(&required(r.verification_id, param::VERIFICATION_ID)?)?,
            customer_id: r.customer_id,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn send(pairs: &[(&str, &str)]) -> Result<SendCommand, RequestError> {
        let get = |n: &str| {
            pairs
                .iter()
                .find(|(k, _)| *k == n)
                .map(|(_, v)| (*v).to_owned())
        };
        SendCommand::try_from(<SendRequest as otpgate_api::WireRequest>::from_params(get))
    }

    const BASE: [(&str, &str); 3] = [
        ("countryCode", "91"),
        ("mobileNumber", "9876543210"),
        ("flowType", "sms"),
    ];

    fn rules() -> SendRules<'static> {
        SendRules {
            server_length: OtpLength::DEFAULT,
            server_timeout_secs: 60,
            timeout_range: TimeoutRange { min: 20, max: 300 },
            account_length: None,
            account_timeout_secs: None,
            allowed_country_codes: None,
            blocked_country_codes: &[],
            blocked_prefixes: &[],
            test_code: None,
        }
    }

    const OPEN: RouteFacts = RouteFacts {
        flow_served: true,
        number_type_allowed: true,
    };

    #[test]
    fn parsing_names_what_is_missing_or_malformed() {
        assert_eq!(
            send(&BASE[1..]).unwrap_err(),
            RequestError::Missing("countryCode")
        );
        let mut p = BASE.to_vec();
        p[2].1 = "FAX";
        assert_eq!(send(&p).unwrap_err(), RequestError::UnknownFlow);
        assert!(
            RequestError::UnknownFlow
                .to_string()
                .ends_with("SMS, WHATSAPP, RCS, SAUTH, VOICE, EMAIL")
        );
        for (k, v, e) in [
            (
                "otpLength",
                "9",
                RequestError::Code(CodeError::LengthOutOfRange),
            ),
            (
                "otpLength",
                "six",
                RequestError::Code(CodeError::LengthOutOfRange),
            ),
            ("timeout", "60.5", RequestError::Timeout),
            ("timeout", "-5", RequestError::Timeout),
        ] {
            let mut p = BASE.to_vec();
            p.push((k, v));
            assert_eq!(send(&p).unwrap_err(), e, "{k}={v}");
        }
        p = BASE.to_vec();
        p[2].1 = "EMAIL";
        assert_eq!(send(&p).unwrap_err(), RequestError::EmailMissing);
    }

    #[test]
    fn the_plan_takes_the_request_then_the_account_then_the_server() {
        let cmd = send(&BASE).unwrap();
        assert_eq!(cmd.flow, FlowType::Sms);
        let plan = cmd.clone().plan(&rules(), OPEN).unwrap();
        assert_eq!((plan.otp_length.get(), plan.timeout_secs), (4, 60));
        let account = SendRules {
            account_length: Some(6),
            account_timeout_secs: Some(120),
            ..rules()
        };
        let plan = cmd.clone().plan(&account, OPEN).unwrap();
        assert_eq!((plan.otp_length.get(), plan.timeout_secs), (6, 120));
        let mut p = BASE.to_vec();
        p.extend([("otpLength", "8"), ("timeout", "30")]);
        let plan = send(&p).unwrap().plan(&account, OPEN).unwrap();
        assert_eq!((plan.otp_length.get(), plan.timeout_secs), (8, 30));
        let long = "x".repeat(100);
        p.push(("langId", &long));
        let lang = send(&p)
            .unwrap()
            .plan(&account, OPEN)
            .unwrap()
            .lang
            .unwrap();
        assert_eq!(lang.len(), 35);
        p[4].1 = "301";
        assert_eq!(
            send(&p)
                .unwrap()
                .plan(&account, OPEN)
                .unwrap_err()
                .to_string(),
            "timeout must be a whole number of seconds from 20 to 300"
        );
    }

    #[test]
    fn rules_refuse_in_order_and_a_test_number_skips_them() {
        let cmd = send(&BASE).unwrap();
        let blocked = SendRules {
            blocked_country_codes: &[91],
            allowed_country_codes: Some(&[44]),
            ..rules()
        };
        let closed = RouteFacts {
            flow_served: false,
            number_type_allowed: false,
        };
        assert_eq!(
            cmd.clone().plan(&blocked, closed).unwrap_err(),
            SendRefusal::CountryBlocked
        );
        let prefixes = ["+9198".to_owned()];
        let r = SendRules {
            blocked_prefixes: &prefixes,
            ..rules()
        };
        assert_eq!(
            cmd.clone().plan(&r, OPEN).unwrap_err().to_string(),
            "this server does not send to numbers starting +9198"
        );
        assert_eq!(
            cmd.clone().plan(&rules(), closed).unwrap_err(),
            SendRefusal::NoSmsRoute
        );
        let typed = RouteFacts {
            flow_served: true,
            number_type_allowed: false,
        };
        assert!(matches!(
            cmd.clone().plan(&rules(), typed).unwrap_err(),
            SendRefusal::NumberType(_)
        ));
        let r = SendRules {
            allowed_country_codes: Some(&[44]),
            ..rules()
        };
        assert_eq!(
            cmd.clone().plan(&r, OPEN).unwrap_err(),
            SendRefusal::CountryNotAllowed
        );
        let test = SendRules {
            test_code: Some("123456"),
            ..blocked
        };
        let plan = cmd.plan(&test, closed).unwrap();
        assert_eq!(plan.test_code.as_deref(), Some("123456"));
        assert_eq!(plan.otp_length.get(), 6);
    }

    #[test]
    fn validate_and_token_requests_parse() {
        let ok = ValidateCommand::try_from(ValidateRequest {
            verification_id: Some("5915384".into()),
            code: Some("1234".into()),
            customer_id: None,
        })
        .unwrap();
        assert_eq!(ok.id.get(), 5_915_384);
        let no_code = ValidateRequest {
            verification_id: Some("5915384".into()),
            ..ValidateRequest::default()
        };
        assert!(StatusCommand::try_from(no_code.clone()).is_ok());
        assert_eq!(
            ValidateCommand::try_from(no_code).unwrap_err(),
            RequestError::Missing("code")
        );
        let token = |key: &str| {
            TokenCommand::try_from(TokenRequest {
                customer_id: Some("C-1".into()),
                key: Some(key.into()),
                ..TokenRequest::default()
            })
        };
        assert_eq!(token("cHc").unwrap().key, b"pw");
        assert_eq!(token("cHc=").unwrap().key, b"pw");
        assert!(matches!(
            token("not base64!").unwrap_err(),
            RequestError::KeyNotBase64 { customer_id } if customer_id == "C-1"
        ));
    }
}
