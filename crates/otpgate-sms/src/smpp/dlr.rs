//! Delivery receipts carried in `deliver_sm` (SMPP 3.4 §4.6.1, §5.2.12,
//! Appendix B): which message a receipt is for and what became of it.
//!
//! An SMSC says this two ways, often both: the `receipted_message_id` and
//! `message_state` TLVs (§5.3.2.12, §5.3.2.35), and the de-facto text format
//! of Appendix B:
//! `id:IIIIIIIIII sub:SSS dlvrd:DDD submit date:YYMMDDhhmm done date:YYMMDDhhmm stat:DDDDDDD err:E Text: ...`.
//! TLVs win where present. The `Text:` part repeats the start of the message,
//! which holds the code: it is never parsed, stored or logged.

use otpgate_core::DeliveryStatus;

use super::coding;
use super::pdu::{ShortMessage, tag};
use crate::receipt::{Receipt, status_from_stat};

/// `esm_class` bits 5–2, the message type (§5.2.12).
const ESM_TYPE_MASK: u8 = 0b0011_1100;
/// "xx0001xx SMSC Delivery Receipt".
const ESM_TYPE_SMSC_RECEIPT: u8 = 0b0000_0100;
/// "xx1000xx Intermediate Delivery Notification".
const ESM_TYPE_INTERMEDIATE: u8 = 0b0010_0000;

/// Whether `esm_class` marks this `deliver_sm` as a receipt rather than a
/// mobile-originated message.
pub fn is_receipt(esm_class: u8) -> bool {
    matches!(
        esm_class & ESM_TYPE_MASK,
        ESM_TYPE_SMSC_RECEIPT | ESM_TYPE_INTERMEDIATE
    )
}

/// Reads a receipt out of a `deliver_sm`; `None` when it is not one or
/// names no message.
pub fn parse(sm: &ShortMessage) -> Option<Receipt> {
    if !is_receipt(sm.esm_class) {
        return None;
    }
    let text = coding::decode(sm.data_coding, &sm.short_message);
    let fields = text_fields(&text);

    let tlv_id = sm
        .tlv(tag::RECEIPTED_MESSAGE_ID)
        .map(|v| String::from_utf8_lossy(v.split(|b| *b == 0).next().unwrap_or(&[])).into_owned())
        .filter(|s| !s.is_empty());
    let message_id = tlv_id.or(fields.id)?;

    let tlv_state = sm.tlv(tag::MESSAGE_STATE).and_then(|v| v.first().copied());
    let (status, stat_word) = match (tlv_state, fields.stat.as_deref()) {
        (Some(state), _) => (status_from_state(state), state_name(state).to_owned()),
        (None, Some(word)) => (status_from_stat(word), word.to_owned()),
        (None, None) => (None, "no state".to_owned()),
    };
    let err = fields
        .err
        .or_else(|| {
            sm.tlv(tag::NETWORK_ERROR_CODE)
                .filter(|v| v.len() == 3)
                .map(|v| format!("{}:{}", v[0], u16::from_be_bytes([v[1], v[2]])))
        })
        .unwrap_or_default();
    let detail = if err.is_empty() {
        format!("stat:{stat_word}")
    } else {
        format!("stat:{stat_word} err:{err}")
    };
    Some(Receipt {
        gateway_id: message_id,
        status,
        detail,
    })
}

/// `message_state` (§5.2.28) to otpgate's status; `None` while not final.
pub fn status_from_state(state: u8) -> Option<DeliveryStatus> {
    match state {
        2 => Some(DeliveryStatus::Delivered),
        3 => Some(DeliveryStatus::Expired),
        // DELETED: the SMSC dropped it; to the user that is undeliverable.
        4 | 5 => Some(DeliveryStatus::Undeliverable),
        8 => Some(DeliveryStatus::Rejected),
        _ => None, // 1 ENROUTE, 6 ACCEPTED, 7 UNKNOWN
    }
}

fn state_name(state: u8) -> &'static str {
    match state {
        1 => "ENROUTE",
        2 => "DELIVRD",
        3 => "EXPIRED",
        4 => "DELETED",
        5 => "UNDELIV",
        6 => "ACCEPTD",
        7 => "UNKNOWN",
        8 => "REJECTD",
        _ => "INVALID",
    }
}

