//! A send (contract §2 and §5) as one SQLite write: account check, 506, rate
//! limits, charge, verification, outbox row and (for an account with a
//! webhook) its `verification.created` event. It runs on the writer's
//! connection, inside the batch's `begin immediate` transaction (and its own
//! savepoint), which keeps it only if it returns `Created`.

use otpgate_core::fraud::{self, ChargeRefusal, SendVerdict};
use otpgate_core::{DeliveryStatus, VerificationState};
use sqlx::Row;
use sqlx::sqlite::SqliteConnection;

use super::{db, rows, rows::verification_columns};
use crate::shared::{self, created_detail, day_of, id_i64, retry_after_secs};
use crate::{
    CreateOutcome, EventKind, NewVerification, SendKind, SendLimits, StoreError, StoreResult,
    Verification,
};

pub(super) async fn create(
    conn: &mut SqliteConnection,
    req: NewVerification,
) -> StoreResult<CreateOutcome> {
    if req.price < 0 {
        return Err(StoreError::Internal("negative price".into()));
    }
    let now = req.created_at;
    let detail = created_detail(&req);
    let customer = req.customer_id.as_str();
    let destination = req.destination.e164_digits();

    let account: Option<(i64, i64, bool)> = sqlx::query_as(
        "select credits, test_credits, disabled from accounts where customer_id = ?1",
    )
    .bind(customer)
    .fetch_optional(&mut *conn)
    .await
    .map_err(db)?;
    let Some((credits, test_credits, false)) = account else {
        return Ok(CreateOutcome::AccountUnavailable);
    };

    // 506 first: a client that resends while its code is still valid gets
    // the pending verification back, whatever the limits say.
    let pending = sqlx::query(concat!(
        "select ",
        verification_columns!(),
        " from verifications
         where customer_id = ?1 and destination = ?2 and state = 'pending'
           and expires_at > ?3 and wrong_attempts < max_attempts
         order by created_at desc limit 1"
    ))
    .bind(customer)
    .bind(&destination)
    .bind(now)
    .fetch_optional(&mut *conn)
    .await
    .map_err(db)?;
    if let Some(row) = pending {
        return Ok(CreateOutcome::AlreadyPending(rows::verification(&row)?));
    }

    if let Some(retry_after_secs) = limited(conn, &req.limits, customer, &destination, now).await? {
        return Ok(CreateOutcome::RateLimited { retry_after_secs });
    }

    // The fraud defences (caps, blocks, the conversion guard): the facts
    // are read here, in the same write transaction as the charge, so no
    // concurrent send can slip past a cap; the rule is the core's.
    let mut test_usable =
        !req.fraud.test_credits_verified_only || matches!(req.kind, SendKind::OwnNumber { .. });
    // Whether the guard counts this send: not for a safe-listed
    // destination or a test number (their prefix is stored as null), so
    // trusted traffic never pushes its country towards a block.
    let mut counted = false;
    if req.kind != SendKind::TestNumber {
        let (facts, own_verified, own_sent_today) = facts(conn, &req, &destination).await?;
        counted = !facts.safe_listed;
        if let SendKind::OwnNumber { max_per_day } = req.kind
            && own_sent_today >= max_per_day
        {
            return Ok(CreateOutcome::RateLimited {
                retry_after_secs: 3600,
            });
        }
        test_usable |= own_verified;
        match fraud::decide_send(&facts, &req.fraud, now) {
            SendVerdict::Allow => {}
            SendVerdict::Refuse(r) => return Ok(shared::refused(r, now)),
            SendVerdict::Block(b) => {
                let key = shared::block_key(&req, b.scope);
                sqlx::query(
                    "insert into fraud_blocks (scope, key, reason, strikes, blocked_until,
                                               lifted_at, created_at, updated_at)
                     values (?1, ?2, ?3, ?4, ?5, null, ?6, ?6)
                     on conflict (scope, key) do update
                        set reason = excluded.reason, strikes = excluded.strikes,
                            blocked_until = excluded.blocked_until, lifted_at = null,
                            updated_at = excluded.updated_at",
                )
                .bind(b.scope.as_str())
                .bind(&key)
                .bind(&b.reason)
                .bind(b.strikes)
                .bind(b.until_ms)
                .bind(now)
                .execute(&mut *conn)
                .await
                .map_err(db)?;
                return Ok(shared::new_block(b, now));
            }
        }
    }

    // Test credits are spent first (contract §5), where they may pay.
    let price = if req.kind == SendKind::TestNumber {
        0
    } else {
        req.price
    };
    let (cost, from_test) = match fraud::charge(price, credits, test_credits, test_usable) {
        Ok(c) => c,
        Err(ChargeRefusal::Insufficient) => return Ok(CreateOutcome::InsufficientBalance),
        Err(ChargeRefusal::TestCreditsRestricted) => {
            return Ok(CreateOutcome::TestCreditsRestricted);
        }
    };
    let from_paid = cost - from_test;
    sqlx::query(
        "update accounts set test_credits = test_credits - ?2, credits = credits - ?3
         where customer_id = ?1",
    )
    .bind(customer)
    .bind(from_test)
    .bind(from_paid)
    .execute(&mut *conn)
    .await
    .map_err(db)?;

    let delivery = if req.kind == SendKind::TestNumber {
        DeliveryStatus::Sent
    } else {
        DeliveryStatus::Queued
    };
    // The first candidate id not yet taken; `on conflict do nothing` leaves
    // the transaction usable after a taken one (on both backends alike).
    let candidates =
        std::iter::once((req.id, req.code_hash.clone())).chain(req.spare_ids.iter().cloned());
    let mut stored = None;
    for (id, code_hash) in candidates {
        let done = sqlx::query(
            "insert into verifications
                 (id, customer_id, country_code, national, destination, flow_type, code_hash,
                  otp_length, state, wrong_attempts, max_attempts, created_at, expires_at,
                  transaction_id, cost, cost_test, delivery, prefix)
             values (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, 'pending', 0, ?9, ?10, ?11, ?12, ?13, ?14,
                     ?15, ?16)
             on conflict (id) do nothing",
        )
        .bind(id_i64(id))
        .bind(customer)
        .bind(req.destination.country_code())
        .bind(req.destination.national())
        .bind(&destination)
        .bind(&req.flow_type)
        .bind(&code_hash.0[..])
        .bind(req.otp_length)
        .bind(req.max_attempts)
        .bind(now)
        .bind(req.expires_at)
        .bind(&req.transaction_id)
        .bind(cost)
        .bind(from_test)
        .bind(delivery.as_str())
        .bind(counted.then_some(&req.prefix))
        .execute(&mut *conn)
        .await
        .map_err(db)?;
        if done.rows_affected() == 1 {
            stored = Some((id, code_hash));
            break;
        }
    }
    let Some((id, code_hash)) = stored else {
        return Err(StoreError::Conflict(
            "every candidate verification id is taken".into(),
        ));
    };
    sqlx::query(
        "insert into daily_stats (customer_id, day, sends, completed, created_at)
         values (?1, ?2, 1, 0, ?3)
         on conflict (customer_id, day) do update set sends = sends + 1",
    )
    .bind(customer)
    .bind(day_of(now))
    .bind(now)
    .execute(&mut *conn)
    .await
    .map_err(db)?;
    let v = Verification {
        id,
        customer_id: req.customer_id.clone(),
        destination: req.destination.clone(),
        flow_type: req.flow_type.clone(),
        code_hash,
        otp_length: req.otp_length,
        state: VerificationState::Pending,
        wrong_attempts: 0,
        max_attempts: req.max_attempts,
        created_at: now,
        expires_at: req.expires_at,
        completed_at: None,
        transaction_id: req.transaction_id.clone(),
        cost,
        cost_test: from_test,
        delivery,
        channel: None,
        gateway_id: None,
        delivery_detail: None,
    };
    if let SendKind::OwnNumber { .. } = req.kind {
        sqlx::query(
            "insert into own_numbers (verification_id, customer_id, destination, created_at)
             values (?1, ?2, ?3, ?4)",
        )
        .bind(id_i64(v.id))
        .bind(v.customer_id.as_str())
        .bind(&destination)
        .bind(now)
        .execute(&mut *conn)
        .await
        .map_err(db)?;
    }
    if req.kind == SendKind::TestNumber {
        // A test number's message never leaves the server: no outbox row.
        return Ok(CreateOutcome::Created(v));
    }
    sqlx::query(
        "insert into outbox (verification_id, step, address, lang, text, status,
                             next_attempt_at, created_at, updated_at)
         values (?1, 0, ?2, ?3, ?4, 'queued', ?5, ?5, ?5)",
    )
    .bind(id_i64(v.id))
    .bind(&req.address)
    .bind(&req.lang)
    .bind(&req.message_text)
    .bind(now)
    .execute(&mut *conn)
    .await
    .map_err(db)?;
    for (i, f) in req.fallbacks.iter().enumerate() {
        sqlx::query(
            "insert into outbox (verification_id, step, flow_type, address, lang, text, status,
                                 next_attempt_at, created_at, updated_at)
             values (?1, ?2, ?3, ?4, ?5, ?6, 'queued', ?7, ?8, ?8)",
        )
        .bind(id_i64(v.id))
        .bind(i64::try_from(i + 1).unwrap_or(i64::MAX))
        .bind(&f.flow_type)
        .bind(&f.address)
        .bind(&req.lang)
        .bind(&f.text)
        .bind(f.due_at)
        .bind(now)
        .execute(&mut *conn)
        .await
        .map_err(db)?;
    }
    super::events::emit(conn, id_i64(v.id), EventKind::Created, &detail, now).await?;
    Ok(CreateOutcome::Created(v))
}

