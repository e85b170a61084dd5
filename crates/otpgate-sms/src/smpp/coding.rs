//! Message text to `short_message` octets: GSM 03.38 default alphabet when
//! every character is in it (`data_coding` 0, SMPP 3.4 §5.2.19), else UCS-2
//! (`data_coding` 8, UTF-16BE on the wire).
//!
//! GSM 03.38 septets are sent unpacked, one per octet, which is how SMPP
//! carries the SMSC default alphabet; characters of the extension table
//! (`{`, `€`, …) take two septets (escape 0x1B + code).
//!
//! Long texts are refused, not split: an OTP message must arrive whole and
//! at once, and a concatenated SMS has several `message_id`s whose receipts
//! arrive separately. The limits are one SMS: 160 septets or 70 UTF-16 units.

/// The GSM 03.38 basic character set, indexed by septet value. 0x1B is the
/// escape to the extension table and is never produced from text.
const BASIC: [char; 128] = [
    '@', '£', '$', '¥', 'è', 'é', 'ù', 'ì', 'ò', 'Ç', '\n', 'Ø', 'ø', '\r', 'Å', 'å', //
    'Δ', '_', 'Φ', 'Γ', 'Λ', 'Ω', 'Π', 'Ψ', 'Σ', 'Θ', 'Ξ', '\u{1b}', 'Æ', 'æ', 'ß', 'É', //
    ' ', '!', '"', '#', '¤', '%', '&', '\'', '(', ')', '*', '+', ',', '-', '.', '/', //
    '0', '1', '2', '3', '4', '5', '6', '7', '8', '9', ':', ';', '<', '=', '>', '?', //
    '¡', 'A', 'B', 'C', 'D', 'E', 'F', 'G', 'H', 'I', 'J', 'K', 'L', 'M', 'N', 'O', //
    'P', 'Q', 'R', 'S', 'T', 'U', 'V', 'W', 'X', 'Y', 'Z', 'Ä', 'Ö', 'Ñ', 'Ü', '§', //
    '¿', 'a', 'b', 'c', 'd', 'e', 'f', 'g', 'h', 'i', 'j', 'k', 'l', 'm', 'n', 'o', //
    'p', 'q', 'r', 's', 't', 'u', 'v', 'w', 'x', 'y', 'z', 'ä', 'ö', 'ñ', 'ü', 'à', //
];

/// The extension table: (character, septet after the 0x1B escape).
const EXTENSION: [(char, u8); 10] = [
    ('\u{0c}', 0x0A),
    ('^', 0x14),
    ('{', 0x28),
    ('}', 0x29),
    ('\\', 0x2F),
    ('[', 0x3C),
    ('~', 0x3D),
    (']', 0x3E),
    ('|', 0x40),
    ('€', 0x65),
];

const ESCAPE: u8 = 0x1B;

/// One SMS: 140 octets of user data = 160 septets or 70 UCS-2 units.
pub const MAX_GSM7_SEPTETS: usize = 160;
pub const MAX_UCS2_OCTETS: usize = 140;

/// `data_coding` values (§5.2.19).
pub const DC_DEFAULT: u8 = 0x00;
pub const DC_UCS2: u8 = 0x08;

/// A text ready for `short_message`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoded {
    pub data_coding: u8,
    pub octets: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodingError {
    #[error(
        "message text is {septets} GSM 03.38 septets; one SMS holds {MAX_GSM7_SEPTETS} and otpgate does not split messages"
    )]
    TooLongGsm { septets: usize },
    #[error(
        "message text is {units} UCS-2 characters; one SMS holds 70 and otpgate does not split messages"
    )]
    TooLongUcs2 { units: usize },
}

/// Encodes `text` for one SMS, choosing the alphabet.
///
/// # Errors
/// [`CodingError`] when the text does not fit one SMS.
pub fn encode(text: &str) -> Result<Encoded, CodingError> {
    if let Some(septets) = to_gsm7(text) {
        if septets.len() > MAX_GSM7_SEPTETS {
            return Err(CodingError::TooLongGsm {
                septets: septets.len(),
            });
        }
        return Ok(Encoded {
            data_coding: DC_DEFAULT,
            octets: septets,
        });
    }
    let octets: Vec<u8> = text.encode_utf16().flat_map(u16::to_be_bytes).collect();
    if octets.len() > MAX_UCS2_OCTETS {
        return Err(CodingError::TooLongUcs2 {
            units: octets.len() / 2,
        });
    }
    Ok(Encoded {
        data_coding: DC_UCS2,
        octets,
    })
}

