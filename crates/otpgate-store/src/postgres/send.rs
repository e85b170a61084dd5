//! A send (contract §2 and §5) on PostgreSQL: the account's row lock and
//! the prefix's advisory lock in one statement, every fact the checks and
//! the fraud defences weigh in a second, the core's decision
//! (`otpgate_core::send`), then the writes of an accepted send in a third —
//! all in one transaction, which commits only a `Created` send or a block
//! the send itself triggered.

use otpgate_core::VerificationState;
use otpgate_core::fraud;
use otpgate_core::send;
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
pub(super) const PREFIX_LOCK_SPACE: i32 = 0x6f74_7067;

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
/// account's sends, `super::batch`), and what the group's sends leave for
/// its end.
pub(super) struct Held {
    /// The balance as this transaction has left it, and whether the account
    /// is disabled; `None`: no such account. Nobody else can change the row
    /// while it is held, so the sends of the group need not read it again:
    /// each accepted one takes its charge off here as its statement does in
    /// the table.
    pub(super) account: Option<(i64, i64, bool)>,
    /// Accepted sends not yet counted in `daily_stats`: per day (`day_of`),
    /// how many, and the first one's send time (the row's `created_at`).
    /// The group counts them in one statement just before its COMMIT
    /// ([`count_sends`]) rather than each in its own: the count's row is the
    /// one a validation of the account's codes updates too, and a lock taken
    /// with a group's first send would be held through all of its sends,
    /// so every validation of the account would wait for the whole group.
    pub(super) uncounted: Vec<(i64, i64, i64)>,
}

impl Held {
    pub(super) fn new(account: Option<(i64, i64, bool)>) -> Self {
        Self {
            account,
            uncounted: Vec::new(),
        }
    }
}

/// Counts a group's accepted sends in `daily_stats` (see
/// [`Held::uncounted`]): the last statement before its COMMIT, so its
/// row locks are held only for the COMMIT, and taken last, after the
/// account's and the prefixes' (the order every send keeps).
pub(super) async fn count_sends(
    tx: &mut PgConnection,
    customer: &str,
    uncounted: &[(i64, i64, i64)],
) -> StoreResult<()> {
    if uncounted.is_empty() {
        return Ok(());
    }
    let days: Vec<i64> = uncounted.iter().map(|c| c.0).collect();
    let sends: Vec<i64> = uncounted.iter().map(|c| c.1).collect();
    let created: Vec<i64> = uncounted.iter().map(|c| c.2).collect();
    // By day, so that two groups spanning the same midnight lock the rows
    // in one order.
    sqlx::query(
        "insert into daily_stats (customer_id, day, sends, completed, created_at)
         select $1, day, n, 0, at
           from unnest($2::bigint[], $3::bigint[], $4::bigint[]) as c (day, n, at)
          order by day
         on conflict (customer_id, day) do update set sends = daily_stats.sends + excluded.sends",
    )
    .bind(customer)
    .bind(&days)
    .bind(&sends)
    .bind(&created)
    .execute(&mut *tx)
    .await
    .map_err(db_err)?;
    Ok(())
}

/// What a send's checks decided, before anything is written.
enum Checked {
    /// Boxed: a refusal is the rare, larger case.
    Refused(Box<CreateOutcome>),
    Charge {
        cost: i64,
        cost_test: i64,
        /// The guard counts this send (see `counted` in `create_checks`).
        counted: bool,
    },
}

fn refused(outcome: CreateOutcome) -> Checked {
    Checked::Refused(Box::new(outcome))
}

