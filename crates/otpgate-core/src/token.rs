//! Auth tokens (contract §1): JWTs signed with HS512, header `{"alg":"HS512"}`,
//! claims `sub`, `iat`, `exp`, as the hosted service issues them.
//!
//! Revocation without a deny-list: each account's tokens are signed with a key
//! derived from the server secret, the customerId and the account's token
//! epoch. Changing the password bumps the epoch, so every earlier token stops
//! verifying, while the token itself keeps exactly the hosted service's shape.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, KeyInit, Mac};
use serde::{Deserialize, Serialize};
use sha2::{Sha256, Sha512};

use crate::customer::CustomerId;

/// The claims the contract names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub iat: i64,
    pub exp: i64,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    #[error("authToken is not a well-formed JWT")]
    Malformed,
    #[error("authToken must be signed with HS512")]
    WrongAlgorithm,
    #[error("authToken signature does not verify, or the token was revoked")]
    BadSignature,
    #[error("authToken has expired")]
    Expired,
}

/// Longest token looked at; ours are about 180 bytes.
const MAX_TOKEN: usize = 4096;
const HEADER: &str = r#"{"alg":"HS512"}"#;

/// Issues and checks tokens with the server's signing secret.
#[derive(Clone)]
pub struct TokenSigner {
    secret: Vec<u8>,
    lifetime_secs: i64,
}

impl std::fmt::Debug for TokenSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenSigner")
            .field("lifetime_secs", &self.lifetime_secs)
            .finish_non_exhaustive()
    }
}

impl TokenSigner {
    pub fn new(secret: Vec<u8>, lifetime_secs: i64) -> Self {
        Self {
            secret,
            lifetime_secs,
        }
    }

    pub fn lifetime_secs(&self) -> i64 {
        self.lifetime_secs
    }

    /// A token for `customer` valid from `now_ms` for the configured lifetime.
    pub fn issue(&self, customer: &CustomerId, epoch: i64, now_ms: i64) -> String {
        let iat = now_ms.div_euclid(1000);
        let claims = Claims {
            sub: customer.as_str().to_owned(),
            iat,
            exp: iat.saturating_add(self.lifetime_secs),
        };
        let payload = serde_json::to_vec(&claims).expect("claims serialize");
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(HEADER),
            URL_SAFE_NO_PAD.encode(payload)
        );
        let sig = self.mac(customer, epoch, signing_input.as_bytes());
        format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(sig))
    }

    /// Reads the account a token claims to be for, without trusting it, so
    /// the caller can look up that account's epoch and then [`verify`].
    ///
    /// [`verify`]: TokenSigner::verify
    ///
    /// # Errors
    /// [`TokenError::Malformed`] or [`TokenError::WrongAlgorithm`].
    pub fn unverified_subject(token: &str) -> Result<CustomerId, TokenError> {
        let (_, claims, _) = split(token)?;
        CustomerId::parse(&claims.sub).map_err(|_| TokenError::Malformed)
    }

    /// Checks signature (for this account's epoch) and expiry.
    ///
    /// # Errors
    /// [`TokenError`] naming the first check that failed.
    pub fn verify(
        &self,
        token: &str,
        customer: &CustomerId,
        epoch: i64,
        now_ms: i64,
    ) -> Result<Claims, TokenError> {
        let (signing_input, claims, sig) = split(token)?;
        if claims.sub != customer.as_str() {
            return Err(TokenError::BadSignature);
        }
        let mut mac = self.mac_state(customer, epoch);
        mac.update(signing_input.as_bytes());
        mac.verify_slice(&sig)
            .map_err(|_| TokenError::BadSignature)?;
        if claims.exp <= now_ms.div_euclid(1000) {
            return Err(TokenError::Expired);
        }
        Ok(claims)
    }

    fn mac_state(&self, customer: &CustomerId, epoch: i64) -> Hmac<Sha512> {
        let mut kdf = <Hmac<Sha256> as KeyInit>::new_from_slice(&self.secret)
            .expect("HMAC accepts keys of any length");
        kdf.update(b"otpgate token v1\0");
        kdf.update(customer.as_str().as_bytes());
        kdf.update(&epoch.to_be_bytes());
        let account_key = kdf.finalize().into_bytes();
        <Hmac<Sha512> as KeyInit>::new_from_slice(&account_key)
            .expect("HMAC accepts keys of any length")
    }

    fn mac(&self, customer: &CustomerId, epoch: i64, data: &[u8]) -> Vec<u8> {
        let mut mac = self.mac_state(customer, epoch);
        mac.update(data);
        mac.finalize().into_bytes().to_vec()
    }
}

