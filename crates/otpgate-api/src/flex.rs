//! Values the hosted service writes in more than one way: ids as strings or
//! numbers, seconds as `"60"`, `"60.0"` or `60`.

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;

/// A `verificationId`: v2 paths send it as a string, v3 validate as a number
/// (contract §3). Reads either; writes the form it was built with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WireId {
    value: u64,
    as_number: bool,
}

impl WireId {
    pub fn string(value: u64) -> Self {
        Self {
            value,
            as_number: false,
        }
    }
    pub fn number(value: u64) -> Self {
        Self {
            value,
            as_number: true,
        }
    }
    /// The id; `Option` for symmetry with callers that treat 0 as absent.
    pub fn value(self) -> Option<u64> {
        Some(self.value)
    }
    pub fn get(self) -> u64 {
        self.value
    }
}

impl Serialize for WireId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.as_number {
            s.serialize_u64(self.value)
        } else {
            s.collect_str(&self.value)
        }
    }
}

impl<'de> Deserialize<'de> for WireId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = WireId;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a verification id as a number or a string of digits")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<WireId, E> {
                Ok(WireId::number(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<WireId, E> {
                u64::try_from(v)
                    .map(WireId::number)
                    .map_err(|_| E::custom("negative verification id"))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<WireId, E> {
                v.trim()
                    .parse::<u64>()
                    .map(WireId::string)
                    .map_err(|_| E::custom("verification id is not digits"))
            }
        }
        d.deserialize_any(V)
    }
}

/// Seconds as the contract writes them: a string of a whole number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WireSeconds(pub u64);

impl Serialize for WireSeconds {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for WireSeconds {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let f = number(d)?;
        if f.is_finite() && f >= 0.0 {
            // Rounded, not truncated: "59.6" seconds left is closer to 60.
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            Ok(WireSeconds(f.round() as u64))
        } else {
            Err(de::Error::custom("timeout is not a non-negative number"))
        }
    }
}

/// An integer written as a number or a string (`702`, `"702"`).
pub(crate) fn integer<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    let f = number(d)?;
    if f.fract() == 0.0 && f.abs() < 9e15 {
        #[allow(clippy::cast_possible_truncation)]
        Ok(f as i64)
    } else {
        Err(de::Error::custom("expected a whole number"))
    }
}

fn number<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    struct V;
    impl Visitor<'_> for V {
        type Value = f64;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a number or a string holding one")
        }
        #[allow(clippy::cast_precision_loss)]
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<f64, E> {
            Ok(v as f64)
        }
        #[allow(clippy::cast_precision_loss)]
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<f64, E> {
            Ok(v as f64)
        }
        fn visit_f64<E: de::Error>(self, v: f64) -> Result<f64, E> {
            Ok(v)
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<f64, E> {
            v.trim()
                .parse::<f64>()
                .map_err(|_| E::custom("not a number"))
        }
    }
    d.deserialize_any(V)
}
