//! "Your numbers": the account proves a phone number is its own by having
//! otpgate send a code to it and typing the code back. Test credits pay
//! only for these numbers (and the server's test numbers), so a fresh
//! sign-up cannot spend them pumping messages to strangers. The proving
//! send itself goes through the whole send path (number type, geo, caps,
//! fraud guard) and at most `fraud.own_number_sends_per_day` of them go
//! out per account per day.

use askama::Template;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use otpgate_api::SendRequest;
use otpgate_core::{FlowType, OtpCode, SendCommand, VerificationId};
use otpgate_store::SendKind;
use serde::Deserialize;

use super::error::{render, render_status};
use super::extract::{AccountCtx, Lenient, Posted};
use super::{Console, PageError};
use crate::service::{self, SendError, SendResult};
use crate::time::datetime;

#[derive(Template)]
#[template(path = "console/numbers.html")]
struct NumbersPage {
    chrome: super::views::Chrome,
    numbers: Vec<Row>,
    max: u32,
    /// The own-number verification waiting for its code, if any.
    pending: String,
    pending_to: String,
    country_code: String,
    mobile_number: String,
    error: String,
    notice: &'static str,
}

struct Row {
    number: String,
    verified: String,
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub struct Flags {
    sent: String,
    done: String,
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub struct SendForm {
    country_code: String,
    mobile_number: String,
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub struct ConfirmForm {
    verification_id: String,
    code: String,
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub struct RemoveForm {
    number: String,
}

async fn build(
    console: &Console,
    ctx: &AccountCtx,
    pending: Option<VerificationId>,
) -> Result<NumbersPage, PageError> {
    let store = &console.app.store;
    let numbers = store.own_numbers(&ctx.account.customer_id).await?;
    let pending = match pending {
        Some(id) => store
            .verification_get(&ctx.account.customer_id, id)
            .await?
            .filter(|v| v.is_live(console.now())),
        None => None,
    };
    Ok(NumbersPage {
        chrome: ctx.chrome(console, "Your numbers", "numbers"),
        numbers: numbers
            .into_iter()
            .map(|n| Row {
                number: format!("+{}", n.destination),
                verified: datetime(n.verified_at),
            })
            .collect(),
        max: console.app.settings.fraud.own_numbers_max,
        pending: pending
            .as_ref()
            .map(|v| v.id.to_string())
            .unwrap_or_default(),
        pending_to: pending
            .as_ref()
            .map(|v| format!("+{}", v.destination.e164_digits()))
            .unwrap_or_default(),
        country_code: String::new(),
        mobile_number: String::new(),
        error: String::new(),
        notice: "",
    })
}

pub async fn page(
    State(console): State<Console>,
    ctx: AccountCtx,
    Lenient(flags): Lenient<Flags>,
) -> Result<Response, PageError> {
    let mut page = build(&console, &ctx, VerificationId::parse(&flags.sent).ok()).await?;
    page.notice = match flags.done.as_str() {
        "verified" => "Number verified: test credits now pay for messages to it.",
        "removed" => "Number removed.",
        _ => "",
    };
    Ok(render(&page))
}

/// Shows the page again with what went wrong.
async fn refused(
    console: &Console,
    ctx: &AccountCtx,
    pending: Option<VerificationId>,
    form: Option<&SendForm>,
    error: String,
) -> Result<Response, PageError> {
    let mut page = build(console, ctx, pending).await?;
    if let Some(f) = form {
        page.country_code.clone_from(&f.country_code);
        page.mobile_number.clone_from(&f.mobile_number);
    }
    page.error = error;
    Ok(render_status(StatusCode::UNPROCESSABLE_ENTITY, &page))
}

pub async fn send(
    State(console): State<Console>,
    ctx: AccountCtx,
    Posted(form): Posted<SendForm>,
) -> Result<Response, PageError> {
    let fraud = &console.app.settings.fraud;
    let have = console
        .app
        .store
        .own_numbers(&ctx.account.customer_id)
        .await?
        .len();
    if have >= usize::try_from(fraud.own_numbers_max).unwrap_or(usize::MAX) {
        let text = format!(
            "This account has {have} verified numbers, the most it may keep. Remove one first."
        );
        return refused(&console, &ctx, None, Some(&form), text).await;
    }
    let nonblank = |s: &str| Some(s.trim().to_owned()).filter(|s| !s.is_empty());
    let wire = SendRequest {
        country_code: nonblank(&form.country_code),
        mobile_number: nonblank(&form.mobile_number),
        flow_type: Some(FlowType::Sms.as_str().to_owned()),
        ..SendRequest::default()
    };
    let plan = match SendCommand::try_from(wire)
        .map_err(|e| e.to_string())
        .and_then(|cmd| {
            service::plan_send(&console.app, &ctx.account, cmd).map_err(|e| e.to_string())
        }) {
        Ok(p) => p,
        Err(reason) => return refused(&console, &ctx, None, Some(&form), reason).await,
    };
    if plan.test_code.is_some() {
        let text = "That is one of this server's test numbers; it needs no verifying.".into();
        return refused(&console, &ctx, None, Some(&form), text).await;
    }
    let kind = SendKind::OwnNumber {
        max_per_day: fraud.own_number_sends_per_day,
    };
    match service::send(&console.app, &ctx.account, plan, kind).await {
        Ok(SendResult::Created(v)) => {
            tracing::info!(customer = %ctx.account.customer_id, to = %v.destination.masked(), "console: own-number code sent");
            Ok(Redirect::to(&format!("/console/numbers?sent={}", v.id)).into_response())
        }
        Ok(SendResult::Pending(v, _)) => {
            let text = "A code to this number is still valid: type it below, or wait until it expires to ask for a new one.".into();
            refused(&console, &ctx, Some(v.id), Some(&form), text).await
        }
        Err(e @ SendError::RateLimited { .. }) => {
            let text = format!(
                "Not now: {e}. At most {} own-number codes go out per account per day.",
                fraud.own_number_sends_per_day
            );
            refused(&console, &ctx, None, Some(&form), text).await
        }
        Err(e) => refused(&console, &ctx, None, Some(&form), e.to_string()).await,
    }
}

pub async fn confirm(
    State(console): State<Console>,
    ctx: AccountCtx,
    Posted(form): Posted<ConfirmForm>,
) -> Result<Response, PageError> {
    let id = VerificationId::parse(&form.verification_id)
        .map_err(|_| PageError::BadRequest("That is not a verification."))?;
    let code = match OtpCode::parse(form.code.trim()) {
        Ok(c) => c,
        Err(e) => return refused(&console, &ctx, Some(id), None, e.to_string()).await,
    };
    match service::validate_code(&console.app, &ctx.account, id, &code).await {
        Ok(_) => {}
        Err(e) => return refused(&console, &ctx, Some(id), None, e.to_string()).await,
    }
    let store = &console.app.store;
    if !store
        .own_number_confirm(&ctx.account.customer_id, id, console.now())
        .await?
    {
        let text = "That code was right, but it was not sent from this page: ask for a code here to verify a number.".into();
        return refused(&console, &ctx, None, None, text).await;
    }
    tracing::info!(customer = %ctx.account.customer_id, "console: own number verified");
    Ok(Redirect::to("/console/numbers?done=verified").into_response())
}

pub async fn remove(
    State(console): State<Console>,
    ctx: AccountCtx,
    Posted(form): Posted<RemoveForm>,
) -> Result<Response, PageError> {
    let digits: String = form
        .number
        .trim()
        .trim_start_matches('+')
        .chars()
        .take(20)
        .collect();
    console
        .app
        .store
        .own_number_remove(&ctx.account.customer_id, &digits)
        .await?;
    Ok(Redirect::to("/console/numbers?done=removed").into_response())
}