/// The first statement of a send: its account's row lock, which serialises
/// the sends of one account across nodes, and then (`$2`) the prefix's
/// advisory lock, which serialises sends to one prefix from different
/// accounts, so that the prefix guard and the per-number cap hold across
/// accounts too. One round trip for both: the round trips of a send are
/// made while it holds its account's lock, so each one costs every other
/// send of the account too. The prefix's lock is always taken after the
/// account's, never before, so no two sends can wait on each other in a
/// cycle: the locking CTE yields the row only once its lock is granted, and
/// the init plan that takes the advisory lock runs when the projection of
/// that row first needs it. The row it returns is read afresh once the
/// lock is granted, so the balance and the disabled flag are current.
///
/// Parameters: customer, whether to take the prefix's lock, the lock
/// space, the prefix.
const LOCK: &str = "with locked as materialized (
         select credits, test_credits, disabled from accounts
          where customer_id = $1 for update
     )
     select credits, test_credits, disabled,
            case when $2 then (select true from pg_advisory_xact_lock($3, hashtext($4))) end
                as prefix_locked
       from locked";

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
/// Parameters: customer, destination, now, per-number window start,
/// per-number offset, wrong-code window start, wrong-code budget, the
/// pending state's name (bound from the core), the per-second window's
/// start or null; then the destination's country code, the account caps'
/// hour and day starts, the prefix, the country's block key, the prefix's
/// and the country's guard window starts, the completed state's name, and
/// the switches: account caps, the destination's cap, the guard.
pub(super) const CHECKS: &str = concat!(
    "with acct as (
         select count(*) filter (where created_at > $11) as hour_n,
                coalesce(sum(cost) filter (where created_at > $11), 0)::bigint as hour_c,
                min(created_at) filter (where created_at > $11) as hour_oldest,
                count(*) as day_n, coalesce(sum(cost), 0)::bigint as day_c,
                min(created_at) as day_oldest
           from verifications where customer_id = $1 and created_at > $12
     ),
     pb as (select reason, strikes, blocked_until from fraud_blocks
             where scope = 'prefix' and key = $13),
     cb as (select reason, strikes, blocked_until from fraud_blocks
             where scope = 'country' and key = $14)
     select pending.*, limits.*, facts.*
       from (select case when $9::bigint is not null then
                        (select count(*) from verifications
                          where customer_id = $1 and created_at > $9 and created_at <= $3)
                    end as recent,
                    (select created_at from verifications
                      where customer_id = $1 and destination = $2 and created_at > $4
                      order by created_at desc limit 1 offset $5
                    ) as number_block_at,
                    (select created_at
                       from (select created_at,
                                    sum(wrong_attempts) over (order by created_at desc)
                                        as wrong
                               from verifications
                              where customer_id = $1 and destination = $2
                                and created_at > $6 and wrong_attempts > 0
                            ) newest_first
                      where wrong >= $7
                      order by created_at desc limit 1
                    ) as wrong_block_at
            ) limits
      cross join (
             select case when $18 then (select hour_n from acct) else 0 end as hour_n,
                    case when $18 then (select hour_c from acct) else 0 end as hour_c,
                    case when $18 then (select hour_oldest from acct) end as hour_oldest,
                    case when $18 then (select day_n from acct) else 0 end as day_n,
                    case when $18 then (select day_c from acct) else 0 end as day_c,
                    case when $18 then (select day_oldest from acct) end as day_oldest,
                    case when $19 then (select count(*) from verifications
                      where destination = $2 and created_at > $12) else 0 end as dest_n,
                    case when $19 then (select min(created_at) from verifications
                      where destination = $2 and created_at > $12) end as dest_oldest,
                    exists (select 1 from safe_list
                             where left($2, length(entry)) = entry) as safe,
                    case when $20 then (select reason from pb) end as pb_reason,
                    case when $20 then (select strikes from pb) end as pb_strikes,
                    case when $20 then (select blocked_until from pb) end as pb_until,
                    case when $20 then (select reason from cb) end as cb_reason,
                    case when $20 then (select strikes from cb) end as cb_strikes,
                    case when $20 then (select blocked_until from cb) end as cb_until,
                    case when $20 then (select count(*) from verifications
                      where prefix = $13
                        and created_at > greatest($15, coalesce((select blocked_until from pb), 0))
                    ) else 0 end as p_sent,
                    case when $20 then (select count(*) from verifications
                      where prefix = $13 and state = $17
                        and created_at > greatest($15, coalesce((select blocked_until from pb), 0))
                    ) else 0 end as p_done,
                    case when $20 then (select count(*) from verifications
                      where customer_id = $1 and country_code = $10 and prefix is not null
                        and created_at > greatest($16, coalesce((select blocked_until from cb), 0))
                    ) else 0 end as c_sent,
                    case when $20 then (select count(*) from verifications
                      where customer_id = $1 and country_code = $10 and state = $17
                        and prefix is not null
                        and created_at > greatest($16, coalesce((select blocked_until from cb), 0))
                    ) else 0 end as c_done,
                    exists (select 1 from own_numbers
                             where customer_id = $1 and destination = $2
                               and verified_at is not null) as own_verified,
                    (select count(*) from own_numbers
                      where customer_id = $1 and created_at > $12) as own_today
            ) facts
       left join (select ",
    verification_columns!(),
    " from verifications
                   where customer_id = $1 and destination = $2 and state = $8
                     and expires_at > $3 and wrong_attempts < max_attempts
                   order by created_at desc, id desc limit 1
                 ) pending on true"
);

