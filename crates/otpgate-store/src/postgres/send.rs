//! A send (contract §2 and §5) on PostgreSQL: the account's row lock and
//! the prefix's advisory lock in one statement, every fact the checks and
//! the fraud defences weigh in a second, the core's decision
//! (`otpgate_core::send`), then the writes of an accepted send in a third —
//! all in one transaction, which commits only a `Created` send or a block
//! the send itself triggered.

use otpgate_core::fraud;
use otpgate_core::send;
use otpgate_core::{CodeHash, VerificationId, VerificationState};
use sqlx::postgres::{PgPool, PgRow};
use sqlx::{PgConnection, Row};

use super::batch::Sent;
use super::error::db_err;
use super::rows::{self, verification_columns};
use super::{PostgresStore, events};
use crate::shared::{self, created_detail, day_of, id_i64};
use crate::{
    CreateOutcome, NewVerification, OutboxLease, OutboxMessage, SendKind, StoreError, StoreResult,
    Verification,
};

/// Runs one send in its own transaction (its first message leased per
/// `lease`).
pub(super) async fn create(
    pool: &PgPool,
    req: &NewVerification,
    lease: Option<&OutboxLease>,
) -> StoreResult<Sent> {
    let mut tx = pool.begin_with(BEGIN).await.map_err(db_err)?;
    match PostgresStore::create_in(&mut tx, req, None, lease).await? {
        Ok((v, handed)) => {
            tx.commit().await.map_err(db_err)?;
            Ok((CreateOutcome::Created(v), handed))
        }
        Err(
            refused @ CreateOutcome::Blocked {
                new_block: Some(_), ..
            },
        ) => {
            // The block this send triggered is kept; nothing else
            // was written.
            tx.commit().await.map_err(db_err)?;
            Ok((refused, None))
        }
        Err(refused) => {
            // Release the account lock now rather than when the
            // pool gets round to it.
            tx.rollback().await.map_err(db_err)?;
            Ok((refused, None))
        }
    }
}

/// The first key of the two-key advisory locks that serialise sends to one
/// prefix ("otpg" in ASCII); the second is the prefix's `hashtext`. Two-key
/// locks never collide with the one-key migration lock.
const PREFIX_LOCK_SPACE: i32 = 0x6f74_7067;

/// Whether a send takes its prefix's advisory lock after its account's: only
/// with a defence that spans accounts on (the conversion guard or the
/// per-number cap); otherwise the account's lock is enough.
pub(super) fn takes_prefix_lock(req: &NewVerification) -> bool {
    req.kind != SendKind::TestNumber && (req.fraud.guard || req.fraud.caps.destination_day_on())
}

/// The fraud facts of a [`CHECKS`] row (see `decide_send`); and whether the
/// destination is one of the account's verified numbers, and how many
/// own-number sends the account made in the last day.
fn guard_facts(row: &PgRow, price: i64) -> StoreResult<send::GuardFacts> {
    let get = |name: &str| -> StoreResult<i64> { row.try_get::<i64, _>(name).map_err(db_err) };
    let opt = |name: &str| -> StoreResult<Option<i64>> {
        row.try_get::<Option<i64>, _>(name).map_err(db_err)
    };
    let flag = |name: &str| -> StoreResult<bool> { row.try_get::<bool, _>(name).map_err(db_err) };
    let n = |name: &str| -> StoreResult<u32> { shared::count(get(name)?, "count") };
    let block = |reason: &str, strikes: &str, until: &str| -> StoreResult<_> {
        let reason: Option<String> = row.try_get(reason).map_err(db_err)?;
        let strikes: Option<i32> = row.try_get(strikes).map_err(db_err)?;
        Ok(match (reason, strikes, opt(until)?) {
            (Some(reason), Some(strikes), Some(until)) => Some(fraud::BlockRecord {
                until_ms: until,
                strikes: shared::count(i64::from(strikes), "strikes")?,
                reason,
            }),
            _ => None,
        })
    };
    let facts = fraud::SendFacts {
        price,
        account_hour: fraud::Usage {
            messages: n("hour_n")?,
            credits: get("hour_c")?,
            oldest_ms: opt("hour_oldest")?,
        },
        account_day: fraud::Usage {
            messages: n("day_n")?,
            credits: get("day_c")?,
            oldest_ms: opt("day_oldest")?,
        },
        destination_day: fraud::Usage {
            messages: n("dest_n")?,
            credits: 0,
            oldest_ms: opt("dest_oldest")?,
        },
        safe_listed: flag("safe")?,
        prefix_block: block("pb_reason", "pb_strikes", "pb_until")?,
        country_block: block("cb_reason", "cb_strikes", "cb_until")?,
        prefix: fraud::Conversion {
            sent: n("p_sent")?,
            completed: n("p_done")?,
        },
        country: fraud::Conversion {
            sent: n("c_sent")?,
            completed: n("c_done")?,
        },
    };
    Ok(send::GuardFacts {
        fraud: facts,
        own_verified: flag("own_verified")?,
        own_sent_today: n("own_today")?,
    })
}

/// `u32` counters are stored as `integer`; a value past its range (a
/// configuration of billions of attempts) is as good as unlimited.
fn int(n: u32) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

/// An account row that the transaction already holds locked (a group of the
/// account's sends, `super::batch`).
pub(super) struct Held {
    /// The balance as this transaction has left it, and whether the account
    /// is disabled; `None`: no such account. Nobody else can change the row
    /// while it is held, so the sends of the group need not read it again:
    /// each accepted one takes its charge off here as its statement does in
    /// the table.
    pub(super) account: Option<(i64, i64, bool)>,
}

