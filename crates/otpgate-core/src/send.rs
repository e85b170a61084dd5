//! The send decision and the refund decision, written once here and applied
//! by both store backends ("rules once, SQL twice"). A backend reads the
//! facts of a send inside its transaction ([`GateFacts`], then
//! [`GuardFacts`]), asks [`decide`] what to do, and writes what it is told:
//! a refusal (nothing written but, for a new fraud block, the block), or a
//! [`Charge`]. When a message can no longer arrive, [`undeliverable`] says
//! whether the verification fails and what goes back to the account.
//!
//! The order of refusals is the contract's (§2, §5), and it is only here:
//! 1. the account is missing or disabled (401);
//! 2. a verification to the destination is still pending (506) — a client
//!    that resends while its code is valid gets it back whatever the
//!    limits say;
//! 3. the rate limits: per account per second, per number per window, the
//!    wrong-code budget (800);
//! 4. the own-number daily limit, then the fraud defences
//!    ([`fraud::decide_send`]: caps, blocks, the conversion guard; 800);
//! 5. the charge ([`fraud::charge`]: test credits first, where they may
//!    pay; 402).
//!
//! Stages 1–3 need only [`GateFacts`]; [`gate`] decides them alone, so a
//! backend may stop reading there (and skip the fraud facts and the lock
//! they are read under) when it refuses. [`decide`] begins with [`gate`],
//! so the two never disagree.

use crate::fraud::{self, ChargeRefusal, FraudPolicy, NewBlock, Refusal, SendVerdict};
use crate::verification::VerificationState;

/// Limits checked inside a send's transaction, so they hold across nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SendLimits {
    /// At most this many verifications per (account, destination) per
    /// `per_number_window_ms`.
    pub per_number_max: u32,
    pub per_number_window_ms: i64,
    /// At most this many wrong codes per (account, destination) over
    /// `wrong_code_window_ms`, across verifications; past it sends are
    /// refused (and validations answer 800, decided by the caller).
    pub wrong_code_max: u32,
    pub wrong_code_window_ms: i64,
    /// At most this many sends per account per second; `None` is no limit.
    pub per_account_per_second: Option<u32>,
}

/// What a send is for; decides who may pay and whether a message goes out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendKind {
    /// An API send: test credits pay only for the account's verified numbers.
    Normal,
    /// The account verifying a number as its own (console): test credits
    /// may pay, at most `max_per_day` such sends per account per day.
    OwnNumber { max_per_day: u32 },
    /// A configured test number: nothing leaves the server, nothing is
    /// charged, no fraud check applies (there is nothing to pump).
    TestNumber,
}

/// The send's own terms, from the request and the server's settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SendTerms {
    /// What the message costs (the destination country's price); never
    /// negative (the server's price table is checked at start-up).
    pub price: i64,
    pub kind: SendKind,
    pub limits: SendLimits,
    pub fraud: FraudPolicy,
}

/// An account's balance as the send's transaction read it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Balance {
    pub credits: i64,
    pub test_credits: i64,
}

/// What stages 1–3 weigh. A fact a backend did not read because an earlier
/// one already refuses (limits of a missing account, or of a destination
/// with a pending verification) may be left `None`: [`gate`] never looks
/// at it then.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GateFacts {
    /// `None`: no such account, or it is disabled.
    pub account: Option<Balance>,
    /// A verification to this destination is pending, unexpired and has
    /// attempts left.
    pub pending: bool,
    /// The account's sends in the last second; read only when
    /// `per_account_per_second` is set (`None` counts as none).
    pub recent: Option<u32>,
    /// `created_at` of the `per_number_max`-th newest send to the
    /// destination inside its window: the number is full until it leaves.
    pub number_block_at: Option<i64>,
    /// `created_at` of the newest verification at which the wrong codes of
    /// it and of those newer reach the budget (see [`wrong_code_block`]).
    pub wrong_block_at: Option<i64>,
}

/// What stage 4 weighs; not read for a test number.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GuardFacts {
    pub fraud: fraud::SendFacts,
    /// The destination is one of the account's verified own numbers (its
    /// test credits may pay for it).
    pub own_verified: bool,
    /// Own-number sends the account made in the last day.
    pub own_sent_today: u32,
}

