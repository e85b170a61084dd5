//! One-time codes: generated from a CSPRNG, stored only as an HMAC bound to
//! their verification, and compared in constant time. An [`OtpCode`] has no
//! `Display` and a redacting `Debug`, so it cannot slip into a log line.

use std::fmt;

use hmac::{Hmac, KeyInit, Mac};
use rand::{CryptoRng, RngExt};
use sha2::Sha256;
use subtle::ConstantTimeEq;

/// The number of digits in a code: 4 to 8 (contract §2, `otpLength`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct OtpLength(u8);

impl OtpLength {
    pub const MIN: u8 = 4;
    pub const MAX: u8 = 8;
    pub const DEFAULT: OtpLength = OtpLength(4);

    /// # Errors
    /// [`CodeError::LengthOutOfRange`] outside 4..=8.
    pub fn new(n: u8) -> Result<Self, CodeError> {
        if (Self::MIN..=Self::MAX).contains(&n) {
            Ok(Self(n))
        } else {
            Err(CodeError::LengthOutOfRange)
        }
    }

    /// Parses the wire form (`"6"`).
    ///
    /// # Errors
    /// [`CodeError::LengthOutOfRange`] when not a whole number in 4..=8.
    pub fn parse(s: &str) -> Result<Self, CodeError> {
        let n: u8 = s.trim().parse().map_err(|_| CodeError::LengthOutOfRange)?;
        Self::new(n)
    }

    pub fn get(self) -> u8 {
        self.0
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CodeError {
    #[error("otpLength must be a whole number from 4 to 8")]
    LengthOutOfRange,
    #[error("code must be 1 to 16 digits")]
    Malformed,
}

/// A code as generated or as typed by the end user.
#[derive(Clone)]
pub struct OtpCode(String);

impl OtpCode {
    /// A code drawn uniformly from all `len`-digit strings, leading zeros
    /// included: each digit is an independent uniform draw from 0..10.
    pub fn generate<R: CryptoRng + ?Sized>(len: OtpLength, rng: &mut R) -> Self {
        let s = (0..len.get())
            .map(|_| char::from(b'0' + rng.random_range(0..10u8)))
            .collect();
        Self(s)
    }

    /// Parses what an end user typed. Surrounding white space is dropped; a
    /// code of the wrong length is still a code (it is simply wrong), but
    /// anything that is not 1 to 16 digits is malformed input.
    ///
    /// # Errors
    /// [`CodeError::Malformed`].
    pub fn parse(s: &str) -> Result<Self, CodeError> {
        let s = s.trim();
        if (1..=16).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_digit()) {
            Ok(Self(s.to_owned()))
        } else {
            Err(CodeError::Malformed)
        }
    }

    /// The digits, for the one place that needs them: the message text.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// HMAC-SHA256 of the code, keyed by the server's code key and bound to
    /// the verification id, so equal codes of two verifications hash apart
    /// and a stolen table cannot be matched against a precomputed list.
    pub fn hash(&self, key: &CodeKey, verification_id: u64) -> CodeHash {
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&key.0)
            .expect("HMAC accepts keys of any length");
        mac.update(&verification_id.to_be_bytes());
        mac.update(self.0.as_bytes());
        CodeHash(mac.finalize().into_bytes().into())
    }

    /// Whether this code is the one behind `stored`, in constant time.
    pub fn matches(&self, key: &CodeKey, verification_id: u64, stored: &CodeHash) -> bool {
        self.hash(key, verification_id).0.ct_eq(&stored.0).into()
    }
}

impl fmt::Debug for OtpCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("OtpCode(***)")
    }
}

/// The stored form of a code.
#[derive(Clone, PartialEq, Eq)]
pub struct CodeHash(pub [u8; 32]);

impl CodeHash {
    /// # Errors
    /// [`CodeError::Malformed`] when `bytes` is not 32 long.
    pub fn from_slice(bytes: &[u8]) -> Result<Self, CodeError> {
        let arr: [u8; 32] = bytes.try_into().map_err(|_| CodeError::Malformed)?;
        Ok(Self(arr))
    }
}

impl fmt::Debug for CodeHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("CodeHash(..)")
    }
}

/// The server's secret HMAC key for codes.
#[derive(Clone)]
pub struct CodeKey(Vec<u8>);

impl CodeKey {
    pub fn new(bytes: Vec<u8>) -> Self {
        Self(bytes)
    }
}

impl fmt::Debug for CodeKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("CodeKey(***)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn right_code_matches_and_wrong_or_other_id_does_not() {
        let key = CodeKey::new(b"k".to_vec());
        let code = OtpCode::parse("0123").unwrap();
        let h = code.hash(&key, 7);
        assert!(code.matches(&key, 7, &h));
        assert!(!OtpCode::parse("0124").unwrap().matches(&key, 7, &h));
        assert!(!code.matches(&key, 8, &h));
        assert!(!code.matches(&CodeKey::new(b"j".to_vec()), 7, &h));
    }

    #[test]
    fn debug_never_shows_digits() {
        let code = OtpCode::parse("987654").unwrap();
        assert!(!format!("{code:?}").contains("987654"));
    }

    #[test]
    fn first_digit_is_uniform_leading_zeros_included() {
        // 20,000 draws over 10 buckets: chi-square with 9 degrees of freedom;
        // 27.88 is the 0.1% critical value, so a correct generator fails this
        // about once in a thousand runs.
        let mut rng = rand::rng();
        let mut counts = [0u32; 10];
        let n = 20_000;
        for _ in 0..n {
            let c = OtpCode::generate(OtpLength::new(6).unwrap(), &mut rng);
            counts[usize::from(c.expose().as_bytes()[0] - b'0')] += 1;
        }
        let expected = f64::from(n) / 10.0;
        let chi2: f64 = counts
            .iter()
            .map(|&c| (f64::from(c) - expected).powi(2) / expected)
            .sum();
        assert!(chi2 < 27.88, "chi2 {chi2}, counts {counts:?}");
    }

    proptest! {
        #[test]
        fn generated_codes_have_the_asked_length_and_only_digits(len in 4u8..=8) {
            let mut rng = rand::rng();
            let c = OtpCode::generate(OtpLength::new(len).unwrap(), &mut rng);
            prop_assert_eq!(c.expose().len(), usize::from(len));
            prop_assert!(c.expose().bytes().all(|b| b.is_ascii_digit()));
            prop_assert!(OtpCode::parse(c.expose()).is_ok());
        }

        #[test]
        fn lengths_outside_4_to_8_are_refused(n in any::<u8>()) {
            prop_assert_eq!(OtpLength::new(n).is_ok(), (4..=8).contains(&n));
        }

        #[test]
        fn non_digit_codes_are_malformed(s in "[0-9]{0,4}[^0-9\\s]{1}[0-9]{0,4}") {
            prop_assert!(OtpCode::parse(&s).is_err());
        }
    }
}
