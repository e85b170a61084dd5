//! The outbox on PostgreSQL: leases by `for update skip locked` (so two
//! nodes never lease one message and neither waits for the other's rows),
//! the results workers and receipts record, and what a failed step does to
//! its workflow and its verification (the verdicts are the core's and
//! `shared`'s, as on SQLite).
//!
//! A result is recorded only by the worker that still holds the lease, so a
//! worker presumed dead cannot overwrite its successor's.
//!
//! Every result locks its verification's row before any outbox row. A
//! validate locks the verification and then cancels its queued steps; a
//! result that took the outbox row first and then waited for the
//! verification would deadlock with it, and PostgreSQL would abort one of
//! the two: a right code answered 503, or a sent message left unrecorded
//! and sent again when its lease ran out.

use async_trait::async_trait;
use otpgate_core::send;
use otpgate_core::{CustomerId, DeliveryStatus, VerificationId, VerificationState};
use sqlx::PgConnection;

use super::error::db_err;
use super::rows::{self, outbox_columns};
use super::run::{PgQuery, all, exec, lease_binds, lease_due, one, opt, scalar, tuple};
use super::{PostgresStore, events};
use crate::shared::{self, clip, delivery_detail, id_i64};
use crate::{
    EventKind, InboxEntry, OutboxDepth, OutboxMessage, OutboxStore, SentInfo, StoreResult,
};

/// Locks the verification of message `$1` (see the module's note on lock
/// order) and yields its id and state (the locked row's, so current); no
/// row when the message is gone.
macro_rules! lock_verification_of_message {
    () => {
        "select v.id, v.state from outbox m join verifications v on v.id = m.verification_id
          where m.id = $1 for update of v"
    };
}

#[async_trait]
impl OutboxStore for PostgresStore {
    async fn outbox_claim(
        &self,
        worker: &str,
        max: u32,
        lease_ms: i64,
        now: i64,
    ) -> StoreResult<Vec<OutboxMessage>> {
        if max == 0 {
            return Ok(Vec::new());
        }
        // `skip locked`: rows another node is claiming right now are passed
        // over instead of waited for, and each row's predicate is re-checked
        // once locked, so a row claimed and committed by someone else in the
        // meantime is not taken twice.
        let query = sqlx::query(concat!(
            lease_due!("outbox", "queued"),
            " update outbox o
                    set lease_owner = $3, lease_until = $4, attempts = o.attempts + 1,
                        updated_at = $1
                   from due, verifications v
                  where o.id = due.id and v.id = o.verification_id
                 returning ",
            outbox_columns!()
        ));
        let query = lease_binds(query, worker, max, lease_ms, now);
        let mut out = self
            .guarded(all(&self.pool, query, rows::outbox_message))
            .await?;
        out.sort_by_key(|m| (m.next_attempt_at, m.id));
        Ok(out)
    }

    async fn outbox_sent(
        &self,
        message_id: i64,
        worker: &str,
        sent: &SentInfo,
        now: i64,
    ) -> StoreResult<bool> {
        self.released(sent_query(message_id, worker, sent, now))
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
        self.released(sent_to_inbox_query(message_id, worker, sent, entry, now))
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
        let error = clip(error);
        // The last error is also shown on the verification (console, support)
        // while the message waits for its next attempt.
        // A message whose verification ended while it was in flight (see
        // `cancel_queued`) is cancelled instead: no second attempt.
        let query = sqlx::query(concat!(
            "with locked as (",
            lock_verification_of_message!(),
            "),
                 o as (
                     update outbox
                        set lease_owner = null, lease_until = null, next_attempt_at = $3,
                            last_error = $4, updated_at = $5,
                            status = case when (select state from locked) = 'pending'
                                          then status else 'cancelled' end,
                            text = case when (select state from locked) = 'pending'
                                        then text end
                      where id = $1 and lease_owner = $2 and status = 'queued'
                        and verification_id = (select id from locked)
                      returning verification_id
                 )
                 update verifications v set delivery_detail = $4
                   from o where v.id = o.verification_id
                 returning v.id"
        ))
        .bind(message_id)
        .bind(worker)
        .bind(next_attempt_at)
        .bind(error)
        .bind(now);
        self.released(query).await
    }

