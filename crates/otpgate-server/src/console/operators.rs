//! The operators' page: every account, newest first, with forms to add (or
//! remove) paid credits and to disable or enable an account. Disabling ends
//! the account's console sessions and makes its tokens answer 401.

use askama::Template;
use axum::extract::State;
use axum::response::{IntoResponse, Redirect, Response};
use otpgate_core::CustomerId;
use otpgate_store::StoreError;
use serde::Deserialize;

use super::error::render;
use super::extract::{Lenient, OperatorCtx, Posted};
use super::{Console, PageError};
use crate::time::datetime;

/// Accounts per page.
const PAGE: u32 = 50;
/// Largest single credit adjustment, either way.
const MAX_ADJUST: i64 = 1_000_000_000;

#[derive(Template)]
#[template(path = "console/operators.html")]
struct OperatorsPage {
    chrome: super::views::Chrome,
    accounts: Vec<Row>,
    page: u32,
    newer: String,
    older: String,
    notice: String,
}

struct Row {
    customer_id: String,
    email: String,
    country: String,
    credits: i64,
    test_credits: i64,
    disabled: bool,
    created: String,
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub struct PageQuery {
    page: String,
    done: String,
    id: String,
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub struct CreditsForm {
    customer_id: String,
    amount: String,
    page: String,
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub struct DisableForm {
    customer_id: String,
    disabled: String,
    page: String,
}

fn page_of(s: &str) -> u32 {
    s.trim().parse::<u32>().unwrap_or(1).clamp(1, 100_000)
}

pub async fn page(
    State(console): State<Console>,
    ctx: OperatorCtx,
    Lenient(q): Lenient<PageQuery>,
) -> Result<Response, PageError> {
    let page = page_of(&q.page);
    let mut found = console
        .app
        .store
        .account_list(PAGE + 1, (page - 1) * PAGE)
        .await?;
    let more = found.len() > PAGE as usize;
    found.truncate(PAGE as usize);
    // The notice names an id parsed back, never raw query text.
    let id = CustomerId::parse(&q.id)
        .map(|i| i.to_string())
        .unwrap_or_default();
    let notice = match (q.done.as_str(), id.is_empty()) {
        ("credits", false) => format!("Credits of {id} changed."),
        ("disabled", false) => {
            format!("{id} is disabled: its tokens and console sessions no longer work.")
        }
        ("enabled", false) => format!("{id} is enabled again."),
        _ => String::new(),
    };
    Ok(render(&OperatorsPage {
        chrome: ctx.chrome(&console, "Accounts", "operators"),
        accounts: found
            .into_iter()
            .map(|a| Row {
                customer_id: a.customer_id.to_string(),
                email: a.email.unwrap_or_default(),
                country: a.country.unwrap_or_default(),
                credits: a.credits,
                test_credits: a.test_credits,
                disabled: a.disabled,
                created: datetime(a.created_at),
            })
            .collect(),
        page,
        newer: if page > 1 {
            format!("/console/operators?page={}", page - 1)
        } else {
            String::new()
        },
        older: if more {
            format!("/console/operators?page={}", page + 1)
        } else {
            String::new()
        },
        notice,
    }))
}

fn parse_id(s: &str) -> Result<CustomerId, PageError> {
    CustomerId::parse(s.trim()).map_err(|_| PageError::BadRequest("That is not a customerId."))
}

pub async fn add_credits(
    State(console): State<Console>,
    _ctx: OperatorCtx,
    Posted(form): Posted<CreditsForm>,
) -> Result<Response, PageError> {
    let id = parse_id(&form.customer_id)?;
    let amount = form
        .amount
        .trim()
        .trim_start_matches('+')
        .parse::<i64>()
        .ok()
        .filter(|a| *a != 0 && a.abs() <= MAX_ADJUST)
        .ok_or(PageError::BadRequest(
            "Credits must be a whole number other than zero, at most a billion either way.",
        ))?;
    let a = known(console.app.store.account_add_credits(&id, amount).await)?;
    tracing::info!(customer = %id, amount, balance = a.credits, "console: operator changed credits");
    Ok(back(&form.page, "credits", &id))
}

pub async fn set_disabled(
    State(console): State<Console>,
    _ctx: OperatorCtx,
    Posted(form): Posted<DisableForm>,
) -> Result<Response, PageError> {
    let id = parse_id(&form.customer_id)?;
    let disabled = match form.disabled.as_str() {
        "true" => true,
        "false" => false,
        _ => return Err(PageError::BadRequest("Say whether to disable or enable.")),
    };
    known(console.app.store.account_set_disabled(&id, disabled).await)?;
    if disabled {
        console.sessions.end_account(&id);
    }
    tracing::info!(customer = %id, disabled, "console: operator changed account state");
    let done = if disabled { "disabled" } else { "enabled" };
    Ok(back(&form.page, done, &id))
}

/// An account an action names that is not there is a 404, not a 500.
fn known<T>(r: Result<T, StoreError>) -> Result<T, PageError> {
    r.map_err(|e| match e {
        StoreError::NotFound => PageError::NotFound,
        e => e.into(),
    })
}

/// After an action: back to the page of accounts it was taken on, saying
/// what was done to which account.
fn back(page: &str, done: &str, id: &CustomerId) -> Response {
    Redirect::to(&format!(
        "/console/operators?page={}&done={done}&id={id}",
        page_of(page)
    ))
    .into_response()
}
