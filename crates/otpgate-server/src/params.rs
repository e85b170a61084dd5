//! Request parameters (contract "Conventions"): from the query string, and
//! from an `application/x-www-form-urlencoded` or `multipart/form-data` body
//! (the latter read in `multipart`), the query winning on conflict. Any other body (clients send `{}`) is read, bounded,
//! and ignored. A parameter given twice, bad percent-encoding and non-UTF-8
//! are refused with a reason rather than guessed at. Parsing runs before
//! authentication, so it is linear in the input and stops at
//! `http.max_params` parameters.

use std::collections::HashSet;

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::{StatusCode, header};

use crate::error::ApiError;

/// The request's parameters, decoded.
#[derive(Debug, Default)]
pub struct Params(Vec<(String, String)>);

impl Params {
    /// Parses a query string or form body; a key twice is an error.
    ///
    /// # Errors
    /// 400 naming the parameter and what is wrong with it.
    pub fn parse(raw: &[u8]) -> Result<Self, ApiError> {
        Self::parse_at_most(raw, DEFAULT_MAX_PARAMS)
    }

    /// As [`Params::parse`], refusing more than `max` parameters.
    ///
    /// # Errors
    /// As [`Params::parse`], and 400 for too many parameters.
    pub fn parse_at_most(raw: &[u8], max: usize) -> Result<Self, ApiError> {
        let mut out: Vec<(String, String)> = Vec::new();
        let mut seen: HashSet<String> = HashSet::new();
        for pair in raw.split(|b| *b == b'&').filter(|p| !p.is_empty()) {
            if out.len() >= max {
                return Err(too_many(max));
            }
            let (k, v) = match pair.iter().position(|b| *b == b'=') {
                Some(i) => (&pair[..i], &pair[i + 1..]),
                None => (pair, &b""[..]),
            };
            let key = decode(k).ok_or_else(|| {
                ApiError::bad_request("a parameter name is not valid percent-encoded UTF-8")
            })?;
            let value = decode(v).ok_or_else(|| {
                ApiError::bad_request(format!(
                    "parameter {} is not valid percent-encoded UTF-8",
                    printable(&key)
                ))
            })?;
            if !seen.insert(key.clone()) {
                return Err(ApiError::bad_request(format!(
                    "parameter {} is given more than once",
                    printable(&key)
                )));
            }
            out.push((key, value));
        }
        Ok(Self(out))
    }

    /// Parameters from pairs a form already parsed (the console's).
    pub fn from_pairs(pairs: Vec<(String, String)>) -> Self {
        Self(pairs)
    }

    /// Adds `other`'s parameters that this one lacks (query wins), up to
    /// `max` in all.
    fn fill_from(&mut self, other: Params, max: usize) -> Result<(), ApiError> {
        let have: HashSet<String> = self.0.iter().map(|(k, _)| k.clone()).collect();
        for (k, v) in other.0 {
            if !have.contains(&k) {
                if self.0.len() >= max {
                    return Err(too_many(max));
                }
                self.0.push((k, v));
            }
        }
        Ok(())
    }

    /// Every parameter, in the order given.
    pub fn pairs(&self) -> &[(String, String)] {
        &self.0
    }

    /// The value of `name`, trimmed, or `None` when absent or blank.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.trim())
            .filter(|v| !v.is_empty())
    }

    /// The wire request these parameters make (blank values are absent).
    pub fn read<R: otpgate_api::WireRequest>(&self) -> R {
        R::from_params(|name| self.get(name).map(str::to_owned))
    }
}

/// Parameters accepted when the router sets no `MaxParams`.
const DEFAULT_MAX_PARAMS: usize = 256;

fn too_many(max: usize) -> ApiError {
    ApiError::bad_request(format!("too many parameters: at most {max} are accepted"))
}

/// Shortens and cleans a client-supplied name before it goes into an error
/// message, so a 10 kB key does not come back as a 10 kB reason.
fn printable(s: &str) -> String {
    let clean: String = s.chars().filter(|c| !c.is_control()).take(40).collect();
    format!("'{clean}'")
}

