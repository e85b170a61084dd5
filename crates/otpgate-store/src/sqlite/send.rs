//! A send (contract §2 and §5) as one SQLite write: account check, 506, rate
//! limits, charge, verification, outbox row and (for an account with a
//! webhook) its `verification.created` event. It runs on the writer's
//! connection, inside the batch's `begin immediate` transaction, and is kept
//! only if it returns `Created` (or a block it triggered). It decides before
//! it writes, so a refusal has written nothing and it needs no savepoint of
//! its own (`Writer::write_checked`).

use otpgate_core::fraud;
use otpgate_core::send;
use otpgate_core::{DeliveryStatus, VerificationState};
use rusqlite::{Connection, params};

use super::writer::{all, exec, one, opt, tuple};
use super::{rows, rows::verification_columns};
use crate::shared::{self, created_detail, day_of, id_i64};
use crate::{
    CreateOutcome, EventKind, NewVerification, OutboxLease, OutboxMessage, SendKind, SendLimits,
    StoreError, StoreResult, Verification,
};

/// The send; with `lease`, its first message is stored leased to that
/// worker and returned as the worker's claim would have returned it.
pub(super) fn create(
    conn: &Connection,
    req: &NewVerification,
    lease: Option<&OutboxLease>,
) -> StoreResult<(CreateOutcome, Option<OutboxMessage>)> {
    if req.price < 0 {
        return Err(StoreError::Internal("negative price".into()));
    }
    let now = req.created_at;
    let detail = created_detail(req);
    let customer = req.customer_id.as_str();
    let destination = req.destination.e164_digits();

    let account: Option<(i64, i64, bool)> = opt(
        conn,
        "select credits, test_credits, disabled from accounts where customer_id = ?1",
        [customer],
        tuple,
    )?;
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
        opt(
            conn,
            concat!(
                "select ",
                verification_columns!(),
                " from verifications
                 where customer_id = ?1 and destination = ?2 and state = ?4
                   and expires_at > ?3 and wrong_attempts < max_attempts
                 order by created_at desc limit 1"
            ),
            params![
                customer,
                destination,
                now,
                VerificationState::Pending.as_str()
            ],
            rows::verification,
        )?
    } else {
        None
    };
    let mut gate = send::GateFacts {
        account,
        pending: pending.is_some(),
        ..send::GateFacts::default()
    };
    if account.is_some() && pending.is_none() {
        limit_facts(conn, &req.limits, customer, &destination, now, &mut gate)?;
    }
    let terms = shared::terms(req);
    if let Err(refused) = send::gate(&terms, &gate, now) {
        return shared::refusal(refused, pending, now).map(|o| (o, None));
    }

    // The fraud defences' facts (caps, blocks, the conversion guard) are
    // read here, in the same write transaction as the charge, so no
    // concurrent send can slip past a cap.
    let guard = if req.kind == SendKind::TestNumber {
        send::GuardFacts::default()
    } else {
        facts(conn, req, &destination)?
    };
    let (cost, from_test, counted) = match send::decide(&terms, &gate, &guard, now) {
        Ok(c) => (c.cost, c.cost_test, c.counted),
        Err(send::Refused::Block(b)) => {
            let key = shared::block_key(req, b.scope);
            exec(
                conn,
                "insert into fraud_blocks (scope, key, reason, strikes, blocked_until,
                                           lifted_at, created_at, updated_at)
                 values (?1, ?2, ?3, ?4, ?5, null, ?6, ?6)
                 on conflict (scope, key) do update
                    set reason = excluded.reason, strikes = excluded.strikes,
                        blocked_until = excluded.blocked_until, lifted_at = null,
                        updated_at = excluded.updated_at",
                params![b.scope.as_str(), key, b.reason, b.strikes, b.until_ms, now],
            )?;
            return shared::refusal(send::Refused::Block(b), None, now).map(|o| (o, None));
        }
        Err(refused) => return shared::refusal(refused, None, now).map(|o| (o, None)),
    };
    let from_paid = cost - from_test;

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
        let done = exec(
            conn,
            "insert into verifications
                 (id, customer_id, country_code, national, destination, flow_type, code_hash,
                  otp_length, state, wrong_attempts, max_attempts, created_at, expires_at,
                  transaction_id, cost, cost_test, delivery, prefix)
             values (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, 'pending', 0, ?9, ?10, ?11, ?12, ?13, ?14,
                     ?15, ?16)
             on conflict (id) do nothing",
            params![
                id_i64(id),
                customer,
                req.destination.country_code(),
                req.destination.national(),
                destination,
                req.flow_type,
                &code_hash.0[..],
                req.otp_length,
                req.max_attempts,
                now,
                req.expires_at,
                req.transaction_id,
                cost,
                from_test,
                delivery.as_str(),
                counted.then_some(&req.prefix),
            ],
        )?;
        if done == 1 {
            stored = Some((id, code_hash));
            break;
        }
    }
    let Some((id, code_hash)) = stored else {
        return Err(StoreError::Conflict(
            "every candidate verification id is taken".into(),
        ));
    };
    // Charged only once the id is stored: a send that finds every candidate
    // id taken has then written nothing, so it runs without a savepoint of
    // its own in a batch (`Writer::write_checked`) and fails alone.
    exec(
        conn,
        "update accounts set test_credits = test_credits - ?2, credits = credits - ?3
         where customer_id = ?1",
        params![customer, from_test, from_paid],
    )?;
    exec(
        conn,
        "insert into daily_stats (customer_id, day, sends, completed, created_at)
         values (?1, ?2, 1, 0, ?3)
         on conflict (customer_id, day) do update set sends = sends + 1",
        params![customer, day_of(now), now],
    )?;
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
        exec(
            conn,
            "insert into own_numbers (verification_id, customer_id, destination, created_at)
             values (?1, ?2, ?3, ?4)",
            params![id_i64(v.id), v.customer_id.as_str(), destination, now],
        )?;
    }
    if req.kind == SendKind::TestNumber {
        // A test number's message never leaves the server: no outbox row.
        return Ok((CreateOutcome::Created(v), None));
    }
    // Leased, the row is as the worker's claim would leave it (attempt 1).
    let (owner, until, attempts) = match lease {
        Some(l) => (Some(l.worker.as_str()), Some(l.until), 1),
        None => (None, None, 0),
    };
    exec(
        conn,
        "insert into outbox (verification_id, step, address, lang, text, status,
                             next_attempt_at, created_at, updated_at, customer_id,
                             lease_owner, lease_until, attempts)
         values (?1, 0, ?2, ?3, ?4, 'queued', ?5, ?5, ?5, ?6, ?7, ?8, ?9)",
        params![
            id_i64(v.id),
            req.address,
            req.lang,
            req.message_text,
            now,
            customer,
            owner,
            until,
            attempts
        ],
    )?;
    let handed = lease.map(|_| shared::leased_message(req, &v, conn.last_insert_rowid()));
    for (i, f) in req.fallbacks.iter().enumerate() {
        exec(
            conn,
            "insert into outbox (verification_id, step, flow_type, address, lang, text, status,
                                 next_attempt_at, created_at, updated_at, customer_id)
             values (?1, ?2, ?3, ?4, ?5, ?6, 'queued', ?7, ?8, ?8, ?9)",
            params![
                id_i64(v.id),
                i64::try_from(i + 1).unwrap_or(i64::MAX),
                f.flow_type,
                f.address,
                req.lang,
                f.text,
                f.due_at,
                now,
                customer
            ],
        )?;
    }
    super::events::emit(conn, id_i64(v.id), EventKind::Created, &detail, now)?;
    Ok((CreateOutcome::Created(v), handed))
}