/// The start of a send's transaction: its statements are planned
/// generically (see [`CHECKS`]). `set local` ends with the transaction.
pub(super) const BEGIN: &str = "begin; set local plan_cache_mode = force_generic_plan";

/// The writes of an accepted send, in one statement. The charge, the
/// outbox row, (for an account with a webhook) the `created` event and
/// (`$24`; a group counts its sends at its end, see [`Held::uncounted`])
/// the day's count hang off the inserted verification, so an id that is
/// already taken (`on conflict do nothing`) writes nothing at all; the
/// caller then reports a conflict and drops the transaction, as before.
const WRITE: &str = concat!(
    "with inserted as (
         insert into verifications (
             id, customer_id, country_code, national, destination, flow_type, code_hash,
             otp_length, state, wrong_attempts, max_attempts, created_at, expires_at,
             transaction_id, cost, cost_test, delivery
             , prefix
         ) values ($1, $2, $3, $4, $5, $6, $7, $8, 'pending', 0, $9, $10, $11, $12, $13,
                   $14, $19, $18)
         on conflict (id) do nothing
         returning ",
    verification_columns!(),
    "
     ),
     charged as (
         update accounts a
            set credits = a.credits - (i.cost - i.cost_test),
                test_credits = a.test_credits - i.cost_test
           from inserted i
          where a.customer_id = i.customer_id
     ),
     queued as (
         insert into outbox (
             verification_id, customer_id, step, address, lang, text, status, attempts,
             next_attempt_at, created_at, updated_at, lease_owner, lease_until
         )
         select id, customer_id, 0, $16, $17, $15, 'queued',
                case when $25::text is null then 0 else 1 end, created_at, created_at,
                created_at, $25, $26
           from inserted where $20
         returning id
     ),
     own as (
         insert into own_numbers (verification_id, customer_id, destination, created_at)
         select id, customer_id, $5, created_at from inserted where $21
     ),
     evented as (
         insert into events (
             event_id, customer_id, verification_id, kind, detail, status, attempts,
             next_attempt_at, created_at, updated_at
         )
         select ",
    events::new_event_id!(),
    ", i.customer_id, i.id, 'verification.created', $22, 'pending', 0,
                i.created_at, i.created_at, i.created_at
           from inserted i join webhooks w on w.customer_id = i.customer_id
     ),
     counted as (
         insert into daily_stats (customer_id, day, sends, completed, created_at)
         select customer_id, $23, 1, 0, created_at from inserted where $24
         on conflict (customer_id, day) do update set sends = daily_stats.sends + 1
     )
     select i.*, (select id from queued) as outbox_id from inserted i"
);