/// `application/x-www-form-urlencoded` decoding: `+` is a space, `%XX` a
/// byte; the result must be UTF-8.
fn decode(s: &[u8]) -> Option<String> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        match s[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = s.get(i + 1..i + 3)?;
                let hi = (hex[0] as char).to_digit(16)?;
                let lo = (hex[1] as char).to_digit(16)?;
                out.push(u8::try_from(hi * 16 + lo).ok()?);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

/// Largest body read; set from `http.max_body_bytes` by the router.
#[derive(Debug, Clone, Copy)]
pub struct BodyLimit(pub usize);

/// Most parameters accepted; set from `http.max_params` by the router.
#[derive(Debug, Clone, Copy)]
pub struct MaxParams(pub usize);

impl<S: Send + Sync> FromRequest<S> for Params {
    type Rejection = ApiError;

    async fn from_request(req: Request, _state: &S) -> Result<Self, Self::Rejection> {
        let limit = req
            .extensions()
            .get::<BodyLimit>()
            .map_or(16 * 1024, |l| l.0);
        let max = req
            .extensions()
            .get::<MaxParams>()
            .map_or(DEFAULT_MAX_PARAMS, |m| m.0);
        let is_form = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|ct| {
                ct.trim_start()
                    .to_ascii_lowercase()
                    .starts_with("application/x-www-form-urlencoded")
            });
        let multipart = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(crate::multipart::boundary)
            .transpose()?;
        let mut params = Params::parse_at_most(req.uri().query().unwrap_or("").as_bytes(), max)?;
        let body: Bytes = axum::body::to_bytes(req.into_body(), limit)
            .await
            .map_err(|_| {
                ApiError::http(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "PAYLOAD_TOO_LARGE",
                    format!("request body is larger than {limit} bytes"),
                )
            })?;
        if is_form {
            params.fill_from(Params::parse_at_most(&body, max)?, max)?;
        } else if let Some(boundary) = multipart {
            // Read in `multipart` (names unique, parts bounded there), then
            // merged as a form body's are.
            let fields = crate::multipart::text_fields(body, boundary).await?;
            params.fill_from(Params(fields), max)?;
        }
        Ok(params)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_plus_and_percent() {
        let p = Params::parse(b"a=x+y&b=%2B91&c=").unwrap();
        assert_eq!(p.get("a"), Some("x y"));
        assert_eq!(p.get("b"), Some("+91"));
        assert_eq!(p.get("c"), None);
    }

    #[test]
    fn refuses_duplicates_bad_escapes_and_non_utf8() {
        assert!(Params::parse(b"a=1&a=2").is_err());
        assert!(Params::parse(b"a=%zz").is_err());
        assert!(Params::parse(b"a=%ff%fe").is_err());
        assert!(Params::parse(b"a=%4").is_err());
    }

    #[test]
    fn too_many_parameters_are_refused_and_duplicates_found_in_linear_time() {
        let many: Vec<String> = (0..7000).map(|i| format!("k{i}=v")).collect();
        let e = Params::parse_at_most(many.join("&").as_bytes(), 256).unwrap_err();
        assert!(e.reason.contains("at most 256"), "{}", e.reason);
        let ok = Params::parse_at_most(many[..256].join("&").as_bytes(), 256).unwrap();
        assert_eq!(ok.pairs().len(), 256);
        // A duplicate at the end of a long list is still found.
        let mut dup = many[..5000].to_vec();
        dup.push("k0=again".into());
        let e = Params::parse_at_most(dup.join("&").as_bytes(), 10_000).unwrap_err();
        assert!(e.reason.contains("more than once"), "{}", e.reason);
        let mut q = Params::parse(b"a=1").unwrap();
        assert!(q.fill_from(Params::parse(b"b=2&c=3").unwrap(), 2).is_err());
    }

    #[test]
    fn query_wins_over_form() {
        let mut q = Params::parse(b"a=1").unwrap();
        q.fill_from(Params::parse(b"a=2&b=3").unwrap(), 10).unwrap();
        assert_eq!(q.get("a"), Some("1"));
        assert_eq!(q.get("b"), Some("3"));
    }
}