/// What the fraud defences weigh for this send, in one statement; and
/// whether the destination is one of the account's verified numbers, and
/// how many own-number sends the account made in the last day.
async fn facts(
    conn: &mut SqliteConnection,
    req: &NewVerification,
    destination: &str,
) -> StoreResult<(fraud::SendFacts, bool, u32)> {
    let now = req.created_at;
    let customer = req.customer_id.as_str();
    let country_key = shared::block_key(req, fraud::BlockScope::Country);
    let row = sqlx::query(
        "with acct as (
             select count(*) filter (where created_at > ?3) as hour_n,
                    coalesce(sum(cost) filter (where created_at > ?3), 0) as hour_c,
                    min(created_at) filter (where created_at > ?3) as hour_oldest,
                    count(*) as day_n, coalesce(sum(cost), 0) as day_c,
                    min(created_at) as day_oldest
               from verifications where customer_id = ?1 and created_at > ?4
         ),
         pb as (select reason, strikes, blocked_until from fraud_blocks
                 where scope = 'prefix' and key = ?5),
         cb as (select reason, strikes, blocked_until from fraud_blocks
                 where scope = 'country' and key = ?6)
         select acct.*,
                (select count(*) from verifications
                  where destination = ?7 and created_at > ?4) as dest_n,
                (select min(created_at) from verifications
                  where destination = ?7 and created_at > ?4) as dest_oldest,
                exists (select 1 from safe_list
                         where substr(?7, 1, length(entry)) = entry) as safe,
                (select reason from pb) as pb_reason,
                (select strikes from pb) as pb_strikes,
                (select blocked_until from pb) as pb_until,
                (select reason from cb) as cb_reason,
                (select strikes from cb) as cb_strikes,
                (select blocked_until from cb) as cb_until,
                (select count(*) from verifications
                  where prefix = ?5
                    and created_at > max(?8, coalesce((select blocked_until from pb), 0))
                ) as p_sent,
                (select count(*) from verifications
                  where prefix = ?5 and state = 'completed'
                    and created_at > max(?8, coalesce((select blocked_until from pb), 0))
                ) as p_done,
                (select count(*) from verifications
                  where customer_id = ?1 and country_code = ?2 and prefix is not null
                    and created_at > max(?9, coalesce((select blocked_until from cb), 0))
                ) as c_sent,
                (select count(*) from verifications
                  where customer_id = ?1 and country_code = ?2 and state = 'completed'
                    and prefix is not null and created_at > max(?9, coalesce((select blocked_until from cb), 0))
                ) as c_done,
                exists (select 1 from own_numbers
                         where customer_id = ?1 and destination = ?7
                           and verified_at is not null) as own_verified,
                (select count(*) from own_numbers
                  where customer_id = ?1 and created_at > ?4) as own_today
           from acct",
    )
    .bind(customer)
    .bind(req.destination.country_code())
    .bind(now - fraud::HOUR_MS)
    .bind(now - fraud::DAY_MS)
    .bind(&req.prefix)
    .bind(&country_key)
    .bind(destination)
    .bind(now - req.fraud.prefix.window_ms)
    .bind(now - req.fraud.country.window_ms)
    .fetch_one(&mut *conn)
    .await
    .map_err(db)?;
    let get = |name: &str| -> StoreResult<i64> { row.try_get::<i64, _>(name).map_err(db) };
    let opt = |name: &str| -> StoreResult<Option<i64>> {
        row.try_get::<Option<i64>, _>(name).map_err(db)
    };
    let block = |reason: &str, strikes: &str, until: &str| -> StoreResult<_> {
        let reason: Option<String> = row.try_get(reason).map_err(db)?;
        Ok(match (reason, opt(strikes)?, opt(until)?) {
            (Some(reason), Some(strikes), Some(until)) => Some(fraud::BlockRecord {
                until_ms: until,
                strikes: shared::count(strikes, "strikes")?,
                reason,
            }),
            _ => None,
        })
    };
    let facts = fraud::SendFacts {
        price: req.price,
        account_hour: fraud::Usage {
            messages: shared::count(get("hour_n")?, "count")?,
            credits: get("hour_c")?,
            oldest_ms: opt("hour_oldest")?,
        },
        account_day: fraud::Usage {
            messages: shared::count(get("day_n")?, "count")?,
            credits: get("day_c")?,
            oldest_ms: opt("day_oldest")?,
        },
        destination_day: fraud::Usage {
            messages: shared::count(get("dest_n")?, "count")?,
            credits: 0,
            oldest_ms: opt("dest_oldest")?,
        },
        safe_listed: get("safe")? != 0,
        prefix_block: block("pb_reason", "pb_strikes", "pb_until")?,
        country_block: block("cb_reason", "cb_strikes", "cb_until")?,
        prefix: fraud::Conversion {
            sent: shared::count(get("p_sent")?, "count")?,
            completed: shared::count(get("p_done")?, "count")?,
        },
        country: fraud::Conversion {
            sent: shared::count(get("c_sent")?, "count")?,
            completed: shared::count(get("c_done")?, "count")?,
        },
    };
    Ok((
        facts,
        get("own_verified")? != 0,
        shared::count(get("own_today")?, "count")?,
    ))
}

