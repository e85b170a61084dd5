//! The verification log: this account's verifications, newest first,
//! filtered by number, status and date, a page at a time. Each row shows
//! the destination masked but for its last digits, the outcome, what the
//! gateway said about delivery, attempts, cost and times. Never the code:
//! the store keeps only its HMAC, and the message text (which holds it) is
//! not read here.

use askama::Template;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use otpgate_core::{DeliveryStatus, VerificationState};
use otpgate_store::{Verification, VerificationFilter};
use serde::{Deserialize, Serialize};

use super::error::render;
use super::extract::{AccountCtx, Lenient, page_or_fragment};
use super::{Console, PageError};
use crate::time::{DAY_MS, datetime, parse_date};

/// Rows per page.
const PAGE: u32 = 25;
/// Pages beyond this are not served (the offset would make the query slow).
const MAX_PAGE: u32 = 2000;

#[derive(Template)]
#[template(path = "console/log.html")]
struct LogPage {
    chrome: super::views::Chrome,
    filter: LogQuery,
    table: LogTable,
}

/// Only the results, for htmx.
#[derive(Template)]
#[template(path = "console/log_table.html")]
struct LogFragment {
    table: LogTable,
}

/// The filter as the form submits it (and as the page shows it again).
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default)]
pub struct LogQuery {
    #[serde(skip_serializing_if = "String::is_empty")]
    pub number: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub status: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub from: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub to: String,
    #[serde(skip_serializing)]
    pub page: String,
}

struct LogTable {
    rows: Vec<LogRow>,
    page: u32,
    newer: String,
    older: String,
    /// The filter could not be read as given (e.g. `to` before `from`).
    note: &'static str,
}

struct LogRow {
    id: String,
    created: String,
    to: String,
    status: &'static str,
    status_class: &'static str,
    delivery: &'static str,
    delivery_class: &'static str,
    delivery_detail: String,
    attempts: String,
    cost: String,
    ended: String,
    /// One line per step of a fallback workflow (flow, channel, outcome);
    /// empty for a verification with a single step.
    steps: Vec<String>,
}

/// `WHATSAPP via wa-main: delivered` per step (in step order), when there
/// is more than one.
fn steps(attempts: &[otpgate_store::OutboxMessage]) -> Vec<String> {
    if attempts.len() < 2 {
        return Vec::new();
    }
    attempts
        .iter()
        .map(|m| {
            let via = m
                .channel
                .as_deref()
                .map(|c| format!(" via {c}"))
                .unwrap_or_default();
            format!("{}{via}: {}", m.flow_type, m.status.as_str())
        })
        .collect()
}

impl LogQuery {
    /// The store's filter; invalid parts are dropped (and noted).
    fn to_filter(&self) -> (VerificationFilter, &'static str) {
        let digits: String = self
            .number
            .chars()
            .filter(char::is_ascii_digit)
            .take(16)
            .collect();
        let since = parse_date(&self.from);
        let until = parse_date(&self.to).map(|d| d + DAY_MS);
        let mut note = "";
        if (!self.from.trim().is_empty() && since.is_none())
            || (!self.to.trim().is_empty() && until.is_none())
        {
            note = "A date could not be read and was ignored (use YYYY-MM-DD).";
        }
        if let (Some(s), Some(u)) = (since, until)
            && u <= s
        {
            note = "The end date is before the start date: nothing can match.";
        }
        (
            VerificationFilter {
                number: Some(digits).filter(|d| !d.is_empty()),
                state: VerificationState::parse(self.status.trim()),
                since,
                until,
            },
            note,
        )
    }

    fn page(&self) -> u32 {
        self.page
            .trim()
            .parse::<u32>()
            .unwrap_or(1)
            .clamp(1, MAX_PAGE)
    }

    /// This filter's URL at page `page`.
    fn href(&self, page: u32) -> String {
        let mut q = serde_urlencoded::to_string(self).unwrap_or_default();
        if !q.is_empty() {
            q.push('&');
        }
        format!("/console/log?{q}page={page}")
    }
}