/// The first statement of a send, or of a group of one account's sends
/// (`super::batch`): the account's row lock, which serialises the sends of
/// one account across nodes, and then the advisory lock of each prefix the
/// sends take (`$3`: a lone send's one or none, a group's every one, in
/// ascending order of the lock's key), which serialises sends to one prefix
/// from different accounts, so that the prefix guard and the per-number cap
/// hold across accounts too. One round trip for all of them: the round
/// trips of a send are made while it holds its account's lock, so each one
/// costs every other send of the account too. The prefixes' locks are
/// always taken after the account's, never before, so no two sends can
/// wait on each other in a cycle: the locking CTE yields the row only once
/// its lock is granted, and the init plan that takes the advisory locks
/// runs when the projection of that row first needs it (none when there is
/// no such account, whose sends are all refused). The row it returns is
/// read afresh once the lock is granted, so the balance and the disabled
/// flag are current.
///
/// Parameters: customer, the lock space, the prefixes.
const LOCK: &str = "with locked as materialized (
         select credits, test_credits, disabled from accounts
          where customer_id = $1 for update
     )
     select credits, test_credits, disabled,
            (select count(l) from (
                 select pg_advisory_xact_lock($2, k)::text as l
                   from (select distinct hashtext(p) as k from unnest($3::text[]) as p
                          order by k offset 0) as keys
             ) as prefixes) as prefixes_locked
       from locked";

/// Runs [`LOCK`] for `customer` and `prefixes`: the account's credits,
/// test credits and whether it is disabled; `None`: no such account.
pub(super) async fn lock(
    tx: &mut PgConnection,
    customer: &str,
    prefixes: &[&str],
) -> StoreResult<Option<(i64, i64, bool)>> {
    let row: Option<(i64, i64, bool, i64)> = sqlx::query_as(LOCK)
        .bind(customer)
        .bind(PREFIX_LOCK_SPACE)
        .bind(prefixes)
        .fetch_optional(&mut *tx)
        .await
        .map_err(db_err)?;
    Ok(row.map(|(credits, test_credits, disabled, _)| (credits, test_credits, disabled)))
}

