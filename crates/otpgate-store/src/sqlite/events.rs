//! Webhooks and the event queue on SQLite. `emit` runs inside the write
//! that causes the event (send, validation, delivery failure, receipt), so
//! the event commits with it or not at all; the rest are the worker's and
//! the console's operations, each one write of the writer's batch.

use rusqlite::{Connection, params};

use super::writer::{exec, one, opt, tuple};
use super::{Lease, lease_due};
use crate::shared::{
    PendingEventRow, WebhookRow, clip, event_outcome, pending_event, pending_event_columns, webhook,
};
use crate::{EventAttempt, EventKind, PendingEvent, StoreError, StoreResult, Webhook};

/// Queues `kind` for the verification `verification_id` if its account has a
/// webhook; a second write of the same (verification, kind) is ignored.
pub(super) fn emit(
    conn: &Connection,
    verification_id: i64,
    kind: EventKind,
    detail: &str,
    now: i64,
) -> StoreResult<()> {
    // `where` is needed before `on conflict` in an insert … select (SQLite's
    // parser would otherwise read `on` as a join).
    exec(
        conn,
        "insert into events (event_id, customer_id, verification_id, kind, detail, status,
                             attempts, next_attempt_at, created_at, updated_at)
         select 'evt_' || lower(hex(randomblob(12))), v.customer_id, v.id, ?2, ?3, 'pending',
                0, ?4, ?4, ?4
           from verifications v join webhooks w on w.customer_id = v.customer_id
          where v.id = ?1
         on conflict do nothing",
        params![verification_id, kind.as_str(), detail, now],
    )?;
    Ok(())
}

pub(super) fn set_webhook(
    conn: &Connection,
    customer: &str,
    url: &str,
    secret: &str,
    now: i64,
) -> StoreResult<Webhook> {
    let exists = opt(
        conn,
        "select 1 from accounts where customer_id = ?1",
        [customer],
        |_| Ok(()),
    )?;
    if exists.is_none() {
        return Err(StoreError::NotFound);
    }
    let row: WebhookRow = opt(
        conn,
        "insert into webhooks (customer_id, url, secret, created_at, updated_at)
         values (?1, ?2, ?3, ?4, ?4)
         on conflict (customer_id) do update set url = ?2, secret = ?3, updated_at = ?4
         returning customer_id, url, secret, created_at, updated_at",
        params![customer, url, secret, now],
        tuple,
    )?
    .ok_or(StoreError::NotFound)?;
    webhook(row)
}

pub(super) fn claim(conn: &Connection, lease: &Lease) -> StoreResult<Vec<PendingEvent>> {
    let read = concat!(
        "select ",
        pending_event_columns!(),
        " from events e left join webhooks w on w.customer_id = e.customer_id
          where e.id in (select value from json_each(?1))
          order by e.next_attempt_at, e.id"
    );
    let rows: Vec<PendingEventRow> =
        lease.take(conn, lease_due!("events", "pending"), read, tuple)?;
    rows.into_iter().map(pending_event).collect()
}

pub(super) fn record(
    conn: &Connection,
    id: i64,
    worker: &str,
    attempt: &EventAttempt,
    now: i64,
) -> StoreResult<bool> {
    let (status, next, delivered_at) = event_outcome(attempt, now);
    let done = exec(
        conn,
        "update events
            set status = ?3, next_attempt_at = coalesce(?4, next_attempt_at),
                response_status = ?5, response = ?6, delivered_at = ?7,
                lease_owner = null, lease_until = null, updated_at = ?8
          where id = ?1 and lease_owner = ?2 and status = 'pending'",
        params![
            id,
            worker,
            status,
            next,
            attempt.response_status.map(i64::from),
            clip(&attempt.response),
            delivered_at,
            now
        ],
    )?;
    Ok(done == 1)
}

pub(super) fn sweep_expired(conn: &Connection, now: i64) -> StoreResult<u64> {
    // Where the last sweep stopped; before the first, the oldest webhook's
    // creation (no verification expiring before it can have had a
    // `created` event).
    let from: i64 = one(
        conn,
        "select coalesce((select until from event_sweeps where name = 'expired'),
                         (select min(created_at) from webhooks), ?1)",
        [now],
    )?;
    if from >= now {
        if from == now {
            upsert_sweep(conn, now)?;
        }
        return Ok(0);
    }
    let done = exec(
        conn,
        "insert into events (event_id, customer_id, verification_id, kind, detail, status,
                             attempts, next_attempt_at, created_at, updated_at)
         select 'evt_' || lower(hex(randomblob(12))), v.customer_id, v.id,
                'verification.expired', '{}', 'pending', 0, ?2, ?2, ?2
           from verifications v
          where v.expires_at > ?1 and v.expires_at <= ?2
            and v.state = 'pending' and v.wrong_attempts < v.max_attempts
            and exists (select 1 from events c
                         where c.verification_id = v.id and c.kind = 'verification.created')
            and exists (select 1 from webhooks w where w.customer_id = v.customer_id)
         on conflict do nothing",
        [from, now],
    )?;
    upsert_sweep(conn, now)?;
    Ok(u64::try_from(done).unwrap_or(u64::MAX))
}

fn upsert_sweep(conn: &Connection, now: i64) -> StoreResult<()> {
    exec(
        conn,
        "insert into event_sweeps (name, until) values ('expired', ?1)
         on conflict (name) do update set until = max(until, ?1)",
        [now],
    )?;
    Ok(())
}
