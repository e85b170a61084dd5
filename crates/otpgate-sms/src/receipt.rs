//! Delivery receipts, from any channel, into the store: the SMPP session
//! hands its `deliver_sm` receipts here, and the server mounts
//! [`handle_http_receipt`] at `/receipts/{channel}` for HTTP gateways'
//! callbacks (Kannel's `dlr-url`, Twilio's `StatusCallback`).
//!
//! A receipt names the gateway's message id; the store finds the message by
//! (channel, gateway id) and records the final status with the id kept. A
//! receipt for a message the store does not know (another node's database, a
//! purged row) is acknowledged and dropped, so the gateway stops resending it.
//!
//! An HTTP callback is authenticated before it gets here: the server checks
//! its `token` parameter against the channel's `receipt_token` (see
//! [`crate::config::receipt_auth`]). The parser below never reads `token`,
//! so the secret cannot end up in a receipt's stored detail.

use std::sync::Arc;

use async_trait::async_trait;
use otpgate_core::{Clock, DeliveryStatus};
use otpgate_store::{OutboxStore, StoreError};
use tracing::{debug, info};

/// What a receipt tells, whatever carried it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receipt {
    /// The gateway's id for the message, as it gave it when accepting.
    pub gateway_id: String,
    /// `None` for states that are not final (en route, accepted, queued).
    pub status: Option<DeliveryStatus>,
    /// The gateway's own words (`stat:UNDELIV err:001`), for support. Never
    /// message text.
    pub detail: String,
}

/// Where a channel hands the receipts it receives.
#[async_trait]
pub trait ReceiptSink: Send + Sync + 'static {
    /// Records a final receipt; returns whether a message matched.
    ///
    /// # Errors
    /// The store's error: the gateway should be told to try again later.
    async fn record(&self, channel: &str, receipt: &Receipt) -> Result<bool, StoreError>;
}

/// The sink that writes to the store.
pub struct StoreReceipts {
    store: Arc<dyn OutboxStore>,
    clock: Arc<dyn Clock>,
}

impl StoreReceipts {
    pub fn new(store: Arc<dyn OutboxStore>, clock: Arc<dyn Clock>) -> Self {
        Self { store, clock }
    }
}

#[async_trait]
impl ReceiptSink for StoreReceipts {
    async fn record(&self, channel: &str, receipt: &Receipt) -> Result<bool, StoreError> {
        record(self.store.as_ref(), self.clock.as_ref(), channel, receipt).await
    }
}

async fn record(
    store: &dyn OutboxStore,
    clock: &dyn Clock,
    channel: &str,
    receipt: &Receipt,
) -> Result<bool, StoreError> {
    let Some(status) = receipt.status else {
        return Ok(false);
    };
    let now = clock.now_ms();
    let mut ids = vec![receipt.gateway_id.clone()];
    ids.extend(alternate_ids(&receipt.gateway_id));
    for id in &ids {
        if store
            .outbox_receipt(channel, id, status, &receipt.detail, now)
            .await?
            .is_some()
        {
            debug!(channel, status = status.as_str(), "receipt recorded");
            return Ok(true);
        }
    }
    info!(
        channel,
        gateway_id = %receipt.gateway_id,
        "receipt for a message this store does not know; dropped"
    );
    Ok(false)
}

/// Other spellings of one gateway message id: some SMSCs answer
/// `submit_sm_resp` in hex and write receipts in decimal, or the other way
/// round. Tried only after the id as received matched nothing.
pub fn alternate_ids(id: &str) -> Vec<String> {
    let mut out = Vec::new();
    let short = !id.is_empty() && id.len() <= 16;
    if short
        && id.bytes().all(|b| b.is_ascii_digit())
        && let Ok(n) = id.parse::<u64>()
    {
        out.push(format!("{n:x}"));
        out.push(format!("{n:X}"));
    }
    if short
        && id.bytes().all(|b| b.is_ascii_hexdigit())
        && let Ok(n) = u64::from_str_radix(id, 16)
    {
        out.push(n.to_string());
    }
    out.retain(|s| s != id);
    out.dedup();
    out
}

/// Records receipts a channel's own webhook parsed (WhatsApp's statuses);
/// returns how many matched a message. Receipts that are not final are
/// skipped.
///
/// # Errors
/// The store's error: the caller answers 503 so the sender retries.
pub async fn record_receipts(
    store: &dyn OutboxStore,
    clock: &dyn Clock,
    channel: &str,
    receipts: &[Receipt],
) -> Result<usize, StoreError> {
    let mut matched = 0;
    for r in receipts {
        if record(store, clock, channel, r).await? {
            matched += 1;
        }
    }
    Ok(matched)
}

/// What [`handle_http_receipt`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReceiptOutcome {
    /// A final status, recorded on the matching message.
    Recorded,
    /// A final status for a message the store does not know.
    Unmatched,
    /// Not a final status (queued, sent, en route): nothing to record.
    Ignored,
}