/// Every fact a send's decision needs, in one statement after [`LOCK`]:
/// the 506 check and the rate limits of contract §2, and what the fraud
/// defences weigh (`otpgate_core::fraud::decide_send`).
///
/// Its snapshot must be taken after the locks are granted (it is a
/// statement of its own, after [`LOCK`]): a statement that waited for a
/// lock itself would see only the locked row afresh, and these subqueries
/// as they were before the send it waited for committed.
///
/// As on SQLite, a fact is read only when the limits or the policy weigh
/// it: a per-second limit, a cap that is off or a guard that is off costs
/// nothing. Each such count is a scalar subquery behind `case when`, which
/// PostgreSQL runs (an init plan) only when its value is first needed. The
/// send's transaction plans its statements generically (`BEGIN` in
/// [`create`]), so this one statement has one cached plan: planned afresh
/// for each send's switches, it would cost more to plan than to run.
///
/// One row: the pending verification's columns (all null when there is
/// none), then
/// - `recent`: sends of the account in the last second (null without a
///   per-second limit, `$9` null);
/// - `number_block_at`: `created_at` of the `per_number_max`-th newest send
///   to the destination in its window; room opens when it leaves;
/// - `wrong_block_at`: `created_at` of the newest verification at which the
///   wrong codes of it and of those newer reach the budget; the budget frees
///   when it leaves the window. The window function's default frame takes
///   in peers (equal `created_at`), which changes no answer: the send time
///   that first reaches the budget is the same whichever order ties are in.
///   Wrong codes count by their verification's send time, as a
///   validation's read counts them (`verification_to_validate`);
/// - the fraud facts [`guard_facts`] reads (counts 0 and times null where
///   their switch is off).
///
/// It checks many sends at once: a group of one account's sends
/// (`super::batch`) reads the facts of all of them in one statement, one
/// row per send in their order, as of before any of them; the group then
/// adds what its earlier sends change ([`Taken`]). Its parameters are
/// therefore arrays, one element per send, of what [`CheckParams`] holds,
/// then the pending and the completed state's names (bound from the core).
pub(super) const CHECKS: &str = concat!(
    "select k.*
       from unnest($1::text[], $2::text[], $3::bigint[], $4::bigint[], $5::bigint[],
                   $6::bigint[], $7::bigint[], $8::bigint[], $9::integer[], $10::bigint[],
                   $11::bigint[], $12::text[], $13::text[], $14::bigint[], $15::bigint[],
                   $16::boolean[], $17::boolean[], $18::boolean[]) with ordinality
            as p (customer, destination, now, number_from, number_offset, wrong_from,
                  wrong_max, second_from, country, hour_from, day_from, prefix, country_key,
                  prefix_from, country_from, caps, dest_cap, guard, n)
      cross join lateral (
     with acct as (
         select count(*) filter (where created_at > p.hour_from) as hour_n,
                coalesce(sum(cost) filter (where created_at > p.hour_from), 0)::bigint as hour_c,
                min(created_at) filter (where created_at > p.hour_from) as hour_oldest,
                count(*) as day_n, coalesce(sum(cost), 0)::bigint as day_c,
                min(created_at) as day_oldest
           from verifications where customer_id = p.customer and created_at > p.day_from
     ),
     pb as (select reason, strikes, blocked_until from fraud_blocks
             where scope = 'prefix' and key = p.prefix),
     cb as (select reason, strikes, blocked_until from fraud_blocks
             where scope = 'country' and key = p.country_key)
     select pending.*, limits.*, facts.*
       from (select case when p.second_from is not null then
                        (select count(*) from verifications
                          where customer_id = p.customer and created_at > p.second_from and created_at <= p.now)
                    end as recent,
                    (select created_at from verifications
                      where customer_id = p.customer and destination = p.destination and created_at > p.number_from
                      order by created_at desc limit 1 offset p.number_offset
                    ) as number_block_at,
                    (select created_at
                       from (select created_at,
                                    sum(wrong_attempts) over (order by created_at desc)
                                        as wrong
                               from verifications
                              where customer_id = p.customer and destination = p.destination
                                and created_at > p.wrong_from and wrong_attempts > 0
                            ) newest_first
                      where wrong >= p.wrong_max
                      order by created_at desc limit 1
                    ) as wrong_block_at
            ) limits
      cross join (
             select case when p.caps then (select hour_n from acct) else 0 end as hour_n,
                    case when p.caps then (select hour_c from acct) else 0 end as hour_c,
                    case when p.caps then (select hour_oldest from acct) end as hour_oldest,
                    case when p.caps then (select day_n from acct) else 0 end as day_n,
                    case when p.caps then (select day_c from acct) else 0 end as day_c,
                    case when p.caps then (select day_oldest from acct) end as day_oldest,
                    case when p.dest_cap then (select count(*) from verifications
                      where destination = p.destination and created_at > p.day_from) else 0 end as dest_n,
                    case when p.dest_cap then (select min(created_at) from verifications
                      where destination = p.destination and created_at > p.day_from) end as dest_oldest,
                    exists (select 1 from safe_list
                             where left(p.destination, length(entry)) = entry) as safe,
                    case when p.guard then (select reason from pb) end as pb_reason,
                    case when p.guard then (select strikes from pb) end as pb_strikes,
                    case when p.guard then (select blocked_until from pb) end as pb_until,
                    case when p.guard then (select reason from cb) end as cb_reason,
                    case when p.guard then (select strikes from cb) end as cb_strikes,
                    case when p.guard then (select blocked_until from cb) end as cb_until,
                    case when p.guard then (select count(*) from verifications
                      where prefix = p.prefix
                        and created_at > greatest(p.prefix_from, coalesce((select blocked_until from pb), 0))
                    ) else 0 end as p_sent,
                    case when p.guard then (select count(*) from verifications
                      where prefix = p.prefix and state = $20
                        and created_at > greatest(p.prefix_from, coalesce((select blocked_until from pb), 0))
                    ) else 0 end as p_done,
                    case when p.guard then (select count(*) from verifications
                      where customer_id = p.customer and country_code = p.country and prefix is not null
                        and created_at > greatest(p.country_from, coalesce((select blocked_until from cb), 0))
                    ) else 0 end as c_sent,
                    case when p.guard then (select count(*) from verifications
                      where customer_id = p.customer and country_code = p.country and state = $20
                        and prefix is not null
                        and created_at > greatest(p.country_from, coalesce((select blocked_until from cb), 0))
                    ) else 0 end as c_done,
                    exists (select 1 from own_numbers
                             where customer_id = p.customer and destination = p.destination
                               and verified_at is not null) as own_verified,
                    (select count(*) from own_numbers
                      where customer_id = p.customer and created_at > p.day_from) as own_today
            ) facts
       left join (select ",
    verification_columns!(),
    " from verifications
                   where customer_id = p.customer and destination = p.destination and state = $19
                     and expires_at > p.now and wrong_attempts < max_attempts
                   order by created_at desc, id desc limit 1
                 ) pending on true
     ) k
      order by p.n"
);

/// The start of a send's transaction: its statements are planned
/// generically (see [`CHECKS`]). `set local` ends with the transaction.
pub(super) const BEGIN: &str = "begin; set local plan_cache_mode = force_generic_plan";

