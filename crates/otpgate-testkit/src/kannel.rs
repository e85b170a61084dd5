//! What Kannel's smsbox does to a channel's `dlr-url` before it calls it
//! back, for the tests of the Kannel preset (the SMS crate's) and of the
//! receipts it sends (the server's).

/// `dlr_url` as Kannel fills it (`urltrans_fill_escape_codes`), for the
/// escapes a percent-encoded byte could collide with: `%d` becomes the
/// report type, `%A` the SMSC's answer (`encoded_answer`, which the caller
/// URL-encodes as the case under test needs), `%B`/`%D`/`%F` billing,
/// meta-data and foreign id (empty here), `%C` the charset, `%%` a literal
/// `%`; any other `%X` stays as it is.
pub fn kannel_fills(dlr_url: &str, report_type: u8, encoded_answer: &str) -> String {
    let mut out = String::new();
    let mut chars = dlr_url.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('d') => out.push_str(&report_type.to_string()),
            Some('A') => out.push_str(encoded_answer),
            Some('B' | 'D' | 'F') => {}
            Some('C') => out.push_str("UTF-8"),
            Some('%') => out.push('%'),
            Some(other) => {
                out.push('%');
                out.push(other);
            }
            None => out.push('%'),
        }
    }
    out
}