/// The seconds until a send would be allowed, if a limit refuses it now.
async fn limited(
    conn: &mut SqliteConnection,
    limits: &SendLimits,
    customer: &str,
    destination: &str,
    now: i64,
) -> StoreResult<Option<u64>> {
    if let Some(per_second) = limits.per_account_per_second {
        let recent: i64 = sqlx::query_scalar(
            "select count(*) from verifications
             where customer_id = ?1 and created_at > ?2 - 1000 and created_at <= ?2",
        )
        .bind(customer)
        .bind(now)
        .fetch_one(&mut *conn)
        .await
        .map_err(db)?;
        if recent >= i64::from(per_second) {
            return Ok(Some(1));
        }
    }

    // The per-number limit is full when the `per_number_max`-th newest send
    // is still inside the window; it frees up when that one leaves it.
    let window = limits.per_number_window_ms;
    if limits.per_number_max == 0 {
        return Ok(Some(retry_after_secs(window)));
    }
    let blocking: Option<i64> = sqlx::query_scalar(
        "select created_at from verifications
         where customer_id = ?1 and destination = ?2 and created_at > ?3 - ?4
         order by created_at desc limit 1 offset ?5",
    )
    .bind(customer)
    .bind(destination)
    .bind(now)
    .bind(window)
    .bind(limits.per_number_max - 1)
    .fetch_optional(&mut *conn)
    .await
    .map_err(db)?;
    if let Some(at) = blocking {
        return Ok(Some(retry_after_secs(
            at.saturating_add(window).saturating_sub(now),
        )));
    }

    let window = limits.wrong_code_window_ms;
    if limits.wrong_code_max == 0 {
        return Ok(Some(retry_after_secs(window)));
    }
    let wrong: Vec<(i64, i64)> = sqlx::query_as(
        "select created_at, wrong_attempts from verifications
         where customer_id = ?1 and destination = ?2 and created_at > ?3 - ?4
           and wrong_attempts > 0
         order by created_at desc",
    )
    .bind(customer)
    .bind(destination)
    .bind(now)
    .bind(window)
    .fetch_all(&mut *conn)
    .await
    .map_err(db)?;
    Ok(wrong_code_block(&wrong, limits.wrong_code_max)
        .map(|at| retry_after_secs(at.saturating_add(window).saturating_sub(now))))
}

