//! The operators' fraud page: conversion by country and by destination
//! prefix over the last day, the active fraud-guard blocks with why and
//! until when (each with a button that lifts it), and the safe list of
//! numbers and prefixes the conversion guard never blocks.

use askama::Template;
use axum::extract::State;
use axum::response::{IntoResponse, Redirect, Response};
use otpgate_core::fraud::BlockScope;
use serde::Deserialize;

use super::error::render;
use super::extract::{Lenient, OperatorCtx, Posted};
use super::{Console, PageError};
use crate::time::datetime;

/// Rows of each conversion table.
const TOP: u32 = 50;
/// Longest safe-list note kept.
const MAX_NOTE: usize = 200;

#[derive(Template)]
#[template(path = "console/fraud.html")]
struct FraudPage {
    chrome: super::views::Chrome,
    countries: Vec<Conv>,
    prefixes: Vec<Conv>,
    blocks: Vec<Block>,
    safe: Vec<Safe>,
    notice: String,
}

struct Conv {
    key: String,
    sent: u64,
    completed: u64,
    percent: u64,
}

struct Block {
    scope: &'static str,
    key: String,
    reason: String,
    strikes: u32,
    until: String,
    since: String,
}

struct Safe {
    entry: String,
    note: String,
    added: String,
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub struct Flags {
    done: String,
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub struct LiftForm {
    scope: String,
    key: String,
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub struct SafeForm {
    entry: String,
    note: String,
    remove: String,
}

fn conv(rows: Vec<otpgate_store::ConversionRow>) -> Vec<Conv> {
    rows.into_iter()
        .map(|r| Conv {
            percent: r
                .completed
                .saturating_mul(100)
                .checked_div(r.sent)
                .unwrap_or(0),
            key: r.key,
            sent: r.sent,
            completed: r.completed,
        })
        .collect()
}

pub async fn page(
    State(console): State<Console>,
    ctx: OperatorCtx,
    Lenient(flags): Lenient<Flags>,
) -> Result<Response, PageError> {
    let now = console.now();
    let store = &console.app.store;
    let (countries, prefixes) = store
        .conversion_report(now - otpgate_core::fraud::DAY_MS, TOP)
        .await?;
    let blocks = store.fraud_blocks_active(now, 200).await?;
    let safe = store.safe_list().await?;
    let notice = match flags.done.as_str() {
        "lifted" => "Block lifted: the next send goes through, and the guard counts afresh.",
        "gone" => "That block had already ended.",
        "safe" => "Safe list updated.",
        _ => "",
    };
    Ok(render(&FraudPage {
        chrome: ctx.chrome(&console, "Fraud defence", "fraud"),
        countries: conv(countries),
        prefixes: conv(prefixes),
        blocks: blocks
            .into_iter()
            .map(|b| Block {
                scope: b.scope.as_str(),
                key: b.key,
                reason: b.reason,
                strikes: b.strikes,
                until: datetime(b.until),
                since: datetime(b.created_at),
            })
            .collect(),
        safe: safe
            .into_iter()
            .map(|s| Safe {
                entry: s.entry,
                note: s.note,
                added: datetime(s.created_at),
            })
            .collect(),
        notice: notice.to_owned(),
    }))
}

pub async fn lift(
    State(console): State<Console>,
    _ctx: OperatorCtx,
    Posted(form): Posted<LiftForm>,
) -> Result<Response, PageError> {
    let scope = BlockScope::parse(form.scope.trim())
        .ok_or(PageError::BadRequest("That is not a kind of block."))?;
    let key = form.key.trim();
    if key.is_empty() || key.len() > 64 {
        return Err(PageError::BadRequest("That is not a block."));
    }
    let lifted = console
        .app
        .store
        .fraud_block_lift(scope, key, console.now())
        .await?;
    if lifted {
        tracing::info!(scope = scope.as_str(), %key, "console: operator lifted a fraud block");
    }
    Ok(Redirect::to(if lifted {
        "/console/fraud?done=lifted"
    } else {
        "/console/fraud?done=gone"
    })
    .into_response())
}

/// E.164 digits of a number or prefix as typed (`+44 7700`, `447700`).
fn digits(s: &str) -> Option<String> {
    let d: String = s
        .trim()
        .trim_start_matches('+')
        .chars()
        .filter(|c| !matches!(c, ' ' | '-' | '.' | '(' | ')'))
        .collect();
    ((2..=15).contains(&d.len()) && d.bytes().all(|b| b.is_ascii_digit())).then_some(d)
}

pub async fn safe(
    State(console): State<Console>,
    _ctx: OperatorCtx,
    Posted(form): Posted<SafeForm>,
) -> Result<Response, PageError> {
    let entry = digits(&form.entry).ok_or(PageError::BadRequest(
        "Write a number or a prefix in international form, e.g. +44 7700 or 447700900123.",
    ))?;
    let store = &console.app.store;
    if form.remove == "1" {
        store.safe_list_remove(&entry).await?;
        tracing::info!(%entry, "console: operator removed a safe-list entry");
    } else {
        let note: String = form
            .note
            .trim()
            .chars()
            .filter(|c| !c.is_control())
            .take(MAX_NOTE)
            .collect();
        store.safe_list_add(&entry, &note, console.now()).await?;
        tracing::info!(%entry, "console: operator added a safe-list entry");
    }
    Ok(Redirect::to("/console/fraud?done=safe").into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn safe_list_entries_are_digits_in_international_form() {
        assert_eq!(digits("+44 7700").as_deref(), Some("447700"));
        assert_eq!(digits("91-98765-0").as_deref(), Some("91987650"));
        assert_eq!(digits("abc"), None);
        assert_eq!(digits("1"), None);
        assert_eq!(digits(&"9".repeat(16)), None);
    }
}
