//! Auth tokens (contract §1) on the client side: a redacting wrapper, the
//! JWT claims some clients read (`sub`, `iat`, `exp`), and when a cached token
//! should be replaced.
//!
//! The payload is decoded, never verified: the client has no key, and the
//! claims only decide when to ask for a new token. A token that is not a JWT
//! (a hosted variant, or a future format) is cached until a call gets a 401.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};

/// JWT segments are base64url; padding is tolerated because some encoders
/// leave it on.
const JWT_B64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::URL_SAFE,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Longest token looked into; real ones are a few hundred bytes.
const MAX_TOKEN: usize = 8192;

/// An auth token. Its `Debug` never shows the value, so it can sit in
/// structs that get logged.
#[derive(Clone, PartialEq, Eq)]
pub struct AuthToken {
    value: Arc<str>,
    claims: Option<TokenClaims>,
}

/// The claims read from a JWT's payload (not verified).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct TokenClaims {
    iat: Option<i64>,
    exp: i64,
}

impl AuthToken {
    /// Wraps a token, reading its `exp` and `iat` when it is a JWT.
    pub fn new(value: impl Into<String>) -> Self {
        let value: String = value.into();
        let claims = decode_claims(&value);
        Self {
            value: value.into(),
            claims,
        }
    }

    /// The token itself, for the `authToken` header or for showing to a
    /// person who asked for it.
    pub fn expose(&self) -> &str {
        &self.value
    }

    /// When the token expires, if it is a JWT with an `exp` claim.
    pub fn expires_at(&self) -> Option<SystemTime> {
        let exp = u64::try_from(self.claims?.exp).ok()?;
        UNIX_EPOCH.checked_add(Duration::from_secs(exp))
    }

    /// The customerId the token was issued to (`sub`), if it is a JWT.
    pub fn subject(&self) -> Option<String> {
        let payload = jwt_payload(&self.value)?;
        payload.get("sub")?.as_str().map(str::to_owned)
    }
}

impl fmt::Debug for AuthToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthToken")
            .field("value", &"[redacted]")
            .field("expires_at", &self.expires_at())
            .finish()
    }
}

fn jwt_payload(token: &str) -> Option<serde_json::Map<String, serde_json::Value>> {
    if token.len() > MAX_TOKEN {
        return None;
    }
    let mut parts = token.split('.');
    let (_header, payload, _sig) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let bytes = JWT_B64.decode(payload).ok()?;
    match serde_json::from_slice(&bytes).ok()? {
        serde_json::Value::Object(map) => Some(map),
        _ => None,
    }
}

fn decode_claims(token: &str) -> Option<TokenClaims> {
    let payload = jwt_payload(token)?;
    let int = |key: &str| -> Option<i64> {
        let v = payload.get(key)?;
        // `exp` is a NumericDate: seconds, possibly with a fraction.
        v.as_i64().or_else(|| {
            v.as_f64()
                .filter(|f| f.is_finite() && f.abs() < 1e15)
                .map(|f| {
                    #[allow(clippy::cast_possible_truncation)]
                    let s = f.floor() as i64;
                    s
                })
        })
    };
    Some(TokenClaims {
        iat: int("iat"),
        exp: int("exp")?,
    })
}

/// A token in the cache, with the instant after which it should be replaced.
#[derive(Debug, Clone)]
pub(crate) struct CachedToken {
    pub(crate) token: AuthToken,
    /// `None`: no known expiry; kept until the service refuses it.
    refresh_at: Option<Instant>,
}

impl CachedToken {
    /// Schedules the refresh `refresh_ahead` before expiry, but never earlier
    /// than half-way through the token's life, so short-lived tokens (tests,
    /// strict deployments) are not fetched again on every call.
    ///
    /// The lifetime is taken from `exp - iat` and counted from `received`,
    /// which makes the schedule immune to skew between the two clocks; only
    /// without `iat` is `exp` compared with the local wall clock.
    pub(crate) fn new(token: AuthToken, received: Instant, refresh_ahead: Duration) -> Self {
        let lifetime = token.claims.and_then(|c| match c.iat {
            Some(iat) if c.exp > iat => u64::try_from(c.exp - iat).ok().map(Duration::from_secs),
            _ => {
                let now = SystemTime::now().duration_since(UNIX_EPOCH).ok()?.as_secs();
                let exp = u64::try_from(c.exp).ok()?;
                exp.checked_sub(now)
                    .filter(|left| *left > 0)
                    .map(Duration::from_secs)
            }
        });
        let refresh_at = lifetime.and_then(|life| {
            let margin = refresh_ahead.min(life / 2);
            received.checked_add(life - margin)
        });
        Self { token, refresh_at }
    }

    pub(crate) fn is_fresh(&self, now: Instant) -> bool {
        self.refresh_at.is_none_or(|at| now < at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;

    fn jwt(payload: &str) -> String {
        format!(
            "{}.{}.c2ln",
            URL_SAFE_NO_PAD.encode(r#"{"alg":"HS512"}"#),
            URL_SAFE_NO_PAD.encode(payload)
        )
    }

    #[test]
    fn reads_the_contracts_sample_claims() {
        let t = AuthToken::new(jwt(
            r#"{"sub":"C-6D16D900FA3044F","iat":1764100000,"exp":1764704800}"#,
        ));
        assert_eq!(t.subject().as_deref(), Some("C-6D16D900FA3044F"));
        assert_eq!(
            t.expires_at(),
            Some(UNIX_EPOCH + Duration::from_secs(1_764_704_800))
        );
    }

    #[test]
    fn opaque_tokens_have_no_expiry_and_stay_fresh() {
        for raw in ["opaque", "a.b", "a.%%%.c", "a.b.c.d", ""] {
            let t = AuthToken::new(raw);
            assert_eq!(t.expires_at(), None, "{raw}");
            let c = CachedToken::new(t, Instant::now(), Duration::from_secs(60));
            assert!(c.is_fresh(Instant::now() + Duration::from_secs(86_400 * 365)));
        }
    }

    #[test]
    fn refresh_is_scheduled_ahead_of_expiry() {
        let now = Instant::now();
        let week = AuthToken::new(jwt(r#"{"sub":"C","iat":100,"exp":604900}"#));
        let c = CachedToken::new(week, now, Duration::from_secs(60));
        assert!(c.is_fresh(now + Duration::from_secs(604_800 - 61)));
        assert!(!c.is_fresh(now + Duration::from_secs(604_800 - 59)));

        // A 2-second token is refreshed after one second, not every call.
        let short = AuthToken::new(jwt(r#"{"iat":100,"exp":102}"#));
        let c = CachedToken::new(short, now, Duration::from_secs(60));
        assert!(c.is_fresh(now + Duration::from_millis(900)));
        assert!(!c.is_fresh(now + Duration::from_millis(1100)));
    }

    #[test]
    fn debug_never_shows_the_token() {
        let t = AuthToken::new("super-secret-token");
        assert!(!format!("{t:?}").contains("super-secret"));
    }
}
