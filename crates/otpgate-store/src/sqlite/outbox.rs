//! The outbox on SQLite: leases by a conditional update (no `skip locked`
//! here: the write lock already makes each claim the only one running), and
//! the results workers and receipts record. Each function is one write, run
//! by the writer on its connection inside the batch's transaction.
//!
//! A message is claimable while it is queued, due, and not leased or leased
//! past its expiry; a result is recorded only by the worker that still holds
//! the lease, so a worker presumed dead cannot overwrite its successor's.

use otpgate_core::send;
use otpgate_core::{DeliveryStatus, VerificationState};
use sqlx::sqlite::SqliteConnection;

use super::{db, events, rows, rows::outbox_columns};
use crate::shared::{clip, delivery_detail};
use crate::{EventKind, OutboxMessage, SentInfo, StoreResult};

pub(super) async fn claim(
    conn: &mut SqliteConnection,
    worker: &str,
    max: u32,
    lease_ms: i64,
    now: i64,
) -> StoreResult<Vec<OutboxMessage>> {
    let ids: Vec<i64> = sqlx::query_scalar(
        "update outbox
         set lease_owner = ?1, lease_until = ?2 + ?3, attempts = attempts + 1, updated_at = ?2
         where id in (select id from outbox
                      where status = 'queued' and next_attempt_at <= ?2
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
    // `returning` cannot join, so the claimed rows are read back by id.
    let ids =
        serde_json::to_string(&ids).map_err(|e| crate::StoreError::Internal(e.to_string()))?;
    let claimed = sqlx::query(concat!(
        "select ",
        outbox_columns!(),
        " from outbox o join verifications v on v.id = o.verification_id
         where o.id in (select value from json_each(?1))
         order by o.next_attempt_at, o.id"
    ))
    .bind(ids)
    .fetch_all(&mut *conn)
    .await
    .map_err(db)?
    .iter()
    .map(rows::outbox_message)
    .collect::<StoreResult<Vec<_>>>()?;
    Ok(claimed)
}

pub(super) async fn sent(
    conn: &mut SqliteConnection,
    message_id: i64,
    worker: &str,
    sent: &SentInfo,
    now: i64,
) -> StoreResult<bool> {
    let released: Option<i64> = sqlx::query_scalar(
        "update outbox
             set status = 'sent', text = null, channel = ?3, gateway_id = ?4,
                 lease_owner = null, lease_until = null, updated_at = ?5
             where id = ?1 and lease_owner = ?2 and status = 'queued'
             returning verification_id",
    )
    .bind(message_id)
    .bind(worker)
    .bind(&sent.channel)
    .bind(&sent.gateway_id)
    .bind(now)
    .fetch_optional(&mut *conn)
    .await
    .map_err(db)?;
    let Some(vid) = released else {
        return Ok(false);
    };
    // A later step went out: an earlier one still retrying is not needed
    // any more (the code is on its way by the later flow).
    sqlx::query(
        "update outbox set status = 'cancelled', text = null, lease_owner = null,
                           lease_until = null, updated_at = ?3
         where verification_id = ?1 and status = 'queued'
           and step < (select step from outbox where id = ?2)",
    )
    .bind(vid)
    .bind(message_id)
    .bind(now)
    .execute(&mut *conn)
    .await
    .map_err(db)?;
    sqlx::query(
        "update verifications set delivery = 'sent', channel = ?2, gateway_id = ?3
         where id = ?1",
    )
    .bind(vid)
    .bind(&sent.channel)
    .bind(&sent.gateway_id)
    .execute(&mut *conn)
    .await
    .map_err(db)?;
    Ok(true)
}

pub(super) async fn retry(
    conn: &mut SqliteConnection,
    message_id: i64,
    worker: &str,
    next_attempt_at: i64,
    error: &str,
    now: i64,
) -> StoreResult<bool> {
    let error = clip(error);
    let released: Option<i64> = sqlx::query_scalar(
        "update outbox
             set next_attempt_at = ?3, last_error = ?4,
                 lease_owner = null, lease_until = null, updated_at = ?5
             where id = ?1 and lease_owner = ?2 and status = 'queued'
             returning verification_id",
    )
    .bind(message_id)
    .bind(worker)
    .bind(next_attempt_at)
    .bind(error)
    .bind(now)
    .fetch_optional(&mut *conn)
    .await
    .map_err(db)?;
    let Some(vid) = released else {
        return Ok(false);
    };
    sqlx::query("update verifications set delivery_detail = ?2 where id = ?1")
        .bind(vid)
        .bind(error)
        .execute(&mut *conn)
        .await
        .map_err(db)?;
    Ok(true)
}

pub(super) async fn failed(
    conn: &mut SqliteConnection,
    message_id: i64,
    worker: &str,
    error: &str,
    now: i64,
) -> StoreResult<bool> {
    let error = clip(error);
    let released: Option<i64> = sqlx::query_scalar(
        "update outbox
             set status = 'failed', text = null, last_error = ?3,
                 lease_owner = null, lease_until = null, updated_at = ?4
             where id = ?1 and lease_owner = ?2 and status = 'queued'
             returning verification_id",
    )
    .bind(message_id)
    .bind(worker)
    .bind(error)
    .bind(now)
    .fetch_optional(&mut *conn)
    .await
    .map_err(db)?;
    let Some(vid) = released else {
        return Ok(false);
    };
    step_failed(conn, vid, message_id, DeliveryStatus::Failed, error, now).await?;
    Ok(true)
}

/// Step `message_id` of verification `vid` will not deliver: wake the next
/// held step of its workflow, and fail the verification only when no step
/// is left that could still bring the code.
async fn step_failed(
    conn: &mut SqliteConnection,
    vid: i64,
    message_id: i64,
    delivery: DeliveryStatus,
    detail: &str,
    now: i64,
) -> StoreResult<()> {
    let steps: Vec<(i64, i64, String)> =
        sqlx::query_as("select id, step, status from outbox where verification_id = ?1")
            .bind(vid)
            .fetch_all(&mut *conn)
            .await
            .map_err(db)?;
    let mut this = 0;
    let mut others = Vec::with_capacity(steps.len());
    for (id, step, status) in steps {
        let step = crate::shared::count(step, "step")?;
        if id == message_id {
            this = step;
        } else {
            others.push((id, step, crate::shared::delivery(&status)?));
        }
    }
    let verdict = crate::shared::step_failed(this, &others);
    if let Some(next) = verdict.wake {
        sqlx::query(
            "update outbox set next_attempt_at = min(next_attempt_at, ?2), updated_at = ?2
             where id = ?1 and status = 'queued'",
        )
        .bind(next)
        .bind(now)
        .execute(&mut *conn)
        .await
        .map_err(db)?;
    }
    if verdict.fail_verification {
        fail_and_refund(conn, vid, delivery, detail, now).await
    } else {
        sqlx::query("update verifications set delivery_detail = ?2 where id = ?1")
            .bind(vid)
            .bind(detail)
            .execute(&mut *conn)
            .await
            .map_err(db)?;
        Ok(())
    }
}

/// An outbox row's result made the rest of its workflow unnecessary:
/// every other step still queued is cancelled and its text erased.
pub(super) async fn cancel_queued(
    conn: &mut SqliteConnection,
    vid: i64,
    now: i64,
) -> StoreResult<()> {
    sqlx::query(
        "update outbox set status = 'cancelled', text = null, lease_owner = null,
                           lease_until = null, updated_at = ?2
         where verification_id = ?1 and status = 'queued'",
    )
    .bind(vid)
    .bind(now)
    .execute(&mut *conn)
    .await
    .map_err(db)?;
    Ok(())
}

pub(super) async fn receipt(
    conn: &mut SqliteConnection,
    channel: &str,
    gateway_id: &str,
    status: DeliveryStatus,
    detail: &str,
    now: i64,
) -> StoreResult<Option<i64>> {
    let detail = clip(detail);
    // A receipt saying "queued" tells nothing new about the message's fate:
    // its detail is kept, its status is not moved backwards.
    let new_status = (status != DeliveryStatus::Queued).then(|| status.as_str());
    let matched: Vec<(i64, i64, i64)> = sqlx::query_as(
        "update outbox set status = coalesce(?3, status), updated_at = ?4
         where channel = ?1 and gateway_id = ?2
         returning verification_id, id, created_at",
    )
    .bind(channel)
    .bind(gateway_id)
    .bind(new_status)
    .bind(now)
    .fetch_all(&mut *conn)
    .await
    .map_err(db)?;
    let permanent = status.is_final_failure();
    for &(vid, message_id, _) in &matched {
        if permanent {
            step_failed(conn, vid, message_id, status, detail, now).await?;
        } else {
            if status == DeliveryStatus::Delivered {
                // The code arrived: the workflow's later steps must not go.
                cancel_queued(conn, vid, now).await?;
                let d = delivery_detail(None, status, detail);
                events::emit(conn, vid, EventKind::Delivered, &d, now).await?;
            }
            sqlx::query(
                "update verifications set delivery = coalesce(?2, delivery), delivery_detail = ?3
                 where id = ?1",
            )
            .bind(vid)
            .bind(new_status)
            .bind(detail)
            .execute(&mut *conn)
            .await
            .map_err(db)?;
        }
    }
    Ok(matched.first().map(|&(_, _, accepted_at)| accepted_at))
}

/// The message will never arrive: a pending verification fails (700 on
/// validate), its charge goes back where it came from (contract §5) and
/// its `verification.failed` event is queued,
/// once — a second failure finds it no longer pending. A verification already
/// completed keeps its state and its charge: its code evidently arrived.
async fn fail_and_refund(
    conn: &mut SqliteConnection,
    verification_id: i64,
    delivery: DeliveryStatus,
    detail: &str,
    now: i64,
) -> StoreResult<()> {
    // Read first: `returning` would give the cost after it was zeroed.
    let (customer, state, cost, cost_test): (String, String, i64, i64) = sqlx::query_as(
        "select customer_id, state, cost, cost_test from verifications where id = ?1",
    )
    .bind(verification_id)
    .fetch_one(&mut *conn)
    .await
    .map_err(db)?;
    let state = VerificationState::parse(&state).ok_or_else(|| crate::shared::corrupt("state"))?;
    let send::Undeliverable::FailAndRefund(refund) =
        send::undeliverable(state, send::Charged { cost, cost_test })
    else {
        sqlx::query("update verifications set delivery = ?2, delivery_detail = ?3 where id = ?1")
            .bind(verification_id)
            .bind(delivery.as_str())
            .bind(detail)
            .execute(&mut *conn)
            .await
            .map_err(db)?;
        return Ok(());
    };
    sqlx::query(
        "update verifications
         set state = ?4, cost = 0, cost_test = 0, delivery = ?2, delivery_detail = ?3
         where id = ?1",
    )
    .bind(verification_id)
    .bind(delivery.as_str())
    .bind(detail)
    .bind(VerificationState::Failed.as_str())
    .execute(&mut *conn)
    .await
    .map_err(db)?;
    sqlx::query(
        "update accounts set test_credits = test_credits + ?2, credits = credits + ?3
         where customer_id = ?1",
    )
    .bind(customer)
    .bind(refund.test_credits)
    .bind(refund.credits)
    .execute(&mut *conn)
    .await
    .map_err(db)?;
    let d = delivery_detail(Some("undeliverable"), delivery, detail);
    events::emit(conn, verification_id, EventKind::Failed, &d, now).await
}

/// [`cancel_queued`] for a verification whose wrong codes used up its
/// attempts.
pub(super) async fn cancel_queued_if_dead(
    conn: &mut SqliteConnection,
    vid: i64,
    now: i64,
) -> StoreResult<()> {
    sqlx::query(
        "update outbox set status = 'cancelled', text = null, lease_owner = null,
                           lease_until = null, updated_at = ?2
         where verification_id = ?1 and status = 'queued'
           and exists (select 1 from verifications
                       where id = ?1 and wrong_attempts >= max_attempts)",
    )
    .bind(vid)
    .bind(now)
    .execute(&mut *conn)
    .await
    .map_err(db)?;
    Ok(())
}
