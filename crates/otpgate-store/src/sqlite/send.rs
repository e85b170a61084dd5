//! A send (contract §2 and §5) as one SQLite write: account check, 506, rate
//! limits, charge, verification, outbox row and (for an account with a
//! webhook) its `verification.created` event. It runs on the writer's
//! connection, inside the batch's `begin immediate` transaction (and its own
//! savepoint), which keeps it only if it returns `Created`.

use otpgate_core::fraud;
use otpgate_core::send;
use otpgate_core::{DeliveryStatus, VerificationState};
use sqlx::Row;
use sqlx::sqlite::SqliteConnection;

use super::{db, rows, rows::verification_columns};
use crate::shared::{self, created_detail, day_of, id_i64};
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
    let account = match account {
        Some((credits, test_credits, false)) => Some(send::Balance {
            credits,
            test_credits,
        }),
        _ => None,
    };

    // The facts the core's decision weighs (`otpgate_core::send`), read in
    // its order; what an earlier fact already refuses is not read.
    let pending = if account.is_some() {
        sqlx::query(concat!(
            "select ",
            verification_columns!(),
            " from verifications
             where customer_id = ?1 and destination = ?2 and state = ?4
               and expires_at > ?3 and wrong_attempts < max_attempts
             order by created_at desc limit 1"
        ))
        .bind(customer)
        .bind(&destination)
        .bind(now)
        .bind(VerificationState::Pending.as_str())
        .fetch_optional(&mut *conn)
        .await
        .map_err(db)?
        .as_ref()
        .map(rows::verification)
        .transpose()?
    } else {
        None
    };
    let mut gate = send::GateFacts {
        account,
        pending: pending.is_some(),
        ..send::GateFacts::default()
    };
    if account.is_some() && pending.is_none() {
        limit_facts(conn, &req.limits, customer, &destination, now, &mut gate).await?;
    }
    let terms = shared::terms(&req);
    if let Err(refused) = send::gate(&terms, &gate, now) {
        return shared::refusal(refused, pending, now);
    }

    // The fraud defences' facts (caps, blocks, the conversion guard) are
    // read here, in the same write transaction as the charge, so no
    // concurrent send can slip past a cap.
    let guard = if req.kind == SendKind::TestNumber {
        send::GuardFacts::default()
    } else {
        facts(conn, &req, &destination).await?
    };
    let (cost, from_test, counted) = match send::decide(&terms, &gate, &guard, now) {
        Ok(c) => (c.cost, c.cost_test, c.counted),
        Err(send::Refused::Block(b)) => {
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
            return shared::refusal(send::Refused::Block(b), None, now);
        }
        Err(refused) => return shared::refusal(refused, None, now),
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
                             next_attempt_at, created_at, updated_at, customer_id)
         values (?1, 0, ?2, ?3, ?4, 'queued', ?5, ?5, ?5, ?6)",
    )
    .bind(id_i64(v.id))
    .bind(&req.address)
    .bind(&req.lang)
    .bind(&req.message_text)
    .bind(now)
    .bind(customer)
    .execute(&mut *conn)
    .await
    .map_err(db)?;
    for (i, f) in req.fallbacks.iter().enumerate() {
        sqlx::query(
            "insert into outbox (verification_id, step, flow_type, address, lang, text, status,
                                 next_attempt_at, created_at, updated_at, customer_id)
             values (?1, ?2, ?3, ?4, ?5, ?6, 'queued', ?7, ?8, ?8, ?9)",
        )
        .bind(id_i64(v.id))
        .bind(i64::try_from(i + 1).unwrap_or(i64::MAX))
        .bind(&f.flow_type)
        .bind(&f.address)
        .bind(&req.lang)
        .bind(&f.text)
        .bind(f.due_at)
        .bind(now)
        .bind(customer)
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
) -> StoreResult<send::GuardFacts> {
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
                  where prefix = ?5 and state = ?10
                    and created_at > max(?8, coalesce((select blocked_until from pb), 0))
                ) as p_done,
                (select count(*) from verifications
                  where customer_id = ?1 and country_code = ?2 and prefix is not null
                    and created_at > max(?9, coalesce((select blocked_until from cb), 0))
                ) as c_sent,
                (select count(*) from verifications
                  where customer_id = ?1 and country_code = ?2 and state = ?10
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
    .bind(VerificationState::Completed.as_str())
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
    Ok(send::GuardFacts {
        fraud: facts,
        own_verified: get("own_verified")? != 0,
        own_sent_today: shared::count(get("own_today")?, "count")?,
    })
}

/// The rate limits' facts ([`send::GateFacts`]): only those the limits
/// configured need, and none past the first that already refuses.
async fn limit_facts(
    conn: &mut SqliteConnection,
    limits: &SendLimits,
    customer: &str,
    destination: &str,
    now: i64,
    gate: &mut send::GateFacts,
) -> StoreResult<()> {
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
        gate.recent = Some(u32::try_from(recent).unwrap_or(u32::MAX));
        if recent >= i64::from(per_second) {
            return Ok(());
        }
    }
    if limits.per_number_max == 0 {
        return Ok(());
    }
    gate.number_block_at = sqlx::query_scalar(
        "select created_at from verifications
         where customer_id = ?1 and destination = ?2 and created_at > ?3 - ?4
         order by created_at desc limit 1 offset ?5",
    )
    .bind(customer)
    .bind(destination)
    .bind(now)
    .bind(limits.per_number_window_ms)
    .bind(limits.per_number_max - 1)
    .fetch_optional(&mut *conn)
    .await
    .map_err(db)?;
    if gate.number_block_at.is_some() || limits.wrong_code_max == 0 {
        return Ok(());
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
    .bind(limits.wrong_code_window_ms)
    .fetch_all(&mut *conn)
    .await
    .map_err(db)?;
    gate.wrong_block_at = send::wrong_code_block(&wrong, limits.wrong_code_max);
    Ok(())
}
