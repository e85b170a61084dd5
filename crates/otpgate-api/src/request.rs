//! The requests of the contract (§1–§3) as the wire carries them: every
//! parameter as text, present or not. The parameter names are spelled here
//! once ([`param`]); the server reads a request with [`FromParams`], the SDK
//! and the bench write one with [`ToParams`], so the two sides cannot spell
//! a name differently. Meaning (digits, ranges, defaults) is the core's
//! business: these types only carry what was sent.

/// The wire names of the contract's parameters.
pub mod param {
    pub const CUSTOMER_ID: &str = "customerId";
    pub const KEY: &str = "key";
    pub const COUNTRY: &str = "country";
    pub const EMAIL: &str = "email";
    pub const SCOPE: &str = "scope";
    pub const COUNTRY_CODE: &str = "countryCode";
    pub const MOBILE_NUMBER: &str = "mobileNumber";
    pub const FLOW_TYPE: &str = "flowType";
    pub const OTP_LENGTH: &str = "otpLength";
    pub const TIMEOUT: &str = "timeout";
    pub const LANG_ID: &str = "langId";
    pub const VERIFICATION_ID: &str = "verificationId";
    pub const CODE: &str = "code";
}

/// A request read from named parameters: `get` answers a name with its
/// value, or `None` when it is absent (the server also treats a blank value
/// as absent).
pub trait FromParams: Sized {
    fn from_params(get: impl Fn(&'static str) -> Option<String>) -> Self;
}

/// A request as the parameters to send, in the order the contract lists
/// them; absent ones are left out.
pub trait ToParams {
    fn to_params(&self) -> Vec<(&'static str, String)>;
}

/// The present ones of `fields`, in order.
fn present(fields: &[(&'static str, &Option<String>)]) -> Vec<(&'static str, String)> {
    fields
        .iter()
        .filter_map(|(name, value)| value.as_ref().map(|v| (*name, v.clone())))
        .collect()
}

/// §1: `GET /auth/v1/authentication/token`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TokenRequest {
    pub customer_id: Option<String>,
    /// Base64 of the account's password.
    pub key: Option<String>,
    /// `NEW` asks for a fresh token (every request gets one).
    pub scope: Option<String>,
    /// Accepted, not checked.
    pub country: Option<String>,
    /// Accepted, not checked.
    pub email: Option<String>,
}

impl FromParams for TokenRequest {
    fn from_params(get: impl Fn(&'static str) -> Option<String>) -> Self {
        Self {
            customer_id: get(param::CUSTOMER_ID),
            key: get(param::KEY),
            scope: get(param::SCOPE),
            country: get(param::COUNTRY),
            email: get(param::EMAIL),
        }
    }
}

impl ToParams for TokenRequest {
    fn to_params(&self) -> Vec<(&'static str, String)> {
        present(&[
            (param::CUSTOMER_ID, &self.customer_id),
            (param::KEY, &self.key),
            (param::SCOPE, &self.scope),
            (param::COUNTRY, &self.country),
            (param::EMAIL, &self.email),
        ])
    }
}

/// §2: `POST …/send`.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct SendRequest {
    pub country_code: Option<String>,
    pub mobile_number: Option<String>,
    pub flow_type: Option<String>,
    pub otp_length: Option<String>,
    /// Extension: validity in seconds.
    pub timeout: Option<String>,
    pub lang_id: Option<String>,
    pub email: Option<String>,
    /// When present, must be the token's account.
    pub customer_id: Option<String>,
}

impl std::fmt::Debug for SendRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Numbers and addresses are the end user's: not in debug output.
        f.debug_struct("SendRequest")
            .field("country_code", &self.country_code)
            .field("flow_type", &self.flow_type)
            .field("otp_length", &self.otp_length)
            .field("timeout", &self.timeout)
            .field("lang_id", &self.lang_id)
            .field("customer_id", &self.customer_id)
            .finish_non_exhaustive()
    }
}

impl FromParams for SendRequest {
    fn from_params(get: impl Fn(&'static str) -> Option<String>) -> Self {
        Self {
            country_code: get(param::COUNTRY_CODE),
            mobile_number: get(param::MOBILE_NUMBER),
            flow_type: get(param::FLOW_TYPE),
            otp_length: get(param::OTP_LENGTH),
            timeout: get(param::TIMEOUT),
            lang_id: get(param::LANG_ID),
            email: get(param::EMAIL),
            customer_id: get(param::CUSTOMER_ID),
        }
    }
}

impl ToParams for SendRequest {
    fn to_params(&self) -> Vec<(&'static str, String)> {
        present(&[
            (param::COUNTRY_CODE, &self.country_code),
            (param::MOBILE_NUMBER, &self.mobile_number),
            (param::FLOW_TYPE, &self.flow_type),
            (param::OTP_LENGTH, &self.otp_length),
            (param::TIMEOUT, &self.timeout),
            (param::LANG_ID, &self.lang_id),
            (param::EMAIL, &self.email),
            (param::CUSTOMER_ID, &self.customer_id),
        ])
    }
}

/// §3: `…/validateOtp`; also the status extension, which takes the same
/// parameters but `code`.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct ValidateRequest {
    pub verification_id: Option<String>,
    pub code: Option<String>,
    /// When present, must be the token's account.
    pub customer_id: Option<String>,
}

impl std::fmt::Debug for ValidateRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The code is a secret until used: never in debug output.
        f.debug_struct("ValidateRequest")
            .field("verification_id", &self.verification_id)
            .field("customer_id", &self.customer_id)
            .finish_non_exhaustive()
    }
}

