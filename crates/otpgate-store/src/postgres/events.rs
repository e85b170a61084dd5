//! Webhooks and the event queue on PostgreSQL. `emit` runs inside the
//! transaction of the change that causes the event; claims use `for update
//! skip locked`, as the outbox's do, so nodes share the queue without
//! waiting on each other.

use otpgate_core::SecretString;
use sqlx::PgConnection;

use super::error::db_err;
use crate::shared::{
    PendingEventRow, clip, customer_id, event_outcome, pending_event, pending_event_columns,
};
use crate::{EventAttempt, EventKind, PendingEvent, StoreError, StoreResult, Webhook};

/// A fresh `webhook-id`, in SQL (gen_random_uuid is built in since 13).
macro_rules! new_event_id {
    () => {
        "'evt_' || replace(gen_random_uuid()::text, '-', '')"
    };
}
pub(super) use new_event_id;

/// Queues `kind` for the verification `verification_id` if its account has a
/// webhook; a second write of the same (verification, kind) is ignored.
pub(super) async fn emit(
    tx: &mut PgConnection,
    verification_id: i64,
    kind: EventKind,
    detail: &str,
    now: i64,
) -> StoreResult<()> {
    sqlx::query(concat!(
        "insert into events (event_id, customer_id, verification_id, kind, detail, status,
                             attempts, next_attempt_at, created_at, updated_at)
         select ",
        new_event_id!(),
        ", v.customer_id, v.id, $2, $3, 'pending', 0, $4, $4, $4
           from verifications v join webhooks w on w.customer_id = v.customer_id
          where v.id = $1
         on conflict do nothing"
    ))
    .bind(verification_id)
    .bind(kind.as_str())
    .bind(detail)
    .bind(now)
    .execute(&mut *tx)
    .await
    .map_err(db_err)?;
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
    conn: &mut PgConnection,
    customer: &str,
    url: &str,
    secret: &str,
    now: i64,
) -> StoreResult<Webhook> {
    // The insert names an account that must exist: a foreign-key error is
    // an unknown account, told apart by checking first.
    let exists: Option<i32> = sqlx::query_scalar("select 1 from accounts where customer_id = $1")
        .bind(customer)
        .fetch_optional(&mut *conn)
        .await
        .map_err(db_err)?;
    if exists.is_none() {
        return Err(StoreError::NotFound);
    }
    let row: WebhookRow = sqlx::query_as(
        "insert into webhooks (customer_id, url, secret, created_at, updated_at)
         values ($1, $2, $3, $4, $4)
         on conflict (customer_id) do update set url = $2, secret = $3, updated_at = $4
         returning customer_id, url, secret, created_at, updated_at",
    )
    .bind(customer)
    .bind(url)
    .bind(secret)
    .bind(now)
    .fetch_one(&mut *conn)
    .await
    .map_err(db_err)?;
    webhook(row)
}

pub(super) async fn claim(
    conn: &mut PgConnection,
    worker: &str,
    max: u32,
    lease_ms: i64,
    now: i64,
) -> StoreResult<Vec<PendingEvent>> {
    let rows: Vec<PendingEventRow> = sqlx::query_as(concat!(
        "with due as (
             select id from events
              where status = 'pending' and next_attempt_at <= $1
                and (lease_until is null or lease_until <= $1)
              order by next_attempt_at, id
              limit $2
              for update skip locked
         ), e as (
             update events ev
                set lease_owner = $3, lease_until = $4, attempts = ev.attempts + 1,
                    updated_at = $1
               from due where ev.id = due.id
             returning ev.*
         )
         select ",
        pending_event_columns!(),
        " from e left join webhooks w on w.customer_id = e.customer_id
          order by e.next_attempt_at, e.id"
    ))
    .bind(now)
    .bind(i64::from(max))
    .bind(worker)
    .bind(now.saturating_add(lease_ms.max(0)))
    .fetch_all(&mut *conn)
    .await
    .map_err(db_err)?;
    rows.into_iter().map(pending_event).collect()
}

pub(super) async fn record(
    conn: &mut PgConnection,
    id: i64,
    worker: &str,
    attempt: &EventAttempt,
    now: i64,
) -> StoreResult<bool> {
    let (status, next, delivered_at) = event_outcome(attempt, now);
    let done = sqlx::query(
        "update events
            set status = $3, next_attempt_at = coalesce($4, next_attempt_at),
                response_status = $5, response = $6, delivered_at = $7,
                lease_owner = null, lease_until = null, updated_at = $8
          where id = $1 and lease_owner = $2 and status = 'pending'",
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
    .map_err(db_err)?;
    Ok(done.rows_affected() == 1)
}

/// One sweep, in the caller's transaction: the cursor row is locked first,
/// so two nodes sweeping at once take turns (and the unique key would catch
/// a double write anyway).
pub(super) async fn sweep_expired(tx: &mut PgConnection, now: i64) -> StoreResult<u64> {
    sqlx::query(
        "insert into event_sweeps (name, until)
         values ('expired', coalesce((select min(created_at) from webhooks), $1))
         on conflict (name) do nothing",
    )
    .bind(now)
    .execute(&mut *tx)
    .await
    .map_err(db_err)?;
    let from: i64 =
        sqlx::query_scalar("select until from event_sweeps where name = 'expired' for update")
            .fetch_one(&mut *tx)
            .await
            .map_err(db_err)?;
    if from >= now {
        return Ok(0);
    }
    let done = sqlx::query(concat!(
        "insert into events (event_id, customer_id, verification_id, kind, detail, status,
                             attempts, next_attempt_at, created_at, updated_at)
         select ",
        new_event_id!(),
        ", v.customer_id, v.id, 'verification.expired', '{}', 'pending', 0, $2, $2, $2
           from verifications v
          where v.expires_at > $1 and v.expires_at <= $2
            and v.state = 'pending' and v.wrong_attempts < v.max_attempts
            and exists (select 1 from events c
                         where c.verification_id = v.id and c.kind = 'verification.created')
            and exists (select 1 from webhooks w where w.customer_id = v.customer_id)
         on conflict do nothing"
    ))
    .bind(from)
    .bind(now)
    .execute(&mut *tx)
    .await
    .map_err(db_err)?;
    sqlx::query("update event_sweeps set until = greatest(until, $1) where name = 'expired'")
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(db_err)?;
    Ok(done.rows_affected())
}