impl PostgresStore {
    /// The checks of contract §2 and §5: the locks ([`LOCK`]), then every
    /// fact in one statement ([`CHECKS`]). The order of outcomes is
    /// `otpgate_core::send`'s, so the SQL need not encode it.
    async fn create_checks(
        tx: &mut PgConnection,
        req: &NewVerification,
        destination: &str,
        held: Option<&Held>,
    ) -> StoreResult<Checked> {
        let now = req.created_at;
        let customer = req.customer_id.as_str();
        let limits = &req.limits;
        if req.price < 0 {
            // The server's price table is validated at start-up; a negative
            // price here is a bug, and would mint credit.
            return Err(StoreError::Internal("negative price".into()));
        }
        // A test number's send weighs no fraud defence.
        let guarded = req.kind != SendKind::TestNumber;
        let policy = &req.fraud;
        let caps = &policy.caps;
        let account_caps = guarded && (caps.account_hour_on() || caps.account_day_on());
        let destination_cap = guarded && caps.destination_day_on();
        let guard_on = guarded && policy.guard;

        let account = match held {
            // Locked already, and the prefix locks with it.
            Some(held) => held.account,
            None => sqlx::query_as::<_, (i64, i64, bool, Option<bool>)>(LOCK)
                .bind(customer)
                .bind(takes_prefix_lock(req))
                .bind(PREFIX_LOCK_SPACE)
                .bind(&req.prefix)
                .fetch_optional(&mut *tx)
                .await
                .map_err(db_err)?
                .map(|(credits, test_credits, disabled, _)| (credits, test_credits, disabled)),
        };
        let Some((credits, test_credits, false)) = account else {
            return Ok(refused(shared::refusal(
                send::Refused::AccountUnavailable,
                None,
                now,
            )?));
        };

        let number_window = limits.per_number_window_ms.max(0);
        let wrong_window = limits.wrong_code_window_ms.max(0);
        let row = sqlx::query(CHECKS)
            .bind(customer)
            .bind(destination)
            .bind(now)
            .bind(now.saturating_sub(number_window))
            // A maximum of 0 refuses before this offset matters; `max(1)`
            // only keeps it legal.
            .bind(i64::from(limits.per_number_max.max(1)) - 1)
            .bind(now.saturating_sub(wrong_window))
            .bind(i64::from(limits.wrong_code_max))
            .bind(VerificationState::Pending.as_str())
            .bind(
                limits
                    .per_account_per_second
                    .map(|_| now.saturating_sub(1000)),
            )
            .bind(i32::from(req.destination.country_code()))
            .bind(now - fraud::HOUR_MS)
            .bind(now - fraud::DAY_MS)
            .bind(&req.prefix)
            .bind(shared::block_key(req, fraud::BlockScope::Country))
            .bind(now - policy.prefix.window_ms)
            .bind(now - policy.country.window_ms)
            .bind(VerificationState::Completed.as_str())
            .bind(account_caps)
            .bind(destination_cap)
            .bind(guard_on)
            .fetch_one(&mut *tx)
            .await
            .map_err(db_err)?;

        // The core decides (`otpgate_core::send`); this only reads facts.
        let pending_id: Option<i64> = row.try_get("id").map_err(db_err)?;
        let pending = pending_id
            .is_some()
            .then(|| rows::verification(&row))
            .transpose()?;
        let recent: Option<i64> = row.try_get("recent").map_err(db_err)?;
        let gate = send::GateFacts {
            account: Some(send::Balance {
                credits,
                test_credits,
            }),
            pending: pending.is_some(),
            recent: recent.map(|n| u32::try_from(n).unwrap_or(u32::MAX)),
            number_block_at: row.try_get("number_block_at").map_err(db_err)?,
            wrong_block_at: row.try_get("wrong_block_at").map_err(db_err)?,
        };
        let terms = shared::terms(req);
        if let Err(r) = send::gate(&terms, &gate, now) {
            return Ok(refused(shared::refusal(r, pending, now)?));
        }

        // The fraud defences: caps, blocks and the conversion guard, read
        // under the account's lock (and the prefix's), so concurrent sends
        // on any node cannot overshoot a cap.
        let guard = if guarded {
            guard_facts(&row, req.price)?
        } else {
            send::GuardFacts::default()
        };
        // The balance is the locked row's, so no other send can spend it in
        // between.
        match send::decide(&terms, &gate, &guard, now) {
            Ok(c) => Ok(Checked::Charge {
                cost: c.cost,
                cost_test: c.cost_test,
                counted: c.counted,
            }),
            Err(send::Refused::Block(b)) => {
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
                .bind(now)
                .execute(&mut *tx)
                .await
                .map_err(db_err)?;
                Ok(refused(shared::refusal(
                    send::Refused::Block(b),
                    None,
                    now,
                )?))
            }
            Err(r) => Ok(refused(shared::refusal(r, None, now)?)),
        }
    }