/// The writes of accepted sends of one account, in one statement: one send
/// alone, or a group's (`super::batch`), one element per send in each
/// array parameter ([`Writes`]). The charge, the outbox rows, (for an
/// account with a webhook) the `created` events and the day's count (in
/// the account's `daily_stats` row, whose lock only the account's sends
/// take, which its row lock queues already) hang off
/// the inserted verifications, so an id that is already taken (`on conflict
/// do nothing`) writes nothing for its send; the caller sees that send's
/// row missing. The charge is the sum of what was inserted, in one update
/// of the account's row.
const WRITE: &str = concat!(
    "with args as (
         select * from unnest($1::bigint[], $3::integer[], $4::text[], $5::text[],
                              $6::text[], $7::bytea[], $8::smallint[], $9::integer[],
                              $10::bigint[], $11::bigint[], $12::text[], $13::bigint[],
                              $14::bigint[], $15::text[], $16::text[], $17::text[],
                              $18::text[], $19::text[], $20::boolean[], $21::boolean[],
                              $22::text[], $23::bigint[], $24::text[], $25::bigint[])
             as a (id, country_code, national, destination, flow_type, code_hash,
                   otp_length, max_attempts, created_at, expires_at, transaction_id,
                   cost, cost_test, text, address, lang, prefix, delivery, queued, own,
                   detail, day, lease_owner, lease_until)
     ),
     inserted as (
         insert into verifications (
             id, customer_id, country_code, national, destination, flow_type, code_hash,
             otp_length, state, wrong_attempts, max_attempts, created_at, expires_at,
             transaction_id, cost, cost_test, delivery, prefix
         )
         select id, $2, country_code, national, destination, flow_type, code_hash,
                otp_length, 'pending', 0, max_attempts, created_at, expires_at,
                transaction_id, cost, cost_test, delivery, prefix
           from args
         on conflict (id) do nothing
         returning ",
    verification_columns!(),
    "
     ),
     charged as (
         update accounts a
            set credits = a.credits - c.credits, test_credits = a.test_credits - c.test
           from (select count(*) as n, coalesce(sum(cost - cost_test), 0)::bigint as credits,
                        coalesce(sum(cost_test), 0)::bigint as test
                   from inserted) c
          where a.customer_id = $2 and c.n > 0
     ),
     queued as (
         insert into outbox (
             verification_id, customer_id, step, address, lang, text, status, attempts,
             next_attempt_at, created_at, updated_at, lease_owner, lease_until
         )
         select i.id, i.customer_id, 0, a.address, a.lang, a.text, 'queued',
                case when a.lease_owner is null then 0 else 1 end, i.created_at,
                i.created_at, i.created_at, a.lease_owner, a.lease_until
           from inserted i join args a on a.id = i.id where a.queued
         returning id, verification_id
     ),
     own as (
         insert into own_numbers (verification_id, customer_id, destination, created_at)
         select i.id, i.customer_id, a.destination, i.created_at
           from inserted i join args a on a.id = i.id where a.own
     ),
     evented as (
         insert into events (
             event_id, customer_id, verification_id, kind, detail, status, attempts,
             next_attempt_at, created_at, updated_at
         )
         select ",
    events::new_event_id!(),
    ", i.customer_id, i.id, 'verification.created', a.detail, 'pending', 0,
                i.created_at, i.created_at, i.created_at
           from inserted i join args a on a.id = i.id
           join webhooks w on w.customer_id = i.customer_id
     ),
     counted as (
         insert into daily_stats (customer_id, day, sends, completed, created_at)
         select $2, a.day, count(*), 0, min(i.created_at)
           from inserted i join args a on a.id = i.id
          group by a.day
          order by a.day
         on conflict (customer_id, day) do update
            set sends = daily_stats.sends + excluded.sends
     )
     select i.*, q.id as outbox_id from inserted i left join queued q on q.verification_id = i.id"
);

/// One send's parameters of [`CHECKS`] (see there).
#[derive(Clone)]
pub(super) struct CheckParams<'a> {
    pub(super) customer: &'a str,
    pub(super) destination: String,
    pub(super) now: i64,
    /// The per-number window's start, and the offset of the send that
    /// fills it.
    pub(super) number_from: i64,
    pub(super) number_offset: i64,
    /// The wrong-code window's start, and its budget.
    pub(super) wrong_from: i64,
    pub(super) wrong_max: i64,
    /// The per-second window's start; `None`: no per-second limit.
    pub(super) second_from: Option<i64>,
    pub(super) country: i32,
    /// The account caps' hour and day starts.
    pub(super) hour_from: i64,
    pub(super) day_from: i64,
    pub(super) prefix: &'a str,
    /// The country's block key.
    pub(super) country_key: String,
    /// The prefix's and the country's guard window starts.
    pub(super) prefix_from: i64,
    pub(super) country_from: i64,
    /// The switches: account caps, the destination's cap, the guard.
    pub(super) caps: bool,
    pub(super) dest_cap: bool,
    pub(super) guard: bool,
}

impl<'a> CheckParams<'a> {
    /// What `req`'s checks read (its number as `destination`).
    fn of(req: &'a NewVerification, destination: String) -> Self {
        let now = req.created_at;
        let limits = &req.limits;
        // A test number's send weighs no fraud defence.
        let guarded = req.kind != SendKind::TestNumber;
        let policy = &req.fraud;
        let caps = &policy.caps;
        Self {
            customer: req.customer_id.as_str(),
            destination,
            now,
            number_from: now.saturating_sub(limits.per_number_window_ms.max(0)),
            // A maximum of 0 refuses before this offset matters; `max(1)`
            // only keeps it legal.
            number_offset: i64::from(limits.per_number_max.max(1)) - 1,
            wrong_from: now.saturating_sub(limits.wrong_code_window_ms.max(0)),
            wrong_max: i64::from(limits.wrong_code_max),
            second_from: limits
                .per_account_per_second
                .map(|_| now.saturating_sub(1000)),
            country: i32::from(req.destination.country_code()),
            hour_from: now - fraud::HOUR_MS,
            day_from: now - fraud::DAY_MS,
            prefix: &req.prefix,
            country_key: shared::block_key(req, fraud::BlockScope::Country),
            prefix_from: now - policy.prefix.window_ms,
            country_from: now - policy.country.window_ms,
            caps: guarded && (caps.account_hour_on() || caps.account_day_on()),
            dest_cap: guarded && caps.destination_day_on(),
            guard: guarded && policy.guard,
        }
    }
}