/// Why a send is refused. Nothing is charged or queued.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    /// 401: the account is missing or disabled.
    AccountUnavailable,
    /// 506: the backend answers with the pending verification it read.
    AlreadyPending,
    /// 800: a rate limit; the send may go again after `wait_ms`.
    RateLimited { wait_ms: i64 },
    /// 800: a fraud defence (a cap or an active block).
    Fraud(Refusal),
    /// 800: the conversion guard blocks now; the backend records this block
    /// (and keeps it, though the send is refused).
    Block(NewBlock),
    /// 402
    InsufficientBalance,
    /// 402: only test credits would pay, and they pay only for the
    /// account's own verified numbers.
    TestCreditsRestricted,
}

/// An accepted send: what the backend writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Charge {
    /// The verification's cost…
    pub cost: i64,
    /// …of which test credits pay this much (paid credits pay the rest).
    pub cost_test: i64,
    /// The conversion guard counts this send (the backend stores its
    /// prefix): not for a safe-listed destination or a test number, so
    /// trusted traffic never pushes its country towards a block.
    pub counted: bool,
}

impl Charge {
    /// What paid credits pay.
    pub fn cost_paid(&self) -> i64 {
        self.cost - self.cost_test
    }
}

/// How long an own-number send waits once the day's are spent.
pub const OWN_NUMBER_WAIT_MS: i64 = fraud::HOUR_MS;

/// Stages 1–3: the account, 506 and the rate limits. `Ok` with the balance
/// when the send may go on to the fraud defences.
///
/// # Errors
/// The first refusal by the module's order.
pub fn gate(terms: &SendTerms, facts: &GateFacts, now_ms: i64) -> Result<Balance, Refused> {
    let Some(balance) = facts.account else {
        return Err(Refused::AccountUnavailable);
    };
    if facts.pending {
        return Err(Refused::AlreadyPending);
    }
    let limits = &terms.limits;
    let until = |at: i64, window: i64| Refused::RateLimited {
        wait_ms: at.saturating_add(window).saturating_sub(now_ms),
    };
    if let Some(per_second) = limits.per_account_per_second
        && facts.recent.unwrap_or(0) >= per_second
    {
        return Err(Refused::RateLimited { wait_ms: 1000 });
    }
    // Per number: full while the `per_number_max`-th newest send to this
    // destination is inside the window (a maximum of 0 refuses for a whole
    // window).
    let window = limits.per_number_window_ms.max(0);
    if limits.per_number_max == 0 {
        return Err(until(now_ms, window));
    }
    if let Some(at) = facts.number_block_at {
        return Err(until(at, window));
    }
    let window = limits.wrong_code_window_ms.max(0);
    if limits.wrong_code_max == 0 {
        return Err(until(now_ms, window));
    }
    if let Some(at) = facts.wrong_block_at {
        return Err(until(at, window));
    }
    Ok(balance)
}

/// The whole send decision: [`gate`], then the own-number limit and the
/// fraud defences, then the charge. `guard` is not looked at for a test
/// number (pass [`GuardFacts::default`]).
///
/// Which credits pay: test credits first (contract §5), where they may pay
/// — an own-number send, a verified own number, or any send unless
/// `test_credits_verified_only` — by [`fraud::charge`], which takes
/// `test_credits.clamp(0, price)`. The backends once differed here (one
/// took `min(price)`), which agrees for every balance the store can hold;
/// `clamp` is kept because it also stays right for a negative test balance
/// (only corrupt data has one): such a balance neither pays nor, by paying
/// "negatively", raises the paid charge above the price.
///
/// # Errors
/// The first refusal by the module's order.
pub fn decide(
    terms: &SendTerms,
    facts: &GateFacts,
    guard: &GuardFacts,
    now_ms: i64,
) -> Result<Charge, Refused> {
    let balance = gate(terms, facts, now_ms)?;
    let test_number = terms.kind == SendKind::TestNumber;
    let mut test_usable =
        !terms.fraud.test_credits_verified_only || matches!(terms.kind, SendKind::OwnNumber { .. });
    let mut counted = false;
    if !test_number {
        if let SendKind::OwnNumber { max_per_day } = terms.kind
            && guard.own_sent_today >= max_per_day
        {
            return Err(Refused::RateLimited {
                wait_ms: OWN_NUMBER_WAIT_MS,
            });
        }
        test_usable |= guard.own_verified;
        counted = !guard.fraud.safe_listed;
        match fraud::decide_send(&guard.fraud, &terms.fraud, now_ms) {
            SendVerdict::Allow => {}
            SendVerdict::Refuse(r) => return Err(Refused::Fraud(r)),
            SendVerdict::Block(b) => return Err(Refused::Block(b)),
        }
    }
    let price = if test_number { 0 } else { terms.price };
    match fraud::charge(price, balance.credits, balance.test_credits, test_usable) {
        Ok((cost, cost_test)) => Ok(Charge {
            cost,
            cost_test,
            counted,
        }),
        Err(ChargeRefusal::Insufficient) => Err(Refused::InsufficientBalance),
        Err(ChargeRefusal::TestCreditsRestricted) => Err(Refused::TestCreditsRestricted),
    }
}