#[derive(Debug, thiserror::Error)]
pub enum ReceiptError {
    /// The callback names no message or no status: answer 400.
    #[error("not a delivery receipt: {0}")]
    Malformed(&'static str),
    /// The store failed: answer 503 so the gateway retries.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Handles an HTTP gateway's delivery callback for `channel`, given its
/// query or form parameters. Framework-free: the server extracts the pairs,
/// refuses a callback without the channel's token (401) before calling
/// this, and maps the result to a status code (`Ok` → 200, `Malformed` →
/// 400, `Store` → 503).
///
/// Understood formats, told apart by their parameter names:
/// - Twilio `StatusCallback`: `MessageSid`, `MessageStatus` (`delivered`,
///   `undelivered`, `failed`, …), `ErrorCode`.
/// - Kannel `dlr-url` as the `kannel` preset builds it:
///   `ref={reference}&status=%d&answer=%A`, where `%d` is Kannel's delivery
///   report type (1 delivered, 2 undelivered, 16 rejected by the SMSC; 4 and
///   8 are intermediate).
/// - Generic: an id in `id`, `message_id`, `messageId` or `msgid`; a status
///   in `status`, `stat` or `state` (SMPP words like `DELIVRD` or plain ones
///   like `delivered`); an optional `err` or `error`.
///
/// # Errors
/// [`ReceiptError`], see above.
pub async fn handle_http_receipt(
    store: &dyn OutboxStore,
    clock: &dyn Clock,
    channel: &str,
    params: &[(String, String)],
) -> Result<ReceiptOutcome, ReceiptError> {
    let receipt = parse_http_receipt(params)?;
    if receipt.status.is_none() {
        return Ok(ReceiptOutcome::Ignored);
    }
    Ok(if record(store, clock, channel, &receipt).await? {
        ReceiptOutcome::Recorded
    } else {
        ReceiptOutcome::Unmatched
    })
}

/// The parsing half of [`handle_http_receipt`].
///
/// # Errors
/// [`ReceiptError::Malformed`] when no id or no status is found.
pub fn parse_http_receipt(params: &[(String, String)]) -> Result<Receipt, ReceiptError> {
    let get = |names: &[&str]| {
        params
            .iter()
            .find(|(k, v)| names.iter().any(|n| k == n) && !v.trim().is_empty())
            .map(|(_, v)| v.trim().to_owned())
    };
    if let Some(sid) = get(&["CallSid"]) {
        // Twilio's call status callback (the voice channel): a call that was
        // answered and played counts as delivered.
        let status = get(&["CallStatus"]).ok_or(ReceiptError::Malformed("CallStatus missing"))?;
        let final_status = match status.as_str() {
            "completed" => Some(DeliveryStatus::Delivered),
            "busy" | "no-answer" | "failed" | "canceled" => Some(DeliveryStatus::Undeliverable),
            _ => None,
        };
        return Ok(Receipt {
            gateway_id: sid,
            status: final_status,
            detail: detail("twilio-voice", &status, get(&["ErrorCode"]).as_deref()),
        });
    }
    if let Some(sid) = get(&["MessageSid", "SmsSid"]) {
        let status = get(&["MessageStatus", "SmsStatus"])
            .ok_or(ReceiptError::Malformed("MessageStatus missing"))?;
        let err = get(&["ErrorCode"]);
        return Ok(Receipt {
            gateway_id: sid,
            status: status_from_word(&status),
            detail: detail("twilio", &status, err.as_deref()),
        });
    }
    if let (Some(reference), Some(kind)) = (get(&["ref"]), get(&["status"]))
        && let Ok(kind) = kind.parse::<u32>()
    {
        // Kannel DLR types: 1 delivered to phone, 2 non-delivered to
        // phone, 4 queued on SMSC, 8 delivered to SMSC, 16 non-delivered
        // to SMSC.
        let status = if kind & 1 != 0 {
            Some(DeliveryStatus::Delivered)
        } else if kind & 2 != 0 {
            Some(DeliveryStatus::Undeliverable)
        } else if kind & 16 != 0 {
            Some(DeliveryStatus::Rejected)
        } else {
            None
        };
        let answer = get(&["answer"]);
        return Ok(Receipt {
            gateway_id: reference,
            status,
            detail: detail("kannel", &kind.to_string(), answer.as_deref()),
        });
    }
    let id = get(&["id", "message_id", "messageId", "msgid", "ref"])
        .ok_or(ReceiptError::Malformed("no message id parameter"))?;
    let status =
        get(&["status", "stat", "state"]).ok_or(ReceiptError::Malformed("no status parameter"))?;
    let err = get(&["err", "error"]);
    Ok(Receipt {
        gateway_id: id,
        status: status_from_word(&status),
        detail: detail("http", &status, err.as_deref()),
    })
}

/// Plain and SMPP status words to a final status; `None` when not final.
pub fn status_from_word(word: &str) -> Option<DeliveryStatus> {
    if let Some(s) = status_from_stat(word) {
        return Some(s);
    }
    match word.to_ascii_lowercase().as_str() {
        "delivered" | "read" => Some(DeliveryStatus::Delivered),
        "undelivered" | "undeliverable" => Some(DeliveryStatus::Undeliverable),
        "failed" | "canceled" | "cancelled" | "rejected" => Some(DeliveryStatus::Rejected),
        "expired" => Some(DeliveryStatus::Expired),
        _ => None,
    }
}

/// `source:status err:extra`, bounded and printable: gateways put what they
/// like in these fields, and it ends up in the console.
fn detail(source: &str, status: &str, extra: Option<&str>) -> String {
    let clean = |s: &str| -> String {
        s.chars()
            .filter(|c| !c.is_control())
            .take(120)
            .collect::<String>()
    };
    match extra {
        Some(e) => format!("{source}:{} err:{}", clean(status), clean(e)),
        None => format!("{source}:{}", clean(status)),
    }
}

/// SMPP Appendix B `stat:` words (also what HTTP gateways report, in
/// their own spellings); case-insensitive, since SMSCs vary.
pub fn status_from_stat(word: &str) -> Option<DeliveryStatus> {
    match word.to_ascii_uppercase().as_str() {
        "DELIVRD" | "DELIVERED" => Some(DeliveryStatus::Delivered),
        "EXPIRED" => Some(DeliveryStatus::Expired),
        "UNDELIV" | "UNDELIVERABLE" | "DELETED" => Some(DeliveryStatus::Undeliverable),
        "REJECTD" | "REJECTED" => Some(DeliveryStatus::Rejected),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn twilio_callbacks() {
        let r = parse_http_receipt(&p(&[
            ("MessageSid", "SM123"),
            ("MessageStatus", "undelivered"),
            ("ErrorCode", "30003"),
        ]))
        .unwrap();
        assert_eq!(r.gateway_id, "SM123");
        assert_eq!(r.status, Some(DeliveryStatus::Undeliverable));
        assert_eq!(r.detail, "twilio:undelivered err:30003");
        let sent = parse_http_receipt(&p(&[("MessageSid", "SM1"), ("MessageStatus", "sent")]));
        assert_eq!(sent.unwrap().status, None);
        assert!(parse_http_receipt(&p(&[("MessageSid", "SM1")])).is_err());
    }

    #[test]
    fn twilio_call_callbacks() {
        let r = parse_http_receipt(&p(&[("CallSid", "CA1"), ("CallStatus", "completed")])).unwrap();
        assert_eq!(r.gateway_id, "CA1");
        assert_eq!(r.status, Some(DeliveryStatus::Delivered));
        let r = parse_http_receipt(&p(&[("CallSid", "CA1"), ("CallStatus", "no-answer")])).unwrap();
        assert_eq!(r.status, Some(DeliveryStatus::Undeliverable));
        let r = parse_http_receipt(&p(&[("CallSid", "CA1"), ("CallStatus", "ringing")])).unwrap();
        assert_eq!(r.status, None);
    }

    #[test]
    fn kannel_dlr_types() {
        for (t, s) in [
            ("1", Some(DeliveryStatus::Delivered)),
            ("2", Some(DeliveryStatus::Undeliverable)),
            ("16", Some(DeliveryStatus::Rejected)),
            ("8", None),
            ("4", None),
        ] {
            let r = parse_http_receipt(&p(&[("ref", "42"), ("status", t)])).unwrap();
            assert_eq!(r.gateway_id, "42");
            assert_eq!(r.status, s, "type {t}");
        }
    }

    #[test]
    fn the_token_parameter_is_neither_an_id_nor_detail() {
        let r = parse_http_receipt(&p(&[
            ("ref", "42"),
            ("status", "2"),
            ("answer", "NACK"),
            ("token", "s3cret"),
        ]))
        .unwrap();
        assert_eq!(r.gateway_id, "42");
        assert!(!r.detail.contains("s3cret"), "{}", r.detail);
        assert!(parse_http_receipt(&p(&[("token", "s3cret"), ("status", "delivered")])).is_err());
    }

    #[test]
    fn generic_callbacks() {
        let r = parse_http_receipt(&p(&[("id", "abc"), ("status", "DELIVRD")])).unwrap();
        assert_eq!(r.status, Some(DeliveryStatus::Delivered));
        let r = parse_http_receipt(&p(&[("message_id", "abc"), ("state", "expired")])).unwrap();
        assert_eq!(r.status, Some(DeliveryStatus::Expired));
        assert!(matches!(
            parse_http_receipt(&p(&[("status", "delivered")])),
            Err(ReceiptError::Malformed(_))
        ));
        assert!(parse_http_receipt(&[]).is_err());
    }

    #[test]
    fn details_are_bounded_and_printable() {
        let long = "x\n".repeat(500);
        let r =
            parse_http_receipt(&p(&[("id", "a"), ("status", "failed"), ("err", &long)])).unwrap();
        assert!(r.detail.len() < 200);
        assert!(!r.detail.contains('\n'));
    }

    #[test]
    fn hex_and_decimal_spellings() {
        let alt = alternate_ids("255");
        assert!(alt.contains(&"ff".to_string()) && alt.contains(&"FF".to_string()));
        assert!(alternate_ids("ff").contains(&"255".to_string()));
        assert!(alternate_ids("not-an-id").is_empty());
    }
}