/// Runs [`CHECKS`] for `sends`: one row each, in their order.
pub(super) async fn read_checks(
    tx: &mut PgConnection,
    sends: &[CheckParams<'_>],
) -> StoreResult<Vec<PgRow>> {
    fn col<'s, T>(sends: &'s [CheckParams<'_>], f: impl Fn(&'s CheckParams<'_>) -> T) -> Vec<T> {
        sends.iter().map(f).collect()
    }
    let rows = sqlx::query(CHECKS)
        .bind(col(sends, |p| p.customer))
        .bind(col(sends, |p| p.destination.as_str()))
        .bind(col(sends, |p| p.now))
        .bind(col(sends, |p| p.number_from))
        .bind(col(sends, |p| p.number_offset))
        .bind(col(sends, |p| p.wrong_from))
        .bind(col(sends, |p| p.wrong_max))
        .bind(col(sends, |p| p.second_from))
        .bind(col(sends, |p| p.country))
        .bind(col(sends, |p| p.hour_from))
        .bind(col(sends, |p| p.day_from))
        .bind(col(sends, |p| p.prefix))
        .bind(col(sends, |p| p.country_key.as_str()))
        .bind(col(sends, |p| p.prefix_from))
        .bind(col(sends, |p| p.country_from))
        .bind(col(sends, |p| p.caps))
        .bind(col(sends, |p| p.dest_cap))
        .bind(col(sends, |p| p.guard))
        .bind(VerificationState::Pending.as_str())
        .bind(VerificationState::Completed.as_str())
        .fetch_all(&mut *tx)
        .await
        .map_err(db_err)?;
    if rows.len() != sends.len() {
        return Err(StoreError::Internal(format!(
            "the send checks gave {} rows for {} sends",
            rows.len(),
            sends.len()
        )));
    }
    Ok(rows)
}

/// The facts one send's decision weighs, as one [`CHECKS`] row gives them
/// (the balance aside, which comes from the account's locked row).
struct Facts {
    /// The pending verification to the destination, if any.
    pending: Option<Verification>,
    gate: send::GateFacts,
    guard: send::GuardFacts,
}

impl Facts {
    fn read(row: &PgRow, req: &NewVerification, balance: send::Balance) -> StoreResult<Self> {
        let pending_id: Option<i64> = row.try_get("id").map_err(db_err)?;
        let pending = pending_id
            .is_some()
            .then(|| rows::verification(row))
            .transpose()?;
        let recent: Option<i64> = row.try_get("recent").map_err(db_err)?;
        let gate = send::GateFacts {
            account: Some(balance),
            pending: pending.is_some(),
            recent: recent.map(|n| u32::try_from(n).unwrap_or(u32::MAX)),
            number_block_at: row.try_get("number_block_at").map_err(db_err)?,
            wrong_block_at: row.try_get("wrong_block_at").map_err(db_err)?,
        };
        // A test number's send weighs no fraud defence.
        let guard = if req.kind == SendKind::TestNumber {
            send::GuardFacts::default()
        } else {
            guard_facts(row, req.price)?
        };
        Ok(Self {
            pending,
            gate,
            guard,
        })
    }

    /// Adds what the group's earlier sends `taken` wrote, which the row
    /// (read before any of them) does not hold: each count as its clause in
    /// [`CHECKS`] counts it, and only where its switch is on. `None`: an
    /// earlier send went to the same number, whose facts (the pending
    /// verification, the per-number and wrong-code limits, the number's
    /// cap) only a fresh read gives.
    fn with_taken(mut self, p: &CheckParams<'_>, taken: &[Taken]) -> Option<Self> {
        if taken.iter().any(|t| t.destination == p.destination) {
            return None;
        }
        let now = p.now;
        if let Some(recent) = &mut self.gate.recent {
            let n = taken
                .iter()
                .filter(|t| p.second_from.is_some_and(|from| t.created_at > from))
                .filter(|t| t.created_at <= now)
                .count();
            *recent = recent.saturating_add(u32::try_from(n).unwrap_or(u32::MAX));
        }
        let f = &mut self.guard.fraud;
        let add = |usage: &mut fraud::Usage, from: i64| {
            for t in taken.iter().filter(|t| t.created_at > from) {
                usage.messages = usage.messages.saturating_add(1);
                usage.credits = usage.credits.saturating_add(t.cost);
                usage.oldest_ms = Some(
                    usage
                        .oldest_ms
                        .map_or(t.created_at, |o| o.min(t.created_at)),
                );
            }
        };
        if p.caps {
            add(&mut f.account_hour, p.hour_from);
            add(&mut f.account_day, p.day_from);
        }
        if p.guard {
            let since = |from: i64, block: &Option<fraud::BlockRecord>| {
                from.max(block.as_ref().map_or(0, |b| b.until_ms))
            };
            let prefix_from = since(p.prefix_from, &f.prefix_block);
            let country_from = since(p.country_from, &f.country_block);
            for t in taken {
                let Some(prefix) = &t.prefix else { continue };
                if prefix == p.prefix && t.created_at > prefix_from {
                    f.prefix.sent = f.prefix.sent.saturating_add(1);
                }
                if t.country == p.country && t.created_at > country_from {
                    f.country.sent = f.country.sent.saturating_add(1);
                }
            }
        }
        let own = taken
            .iter()
            .filter(|t| t.own && t.created_at > p.day_from)
            .count();
        self.guard.own_sent_today = self
            .guard
            .own_sent_today
            .saturating_add(u32::try_from(own).unwrap_or(u32::MAX));
        Some(self)
    }
}

/// What an accepted send of a group writes that the checks of the group's
/// later sends count (see [`Facts::with_taken`]).
struct Taken {
    created_at: i64,
    destination: String,
    cost: i64,
    country: i32,
    /// Its prefix if the guard counts it (the row's `prefix`).
    prefix: Option<String>,
    /// An own-number send (it adds an `own_numbers` row).
    own: bool,
}

/// What the core decided for one send.
enum Decided {
    /// Boxed: a refusal is the rare, larger case.
    Refused(Box<CreateOutcome>),
    /// Refused, and the block it triggered is to be stored.
    Block(fraud::NewBlock),
    Charge {
        cost: i64,
        cost_test: i64,
        /// The guard counts this send.
        counted: bool,
    },
}

/// The core's decision on `facts` (`otpgate_core::send`); this only reads
/// facts, so the order of outcomes is the core's.
fn decide(req: &NewVerification, facts: Facts) -> StoreResult<Decided> {
    let now = req.created_at;
    let terms = shared::terms(req);
    if let Err(r) = send::gate(&terms, &facts.gate, now) {
        return Ok(Decided::Refused(Box::new(shared::refusal(
            r,
            facts.pending,
            now,
        )?)));
    }
    Ok(match send::decide(&terms, &facts.gate, &facts.guard, now) {
        Ok(c) => Decided::Charge {
            cost: c.cost,
            cost_test: c.cost_test,
            counted: c.counted,
        },
        Err(send::Refused::Block(b)) => Decided::Block(b),
        Err(r) => Decided::Refused(Box::new(shared::refusal(r, None, now)?)),
    })
}

/// The array parameters of [`WRITE`]: one element per accepted send.
#[derive(Default)]
struct Writes<'a> {
    id: Vec<i64>,
    country: Vec<i32>,
    national: Vec<&'a str>,
    destination: Vec<String>,
    flow_type: Vec<&'a str>,
    code_hash: Vec<&'a [u8]>,
    otp_length: Vec<i16>,
    max_attempts: Vec<i32>,
    created_at: Vec<i64>,
    expires_at: Vec<i64>,
    transaction_id: Vec<&'a str>,
    cost: Vec<i64>,
    cost_test: Vec<i64>,
    text: Vec<&'a str>,
    address: Vec<Option<&'a str>>,
    lang: Vec<Option<&'a str>>,
    prefix: Vec<Option<&'a str>>,
    delivery: Vec<&'static str>,
    queued: Vec<bool>,
    own: Vec<bool>,
    detail: Vec<String>,
    day: Vec<i64>,
    lease_owner: Vec<Option<&'a str>>,
    lease_until: Vec<Option<i64>>,
}

