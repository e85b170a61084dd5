//! The outbox on SQLite: leases by a conditional update (no `skip locked`
//! here: the write lock already makes each claim the only one running), and
//! the results workers and receipts record. Each function is one write, run
//! by the writer on its connection inside the batch's transaction.
//!
//! A message is claimable while it is queued, due, and not leased or leased
//! past its expiry; a result is recorded only by the worker that still holds
//! the lease, so a worker presumed dead cannot overwrite its successor's.

use async_trait::async_trait;
use otpgate_core::send;
use otpgate_core::{DeliveryStatus, VerificationId, VerificationState};
use rusqlite::{Connection, params};

use super::writer::{all, exec, one, opt, tuple};
use super::{Lease, SqliteStore, events, lease_due, rows, rows::outbox_columns};
use crate::shared::{self, clip, delivery_detail, id_i64};
use crate::{
    EventKind, InboxEntry, OutboxDepth, OutboxMessage, OutboxStore, SentInfo, StoreResult,
};

#[async_trait]
impl OutboxStore for SqliteStore {
    async fn outbox_claim(
        &self,
        worker: &str,
        max: u32,
        lease_ms: i64,
        now: i64,
    ) -> StoreResult<Vec<OutboxMessage>> {
        let lease = Lease::new(worker, max, lease_ms, now);
        self.write(move |c| claim(c, &lease)).await
    }

    async fn outbox_sent(
        &self,
        message_id: i64,
        worker: &str,
        sent: &SentInfo,
        now: i64,
    ) -> StoreResult<bool> {
        let (worker, sent) = (worker.to_owned(), sent.clone());
        self.write_checked(move |c| mark_sent(c, message_id, &worker, &sent, now))
            .await
    }

    async fn outbox_sent_to_inbox(
        &self,
        message_id: i64,
        worker: &str,
        sent: &SentInfo,
        entry: &InboxEntry,
        now: i64,
    ) -> StoreResult<bool> {
        let (worker, sent, entry) = (worker.to_owned(), sent.clone(), entry.clone());
        self.write_checked(move |c| {
            let marked = mark_sent(c, message_id, &worker, &sent, now)?;
            if marked {
                super::inbox_insert(c, &entry)?;
            }
            Ok(marked)
        })
        .await
    }

    async fn outbox_retry(
        &self,
        message_id: i64,
        worker: &str,
        next_attempt_at: i64,
        error: &str,
        now: i64,
    ) -> StoreResult<bool> {
        let (worker, error) = (worker.to_owned(), clip(error).to_owned());
        self.write(move |c| {
            let Some(vid) = release(
                c,
                "update outbox
                     set next_attempt_at = ?3, last_error = ?4,
                         lease_owner = null, lease_until = null, updated_at = ?5
                     where id = ?1 and lease_owner = ?2 and status = 'queued'
                     returning verification_id",
                params![message_id, worker, next_attempt_at, error, now],
            )?
            else {
                return Ok(false);
            };
            set_detail(c, vid, &error)?;
            // Its verification ended while it was in flight (see
            // `cancel_queued`): no second attempt.
            exec(
                c,
                "update outbox set status = 'cancelled', text = null, updated_at = ?3
                  where id = ?1
                    and (select state from verifications where id = ?2) != 'pending'",
                params![message_id, vid, now],
            )?;
            Ok(true)
        })
        .await
    }

    async fn outbox_failed(
        &self,
        message_id: i64,
        worker: &str,
        error: &str,
        now: i64,
    ) -> StoreResult<bool> {
        let (worker, error) = (worker.to_owned(), clip(error).to_owned());
        self.write(move |c| {
            let Some(vid) = release(
                c,
                "update outbox
                     set status = 'failed', text = null, last_error = ?3,
                         lease_owner = null, lease_until = null, updated_at = ?4
                     where id = ?1 and lease_owner = ?2 and status = 'queued'
                     returning verification_id",
                params![message_id, worker, error, now],
            )?
            else {
                return Ok(false);
            };
            step_failed(c, vid, message_id, DeliveryStatus::Failed, &error, now)?;
            Ok(true)
        })
        .await
    }