impl FromParams for ValidateRequest {
    fn from_params(get: impl Fn(&'static str) -> Option<String>) -> Self {
        Self {
            verification_id: get(param::VERIFICATION_ID),
            code: get(param::CODE),
            customer_id: get(param::CUSTOMER_ID),
        }
    }
}

impl ToParams for ValidateRequest {
    fn to_params(&self) -> Vec<(&'static str, String)> {
        present(&[
            (param::VERIFICATION_ID, &self.verification_id),
            (param::CODE, &self.code),
            (param::CUSTOMER_ID, &self.customer_id),
        ])
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn round_trip<R: FromParams + ToParams + PartialEq + std::fmt::Debug>(r: &R) {
        let map: HashMap<&str, String> = r.to_params().into_iter().collect();
        let back = R::from_params(|n| map.get(n).cloned());
        assert_eq!(&back, r);
    }

    #[test]
    fn requests_round_trip_through_their_parameters() {
        round_trip(&SendRequest {
            country_code: Some("91".into()),
            mobile_number: Some("9876543210".into()),
            flow_type: Some("SMS".into()),
            otp_length: Some("6".into()),
            timeout: Some("120".into()),
            lang_id: Some("en".into()),
            email: Some("a@example.com".into()),
            customer_id: Some("C-6D16D900FA3044F".into()),
        });
        round_trip(&ValidateRequest {
            verification_id: Some("5915384".into()),
            code: Some("1234".into()),
            customer_id: None,
        });
        round_trip(&TokenRequest {
            customer_id: Some("C-6D16D900FA3044F".into()),
            key: Some("cw==".into()),
            scope: Some("NEW".into()),
            country: None,
            email: None,
        });
    }

    #[test]
    fn the_wire_names_are_the_contracts() {
        let send = SendRequest {
            otp_length: Some("6".into()),
            country_code: Some("91".into()),
            ..SendRequest::default()
        };
        assert_eq!(
            send.to_params(),
            vec![("countryCode", "91".into()), ("otpLength", "6".into())]
        );
        let debug = format!(
            "{:?}",
            ValidateRequest {
                code: Some("4711".into()),
                ..ValidateRequest::default()
            }
        );
        assert!(!debug.contains("4711"), "{debug}");
    }
}