impl<'a> Writes<'a> {
    /// Adds `req`, stored under `id` with `code_hash`, charged `cost` (of
    /// which `cost_test` in test credits).
    #[allow(clippy::too_many_arguments)]
    fn push(
        &mut self,
        req: &'a NewVerification,
        (id, code_hash): (VerificationId, &'a CodeHash),
        destination: String,
        (cost, cost_test, counted): (i64, i64, bool),
        lease: Option<&'a OutboxLease>,
    ) {
        let test = req.kind == SendKind::TestNumber;
        self.id.push(id_i64(id));
        self.country.push(i32::from(req.destination.country_code()));
        self.national.push(req.destination.national());
        self.destination.push(destination);
        self.flow_type.push(&req.flow_type);
        self.code_hash.push(&code_hash.0[..]);
        self.otp_length.push(i16::from(req.otp_length));
        self.max_attempts.push(int(req.max_attempts));
        self.created_at.push(req.created_at);
        self.expires_at.push(req.expires_at);
        self.transaction_id.push(&req.transaction_id);
        self.cost.push(cost);
        self.cost_test.push(cost_test);
        self.text.push(&req.message_text);
        self.address.push(req.address.as_deref());
        self.lang.push(req.lang.as_deref());
        self.prefix.push(counted.then_some(req.prefix.as_str()));
        self.delivery.push(if test { "sent" } else { "queued" });
        // A test number's message never leaves the server: no outbox row.
        self.queued.push(!test);
        self.own
            .push(matches!(req.kind, SendKind::OwnNumber { .. }));
        self.detail.push(created_detail(req));
        self.day.push(day_of(req.created_at));
        self.lease_owner.push(lease.map(|l| l.worker.as_str()));
        self.lease_until.push(lease.map(|l| l.until));
    }

    /// Runs [`WRITE`] for the sends added, of the account `customer`: the
    /// rows of those stored (a send whose id was taken has none).
    async fn run(&self, tx: &mut PgConnection, customer: &str) -> StoreResult<Vec<PgRow>> {
        sqlx::query(WRITE)
            .bind(&self.id)
            .bind(customer)
            .bind(&self.country)
            .bind(&self.national)
            .bind(&self.destination)
            .bind(&self.flow_type)
            .bind(&self.code_hash)
            .bind(&self.otp_length)
            .bind(&self.max_attempts)
            .bind(&self.created_at)
            .bind(&self.expires_at)
            .bind(&self.transaction_id)
            .bind(&self.cost)
            .bind(&self.cost_test)
            .bind(&self.text)
            .bind(&self.address)
            .bind(&self.lang)
            .bind(&self.prefix)
            .bind(&self.delivery)
            .bind(&self.queued)
            .bind(&self.own)
            .bind(&self.detail)
            .bind(&self.day)
            .bind(&self.lease_owner)
            .bind(&self.lease_until)
            .fetch_all(&mut *tx)
            .await
            .map_err(db_err)
    }
}

/// Stores the fallback steps of `req`, stored as `id` (none for a test
/// number, whose messages never leave the server).
async fn store_fallbacks(
    tx: &mut PgConnection,
    req: &NewVerification,
    id: VerificationId,
) -> StoreResult<()> {
    if req.kind == SendKind::TestNumber {
        return Ok(());
    }
    for (i, f) in req.fallbacks.iter().enumerate() {
        sqlx::query(
            "insert into outbox (
                 verification_id, customer_id, step, flow_type, address, lang, text,
                 status, attempts, next_attempt_at, created_at, updated_at
             ) values ($1, $2, $3, $4, $5, $6, $7, 'queued', 0, $8, $9, $9)",
        )
        .bind(id_i64(id))
        .bind(req.customer_id.as_str())
        .bind(i32::try_from(i + 1).unwrap_or(i32::MAX))
        .bind(&f.flow_type)
        .bind(&f.address)
        .bind(&req.lang)
        .bind(&f.text)
        .bind(f.due_at)
        .bind(req.created_at)
        .execute(&mut *tx)
        .await
        .map_err(db_err)?;
    }
    Ok(())
}

