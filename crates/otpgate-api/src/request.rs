//! The requests of the contract (§1–§3) as the wire carries them: every
//! parameter as text, present or not. The parameter names are spelled here
//! once ([`param`]) and each request lists its fields beside them once
//! ([`WireRequest`]): the server reads requests and the SDK and the bench
//! write them through that one list, so no side can spell a name
//! differently. Meaning (digits, ranges, defaults) is the core's
//! business: these types only carry what was sent.

use std::fmt;

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

/// The channel a code travels on (`flowType`, contract §2): the hosted
/// service's values and otpgate's extensions (`VOICE`, `EMAIL`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum FlowType {
    #[default]
    Sms,
    WhatsApp,
    Rcs,
    Sauth,
    Voice,
    Email,
}

impl FlowType {
    pub const ALL: [FlowType; 6] = [
        Self::Sms,
        Self::WhatsApp,
        Self::Rcs,
        Self::Sauth,
        Self::Voice,
        Self::Email,
    ];

    /// The wire value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Sms => "SMS",
            Self::WhatsApp => "WHATSAPP",
            Self::Rcs => "RCS",
            Self::Sauth => "SAUTH",
            Self::Voice => "VOICE",
            Self::Email => "EMAIL",
        }
    }

    /// The wire value in any case (`sms`, `Sms`).
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|f| f.as_str().eq_ignore_ascii_case(s.trim()))
    }
}

impl fmt::Display for FlowType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A request as named parameters. Each request lists its fields once,
/// beside their wire names ([`WireRequest::fields`]); the server reads one
/// with [`WireRequest::from_params`], the SDK and the bench write one with
/// [`WireRequest::to_params`].
pub trait WireRequest: Default + Clone {
    /// Each parameter's wire name beside its field, in the contract's order.
    fn fields(&mut self) -> Vec<(&'static str, &mut Option<String>)>;

    /// The request `get` answers: a name's value, or `None` when it is
    /// absent (the server also treats a blank value as absent).
    fn from_params(get: impl Fn(&'static str) -> Option<String>) -> Self {
        let mut r = Self::default();
        for (name, field) in r.fields() {
            *field = get(name);
        }
        r
    }

    /// The parameters to send, in order; absent ones are left out.
    fn to_params(&self) -> Vec<(&'static str, String)> {
        let mut r = self.clone();
        r.fields()
            .into_iter()
            .filter_map(|(name, value)| value.take().map(|v| (name, v)))
            .collect()
    }
}

/// Declares a request type: each field, an `Option<String>`, beside the
/// [`param`] it travels as, and from that one list its
/// [`WireRequest::fields`], in the order written (the contract's). With a
/// `debug:` list, its `Debug` shows those fields only (the rest may be the
/// end user's or a secret).
macro_rules! wire_request {
    (
        $(#[$attr:meta])*
        pub struct $name:ident {
            $($(#[$doc:meta])* $field:ident: $param:ident,)*
        }
        $(debug: $($shown:ident),+;)?
    ) => {
        $(#[$attr])*
        pub struct $name {
            $($(#[$doc])* pub $field: Option<String>,)*
        }

        impl WireRequest for $name {
            fn fields(&mut self) -> Vec<(&'static str, &mut Option<String>)> {
                vec![$((param::$param, &mut self.$field),)*]
            }
        }

        $(
            impl fmt::Debug for $name {
                fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                    f.debug_struct(stringify!($name))
                        $(.field(stringify!($shown), &self.$shown))+
                        .finish_non_exhaustive()
                }
            }
        )?
    };
}

wire_request! {
    /// §1: `GET /auth/v1/authentication/token`.
    #[derive(Clone, Default, PartialEq, Eq)]
    pub struct TokenRequest {
        customer_id: CUSTOMER_ID,
        /// Base64 of the account's password.
        key: KEY,
        /// `NEW` asks for a fresh token (every request gets one).
        scope: SCOPE,
        /// Accepted, not checked.
        country: COUNTRY,
        /// Accepted, not checked.
        email: EMAIL,
    }
    // The key is the account's password: never in debug output.
    debug: customer_id, scope, country;
}

wire_request! {
    /// §2: `POST …/send`.
    #[derive(Clone, Default, PartialEq, Eq)]
    pub struct SendRequest {
        country_code: COUNTRY_CODE,
        mobile_number: MOBILE_NUMBER,
        flow_type: FLOW_TYPE,
        otp_length: OTP_LENGTH,
        /// Extension: validity in seconds.
        timeout: TIMEOUT,
        lang_id: LANG_ID,
        email: EMAIL,
        /// When present, must be the token's account.
        customer_id: CUSTOMER_ID,
    }
    // Numbers and addresses are the end user's: not in debug output.
    debug: country_code, flow_type, otp_length, timeout, lang_id, customer_id;
}

wire_request! {
    /// §3: `…/validateOtp`; also the status extension, which takes the same
    /// parameters but `code`.
    #[derive(Clone, Default, PartialEq, Eq)]
    pub struct ValidateRequest {
        verification_id: VERIFICATION_ID,
        code: CODE,
        /// When present, must be the token's account.
        customer_id: CUSTOMER_ID,
    }
    // The code is a secret until used: never in debug output.
    debug: verification_id, customer_id;
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    #[test]
    fn debug_output_leaves_out_secrets_and_the_end_users_details() {
        let token = TokenRequest {
            customer_id: Some("C-1".into()),
            key: Some("c2VjcmV0IHBhc3N3b3Jk".into()),
            email: Some("owner@example.com".into()),
            ..TokenRequest::default()
        };
        let send = SendRequest {
            mobile_number: Some("9876543210".into()),
            email: Some("user@example.com".into()),
            ..SendRequest::default()
        };
        let validate = ValidateRequest {
            code: Some("4817".into()),
            ..ValidateRequest::default()
        };
        let shown = format!("{token:?} {send:?} {validate:?}");
        assert!(shown.contains("C-1"), "{shown}");
        for secret in [
            "c2VjcmV0IHBhc3N3b3Jk",
            "owner@",
            "9876543210",
            "user@",
            "4817",
        ] {
            assert!(!shown.contains(secret), "{secret} in {shown}");
        }
    }

    fn round_trip<R: WireRequest + PartialEq + fmt::Debug>(r: &R) {
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