/// What the fraud defences weigh for this send; and whether the destination
/// is one of the account's verified numbers, and how many own-number sends
/// the account made in the last day.
///
/// Each fact is its own cached statement, read only when the policy weighs
/// it: a cap that is off (0) or a guard that is off costs nothing. The
/// counts of an account's sends scan its sends in the window (index only,
/// through `verifications_by_customer_cost`), so they cost more as the
/// window fills; the caps bound how full it gets.
fn facts(
    conn: &Connection,
    req: &NewVerification,
    destination: &str,
) -> StoreResult<send::GuardFacts> {
    let now = req.created_at;
    let customer = req.customer_id.as_str();
    let caps = &req.fraud.caps;
    let usage = |sql: &str, key: &str, since: i64, on: bool| -> StoreResult<fraud::Usage> {
        if !on {
            return Ok(fraud::Usage::default());
        }
        let (n, credits, oldest_ms): (i64, i64, Option<i64>) =
            opt(conn, sql, params![key, since], tuple)?.unwrap_or_default();
        Ok(fraud::Usage {
            messages: shared::count(n, "count")?,
            credits,
            oldest_ms,
        })
    };
    // The account's two windows, read alike.
    let account = |window_ms: i64, on: bool| {
        usage(
            "select count(*), coalesce(sum(cost), 0), min(created_at) from verifications
              where customer_id = ?1 and created_at > ?2",
            customer,
            now - window_ms,
            on,
        )
    };
    let account_hour = account(fraud::HOUR_MS, caps.account_hour_on())?;
    let account_day = account(fraud::DAY_MS, caps.account_day_on())?;
    let destination_day = usage(
        "select count(*), 0, min(created_at) from verifications
          where destination = ?1 and created_at > ?2",
        destination,
        now - fraud::DAY_MS,
        caps.destination_day_on(),
    )?;
    let safe_listed = one::<bool>(
        conn,
        "select exists (select 1 from safe_list where substr(?1, 1, length(entry)) = entry)",
        [destination],
    )?;
    let mut facts = fraud::SendFacts {
        price: req.price,
        account_hour,
        account_day,
        destination_day,
        safe_listed,
        prefix_block: None,
        country_block: None,
        prefix: fraud::Conversion::default(),
        country: fraud::Conversion::default(),
    };
    if req.fraud.guard && !safe_listed {
        let block = |scope: fraud::BlockScope, key: &str| {
            opt(
                conn,
                "select reason, strikes, blocked_until from fraud_blocks
                  where scope = ?1 and key = ?2",
                params![scope.as_str(), key],
                |r| {
                    let (reason, strikes, until_ms): (String, i64, i64) = tuple(r)?;
                    Ok(fraud::BlockRecord {
                        until_ms,
                        strikes: shared::count(strikes, "strikes")?,
                        reason,
                    })
                },
            )
        };
        // A key's conversion counts afresh from the end of its last block.
        let since = |window_ms: i64, b: &Option<fraud::BlockRecord>| {
            (now - window_ms).max(b.as_ref().map_or(0, |b| b.until_ms))
        };
        let conversion = |sql: &str, p: &[&dyn rusqlite::ToSql]| -> StoreResult<_> {
            let (sent, completed): (i64, i64) = opt(conn, sql, p, tuple)?.unwrap_or_default();
            Ok(fraud::Conversion {
                sent: shared::count(sent, "count")?,
                completed: shared::count(completed, "count")?,
            })
        };
        let completed = VerificationState::Completed.as_str();
        facts.prefix_block = block(fraud::BlockScope::Prefix, &req.prefix)?;
        let country_key = shared::block_key(req, fraud::BlockScope::Country);
        facts.country_block = block(fraud::BlockScope::Country, &country_key)?;
        facts.prefix = conversion(
            "select count(*), coalesce(sum(state = 'completed'), 0) from verifications
              where prefix = ?1 and created_at > ?2",
            params![
                req.prefix,
                since(req.fraud.prefix.window_ms, &facts.prefix_block)
            ],
        )?;
        facts.country = conversion(
            "select count(*), coalesce(sum(state = ?4), 0) from verifications
              where customer_id = ?1 and country_code = ?2 and prefix is not null
                and created_at > ?3",
            params![
                customer,
                req.destination.country_code(),
                since(req.fraud.country.window_ms, &facts.country_block),
                completed
            ],
        )?;
    }
    let (own_verified, own_today): (bool, i64) = opt(
        conn,
        "select exists (select 1 from own_numbers
                         where customer_id = ?1 and destination = ?2
                           and verified_at is not null),
                (select count(*) from own_numbers where customer_id = ?1 and created_at > ?3)",
        params![customer, destination, now - fraud::DAY_MS],
        tuple,
    )?
    .unwrap_or_default();
    Ok(send::GuardFacts {
        fraud: facts,
        own_verified,
        own_sent_today: shared::count(own_today, "count")?,
    })
}