fn row(v: &Verification, now: i64) -> LogRow {
    let (status, status_class) = match v.state {
        VerificationState::Completed => ("completed", "ok"),
        VerificationState::Failed => ("failed", "bad"),
        VerificationState::Cancelled => ("cancelled", "muted"),
        VerificationState::Pending if v.wrong_attempts >= v.max_attempts => {
            ("too many wrong codes", "bad")
        }
        VerificationState::Pending if now >= v.expires_at => ("expired", "muted"),
        VerificationState::Pending => ("pending", "warn"),
    };
    let delivery_class = match v.delivery {
        DeliveryStatus::Delivered | DeliveryStatus::Sent => "ok",
        DeliveryStatus::Queued => "warn",
        _ => "bad",
    };
    let detail: Vec<&str> = [
        v.channel.as_deref(),
        v.gateway_id.as_deref(),
        v.delivery_detail.as_deref(),
    ]
    .into_iter()
    .flatten()
    .filter(|s| !s.is_empty())
    .collect();
    let cost = match (v.cost, v.cost_test) {
        (0, _) if v.state == VerificationState::Failed => "0 (refunded)".to_owned(),
        (c, 0) => c.to_string(),
        (c, t) if t == c => format!("{c} (test)"),
        (c, t) => format!("{c} ({t} test)"),
    };
    let ended = match v.completed_at {
        Some(t) => format!("completed {}", datetime(t)),
        None if now >= v.expires_at => format!("expired {}", datetime(v.expires_at)),
        None => format!("valid until {}", datetime(v.expires_at)),
    };
    LogRow {
        id: v.id.to_string(),
        created: datetime(v.created_at),
        to: v.destination.masked(),
        status,
        status_class,
        delivery: v.delivery.as_str(),
        delivery_class,
        delivery_detail: detail.join(" · "),
        attempts: format!("{} of {} wrong", v.wrong_attempts, v.max_attempts),
        cost,
        ended,
        steps: Vec::new(),
    }
}

pub async fn page(
    State(console): State<Console>,
    ctx: AccountCtx,
    headers: HeaderMap,
    Lenient(q): Lenient<LogQuery>,
) -> Result<Response, PageError> {
    let (filter, note) = q.to_filter();
    let page = q.page();
    let mut found = console
        .app
        .store
        .verification_list(
            &ctx.account.customer_id,
            &filter,
            PAGE + 1,
            (page - 1) * PAGE,
        )
        .await?;
    let more = found.len() > PAGE as usize;
    found.truncate(PAGE as usize);
    let now = console.now();
    let mut rows = Vec::with_capacity(found.len());
    for v in &found {
        let mut r = row(v, now);
        // At most one page of small indexed reads.
        r.steps = steps(&console.app.store.outbox_attempts(v.id).await?);
        rows.push(r);
    }
    let table = LogTable {
        rows,
        page,
        newer: if page > 1 {
            q.href(page - 1)
        } else {
            String::new()
        },
        older: if more && page < MAX_PAGE {
            q.href(page + 1)
        } else {
            String::new()
        },
        note,
    };
    let chrome = ctx.chrome(&console, "Verification log", "log");
    Ok(page_or_fragment(
        &headers,
        table,
        |table| render(&LogFragment { table }),
        |table| {
            render(&LogPage {
                chrome,
                filter: q,
                table,
            })
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_filter_keeps_digits_and_reads_dates_inclusively() {
        let q = LogQuery {
            number: "+91 98765-43".into(),
            status: "completed".into(),
            from: "1970-01-02".into(),
            to: "1970-01-02".into(),
            page: "x".into(),
        };
        let (f, note) = q.to_filter();
        assert_eq!(f.number.as_deref(), Some("919876543"));
        assert_eq!(f.state, Some(VerificationState::Completed));
        assert_eq!((f.since, f.until), (Some(DAY_MS), Some(2 * DAY_MS)));
        assert_eq!(note, "");
        assert_eq!(q.page(), 1);
    }

    #[test]
    fn unreadable_filters_are_ignored_with_a_note() {
        let q = LogQuery {
            status: "<script>".into(),
            from: "yesterday".into(),
            page: "999999".into(),
            ..LogQuery::default()
        };
        let (f, note) = q.to_filter();
        assert_eq!(f.state, None);
        assert_eq!(f.since, None);
        assert!(!note.is_empty());
        assert_eq!(q.page(), MAX_PAGE);
    }

    #[test]
    fn page_links_keep_the_filter_and_encode_it() {
        let q = LogQuery {
            number: "9&x=1".into(),
            ..LogQuery::default()
        };
        let h = q.href(3);
        assert!(h.starts_with("/console/log?number=9%26x%3D1&"), "{h}");
        assert!(h.ends_with("&page=3"), "{h}");
    }
}
