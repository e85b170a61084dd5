//! The account's webhook (on the Settings page: the endpoint URL, its
//! signing secret, a new secret, removal) and the Events page: recent
//! events with each one's delivery status and the receiver's last answer.

use askama::Template;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use serde::Deserialize;

use super::error::{render, render_status};
use super::extract::{AccountCtx, Posted};
use super::settings::{WebhookView, page_with_webhook};
use super::{Console, PageError};
use crate::events::{sign, target};

/// How many events the Events page lists.
const PAGE_EVENTS: u32 = 100;

#[derive(Debug, Deserialize, Default)]
#[serde(default)]
pub struct WebhookForm {
    url: String,
    /// `save`, `rotate` or `remove`.
    action: String,
}

pub async fn save(
    State(console): State<Console>,
    ctx: AccountCtx,
    Posted(form): Posted<WebhookForm>,
) -> Result<Response, PageError> {
    let store = &console.app.store;
    let customer = &ctx.account.customer_id;
    let now = console.now();
    let current = store.webhook_get(customer).await?;
    match form.action.as_str() {
        "remove" => {
            store.webhook_delete(customer).await?;
            tracing::info!(customer = %customer, "console: webhook removed");
        }
        "rotate" => {
            let Some(hook) = current else {
                return Err(PageError::BadRequest(
                    "There is no webhook to give a new secret.",
                ));
            };
            store
                .webhook_set(customer, &hook.url, &sign::new_secret(), now)
                .await?;
            tracing::info!(customer = %customer, "console: webhook secret replaced");
        }
        _ => {
            let allow = console.app.settings.events.allow_private_addresses;
            match target::check_url(&form.url, allow) {
                Ok(url) => {
                    // A new endpoint keeps the secret it had, so a URL
                    // change does not break the receiver's check.
                    let secret =
                        current.map_or_else(sign::new_secret, |h| h.secret.expose().to_owned());
                    store
                        .webhook_set(customer, url.as_str(), &secret, now)
                        .await?;
                    tracing::info!(customer = %customer, "console: webhook set");
                }
                Err(why) => {
                    return Ok(render_status(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        &page_with_webhook(
                            &console,
                            &ctx,
                            WebhookView {
                                url: form.url.chars().take(target::MAX_URL_LEN).collect(),
                                secret: current
                                    .map(|h| h.secret.expose().to_owned())
                                    .unwrap_or_default(),
                                errors: vec![why],
                            },
                        ),
                    ));
                }
            }
        }
    }
    Ok(Redirect::to("/console/settings?saved=1#webhook").into_response())
}

#[derive(Template)]
#[template(path = "console/events.html")]
struct EventsPage {
    chrome: super::views::Chrome,
    has_webhook: bool,
    rows: Vec<EventRow>,
}

struct EventRow {
    created: String,
    kind: &'static str,
    verification: String,
    id: String,
    status: String,
    status_class: &'static str,
    attempts: u32,
    answer: String,
    response: String,
}

pub async fn page(State(console): State<Console>, ctx: AccountCtx) -> Result<Response, PageError> {
    let store = &console.app.store;
    let customer = &ctx.account.customer_id;
    let has_webhook = store.webhook_get(customer).await?.is_some();
    let rows = store
        .event_list(customer, PAGE_EVENTS)
        .await?
        .into_iter()
        .map(|e| EventRow {
            created: crate::time::datetime(e.created_at),
            kind: e.kind.as_str(),
            verification: e.verification_id.to_string(),
            id: e.event_id,
            status_class: match e.status.as_str() {
                "delivered" => "ok",
                "pending" => "warn",
                _ => "bad",
            },
            status: e.status,
            attempts: e.attempts,
            answer: e
                .response_status
                .map_or_else(|| "—".to_owned(), |c| c.to_string()),
            response: e.response.unwrap_or_default(),
        })
        .collect();
    Ok(render(&EventsPage {
        chrome: ctx.chrome(&console, "Events", "events"),
        has_webhook,
        rows,
    }))
}
