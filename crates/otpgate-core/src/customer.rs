//! The account identifier of the Verify Now contract: `C-` followed by 15
//! upper-case hexadecimal digits, e.g. `C-6D16D900FA3044F`.

use std::fmt;

use rand::{CryptoRng, RngExt};

#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CustomerId(String);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CustomerIdError {
    #[error("customerId must be 'C-' followed by 15 upper-case hex digits")]
    Malformed,
}

impl CustomerId {
    /// Parses a customerId as the contract writes it.
    ///
    /// # Errors
    /// [`CustomerIdError::Malformed`] for anything but `C-` + 15 upper-case hex.
    pub fn parse(s: &str) -> Result<Self, CustomerIdError> {
        let hex = s.strip_prefix("C-").ok_or(CustomerIdError::Malformed)?;
        let ok = hex.len() == 15
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(&b));
        if ok {
            Ok(Self(s.to_owned()))
        } else {
            Err(CustomerIdError::Malformed)
        }
    }

    /// A fresh random id; 60 bits, so collisions are left to the store's
    /// unique key to catch.
    pub fn generate<R: CryptoRng + ?Sized>(rng: &mut R) -> Self {
        let n: u64 = rng.random_range(0..(1u64 << 60));
        Self(format!("C-{n:015X}"))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for CustomerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for CustomerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CustomerId({})", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_contracts_example() {
        assert!(CustomerId::parse("C-6D16D900FA3044F").is_ok());
    }

    #[test]
    fn rejects_lower_case_short_long_and_unprefixed() {
        for bad in [
            "C-6d16d900fa3044f",
            "C-6D16D900FA3044",
            "C-6D16D900FA3044F0",
            "6D16D900FA3044F00",
            "",
            "C-",
            "C-6D16D900FA3044G",
        ] {
            assert!(CustomerId::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn generated_ids_parse() {
        let mut rng = rand::rng();
        for _ in 0..1000 {
            let id = CustomerId::generate(&mut rng);
            assert_eq!(CustomerId::parse(id.as_str()), Ok(id));
        }
    }
}
