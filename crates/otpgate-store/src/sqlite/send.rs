//! A send (contract §2 and §5) as one SQLite write: account check, 506, rate
//! limits, charge, verification and outbox row. It runs on the writer's
//! connection, inside the batch's `begin immediate` transaction (and its own
//! savepoint), which keeps it only if it returns `Created`.

use otpgate_core::{DeliveryStatus, VerificationState};
use sqlx::sqlite::SqliteConnection;

use super::{db, rows, rows::verification_columns};
use crate::shared::{day_of, id_i64, retry_after_secs};
use crate::{CreateOutcome, NewVerification, SendLimits, StoreError, StoreResult, Verification};

pub(super) async fn create(
    conn: &mut SqliteConnection,
    req: NewVerification,
) -> StoreResult<CreateOutcome> {
    if req.price < 0 {
        return Err(StoreError::Internal("negative price".into()));
    }
    let now = req.created_at;
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

    // Test credits are spent first (contract §5).
    let from_test = test_credits.min(req.price);
    let from_paid = req.price - from_test;
    if credits < from_paid {
        return Ok(CreateOutcome::InsufficientBalance);
    }
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
                  transaction_id, cost, cost_test, delivery)
             values (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, 'pending', 0, ?9, ?10, ?11, ?12, ?13, ?14,
                     'queued')
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
        .bind(req.price)
        .bind(from_test)
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
        "insert into outbox (verification_id, step, address, lang, text, status,
                             next_attempt_at, created_at, updated_at)
         values (?1, 0, ?2, ?3, ?4, 'queued', ?5, ?5, ?5)",
    )
    .bind(id_i64(id))
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
        .bind(id_i64(id))
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
        customer_id: req.customer_id,
        destination: req.destination,
        flow_type: req.flow_type,
        code_hash,
        otp_length: req.otp_length,
        state: VerificationState::Pending,
        wrong_attempts: 0,
        max_attempts: req.max_attempts,
        created_at: now,
        expires_at: req.expires_at,
        completed_at: None,
        transaction_id: req.transaction_id,
        cost: req.price,
        cost_test: from_test,
        delivery: DeliveryStatus::Queued,
        channel: None,
        gateway_id: None,
        delivery_detail: None,
    };
    Ok(CreateOutcome::Created(v))
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
