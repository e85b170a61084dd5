//! The sandbox inbox: when messages go to the development `inbox` channel,
//! the ones sent for this account, so a developer can read the code and
//! finish a flow without a phone. Only this account's messages
//! (`inbox_list(Some(customer), …)`); the list refreshes itself with htmx.

use askama::Template;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use otpgate_core::PhoneNumber;

use super::error::render;
use super::extract::{AccountCtx, page_or_fragment};
use super::{Console, PageError};
use crate::time::datetime;

/// Messages shown: the newest.
const SHOWN: u32 = 50;

#[derive(Template)]
#[template(path = "console/inbox.html")]
struct InboxPage {
    chrome: super::views::Chrome,
    inbox: InboxList,
}

#[derive(Template)]
#[template(path = "console/inbox_list.html")]
struct InboxFragment {
    inbox: InboxList,
}

struct InboxList {
    enabled: bool,
    messages: Vec<Message>,
}

struct Message {
    at: String,
    to: String,
    verification: String,
    text: String,
}

/// `+91******3210` from stored E.164 digits; anything unparsable is
/// masked the same way by hand.
fn masked(digits: &str) -> String {
    PhoneNumber::parse_e164(&format!("+{digits}")).map_or_else(
        |_| {
            let n = digits.chars().count();
            let keep: String = digits.chars().skip(n.saturating_sub(4)).collect();
            format!("+{}{keep}", "*".repeat(n.saturating_sub(4)))
        },
        |p| p.masked(),
    )
}

pub async fn page(
    State(console): State<Console>,
    ctx: AccountCtx,
    headers: HeaderMap,
) -> Result<Response, PageError> {
    let enabled = console.inbox_enabled();
    let messages = if enabled {
        console
            .app
            .store
            .inbox_list(Some(&ctx.account.customer_id), None, SHOWN)
            .await?
            .into_iter()
            .map(|m| Message {
                at: datetime(m.created_at),
                to: masked(&m.destination),
                verification: m.verification_id.map(|v| v.to_string()).unwrap_or_default(),
                text: m.text,
            })
            .collect()
    } else {
        Vec::new()
    };
    let inbox = InboxList { enabled, messages };
    let chrome = ctx.chrome(&console, "Sandbox inbox", "inbox");
    Ok(page_or_fragment(
        &headers,
        inbox,
        |inbox| render(&InboxFragment { inbox }),
        |inbox| render(&InboxPage { chrome, inbox }),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn destinations_are_masked_but_for_the_last_digits() {
        assert_eq!(masked("919876543210"), "+91******3210");
        assert_eq!(masked("12"), "+12");
        assert!(masked("999123456789").ends_with("6789"));
    }
}
