//! Webhooks and the event queue on PostgreSQL. `emit` runs inside the
//! transaction of the change that causes the event; claims use `for update
//! skip locked`, as the outbox's do, so nodes share the queue without
//! waiting on each other.

use sqlx::PgConnection;

use super::run::{all, exec, lease_binds, lease_due, one, opt, scalar, tuple};
use crate::shared::{
    PendingEventRow, clip, event_outcome, pending_event, pending_event_columns, webhook,
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
    let query = sqlx::query(concat!(
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
    .bind(now);
    exec(tx, query).await?;
    Ok(())
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
    let exists = sqlx::query("select 1 from accounts where customer_id = $1").bind(customer);
    if opt(&mut *conn, exists, |_| Ok(())).await?.is_none() {
        return Err(StoreError::NotFound);
    }
    let query = sqlx::query(
        "insert into webhooks (customer_id, url, secret, created_at, updated_at)
         values ($1, $2, $3, $4, $4)
         on conflict (customer_id) do update set url = $2, secret = $3, updated_at = $4
         returning customer_id, url, secret, created_at, updated_at",
    )
    .bind(customer)
    .bind(url)
    .bind(secret)
    .bind(now);
    webhook(one(conn, query, tuple).await?)
}

pub(super) async fn claim(
    conn: &mut PgConnection,
    worker: &str,
    max: u32,
    lease_ms: i64,
    now: i64,
) -> StoreResult<Vec<PendingEvent>> {
    let query = sqlx::query(concat!(
        lease_due!("events", "pending"),
        ", e as (
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
    ));
    let query = lease_binds(query, worker, max, lease_ms, now);
    let rows: Vec<PendingEventRow> = all(conn, query, tuple).await?;
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
    let query = sqlx::query(
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
    .bind(now);
    Ok(exec(conn, query).await? == 1)
}

/// One sweep, in the caller's transaction: the cursor row is locked first,
/// so two nodes sweeping at once take turns (and the unique key would catch
/// a double write anyway).
pub(super) async fn sweep_expired(tx: &mut PgConnection, now: i64) -> StoreResult<u64> {
    let start = sqlx::query(
        "insert into event_sweeps (name, until)
         values ('expired', coalesce((select min(created_at) from webhooks), $1))
         on conflict (name) do nothing",
    );
    exec(&mut *tx, start.bind(now)).await?;
    let cursor = sqlx::query("select until from event_sweeps where name = 'expired' for update");
    let from: i64 = one(&mut *tx, cursor, scalar).await?;
    if from >= now {
        return Ok(0);
    }
    let expired = sqlx::query(concat!(
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
    .bind(now);
    let done = exec(&mut *tx, expired).await?;
    let advance =
        sqlx::query("update event_sweeps set until = greatest(until, $1) where name = 'expired'");
    exec(tx, advance.bind(now)).await?;
    Ok(done)
}