#[derive(Deserialize)]
struct Header {
    alg: String,
}

fn split(token: &str) -> Result<(&str, Claims, Vec<u8>), TokenError> {
    if token.len() > MAX_TOKEN {
        return Err(TokenError::Malformed);
    }
    let (signing_input, sig_b64) = token.rsplit_once('.').ok_or(TokenError::Malformed)?;
    let (header_b64, payload_b64) = signing_input.split_once('.').ok_or(TokenError::Malformed)?;
    let header: Header = decode_json(header_b64)?;
    // Only HS512: `none` and every other algorithm are refused before any
    // signature work, so a forged header cannot choose how it is checked.
    if header.alg != "HS512" {
        return Err(TokenError::WrongAlgorithm);
    }
    let claims: Claims = decode_json(payload_b64)?;
    let sig = URL_SAFE_NO_PAD
        .decode(sig_b64)
        .map_err(|_| TokenError::Malformed)?;
    Ok((signing_input, claims, sig))
}

fn decode_json<T: for<'de> Deserialize<'de>>(b64: &str) -> Result<T, TokenError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(b64)
        .map_err(|_| TokenError::Malformed)?;
    serde_json::from_slice(&bytes).map_err(|_| TokenError::Malformed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cid() -> CustomerId {
        CustomerId::parse("C-6D16D900FA3044F").unwrap()
    }

    #[test]
    fn issued_token_verifies_and_has_the_hosted_shape() {
        let s = TokenSigner::new(b"secret".to_vec(), 604_800);
        let t = s.issue(&cid(), 0, 1_764_100_000_000);
        assert!(t.starts_with("eyJhbGciOiJIUzUxMiJ9."), "{t}");
        let c = s.verify(&t, &cid(), 0, 1_764_100_000_000).unwrap();
        assert_eq!(c.sub, "C-6D16D900FA3044F");
        assert_eq!(c.exp - c.iat, 604_800);
        assert_eq!(TokenSigner::unverified_subject(&t).unwrap(), cid());
    }

    #[test]
    fn expired_revoked_and_foreign_tokens_fail() {
        let s = TokenSigner::new(b"secret".to_vec(), 10);
        let t = s.issue(&cid(), 3, 1_000_000);
        assert_eq!(s.verify(&t, &cid(), 3, 1_010_000), Err(TokenError::Expired));
        assert_eq!(
            s.verify(&t, &cid(), 4, 1_000_000),
            Err(TokenError::BadSignature)
        );
        let other = TokenSigner::new(b"other".to_vec(), 10);
        assert_eq!(
            other.verify(&t, &cid(), 3, 1_000_000),
            Err(TokenError::BadSignature)
        );
    }

    #[test]
    fn alg_none_and_tampered_claims_are_refused() {
        let s = TokenSigner::new(b"secret".to_vec(), 100);
        let t = s.issue(&cid(), 0, 0);
        let parts: Vec<&str> = t.split('.').collect();
        let none = format!(
            "{}.{}.",
            URL_SAFE_NO_PAD.encode(r#"{"alg":"none"}"#),
            parts[1]
        );
        assert_eq!(
            s.verify(&none, &cid(), 0, 0),
            Err(TokenError::WrongAlgorithm)
        );
        let forged_claims =
            URL_SAFE_NO_PAD.encode(r#"{"sub":"C-6D16D900FA3044F","iat":0,"exp":99999999999}"#);
        let forged = format!("{}.{}.{}", parts[0], forged_claims, parts[2]);
        assert_eq!(
            s.verify(&forged, &cid(), 0, 0),
            Err(TokenError::BadSignature)
        );
        for junk in ["", "a.b", "a.b.c", "....", &"x".repeat(5000)] {
            assert!(s.verify(junk, &cid(), 0, 0).is_err());
        }
    }
}
