//! `multipart/form-data` bodies (contract "Conventions": the hosted
//! service's own web console sends send's fields that way, with nothing in
//! the query). Text fields become parameters exactly as a form body's do;
//! file parts are read (they count against the bounds) and ignored.
//!
//! Bounds, whatever a client sends: the body was already read up to
//! `http.max_body_bytes` by the caller; at most [`MAX_FIELDS`] parts, each
//! value at most [`MAX_FIELD_BYTES`]; a name given twice, a malformed body or
//! a text field that is not UTF-8 is a 400 with the reason.

use axum::body::Bytes;
use multer::{Constraints, Multipart, SizeLimit};

use crate::error::ApiError;

/// Parts one body may have. The contract's endpoints take under a dozen
/// parameters; the bound keeps a body of thousands of tiny parts from
/// costing thousands of allocations.
pub const MAX_FIELDS: usize = 64;

/// Longest value of one part (a phone number or a code is a few bytes).
pub const MAX_FIELD_BYTES: u64 = 4096;

/// Whether `content_type` names a multipart form; then its boundary.
pub fn boundary(content_type: &str) -> Option<Result<String, ApiError>> {
    let is_multipart = content_type
        .trim_start()
        .get(..19)
        .is_some_and(|p| p.eq_ignore_ascii_case("multipart/form-data"));
    if !is_multipart {
        return None;
    }
    Some(
        multer::parse_boundary(content_type).map_err(|_| {
            ApiError::bad_request("multipart/form-data body without a valid boundary")
        }),
    )
}

/// The text fields of a multipart body, in order.
///
/// # Errors
/// 400 for a malformed body, too many parts, a part too large, a name given
/// twice, or a text value that is not UTF-8.
pub async fn text_fields(body: Bytes, boundary: String) -> Result<Vec<(String, String)>, ApiError> {
    let stream = futures::stream::once(async move { Ok::<Bytes, std::io::Error>(body) });
    let constraints = Constraints::new().size_limit(SizeLimit::new().per_field(MAX_FIELD_BYTES));
    let mut form = Multipart::with_constraints(stream, boundary, constraints);
    let mut out: Vec<(String, String)> = Vec::new();
    let mut parts = 0usize;
    loop {
        let field = match form.next_field().await {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(e) => return Err(malformed(&e)),
        };
        parts += 1;
        if parts > MAX_FIELDS {
            return Err(ApiError::bad_request(format!(
                "multipart body has more than {MAX_FIELDS} parts"
            )));
        }
        let name = field.name().map(str::to_owned);
        let is_file = field.file_name().is_some();
        let value = field.bytes().await.map_err(|e| malformed(&e))?;
        let (Some(name), false) = (name, is_file) else {
            continue;
        };
        let value = String::from_utf8(value.to_vec()).map_err(|_| {
            ApiError::bad_request(format!("multipart field {} is not UTF-8", printable(&name)))
        })?;
        if out.iter().any(|(k, _)| *k == name) {
            return Err(ApiError::bad_request(format!(
                "parameter {} is given more than once",
                printable(&name)
            )));
        }
        out.push((name, value));
    }
    Ok(out)
}

fn malformed(e: &multer::Error) -> ApiError {
    match e {
        multer::Error::FieldSizeExceeded { .. } => ApiError::bad_request(format!(
            "a multipart field is larger than {MAX_FIELD_BYTES} bytes"
        )),
        _ => ApiError::bad_request("malformed multipart/form-data body"),
    }
}

/// A client-supplied name as it may appear in a reason: short, no controls.
fn printable(s: &str) -> String {
    let clean: String = s.chars().filter(|c| !c.is_control()).take(40).collect();
    format!("'{clean}'")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(parts: &[(&str, Option<&str>, &str)]) -> Bytes {
        let mut b = String::new();
        for (name, file, value) in parts {
            b.push_str("--XyZ\r\nContent-Disposition: form-data; name=\"");
            b.push_str(name);
            b.push('"');
            if let Some(f) = file {
                b.push_str(&format!("; filename=\"{f}\""));
            }
            b.push_str("\r\n\r\n");
            b.push_str(value);
            b.push_str("\r\n");
        }
        b.push_str("--XyZ--\r\n");
        Bytes::from(b)
    }

    #[tokio::test]
    async fn reads_text_fields_and_skips_files() {
        let b = body(&[
            ("countryCode", None, "91"),
            ("upload", Some("a.txt"), "ignored"),
            ("mobileNumber", None, "9876543210"),
        ]);
        let f = text_fields(b, "XyZ".into()).await.unwrap();
        assert_eq!(
            f,
            [
                ("countryCode".to_owned(), "91".to_owned()),
                ("mobileNumber".to_owned(), "9876543210".to_owned())
            ]
        );
    }

    #[tokio::test]
    async fn refuses_duplicates_oversize_too_many_parts_and_garbage() {
        let dup = body(&[("a", None, "1"), ("a", None, "2")]);
        assert!(text_fields(dup, "XyZ".into()).await.is_err());
        let big = "9".repeat(usize::try_from(MAX_FIELD_BYTES).unwrap() + 1);
        let oversize = body(&[("a", None, &big)]);
        assert!(text_fields(oversize, "XyZ".into()).await.is_err());
        let names: Vec<String> = (0..=MAX_FIELDS).map(|i| format!("p{i}")).collect();
        let many: Vec<_> = names.iter().map(|n| (n.as_str(), None, "1")).collect();
        assert!(text_fields(body(&many), "XyZ".into()).await.is_err());
        let garbage = Bytes::from_static(b"--XyZ\r\nnot a header\r\n");
        assert!(text_fields(garbage, "XyZ".into()).await.is_err());
    }

    #[test]
    fn only_multipart_form_data_has_a_boundary() {
        assert!(boundary("application/json").is_none());
        assert!(boundary("multipart/form-data").unwrap().is_err());
        assert_eq!(
            boundary("Multipart/Form-Data; boundary=abc")
                .unwrap()
                .unwrap(),
            "abc"
        );
    }
}