    async fn outbox_failed(
        &self,
        message_id: i64,
        worker: &str,
        error: &str,
        now: i64,
    ) -> StoreResult<bool> {
        let error = clip(error);
        self.guarded(async {
            let mut tx = self.pool.begin().await.map_err(db_err)?;
            let lock = sqlx::query(lock_verification_of_message!()).bind(message_id);
            exec(&mut *tx, lock).await?;
            // The queued -> failed transition happens once, so the refund
            // does too.
            let query = sqlx::query(
                "update outbox
                    set status = 'failed', text = null, last_error = $3,
                        lease_owner = null, lease_until = null, updated_at = $4
                  where id = $1 and lease_owner = $2 and status = 'queued'
                  returning verification_id",
            )
            .bind(message_id)
            .bind(worker)
            .bind(error)
            .bind(now);
            let Some(verification) = opt(&mut *tx, query, scalar).await? else {
                tx.rollback().await.map_err(db_err)?;
                return Ok(false);
            };
            step_failed(
                &mut tx,
                verification,
                message_id,
                DeliveryStatus::Failed,
                error,
                now,
            )
            .await?;
            tx.commit().await.map_err(db_err)?;
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
        let detail = clip(detail);
        let new_status = shared::receipt_status(status);
        let permanent = status.is_final_failure();
        self.guarded(async {
            let mut tx = self.pool.begin().await.map_err(db_err)?;
            // The verifications first, in one order (see the module's note).
            let lock = sqlx::query(
                "select v.id from outbox o join verifications v on v.id = o.verification_id
                  where o.channel = $1 and o.gateway_id = $2
                  order by v.id for update of v",
            );
            exec(&mut *tx, lock.bind(channel).bind(gateway_id)).await?;
            let query = sqlx::query(
                "update outbox set status = coalesce($3, status), updated_at = $4
                  where channel = $1 and gateway_id = $2
                  returning verification_id, id, created_at",
            )
            .bind(channel)
            .bind(gateway_id)
            .bind(new_status)
            .bind(now);
            let matched: Vec<(i64, i64, i64)> = all(&mut *tx, query, tuple).await?;
            for &(verification, message_id, _) in &matched {
                if permanent {
                    step_failed(&mut tx, verification, message_id, status, detail, now).await?;
                } else {
                    if status == DeliveryStatus::Delivered {
                        // The code arrived: the workflow's later steps must
                        // not go.
                        cancel_queued(&mut tx, verification, now).await?;
                        let d = delivery_detail(None, status, detail);
                        events::emit(&mut tx, verification, EventKind::Delivered, &d, now).await?;
                    }
                    let query = sqlx::query(
                        "update verifications
                            set delivery = coalesce($2, delivery), delivery_detail = $3
                          where id = $1",
                    );
                    let query = query.bind(verification).bind(new_status).bind(detail);
                    exec(&mut *tx, query).await?;
                }
            }
            tx.commit().await.map_err(db_err)?;
            Ok(matched.first().map(|&(_, _, accepted_at)| accepted_at))
        })
        .await
    }

    async fn outbox_depth(&self) -> StoreResult<OutboxDepth> {
        let query = sqlx::query(
            "select count(*) filter (where status = 'queued' and lease_owner is null),
                    count(*) filter (where status = 'queued' and lease_owner is not null),
                    min(created_at) filter (where status = 'queued'),
                    count(*) filter (where status = 'failed')
               from outbox",
        );
        let found = self.guarded(one(&self.pool, query, tuple)).await?;
        Ok(shared::outbox_depth(found))
    }

    async fn outbox_for_verification(
        &self,
        id: VerificationId,
    ) -> StoreResult<Option<OutboxMessage>> {
        let sql = concat!(
            "select ",
            outbox_columns!(),
            " from outbox o join verifications v on v.id = o.verification_id
              where o.verification_id = $1 and o.step = 0"
        );
        let query = sqlx::query(sql).bind(id_i64(id));
        self.guarded(opt(&self.pool, query, rows::outbox_message))
            .await
    }

    async fn outbox_attempts(&self, id: VerificationId) -> StoreResult<Vec<OutboxMessage>> {
        let sql = concat!(
            "select ",
            outbox_columns!(),
            " from outbox o join verifications v on v.id = o.verification_id
              where o.verification_id = $1 order by o.step"
        );
        let query = sqlx::query(sql).bind(id_i64(id));
        self.guarded(all(&self.pool, query, rows::outbox_message))
            .await
    }
}

impl PostgresStore {
    /// Runs a lease-releasing statement returning its verification's id:
    /// whether the worker still held the lease (and so changed the rows).
    async fn released(&self, query: PgQuery<'_>) -> StoreResult<bool> {
        let verification: Option<i64> = self.guarded(opt(&self.pool, query, scalar)).await?;
        Ok(verification.is_some())
    }
}

/// The statement that marks message `$1` sent, if worker `$2` still holds
/// it: the outbox row, an earlier step still retrying, and the verification
/// change together or not at all. Its CTE `marked` yields the
/// verification's id when it applied; `$tail` ends the statement.
macro_rules! sent_statement {
    ($tail:literal) => {
        concat!(
            "with locked as (",
            lock_verification_of_message!(),
            "),
                 o as (
                     update outbox
                        set status = 'sent', text = null, channel = $3, gateway_id = $4,
                            lease_owner = null, lease_until = null, updated_at = $5
                      where id = $1 and lease_owner = $2 and status = 'queued'
                        and verification_id = (select id from locked)
                      returning verification_id, step
                 ),
                 -- A later step went out: an earlier one still retrying is
                 -- not needed any more.
                 earlier as (
                     update outbox x
                        set status = 'cancelled', text = null, lease_owner = null,
                            lease_until = null, updated_at = $5
                       from o
                      where x.verification_id = o.verification_id and x.status = 'queued'
                        and x.step < o.step
                        -- The same id as a value: the planner then finds the
                        -- message's steps by the (verification_id, step)
                        -- key, not by scanning every queued row for the join
                        -- (measured: the scan made this the costliest
                        -- statement of a burst of sends, 0.49 ms a message).
                        and x.verification_id = (select id from locked)
                 ),
                 marked as (
                     update verifications v
                        set delivery = 'sent', channel = $3, gateway_id = $4
                       from o where v.id = o.verification_id
                     returning v.id
                 )",
            $tail
        )
    };
}

/// Marks message `message_id` sent, if `worker` still holds it, in one
/// statement ([`sent_statement`]). Returns the verification's id when it
/// applied.
fn sent_query<'q>(message_id: i64, worker: &'q str, sent: &'q SentInfo, now: i64) -> PgQuery<'q> {
    sqlx::query(sent_statement!(" select id from marked"))
        .bind(message_id)
        .bind(worker)
        .bind(&sent.channel)
        .bind(&sent.gateway_id)
        .bind(now)
}

/// As [`sent_query`], and if it applied, puts the message in the inbox, in
/// the same statement: one round trip for the inbox channel's delivery
/// instead of four (BEGIN, the two writes, COMMIT).
fn sent_to_inbox_query<'q>(
    message_id: i64,
    worker: &'q str,
    sent: &'q SentInfo,
    entry: &'q InboxEntry,
    now: i64,
) -> PgQuery<'q> {
    sqlx::query(sent_statement!(
        ",
                 boxed as (
                     insert into inbox (customer_id, destination, text, verification_id,
                                        created_at)
                     select $6, $7, $8, $9, $10 from marked
                 )
             select id from marked"
    ))
    .bind(message_id)
    .bind(worker)
    .bind(&sent.channel)
    .bind(&sent.gateway_id)
    .bind(now)
    .bind(entry.customer_id.as_ref().map(CustomerId::as_str))
    .bind(&entry.destination)
    .bind(&entry.text)
    .bind(entry.verification_id.map(id_i64))
    .bind(entry.created_at)
}