/// A stored send's outcome from its [`WRITE`] row: the verification, and
/// its first message if it was stored leased.
fn stored(
    req: &NewVerification,
    row: &PgRow,
    lease: Option<&OutboxLease>,
) -> StoreResult<(Verification, Option<OutboxMessage>)> {
    let v = rows::verification(row)?;
    // No outbox row (a test number's send): nothing to hand over.
    let outbox_id: Option<i64> = row.try_get("outbox_id").map_err(db_err)?;
    let handed = match (lease, outbox_id) {
        (Some(_), Some(id)) => Some(shared::leased_message(req, &v, id)),
        _ => None,
    };
    Ok((v, handed))
}

/// Stores the block `b` that `req` triggered.
async fn store_block(
    tx: &mut PgConnection,
    req: &NewVerification,
    b: &fraud::NewBlock,
) -> StoreResult<()> {
    sqlx::query(
        "insert into fraud_blocks (scope, key, reason, strikes, blocked_until,
                                   lifted_at, created_at, updated_at)
         values ($1, $2, $3, $4, $5, null, $6, $6)
         on conflict (scope, key) do update
            set reason = excluded.reason, strikes = excluded.strikes,
                blocked_until = excluded.blocked_until, lifted_at = null,
                updated_at = excluded.updated_at",
    )
    .bind(b.scope.as_str())
    .bind(shared::block_key(req, b.scope))
    .bind(&b.reason)
    .bind(int(b.strikes))
    .bind(b.until_ms)
    .bind(req.created_at)
    .execute(&mut *tx)
    .await
    .map_err(db_err)?;
    Ok(())
}

impl Held {
    /// Takes an accepted send's charge off the held balance, as its write
    /// does in the table.
    fn take(&mut self, cost: i64, cost_test: i64) {
        if let Some((credits, test_credits, _)) = &mut self.account {
            *credits -= cost - cost_test;
            *test_credits -= cost_test;
        }
    }

    /// The held balance, for a send's decision; `None`: no such account,
    /// or it is disabled.
    fn balance(&self) -> Option<send::Balance> {
        match self.account {
            Some((credits, test_credits, false)) => Some(send::Balance {
                credits,
                test_credits,
            }),
            _ => None,
        }
    }
}

/// One send of a group (`super::batch`): the request, and the lease its
/// first message is stored with, if any.
pub(super) struct GroupSend<'a> {
    pub(super) req: &'a NewVerification,
    pub(super) lease: Option<&'a OutboxLease>,
}

impl PostgresStore {
    /// One send in the transaction `tx`; `held`, if its account's row is
    /// locked already (see [`Held`]). With `lease`, its first message is
    /// stored as that worker's claim would leave it (attempt 1) and comes
    /// back with the verification, for the worker to deliver at once.
    ///
    /// Its checks are the locks ([`LOCK`], unless held), then every fact
    /// in one statement ([`CHECKS`]), then the core's decision.
    pub(super) async fn create_in(
        tx: &mut PgConnection,
        req: &NewVerification,
        held: Option<&mut Held>,
        lease: Option<&OutboxLease>,
    ) -> StoreResult<CreateResult> {
        let now = req.created_at;
        if req.price < 0 {
            // The server's price table is validated at start-up; a negative
            // price here is a bug, and would mint credit.
            return Err(StoreError::Internal("negative price".into()));
        }
        let balance = match held.as_deref() {
            // Locked already, and the prefix locks with it.
            Some(held) => held.balance(),
            None => {
                let prefix = takes_prefix_lock(req).then_some(req.prefix.as_str());
                lock(tx, req.customer_id.as_str(), prefix.as_slice())
                    .await?
                    .and_then(|(credits, test_credits, disabled)| {
                        (!disabled).then_some(send::Balance {
                            credits,
                            test_credits,
                        })
                    })
            }
        };
        let Some(balance) = balance else {
            return Ok(Err(shared::refusal(
                send::Refused::AccountUnavailable,
                None,
                now,
            )?));
        };
        let destination = req.destination.e164_digits();
        let params = CheckParams::of(req, destination.clone());
        let row = read_checks(tx, std::slice::from_ref(&params)).await?;
        let facts = Facts::read(&row[0], req, balance)?;
        let (cost, cost_test, counted) = match decide(req, facts)? {
            Decided::Refused(outcome) => return Ok(Err(*outcome)),
            Decided::Block(b) => {
                store_block(tx, req, &b).await?;
                return Ok(Err(shared::refusal(send::Refused::Block(b), None, now)?));
            }
            Decided::Charge {
                cost,
                cost_test,
                counted,
            } => (cost, cost_test, counted),
        };
        // The first candidate id not yet taken: a taken one writes nothing
        // (`on conflict do nothing`) and leaves the transaction usable.
        let candidates = std::iter::once((req.id, &req.code_hash))
            .chain(req.spare_ids.iter().map(|(i, h)| (*i, h)));
        let mut written = None;
        for candidate in candidates {
            let mut writes = Writes::default();
            writes.push(
                req,
                candidate,
                destination.clone(),
                (cost, cost_test, counted),
                lease,
            );
            let rows = writes.run(tx, req.customer_id.as_str()).await?;
            if let Some(row) = rows.into_iter().next() {
                written = Some((candidate.0, row));
                break;
            }
        }
        let Some((id, row)) = written else {
            return Err(StoreError::Conflict(
                "every candidate verification id is taken".into(),
            ));
        };
        store_fallbacks(tx, req, id).await?;
        if let Some(held) = held {
            held.take(cost, cost_test);
        }
        Ok(Ok(stored(req, &row, lease)?))
    }