/// Given (created_at, wrong attempts) of the window's verifications, newest
/// first, the `created_at` of the verification whose leaving the window
/// brings the wrong codes back under `max` (at least 1); `None` when already
/// under it.
/// Wrong codes count against the window by their verification's send time,
/// as [`crate::Store::wrong_codes_since`] counts them.
fn wrong_code_block(newest_first: &[(i64, i64)], max: u32) -> Option<i64> {
    let max = i64::from(max);
    let mut sum = 0i64;
    for &(at, wrong) in newest_first {
        sum = sum.saturating_add(wrong);
        if sum >= max {
            return Some(at);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrong_code_budget_frees_when_enough_old_codes_leave_the_window() {
        // Newest first: 2 wrong at t=300, 1 at t=200, 3 at t=100.
        let rows = [(300, 2), (200, 1), (100, 3)];
        assert_eq!(wrong_code_block(&rows, 7), None);
        // 6 wrong, max 6: the oldest must leave for the sum to drop to 3.
        assert_eq!(wrong_code_block(&rows, 6), Some(100));
        // max 3: only once t=200 has left are we under (2 < 3).
        assert_eq!(wrong_code_block(&rows, 3), Some(200));
        assert_eq!(wrong_code_block(&rows, 2), Some(300));
        assert_eq!(wrong_code_block(&[], 5), None);
    }
}