/// Step `message_id` of `verification` will not deliver: wake the next held
/// step of its workflow, and fail the verification only when no step is left
/// that could still bring the code (the verdict is
/// [`crate::shared::step_failed`], shared with SQLite).
async fn step_failed(
    tx: &mut PgConnection,
    verification: i64,
    message_id: i64,
    delivery: DeliveryStatus,
    detail: &str,
    now: i64,
) -> StoreResult<()> {
    let steps = sqlx::query(
        "select id, step::bigint, status from outbox where verification_id = $1 for update",
    );
    let steps = all(&mut *tx, steps.bind(verification), tuple).await?;
    let verdict = shared::step_verdict(message_id, steps)?;
    if let Some(next) = verdict.wake {
        let wake = sqlx::query(
            "update outbox set next_attempt_at = least(next_attempt_at, $2), updated_at = $2
              where id = $1 and status = 'queued'",
        );
        exec(&mut *tx, wake.bind(next).bind(now)).await?;
    }
    if verdict.fail_verification {
        fail_and_refund(tx, verification, delivery, detail, now).await
    } else {
        let set = sqlx::query("update verifications set delivery_detail = $2 where id = $1");
        exec(&mut *tx, set.bind(verification).bind(detail)).await?;
        Ok(())
    }
}

/// The rest of a workflow became unnecessary: every step of `verification`
/// still queued is cancelled and its text erased — except one in flight
/// (leased to a worker whose lease has not run out), which is at its
/// gateway already: its worker records how that went, and a retry of it is
/// cancelled then (see `outbox_retry`). Cancelled under the worker, the
/// message would read as never sent, and its receipt would find no row to
/// record on.
async fn cancel_queued(tx: &mut PgConnection, verification: i64, now: i64) -> StoreResult<()> {
    let query = sqlx::query(
        "update outbox
            set status = 'cancelled', text = null, lease_owner = null, lease_until = null,
                updated_at = $2
          where verification_id = $1 and status = 'queued'
            and (lease_owner is null or lease_until <= $2)",
    );
    exec(tx, query.bind(verification).bind(now)).await?;
    Ok(())
}