    /// The sends of a group, in its transaction `tx` with the account's row
    /// (`held`) and the prefix locks taken: the checks of all of them in one
    /// statement, each decided in turn with what the sends before it took
    /// ([`Facts::with_taken`]), and the accepted ones written in one
    /// statement. From the first send that a group read cannot decide (one
    /// to a number an earlier send of the group went to, or one that
    /// triggers a block) the group's writes so far are made and the rest
    /// run one by one ([`Self::create_in`]), each reading what those before
    /// it wrote. `Err`: a statement failed, or a send's id was taken (the
    /// caller rolls back and runs each alone, which tries its spare ids).
    pub(super) async fn create_group(
        tx: &mut PgConnection,
        sends: &[GroupSend<'_>],
        held: &mut Held,
    ) -> StoreResult<Vec<CreateResult>> {
        let mut ids = std::collections::HashSet::with_capacity(sends.len());
        if sends
            .iter()
            .any(|s| s.req.price < 0 || !ids.insert(s.req.id))
        {
            // Nothing to gain from the group: alone, each says what is wrong.
            return Self::one_by_one(tx, sends, held).await;
        }
        let params: Vec<CheckParams<'_>> = sends
            .iter()
            .map(|s| CheckParams::of(s.req, s.req.destination.e164_digits()))
            .collect();
        let rows = read_checks(tx, &params).await?;
        let mut outcomes: Vec<Option<CreateResult>> = Vec::with_capacity(sends.len());
        let mut taken: Vec<Taken> = Vec::new();
        let mut writes = Writes::default();
        let mut accepted = Vec::new();
        for ((s, p), row) in sends.iter().zip(&params).zip(&rows) {
            let now = s.req.created_at;
            let Some(balance) = held.balance() else {
                outcomes.push(Some(Err(shared::refusal(
                    send::Refused::AccountUnavailable,
                    None,
                    now,
                )?)));
                continue;
            };
            let Some(facts) = Facts::read(row, s.req, balance)?.with_taken(p, &taken) else {
                break;
            };
            match decide(s.req, facts)? {
                Decided::Refused(outcome) => outcomes.push(Some(Err(*outcome))),
                // Stored by the send itself, run alone below.
                Decided::Block(_) => break,
                Decided::Charge {
                    cost,
                    cost_test,
                    counted,
                } => {
                    held.take(cost, cost_test);
                    taken.push(Taken {
                        created_at: now,
                        destination: p.destination.clone(),
                        cost,
                        country: p.country,
                        prefix: counted.then(|| s.req.prefix.clone()),
                        own: matches!(s.req.kind, SendKind::OwnNumber { .. }),
                    });
                    writes.push(
                        s.req,
                        (s.req.id, &s.req.code_hash),
                        p.destination.clone(),
                        (cost, cost_test, counted),
                        s.lease,
                    );
                    accepted.push(outcomes.len());
                    outcomes.push(None);
                }
            }
        }
        if !accepted.is_empty() {
            let rows = writes.run(tx, held_customer(sends)).await?;
            if rows.len() != accepted.len() {
                return Err(StoreError::Conflict(
                    "a verification id of the group is taken".into(),
                ));
            }
            let mut by_id: std::collections::HashMap<i64, PgRow> = rows
                .into_iter()
                .map(|row| Ok((row.try_get::<i64, _>("id").map_err(db_err)?, row)))
                .collect::<StoreResult<_>>()?;
            for &i in &accepted {
                let s = &sends[i];
                let row = by_id
                    .remove(&id_i64(s.req.id))
                    .ok_or_else(|| StoreError::Internal("a stored send's row is missing".into()))?;
                store_fallbacks(tx, s.req, s.req.id).await?;
                outcomes[i] = Some(Ok(stored(s.req, &row, s.lease)?));
            }
        }
        let decided = outcomes.len();
        let mut outcomes: Vec<CreateResult> = outcomes
            .into_iter()
            .map(|o| o.ok_or_else(|| StoreError::Internal("a send was left undecided".into())))
            .collect::<StoreResult<_>>()?;
        outcomes.extend(Self::one_by_one(tx, &sends[decided..], held).await?);
        Ok(outcomes)
    }

    /// `sends`, one after another in `tx`, each reading what those before
    /// it wrote.
    async fn one_by_one(
        tx: &mut PgConnection,
        sends: &[GroupSend<'_>],
        held: &mut Held,
    ) -> StoreResult<Vec<CreateResult>> {
        let mut outcomes = Vec::with_capacity(sends.len());
        for s in sends {
            outcomes.push(Self::create_in(tx, s.req, Some(&mut *held), s.lease).await?);
        }
        Ok(outcomes)
    }
}

/// The account of a group's sends (all of one account).
fn held_customer<'a>(sends: &'a [GroupSend<'_>]) -> &'a str {
    sends.first().map_or("", |s| s.req.customer_id.as_str())
}

/// A send's outcome in its transaction: stored (with its first message if
/// leased), or refused.
pub(super) type CreateResult = Result<(Verification, Option<OutboxMessage>), CreateOutcome>;