/// Unpacked septets, or `None` when a character is outside GSM 03.38.
pub fn to_gsm7(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len());
    for c in text.chars() {
        if c == '\u{1b}' {
            return None;
        }
        if let Some(i) = BASIC.iter().position(|b| *b == c) {
            out.push(u8::try_from(i).ok()?);
        } else if let Some((_, code)) = EXTENSION.iter().find(|(e, _)| *e == c) {
            out.push(ESCAPE);
            out.push(*code);
        } else {
            return None;
        }
    }
    Some(out)
}

/// Decodes `short_message` octets by `data_coding`: the inverse of
/// [`encode`], plus Latin-1 (3) and 8-bit ASCII-ish data (1, 4) read as
/// Latin-1. Unknown septets become `?`; never panics.
pub fn decode(data_coding: u8, octets: &[u8]) -> String {
    match data_coding {
        DC_DEFAULT => {
            let mut s = String::with_capacity(octets.len());
            let mut it = octets.iter();
            while let Some(&b) = it.next() {
                if b == ESCAPE {
                    let Some(&n) = it.next() else { break };
                    s.push(
                        EXTENSION
                            .iter()
                            .find(|(_, code)| *code == n)
                            .map_or('?', |(c, _)| *c),
                    );
                } else {
                    s.push(BASIC.get(usize::from(b)).copied().unwrap_or('?'));
                }
            }
            s
        }
        DC_UCS2 => {
            let units: Vec<u16> = octets
                .chunks_exact(2)
                .map(|p| u16::from_be_bytes([p[0], p[1]]))
                .collect();
            String::from_utf16_lossy(&units)
        }
        _ => octets.iter().map(|&b| char::from(b)).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ascii_otp_text_is_gsm7() {
        let e = encode("Your code is 1234. Valid 60 s.").unwrap();
        assert_eq!(e.data_coding, DC_DEFAULT);
        assert_eq!(&e.octets[..4], b"Your");
        assert_eq!(
            decode(e.data_coding, &e.octets),
            "Your code is 1234. Valid 60 s."
        );
    }

    #[test]
    fn gsm_specials_and_extension_round_trip() {
        let t = "@£$ é Ω {x} [y] ~ | \\ ^ €";
        let e = encode(t).unwrap();
        assert_eq!(e.data_coding, DC_DEFAULT);
        assert_eq!(e.octets[0], 0x00); // '@' is septet 0
        assert_eq!(decode(0, &e.octets), t);
        // '€' costs two septets.
        assert_eq!(to_gsm7("€").unwrap(), vec![0x1B, 0x65]);
    }

    #[test]
    fn cyrillic_and_hindi_are_ucs2() {
        for t in ["Ваш код 1234", "आपका कोड 1234 है"] {
            let e = encode(t).unwrap();
            assert_eq!(e.data_coding, DC_UCS2);
            assert_eq!(e.octets.len(), t.encode_utf16().count() * 2);
            assert_eq!(decode(DC_UCS2, &e.octets), t);
        }
    }

    #[test]
    fn limits_are_one_sms() {
        assert!(encode(&"a".repeat(160)).is_ok());
        assert_eq!(
            encode(&"a".repeat(161)),
            Err(CodingError::TooLongGsm { septets: 161 })
        );
        assert_eq!(
            encode(&"€".repeat(81)),
            Err(CodingError::TooLongGsm { septets: 162 })
        );
        assert!(encode(&"д".repeat(70)).is_ok());
        assert_eq!(
            encode(&"д".repeat(71)),
            Err(CodingError::TooLongUcs2 { units: 71 })
        );
    }

    #[test]
    fn decode_never_panics_on_junk() {
        let junk: Vec<u8> = (0..=255).collect();
        for dc in [0u8, 1, 3, 8, 0xf0] {
            let _ = decode(dc, &junk);
            let _ = decode(dc, &junk[..1]);
        }
        assert_eq!(decode(0, &[0x1B]), "");
    }
}