/// The rate limits' facts ([`send::GateFacts`]): only those the limits
/// configured need, and none past the first that already refuses.
fn limit_facts(
    conn: &Connection,
    limits: &SendLimits,
    customer: &str,
    destination: &str,
    now: i64,
    gate: &mut send::GateFacts,
) -> StoreResult<()> {
    if let Some(per_second) = limits.per_account_per_second {
        let recent: i64 = one(
            conn,
            "select count(*) from verifications
             where customer_id = ?1 and created_at > ?2 - 1000 and created_at <= ?2",
            params![customer, now],
        )?;
        gate.recent = Some(u32::try_from(recent).unwrap_or(u32::MAX));
        if recent >= i64::from(per_second) {
            return Ok(());
        }
    }
    if limits.per_number_max == 0 {
        return Ok(());
    }
    gate.number_block_at = opt(
        conn,
        "select created_at from verifications
         where customer_id = ?1 and destination = ?2 and created_at > ?3 - ?4
         order by created_at desc limit 1 offset ?5",
        params![
            customer,
            destination,
            now,
            limits.per_number_window_ms,
            limits.per_number_max - 1
        ],
        |r| rows::get(r, "created_at"),
    )?;
    if gate.number_block_at.is_some() || limits.wrong_code_max == 0 {
        return Ok(());
    }
    let wrong: Vec<(i64, i64)> = all(
        conn,
        "select created_at, wrong_attempts from verifications
         where customer_id = ?1 and destination = ?2 and created_at > ?3 - ?4
           and wrong_attempts > 0
         order by created_at desc",
        params![customer, destination, now, limits.wrong_code_window_ms],
        tuple,
    )?;
    gate.wrong_block_at = send::wrong_code_block(&wrong, limits.wrong_code_max);
    Ok(())
}