    async fn outbox_receipt(
        &self,
        channel: &str,
        gateway_id: &str,
        status: DeliveryStatus,
        detail: &str,
        now: i64,
    ) -> StoreResult<Option<i64>> {
        let (channel, gateway_id) = (channel.to_owned(), gateway_id.to_owned());
        let detail = clip(detail).to_owned();
        let new_status = shared::receipt_status(status);
        let permanent = status.is_final_failure();
        self.write(move |c| {
            let matched: Vec<(i64, i64, i64)> = all(
                c,
                "update outbox set status = coalesce(?3, status), updated_at = ?4
                 where channel = ?1 and gateway_id = ?2
                 returning verification_id, id, created_at",
                params![channel, gateway_id, new_status, now],
                tuple,
            )?;
            for &(vid, message_id, _) in &matched {
                if permanent {
                    step_failed(c, vid, message_id, status, &detail, now)?;
                } else {
                    if status == DeliveryStatus::Delivered {
                        // The code arrived: the workflow's later steps must
                        // not go.
                        cancel_queued(c, vid, now)?;
                        let d = delivery_detail(None, status, &detail);
                        events::emit(c, vid, EventKind::Delivered, &d, now)?;
                    }
                    exec(
                        c,
                        "update verifications
                            set delivery = coalesce(?2, delivery), delivery_detail = ?3
                          where id = ?1",
                        params![vid, new_status, detail],
                    )?;
                }
            }
            Ok(matched.first().map(|&(_, _, accepted_at)| accepted_at))
        })
        .await
    }

    async fn outbox_depth(&self) -> StoreResult<OutboxDepth> {
        // The trait passes no clock, so "in flight" means "has a lease
        // holder": a dead worker's expired lease counts until it is claimed
        // again. Failed in the outbox: given up by a worker (or a receipt
        // saying so); a message a gateway took and a receipt later called
        // undeliverable is a delivery outcome, counted in channel stats.
        let found = self
            .read(|c| {
                let (q, f, o): (i64, i64, Option<i64>) = opt(
                    c,
                    "select coalesce(sum(lease_owner is null), 0),
                            coalesce(sum(lease_owner is not null), 0), min(created_at)
                     from outbox where status = 'queued'",
                    [],
                    tuple,
                )?
                .unwrap_or_default();
                let failed = one(c, "select count(*) from outbox where status = 'failed'", [])?;
                Ok((q, f, o, failed))
            })
            .await?;
        Ok(shared::outbox_depth(found))
    }

    async fn outbox_for_verification(
        &self,
        id: VerificationId,
    ) -> StoreResult<Option<OutboxMessage>> {
        self.read(move |c| {
            opt(
                c,
                concat!(
                    "select ",
                    outbox_columns!(),
                    " from outbox o join verifications v on v.id = o.verification_id
                     where o.verification_id = ?1 and o.step = 0"
                ),
                [id_i64(id)],
                rows::outbox_message,
            )
        })
        .await
    }

    async fn outbox_attempts(&self, id: VerificationId) -> StoreResult<Vec<OutboxMessage>> {
        self.read(move |c| {
            all(
                c,
                concat!(
                    "select ",
                    outbox_columns!(),
                    " from outbox o join verifications v on v.id = o.verification_id
                     where o.verification_id = ?1 order by o.step"
                ),
                [id_i64(id)],
                rows::outbox_message,
            )
        })
        .await
    }
}

pub(super) fn claim(conn: &Connection, lease: &Lease) -> StoreResult<Vec<OutboxMessage>> {
    let read = concat!(
        "select ",
        outbox_columns!(),
        " from outbox o join verifications v on v.id = o.verification_id
         where o.id in (select value from json_each(?1))
         order by o.next_attempt_at, o.id"
    );
    let due = lease_due!("outbox", "queued");
    lease.take(conn, due, read, rows::outbox_message)
}

/// Marks message `message_id` sent, if `worker` still holds it: its text
/// erased, an earlier step still retrying cancelled, the verification's
/// delivery recorded.
fn mark_sent(
    c: &Connection,
    message_id: i64,
    worker: &str,
    sent: &SentInfo,
    now: i64,
) -> StoreResult<bool> {
    let marked: Option<(i64, i64)> = opt(
        c,
        "update outbox
             set status = 'sent', text = null, channel = ?3, gateway_id = ?4,
                 lease_owner = null, lease_until = null, updated_at = ?5
             where id = ?1 and lease_owner = ?2 and status = 'queued'
             returning verification_id, step",
        params![message_id, worker, sent.channel, sent.gateway_id, now],
        tuple,
    )?;
    let Some((vid, step)) = marked else {
        return Ok(false);
    };
    // A later step went out: an earlier one still retrying is not needed
    // any more (the code is on its way by the later flow). The first step,
    // which almost every message is, has none before it.
    if step > 0 {
        exec(
            c,
            "update outbox set status = 'cancelled', text = null, lease_owner = null,
                               lease_until = null, updated_at = ?3
             where verification_id = ?1 and status = 'queued' and step < ?2",
            params![vid, step, now],
        )?;
    }
    exec(
        c,
        "update verifications set delivery = 'sent', channel = ?2, gateway_id = ?3
         where id = ?1",
        params![vid, sent.channel, sent.gateway_id],
    )?;
    Ok(true)
}