    /// One send in the transaction `tx`; `held`, if its account's row is
    /// locked already (see [`Held`]). With `lease`, its first message is
    /// stored as that worker's claim would leave it (attempt 1) and comes
    /// back with the verification, for the worker to deliver at once.
    pub(super) async fn create_in(
        tx: &mut PgConnection,
        req: &NewVerification,
        held: Option<&mut Held>,
        lease: Option<&OutboxLease>,
    ) -> StoreResult<Result<(Verification, Option<OutboxMessage>), CreateOutcome>> {
        let destination = req.destination.e164_digits();
        let checked = Self::create_checks(tx, req, &destination, held.as_deref()).await?;
        let (cost, cost_test, counted) = match checked {
            Checked::Refused(outcome) => return Ok(Err(*outcome)),
            Checked::Charge {
                cost,
                cost_test,
                counted,
            } => (cost, cost_test, counted),
        };
        // The first candidate id not yet taken: a taken one writes nothing
        // (`on conflict do nothing`) and leaves the transaction usable.
        let candidates = std::iter::once((req.id, &req.code_hash))
            .chain(req.spare_ids.iter().map(|(i, h)| (*i, h)));
        let mut stored = None;
        for (id, code_hash) in candidates {
            let row = sqlx::query(WRITE)
                .bind(id_i64(id))
                .bind(req.customer_id.as_str())
                .bind(i32::from(req.destination.country_code()))
                .bind(req.destination.national())
                .bind(&destination)
                .bind(&req.flow_type)
                .bind(&code_hash.0[..])
                .bind(i16::from(req.otp_length))
                .bind(int(req.max_attempts))
                .bind(req.created_at)
                .bind(req.expires_at)
                .bind(&req.transaction_id)
                .bind(cost)
                .bind(cost_test)
                .bind(&req.message_text)
                .bind(&req.address)
                .bind(&req.lang)
                .bind(counted.then_some(&req.prefix))
                .bind(if req.kind == SendKind::TestNumber {
                    "sent"
                } else {
                    "queued"
                })
                // A test number's message never leaves the server: no outbox row.
                .bind(req.kind != SendKind::TestNumber)
                .bind(matches!(req.kind, SendKind::OwnNumber { .. }))
                .bind(created_detail(req))
                .bind(day_of(req.created_at))
                .bind(held.is_none())
                .bind(lease.map(|l| l.worker.as_str()))
                .bind(lease.map(|l| l.until))
                .fetch_optional(&mut *tx)
                .await
                .map_err(db_err)?;
            if let Some(row) = row {
                stored = Some((id, row));
                break;
            }
        }
        let Some((id, row)) = stored else {
            return Err(StoreError::Conflict(
                "every candidate verification id is taken".into(),
            ));
        };
        // A test number's message (and any fallback step) never leaves the
        // server.
        let fallbacks = if req.kind == SendKind::TestNumber {
            &[][..]
        } else {
            &req.fallbacks[..]
        };
        for (i, f) in fallbacks.iter().enumerate() {
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
        if let Some(held) = held {
            // As the statement's `update accounts` took it.
            if let Some((credits, test_credits, _)) = &mut held.account {
                *credits -= cost - cost_test;
                *test_credits -= cost_test;
            }
            let day = day_of(req.created_at);
            match held.uncounted.iter_mut().find(|c| c.0 == day) {
                Some(c) => c.1 += 1,
                None => held.uncounted.push((day, 1, req.created_at)),
            }
        }
        let v = rows::verification(&row)?;
        // No outbox row (a test number's send): nothing to hand over.
        let outbox_id: Option<i64> = row.try_get("outbox_id").map_err(db_err)?;
        let handed = match (lease, outbox_id) {
            (Some(_), Some(id)) => Some(shared::leased_message(req, &v, id)),
            _ => None,
        };
        Ok(Ok((v, handed)))
    }
}