#[derive(Default)]
struct TextFields {
    id: Option<String>,
    stat: Option<String>,
    err: Option<String>,
}

fn text_fields(text: &str) -> TextFields {
    // Only what comes before "Text:" is looked at: the rest is message text.
    let head = match text.find("text:").or_else(|| text.find("Text:")) {
        Some(i) => &text[..i],
        None => text,
    };
    let mut f = TextFields::default();
    for (key, slot) in [
        ("id:", &mut f.id),
        ("stat:", &mut f.stat),
        ("err:", &mut f.err),
    ] {
        if let Some(v) = field(head, key) {
            *slot = Some(v);
        }
    }
    f
}

/// The value after `key` (at the start or after a space), up to whitespace.
fn field(head: &str, key: &str) -> Option<String> {
    let lower = head.to_ascii_lowercase();
    let mut from = 0;
    while let Some(pos) = lower[from..].find(key) {
        let at = from + pos;
        let starts_word = at == 0 || lower.as_bytes()[at - 1].is_ascii_whitespace();
        if starts_word {
            let rest = &head[at + key.len()..];
            let v: String = rest.chars().take_while(|c| !c.is_whitespace()).collect();
            return (!v.is_empty()).then_some(v);
        }
        from = at + key.len();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::smpp::pdu::Tlv;

    fn receipt(text: &str) -> ShortMessage {
        ShortMessage {
            esm_class: 0x04,
            short_message: text.as_bytes().to_vec(),
            ..ShortMessage::default()
        }
    }

    #[test]
    fn appendix_b_text_is_read() {
        let r = parse(&receipt(
            "id:0123456789 sub:001 dlvrd:001 submit date:2511261200 done date:2511261201 stat:DELIVRD err:000 Text:Your code is 1234",
        ))
        .unwrap();
        assert_eq!(r.gateway_id, "0123456789");
        assert_eq!(r.status, Some(DeliveryStatus::Delivered));
        assert_eq!(r.detail, "stat:DELIVRD err:000");
        assert!(!r.detail.contains("1234"));
    }

    #[test]
    fn each_final_stat_maps() {
        for (w, s) in [
            ("UNDELIV", DeliveryStatus::Undeliverable),
            ("EXPIRED", DeliveryStatus::Expired),
            ("REJECTD", DeliveryStatus::Rejected),
            ("DELETED", DeliveryStatus::Undeliverable),
        ] {
            let r = parse(&receipt(&format!("id:a1 stat:{w} err:001"))).unwrap();
            assert_eq!(r.status, Some(s), "{w}");
        }
        let r = parse(&receipt("id:a1 stat:ENROUTE err:000")).unwrap();
        assert_eq!(r.status, None);
    }

    #[test]
    fn tlvs_win_over_text() {
        let mut sm = receipt("id:fromtext stat:UNDELIV err:001");
        sm.tlvs = vec![
            Tlv {
                tag: tag::RECEIPTED_MESSAGE_ID,
                value: b"fromtlv\0".to_vec(),
            },
            Tlv {
                tag: tag::MESSAGE_STATE,
                value: vec![2],
            },
        ];
        let r = parse(&sm).unwrap();
        assert_eq!(r.gateway_id, "fromtlv");
        assert_eq!(r.status, Some(DeliveryStatus::Delivered));
    }

    #[test]
    fn mobile_originated_messages_are_not_receipts() {
        let mut sm = receipt("id:1 stat:DELIVRD");
        sm.esm_class = 0;
        assert!(parse(&sm).is_none());
        // A receipt naming no message is ignored, not a panic.
        assert!(parse(&receipt("stat:DELIVRD")).is_none());
        assert!(parse(&receipt("")).is_none());
    }

    #[test]
    fn a_word_merely_containing_id_is_not_the_id() {
        let r = parse(&receipt("sid:zzz id:real stat:DELIVRD")).unwrap();
        assert_eq!(r.gateway_id, "real");
    }
}