/// Runs a lease-releasing `update … returning verification_id`: the
/// verification's id, or `None` if the worker no longer held the lease.
fn release(conn: &Connection, sql: &str, p: impl rusqlite::Params) -> StoreResult<Option<i64>> {
    opt(conn, sql, p, |r| rows::get(r, "verification_id"))
}

fn set_detail(conn: &Connection, vid: i64, detail: &str) -> StoreResult<()> {
    exec(
        conn,
        "update verifications set delivery_detail = ?2 where id = ?1",
        params![vid, detail],
    )?;
    Ok(())
}

/// Step `message_id` of verification `vid` will not deliver: wake the next
/// held step of its workflow, and fail the verification only when no step
/// is left that could still bring the code.
fn step_failed(
    conn: &Connection,
    vid: i64,
    message_id: i64,
    delivery: DeliveryStatus,
    detail: &str,
    now: i64,
) -> StoreResult<()> {
    let steps = all(
        conn,
        "select id, step, status from outbox where verification_id = ?1",
        [vid],
        tuple,
    )?;
    let verdict = crate::shared::step_verdict(message_id, steps)?;
    if let Some(next) = verdict.wake {
        exec(
            conn,
            "update outbox set next_attempt_at = min(next_attempt_at, ?2), updated_at = ?2
             where id = ?1 and status = 'queued'",
            params![next, now],
        )?;
    }
    if verdict.fail_verification {
        fail_and_refund(conn, vid, delivery, detail, now)
    } else {
        set_detail(conn, vid, detail)
    }
}

/// An outbox row's result made the rest of its workflow unnecessary:
/// every other step still queued is cancelled and its text erased — except
/// one in flight (leased to a worker whose lease has not run out), which
/// is at its gateway already: its worker records how that went, and a retry
/// of it is cancelled then (see `outbox_retry`). Cancelled under the worker,
/// the message would read as never sent, and its receipt would find no row
/// to record on.
pub(super) fn cancel_queued(conn: &Connection, vid: i64, now: i64) -> StoreResult<()> {
    exec(
        conn,
        "update outbox set status = 'cancelled', text = null, lease_owner = null,
                           lease_until = null, updated_at = ?2
         where verification_id = ?1 and status = 'queued'
           and (lease_owner is null or lease_until <= ?2)",
        [vid, now],
    )?;
    Ok(())
}

/// The message will never arrive: a pending verification fails (700 on
/// validate), its charge goes back where it came from (contract §5) and
/// its `verification.failed` event is queued,
/// once — a second failure finds it no longer pending. A verification already
/// completed keeps its state and its charge: its code evidently arrived.
fn fail_and_refund(
    conn: &Connection,
    verification_id: i64,
    delivery: DeliveryStatus,
    detail: &str,
    now: i64,
) -> StoreResult<()> {
    // Read first: `returning` would give the cost after it was zeroed.
    let charged = opt(
        conn,
        "select customer_id, state, cost, cost_test from verifications where id = ?1",
        [verification_id],
        tuple,
    )?
    .ok_or(crate::StoreError::NotFound)?;
    let (customer, send::Undeliverable::FailAndRefund(refund)) =
        crate::shared::undeliverable(charged)?
    else {
        exec(
            conn,
            "update verifications set delivery = ?2, delivery_detail = ?3 where id = ?1",
            params![verification_id, delivery.as_str(), detail],
        )?;
        return Ok(());
    };
    exec(
        conn,
        "update verifications
         set state = ?4, cost = 0, cost_test = 0, delivery = ?2, delivery_detail = ?3
         where id = ?1",
        params![
            verification_id,
            delivery.as_str(),
            detail,
            VerificationState::Failed.as_str()
        ],
    )?;
    exec(
        conn,
        "update accounts set test_credits = test_credits + ?2, credits = credits + ?3
         where customer_id = ?1",
        params![customer, refund.test_credits, refund.credits],
    )?;
    let d = delivery_detail(Some("undeliverable"), delivery, detail);
    events::emit(conn, verification_id, EventKind::Failed, &d, now)
}