/// The message will never arrive: a pending verification fails (700 on
/// validate) and its charge goes back where it came from (contract §5),
/// once: a second failure finds it no longer pending. A verification already
/// completed keeps its state and its charge, since its code evidently
/// arrived.
async fn fail_and_refund(
    tx: &mut PgConnection,
    verification: i64,
    delivery: DeliveryStatus,
    detail: &str,
    now: i64,
) -> StoreResult<()> {
    // Locked and read first: the update below zeroes the cost, and the
    // refund needs it as it was.
    let charged = sqlx::query(
        "select customer_id, state, cost, cost_test from verifications
          where id = $1 for update",
    );
    let charged = one(&mut *tx, charged.bind(verification), tuple).await?;
    let (customer, send::Undeliverable::FailAndRefund(refund)) = shared::undeliverable(charged)?
    else {
        let set = sqlx::query(
            "update verifications set delivery = $2, delivery_detail = $3 where id = $1",
        );
        let set = set.bind(verification).bind(delivery.as_str()).bind(detail);
        exec(&mut *tx, set).await?;
        return Ok(());
    };
    let fail = sqlx::query(
        "update verifications
            set state = $4, cost = 0, cost_test = 0, delivery = $2,
                delivery_detail = $3
          where id = $1",
    )
    .bind(verification)
    .bind(delivery.as_str())
    .bind(detail)
    .bind(VerificationState::Failed.as_str());
    exec(&mut *tx, fail).await?;
    if !refund.is_empty() {
        let give_back = sqlx::query(
            "update accounts
                set test_credits = test_credits + $2, credits = credits + $3
              where customer_id = $1",
        )
        .bind(customer)
        .bind(refund.test_credits)
        .bind(refund.credits);
        exec(&mut *tx, give_back).await?;
    }
    let d = delivery_detail(Some("undeliverable"), delivery, detail);
    events::emit(tx, verification, EventKind::Failed, &d, now).await
}
