//! Request parameters (contract "Conventions"): from the query string, and
//! from an `application/x-www-form-urlencoded` or `multipart/form-data` body
//! (the latter read in `multipart`), the query winning on conflict. Any other body (clients send `{}`) is read, bounded,
//! and ignored. A parameter given twice, bad percent-encoding and non-UTF-8
//! are refused with a reason rather than guessed at.

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
        let mut out: Vec<(String, String)> = Vec::new();
        for pair in raw.split(|b| *b == b'&').filter(|p| !p.is_empty()) {
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
            if out.iter().any(|(k2, _)| *k2 == key) {
                return Err(ApiError::bad_request(format!(
                    "parameter {} is given more than once",
                    printable(&key)
                )));
            }
            out.push((key, value));
        }
        Ok(Self(out))
    }

    /// Adds `other`'s parameters that this one lacks (query wins).
    fn fill_from(&mut self, other: Params) {
        for (k, v) in other.0 {
            if !self.0.iter().any(|(k2, _)| *k2 == k) {
                self.0.push((k, v));
            }
        }
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

    /// # Errors
    /// 400 `"<name> is required"`.
    pub fn required(&self, name: &str) -> Result<&str, ApiError> {
        self.get(name)
            .ok_or_else(|| ApiError::bad_request(format!("{name} is required")))
    }
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

impl<S: Send + Sync> FromRequest<S> for Params {
    type Rejection = ApiError;

    async fn from_request(req: Request, _state: &S) -> Result<Self, Self::Rejection> {
        let limit = req
            .extensions()
            .get::<BodyLimit>()
            .map_or(16 * 1024, |l| l.0);
        let content_type = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let is_form = content_type
            .trim_start()
            .to_ascii_lowercase()
            .starts_with("application/x-www-form-urlencoded");
        let multipart = crate::multipart::boundary(content_type).transpose()?;
        let mut params = Params::parse(req.uri().query().unwrap_or("").as_bytes())?;
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
            params.fill_from(Params::parse(&body)?);
        } else if let Some(boundary) = multipart {
            // Names are unique within the body (checked there), as a form's.
            let fields = crate::multipart::text_fields(body, boundary).await?;
            params.fill_from(Params(fields));
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
        assert!(p.required("c").is_err());
    }

    #[test]
    fn refuses_duplicates_bad_escapes_and_non_utf8() {
        assert!(Params::parse(b"a=1&a=2").is_err());
        assert!(Params::parse(b"a=%zz").is_err());
        assert!(Params::parse(b"a=%ff%fe").is_err());
        assert!(Params::parse(b"a=%4").is_err());
    }

    #[test]
    fn query_wins_over_form() {
        let mut q = Params::parse(b"a=1").unwrap();
        q.fill_from(Params::parse(b"a=2&b=3").unwrap());
        assert_eq!(q.get("a"), Some("1"));
        assert_eq!(q.get("b"), Some("3"));
    }
}