/// Given (created_at, wrong attempts) of the wrong-code window's
/// verifications, newest first, the `created_at` of the verification whose
/// leaving the window brings the wrong codes back under `max` (at least 1);
/// `None` when already under it. Wrong codes count against the window by
/// their verification's send time. (A backend that sums in SQL computes the
/// same with a window function.)
pub fn wrong_code_block(newest_first: &[(i64, i64)], max: u32) -> Option<i64> {
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

/// What a verification was charged, as stored.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Charged {
    pub cost: i64,
    pub cost_test: i64,
}

/// What goes back to an account.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Refund {
    pub credits: i64,
    pub test_credits: i64,
}

impl Refund {
    pub fn is_empty(&self) -> bool {
        self.credits == 0 && self.test_credits == 0
    }
}

/// The refund decision: a verification's message can no longer arrive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Undeliverable {
    /// A pending verification fails (700 on validate), its stored cost is
    /// zeroed and this goes back where it came from (contract §5).
    FailAndRefund(Refund),
    /// Already completed (its code evidently arrived), failed or cancelled:
    /// its state and charge stay; only the delivery status is recorded.
    /// That is also what makes the refund happen once: a second failure
    /// finds the verification no longer pending.
    Keep,
}

/// Decides what an undeliverable message does to its verification.
/// The refund is exactly the charge, split as it was paid; a stored split
/// outside `0 ≤ cost_test ≤ cost` (corruption) is clamped into it, so a
/// refund never mints credit of either kind.
pub fn undeliverable(state: VerificationState, charged: Charged) -> Undeliverable {
    if state != VerificationState::Pending {
        return Undeliverable::Keep;
    }
    let cost = charged.cost.max(0);
    let test_credits = charged.cost_test.clamp(0, cost);
    Undeliverable::FailAndRefund(Refund {
        credits: cost - test_credits,
        test_credits,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fraud::{BlockRecord, Caps, Conversion, GuardPolicy, Usage};
    use proptest::prelude::*;

    fn limits() -> SendLimits {
        SendLimits {
            per_number_max: 5,
            per_number_window_ms: 600_000,
            wrong_code_max: 10,
            wrong_code_window_ms: 3_600_000,
            per_account_per_second: Some(3),
        }
    }

    fn terms(kind: SendKind, price: i64) -> SendTerms {
        SendTerms {
            price,
            kind,
            limits: limits(),
            fraud: FraudPolicy::off(),
        }
    }

    fn open(credits: i64, test_credits: i64) -> GateFacts {
        GateFacts {
            account: Some(Balance {
                credits,
                test_credits,
            }),
            ..GateFacts::default()
        }
    }

    #[test]
    fn the_order_is_account_pending_limits() {
        let t = terms(SendKind::Normal, 1);
        let busy = GateFacts {
            account: None,
            pending: true,
            recent: Some(99),
            number_block_at: Some(0),
            wrong_block_at: Some(0),
        };
        assert_eq!(gate(&t, &busy, 10), Err(Refused::AccountUnavailable));
        let busy = GateFacts {
            account: Some(Balance::default()),
            ..busy
        };
        assert_eq!(gate(&t, &busy, 10), Err(Refused::AlreadyPending));
        let busy = GateFacts {
            pending: false,
            ..busy
        };
        assert_eq!(
            gate(&t, &busy, 10),
            Err(Refused::RateLimited { wait_ms: 1000 })
        );
        let busy = GateFacts {
            recent: Some(2),
            ..busy
        };
        assert_eq!(
            gate(&t, &busy, 10),
            Err(Refused::RateLimited {
                wait_ms: 600_000 - 10
            })
        );
        let busy = GateFacts {
            number_block_at: None,
            wrong_block_at: Some(5),
            ..busy
        };
        assert_eq!(
            gate(&t, &busy, 10),
            Err(Refused::RateLimited {
                wait_ms: 3_600_000 - 5
            })
        );
    }

    #[test]
    fn a_zero_maximum_refuses_for_a_whole_window() {
        let mut t = terms(SendKind::Normal, 1);
        t.limits.per_number_max = 0;
        assert_eq!(
            gate(&t, &open(5, 0), 7),
            Err(Refused::RateLimited { wait_ms: 600_000 })
        );
        t.limits.per_number_max = 1;
        t.limits.wrong_code_max = 0;
        assert_eq!(
            gate(&t, &open(5, 0), 7),
            Err(Refused::RateLimited { wait_ms: 3_600_000 })
        );
    }

    #[test]
    fn test_credits_pay_first_and_test_numbers_cost_nothing() {
        let g = GuardFacts::default();
        let t = terms(SendKind::Normal, 3);
        assert_eq!(
            decide(&t, &open(10, 2), &g, 0),
            Ok(Charge {
                cost: 3,
                cost_test: 2,
                counted: true
            })
        );
        let t = terms(SendKind::TestNumber, 3);
        assert_eq!(
            decide(&t, &open(0, 0), &g, 0),
            Ok(Charge {
                cost: 0,
                cost_test: 0,
                counted: false
            })
        );
        let mut t = terms(SendKind::Normal, 3);
        t.fraud.test_credits_verified_only = true;
        assert_eq!(
            decide(&t, &open(0, 5), &g, 0),
            Err(Refused::TestCreditsRestricted)
        );
        let own = GuardFacts {
            own_verified: true,
            ..GuardFacts::default()
        };
        assert_eq!(decide(&t, &open(0, 5), &own, 0).map(|c| c.cost_test), Ok(3));
        let t = terms(SendKind::OwnNumber { max_per_day: 2 }, 3);
        let spent = GuardFacts {
            own_sent_today: 2,
            ..GuardFacts::default()
        };
        assert_eq!(
            decide(&t, &open(9, 9), &spent, 0),
            Err(Refused::RateLimited {
                wait_ms: OWN_NUMBER_WAIT_MS
            })
        );
    }

    #[test]
    fn a_negative_test_balance_neither_pays_nor_raises_the_charge() {
        let t = terms(SendKind::Normal, 3);
        let c = decide(&t, &open(3, -4), &GuardFacts::default(), 0).unwrap();
        assert_eq!((c.cost, c.cost_test, c.cost_paid()), (3, 0, 3));
    }

    #[test]
    fn only_a_pending_verification_is_refunded() {
        let charged = Charged {
            cost: 5,
            cost_test: 2,
        };
        // (paid credits, test credits) given back to a pending verification
        // with this charge once it is found undeliverable; `None` if it
        // keeps the charge.
        let refund_of_pending = |charged| match undeliverable(VerificationState::Pending, charged) {
            Undeliverable::FailAndRefund(r) => Some((r.credits, r.test_credits)),
            Undeliverable::Keep => None,
        };
        assert_eq!(refund_of_pending(charged), Some((3, 2)));
        for s in [
            VerificationState::Completed,
            VerificationState::Failed,
            VerificationState::Cancelled,
        ] {
            assert_eq!(undeliverable(s, charged), Undeliverable::Keep);
        }
        // More test credits than the whole cost (a corrupt row): no more
        // than the cost goes back.
        let corrupt = Charged {
            cost: 2,
            cost_test: 7,
        };
        assert_eq!(refund_of_pending(corrupt), Some((0, 2)));
    }

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

    fn guard_policy() -> GuardPolicy {
        GuardPolicy {
            min_unconverted: 20,
            max_conversion_percent: 35,
            window_ms: fraud::HOUR_MS,
            block_ms: fraud::HOUR_MS,
            max_block_ms: fraud::DAY_MS,
        }
    }

    prop_compose! {
        fn any_kind()(k in 0u8..3, max in 0u32..4) -> SendKind {
            match k {
                0 => SendKind::Normal,
                1 => SendKind::OwnNumber { max_per_day: max },
                _ => SendKind::TestNumber,
            }
        }
    }

    prop_compose! {
        fn any_terms()(
            price in 0i64..50, kind in any_kind(),
            per_number_max in 0u32..8, wrong_code_max in 0u32..8,
            per_second in proptest::option::weighted(0.3, 0u32..4),
            verified_only in any::<bool>(), guard in any::<bool>(),
            hour_cap in 0u32..5, credit_cap in 0i64..60,
        ) -> SendTerms {
            SendTerms {
                price,
                kind,
                limits: SendLimits {
                    per_number_max,
                    per_number_window_ms: 60_000,
                    wrong_code_max,
                    wrong_code_window_ms: 120_000,
                    per_account_per_second: per_second,
                },
                fraud: FraudPolicy {
                    guard,
                    test_credits_verified_only: verified_only,
                    prefix: guard_policy(),
                    country: guard_policy(),
                    caps: Caps {
                        account_hour_messages: hour_cap,
                        account_day_credits: credit_cap,
                        ..Caps::default()
                    },
                },
            }
        }
    }

    prop_compose! {
        fn any_gate(now: i64)(
            // Weighted towards sends the gate lets through, so the later
            // stages are reached often; negative test balances (corruption)
            // included.
            account in proptest::option::weighted(0.9, (0i64..100, -20i64..100)),
            pending in proptest::bool::weighted(0.2),
            recent in proptest::option::of(0u32..5),
            number_block_at in proptest::option::weighted(0.15, (now - 60_000)..=now),
            wrong_block_at in proptest::option::weighted(0.15, (now - 120_000)..=now),
        ) -> GateFacts {
            GateFacts {
                account: account.map(|(credits, test_credits)| Balance { credits, test_credits }),
                pending,
                recent,
                number_block_at,
                wrong_block_at,
            }
        }
    }

    prop_compose! {
        fn any_guard(now: i64)(
            hour in 0u32..6, day_credits in 0i64..80,
            safe in any::<bool>(), sent in 0u32..40, completed in 0u32..40,
            blocked_until in proptest::option::of((now - 10)..(now + 10)),
            own_verified in any::<bool>(), own_sent_today in 0u32..5,
        ) -> GuardFacts {
            GuardFacts {
                fraud: fraud::SendFacts {
                    price: 0,
                    account_hour: Usage { messages: hour, credits: 0, oldest_ms: Some(now - 1) },
                    account_day: Usage { messages: hour, credits: day_credits, oldest_ms: Some(now - 1) },
                    safe_listed: safe,
                    prefix_block: blocked_until.map(|u| BlockRecord { until_ms: u, strikes: 1, reason: "r".into() }),
                    prefix: Conversion { sent, completed: completed.min(sent) },
                    ..fraud::SendFacts::default()
                },
                own_verified,
                own_sent_today,
            }
        }
    }

    const NOW: i64 = 10_000_000;

    proptest! {
        /// Whatever the facts: the balance never goes negative, the price is
        /// paid exactly once (test credits first, by one payer: the
        /// account's two balances and nothing else), a refund returns
        /// exactly the charge, and [`gate`]'s refusals are [`decide`]'s.
        #[test]
        fn sends_are_paid_once_and_never_overdraw(
            mut t in any_terms(), facts in any_gate(NOW), mut g in any_guard(NOW),
        ) {
            g.fraud.price = t.price;
            t.fraud.caps.account_day_credits = t.fraud.caps.account_day_credits.max(0);
            let decided = decide(&t, &facts, &g, NOW);
            if let Err(r) = gate(&t, &facts, NOW) {
                prop_assert_eq!(decided, Err(r));
                return Ok(());
            }
            let b = facts.account.expect("gate let a missing account through");
            prop_assert!(!facts.pending);
            match decided {
                Ok(c) => {
                    let price = if t.kind == SendKind::TestNumber { 0 } else { t.price };
                    prop_assert_eq!(c.cost, price);
                    prop_assert!(c.cost_test >= 0 && c.cost_paid() >= 0);
                    prop_assert!(b.credits - c.cost_paid() >= 0, "paid credits overdrawn");
                    prop_assert!(b.test_credits.max(0) - c.cost_test >= 0, "test credits overdrawn");
                    // Test credits first: paid credits pay only what test
                    // credits could not (or may not).
                    if c.cost_paid() > 0 && t.kind != SendKind::TestNumber {
                        let usable = !t.fraud.test_credits_verified_only
                            || matches!(t.kind, SendKind::OwnNumber { .. })
                            || g.own_verified;
                        prop_assert!(!usable || c.cost_test == b.test_credits.max(0));
                    }
                    prop_assert_eq!(c.counted, t.kind != SendKind::TestNumber && !g.fraud.safe_listed);
                    // The refund of an undelivered send restores the balance.
                    let Undeliverable::FailAndRefund(r) = undeliverable(
                        VerificationState::Pending,
                        Charged { cost: c.cost, cost_test: c.cost_test },
                    ) else {
                        return Err(TestCaseError::fail("a pending verification kept its charge"));
                    };
                    prop_assert_eq!(b.credits - c.cost_paid() + r.credits, b.credits);
                    prop_assert_eq!(b.test_credits - c.cost_test + r.test_credits, b.test_credits);
                }
                Err(Refused::InsufficientBalance | Refused::TestCreditsRestricted) => {
                    prop_assert!(t.kind != SendKind::TestNumber);
                    prop_assert!(b.credits + b.test_credits.max(0) < t.price || b.credits < t.price);
                }
                Err(Refused::Fraud(r)) => {
                    prop_assert!(t.kind != SendKind::TestNumber);
                    prop_assert!(r.until_ms > NOW);
                }
                Err(Refused::Block(bl)) => {
                    prop_assert!(t.kind != SendKind::TestNumber && !g.fraud.safe_listed);
                    prop_assert!(bl.until_ms > NOW);
                }
                Err(Refused::RateLimited { wait_ms }) => {
                    let own_spent = matches!(
                        t.kind,
                        SendKind::OwnNumber { max_per_day } if g.own_sent_today >= max_per_day
                    );
                    prop_assert!(own_spent, "rate-limited past the gate");
                    prop_assert_eq!(wait_ms, OWN_NUMBER_WAIT_MS);
                }
                Err(other @ (Refused::AccountUnavailable | Refused::AlreadyPending)) => {
                    return Err(TestCaseError::fail(format!("{other:?} after the gate passed")));
                }
            }
        }

        /// Rate-limit refusals always lie in the future, and never after
        /// the window that caused them.
        #[test]
        fn rate_limit_waits_are_positive_and_bounded(
            t in any_terms(), facts in any_gate(NOW),
        ) {
            if let Err(Refused::RateLimited { wait_ms }) = gate(&t, &facts, NOW) {
                prop_assert!(wait_ms >= 0);
                prop_assert!(wait_ms <= t.limits.per_number_window_ms.max(t.limits.wrong_code_window_ms).max(1000));
            }
        }

        /// A refund is exactly the charge as it was split, and only once:
        /// any state but pending keeps everything.
        #[test]
        fn refunds_return_the_charge(cost in 0i64..1000, test in 0i64..1000, state in 0u8..4) {
            let cost_test = test.min(cost);
            let state = [
                VerificationState::Pending,
                VerificationState::Completed,
                VerificationState::Failed,
                VerificationState::Cancelled,
            ][usize::from(state)];
            match undeliverable(state, Charged { cost, cost_test }) {
                Undeliverable::FailAndRefund(r) => {
                    prop_assert_eq!(state, VerificationState::Pending);
                    prop_assert_eq!((r.credits, r.test_credits), (cost - cost_test, cost_test));
                }
                Undeliverable::Keep => prop_assert!(state != VerificationState::Pending),
            }
        }
    }
}
