//! Webhooks and the event queue on SQLite. `emit` runs inside the write
//! that causes the event (send, validation, delivery failure, receipt), so
//! the event commits with it or not at all; the rest are the worker's and
//! the console's operations, each one write of the writer's batch.

use otpgate_core::SecretString;
use sqlx::sqlite::SqliteConnection;

use super::db;
use crate::shared::{
    PendingEventRow, clip, customer_id, event_outcome, pending_event, pending_event_columns,
};
use crate::{EventAttempt, EventKind, PendingEvent, StoreError, StoreResult, Webhook};

/// Queues `kind` for the verification `verification_id` if its account has a
/// webhook; a second write of the same (verification, kind) is ignored.
pub(super) async fn emit(
    conn: &mut SqliteConnection,
    verification_id: i64,
    kind: EventKind,
    detail: &str,
    now: i64,
) -> StoreResult<()> {
    // `where` is needed before `on conflict` in an insert … select (SQLite's
    // parser would otherwise read `on` as a join).
    sqlx::query(
        "insert into events (event_id, customer_id, verification_id, kind, detail, status,
                             attempts, next_attempt_at, created_at, updated_at)
         select 'evt_' || lower(hex(randomblob(12))), v.customer_id, v.id, ?2, ?3, 'pending',
                0, ?4, ?4, ?4
           from verifications v join webhooks w on w.customer_id = v.customer_id
          where v.id = ?1
         on conflict do nothing",
    )
    .bind(verification_id)
    .bind(kind.as_str())
    .bind(detail)
    .bind(now)
    .execute(&mut *conn)
    .await
    .map_err(db)?;
    Ok(())
}

pub(super) type WebhookRow = (String, String, String, i64, i64);

pub(super) fn webhook(row: WebhookRow) -> StoreResult<Webhook> {
    let (customer, url, secret, created_at, updated_at) = row;
    Ok(Webhook {
        customer_id: customer_id(&customer)?,
        url,
        secret: SecretString::new(secret),
        created_at,
        updated_at,
    })
}

pub(super) async fn set_webhook(
    conn: &mut SqliteConnection,
    customer: &str,
    url: &str,
    secret: &str,
    now: i64,
) -> StoreResult<Webhook> {
    let exists: Option<i64> = sqlx::query_scalar("select 1 from accounts where customer_id = ?1")
        .bind(customer)
        .fetch_optional(&mut *conn)
        .await
        .map_err(db)?;
    if exists.is_none() {
        return Err(StoreError::NotFound);
    }
    let row: WebhookRow = sqlx::query_as(
        "insert into webhooks (customer_id, url, secret, created_at, updated_at)
         values (?1, ?2, ?3, ?4, ?4)
         on conflict (customer_id) do update set url = ?2, secret = ?3, updated_at = ?4
         returning customer_id, url, secret, created_at, updated_at",
    )
    .bind(customer)
    .bind(url)
    .bind(secret)
    .bind(now)
    .fetch_one(&mut *conn)
    .await
    .map_err(db)?;
    webhook(row)
}

pub(super) async fn claim(
    conn: &mut SqliteConnection,
    worker: &str,
    max: u32,
    lease_ms: i64,
    now: i64,
) -> StoreResult<Vec<PendingEvent>> {
    let ids: Vec<i64> = sqlx::query_scalar(
        "update events
            set lease_owner = ?1, lease_until = ?2 + ?3, attempts = attempts + 1, updated_at = ?2
          where id in (select id from events
                        where status = 'pending' and next_attempt_at <= ?2
                          and (lease_until is null or lease_until <= ?2)
                        order by next_attempt_at, id limit ?4)
         returning id",
    )
    .bind(worker)
    .bind(now)
    .bind(lease_ms)
    .bind(max)
    .fetch_all(&mut *conn)
    .await
    .map_err(db)?;
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let ids = serde_json::to_string(&ids).map_err(|e| StoreError::Internal(e.to_string()))?;
    let rows: Vec<PendingEventRow> = sqlx::query_as(concat!(
        "select ",
        pending_event_columns!(),
        " from events e left join webhooks w on w.customer_id = e.customer_id
          where e.id in (select value from json_each(?1))
          order by e.next_attempt_at, e.id"
    ))
    .bind(ids)
    .fetch_all(&mut *conn)
    .await
    .map_err(db)?;
    rows.into_iter().map(pending_event).collect()
}

pub(super) async fn record(
    conn: &mut SqliteConnection,
    id: i64,
    worker: &str,
    attempt: &EventAttempt,
    now: i64,
) -> StoreResult<bool> {
    let (status, next, delivered_at) = event_outcome(attempt, now);
    let done = sqlx::query(
        "update events
            set status = ?3, next_attempt_at = coalesce(?4, next_attempt_at),
                response_status = ?5, response = ?6, delivered_at = ?7,
                lease_owner = null, lease_until = null, updated_at = ?8
          where id = ?1 and lease_owner = ?2 and status = 'pending'",
    )
    .bind(id)
    .bind(worker)
    .bind(status)
    .bind(next)
    .bind(attempt.response_status.map(i64::from))
    .bind(clip(&attempt.response))
    .bind(delivered_at)
    .bind(now)
    .execute(&mut *conn)
    .await
    .map_err(db)?;
    Ok(done.rows_affected() == 1)
}

pub(super) async fn sweep_expired(conn: &mut SqliteConnection, now: i64) -> StoreResult<u64> {
    // Where the last sweep stopped; before the first, the oldest webhook's
    // creation (no verification expiring before it can have had a
    // `created` event).
    let from: i64 = sqlx::query_scalar(
        "select coalesce((select until from event_sweeps where name = 'expired'),
                         (select min(created_at) from webhooks), ?1)",
    )
    .bind(now)
    .fetch_one(&mut *conn)
    .await
    .map_err(db)?;
    if from >= now {
        if from == now {
            upsert_sweep(conn, now).await?;
        }
        return Ok(0);
    }
    let done = sqlx::query(
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
    )
    .bind(from)
    .bind(now)
    .execute(&mut *conn)
    .await
    .map_err(db)?;
    upsert_sweep(conn, now).await?;
    Ok(done.rows_affected())
}

async fn upsert_sweep(conn: &mut SqliteConnection, now: i64) -> StoreResult<()> {
    sqlx::query(
        "insert into event_sweeps (name, until) values ('expired', ?1)
         on conflict (name) do update set until = max(until, ?1)",
    )
    .bind(now)
    .execute(&mut *conn)
    .await
    .map_err(db)?;
    Ok(())
}
