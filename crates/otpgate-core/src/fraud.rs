//! Fraud defence rules (SMS pumping, bill shock), decided once here and
//! applied by both store backends ("rules once, SQL twice"): each backend
//! gathers the [`SendFacts`] of a send inside its transaction and applies the
//! [`SendVerdict`] of [`decide_send`]; the charge follows [`charge`].
//!
//! The defences, in the order a send meets them:
//! 1. caps per account per hour and per day (messages and credits) and per
//!    destination number across all accounts per day: bill shock;
//! 2. active blocks of the destination's prefix (the number without its
//!    last digits) or of the (account, country) pair;
//! 3. the conversion guard: a prefix or (account, country) whose
//!    unconverted sends (sent and not completed) in the window reach a
//!    threshold while its conversion (completed ÷ sent) is below a floor is
//!    blocked now, for a period that doubles on each repeat;
//! 4. test credits pay only for the account's own verified numbers.
//!
//! A safe-listed destination skips 2 and 3, never 1.

use std::fmt;

/// The type of a number, as libphonenumber's metadata tells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NumberKind {
    Mobile,
    /// The numbering plan cannot tell fixed from mobile (the whole of +1,
    /// and a few others). Accepted by default: refusing it would refuse
    /// every number in the US and Canada.
    FixedLineOrMobile,
    FixedLine,
    TollFree,
    PremiumRate,
    SharedCost,
    PersonalNumber,
    Voip,
    Pager,
    Uan,
    Voicemail,
    Unknown,
}

impl NumberKind {
    pub const ALL: [NumberKind; 12] = [
        Self::Mobile,
        Self::FixedLineOrMobile,
        Self::FixedLine,
        Self::TollFree,
        Self::PremiumRate,
        Self::SharedCost,
        Self::PersonalNumber,
        Self::Voip,
        Self::Pager,
        Self::Uan,
        Self::Voicemail,
        Self::Unknown,
    ];

    /// The name used in configuration (`number_types` of a route).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Mobile => "mobile",
            Self::FixedLineOrMobile => "fixed_line_or_mobile",
            Self::FixedLine => "fixed_line",
            Self::TollFree => "toll_free",
            Self::PremiumRate => "premium_rate",
            Self::SharedCost => "shared_cost",
            Self::PersonalNumber => "personal_number",
            Self::Voip => "voip",
            Self::Pager => "pager",
            Self::Uan => "uan",
            Self::Voicemail => "voicemail",
            Self::Unknown => "unknown",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|k| k.as_str().eq_ignore_ascii_case(s.trim()))
    }

    /// Whether a send to this type goes out without a route opting in.
    pub fn accepted_by_default(self) -> bool {
        matches!(self, Self::Mobile | Self::FixedLineOrMobile)
    }

    pub(crate) fn from_lib(t: phonenumber::Type) -> Self {
        use phonenumber::Type as T;
        match t {
            T::Mobile => Self::Mobile,
            T::FixedLineOrMobile => Self::FixedLineOrMobile,
            T::FixedLine => Self::FixedLine,
            T::TollFree => Self::TollFree,
            T::PremiumRate => Self::PremiumRate,
            T::SharedCost => Self::SharedCost,
            T::PersonalNumber => Self::PersonalNumber,
            T::Voip => Self::Voip,
            T::Pager => Self::Pager,
            T::Uan => Self::Uan,
            T::Voicemail => Self::Voicemail,
            _ => Self::Unknown,
        }
    }
}

impl fmt::Display for NumberKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.as_str().replace('_', "-"))
    }
}

/// The destination prefix the conversion guard counts by: the E.164 digits
/// without their last `strip` digits, but never shorter than the dialing
/// code plus one digit (a whole country is the other guard's business).
pub fn prefix_of(e164_digits: &str, country_code: u16, strip: u32) -> String {
    let cc_len = country_code.to_string().len();
    let keep = e164_digits
        .len()
        .saturating_sub(usize::try_from(strip).unwrap_or(usize::MAX))
        .max(cc_len + 1)
        .min(e164_digits.len());
    e164_digits[..keep].to_owned()
}

/// What a block covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BlockScope {
    /// A destination prefix, across all accounts (key: the prefix digits).
    Prefix,
    /// One account's sends to one country (key: `CUSTOMER:CC`).
    Country,
}

impl BlockScope {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Prefix => "prefix",
            Self::Country => "country",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "prefix" => Some(Self::Prefix),
            "country" => Some(Self::Country),
            _ => None,
        }
    }
}

/// The key of an (account, country) block.
pub fn country_key(customer: &str, country_code: u16) -> String {
    format!("{customer}:{country_code}")
}

/// Sends and completions of one prefix or (account, country) in the
/// guard's window (counted from the end of its last block, if later).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Conversion {
    pub sent: u32,
    pub completed: u32,
}

impl Conversion {
    pub fn unconverted(self) -> u32 {
        self.sent.saturating_sub(self.completed)
    }

    /// Completed ÷ sent, in percent (100 with no sends).
    pub fn percent(self) -> u32 {
        if self.sent == 0 {
            100
        } else {
            u32::try_from(u64::from(self.completed.min(self.sent)) * 100 / u64::from(self.sent))
                .unwrap_or(100)
        }
    }
}

/// The stored block of a key, active or not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockRecord {
    /// The block holds until here (ms); lifting sets it to the lift time.
    pub until_ms: i64,
    /// Blocks of this key so far (its length doubles with each).
    pub strikes: u32,
    pub reason: String,
}

/// One guard's thresholds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuardPolicy {
    /// Block once this many sends in the window are unconverted…
    pub min_unconverted: u32,
    /// …while fewer than this percentage of them converted.
    pub max_conversion_percent: u32,
    /// The sliding window sends are counted over.
    pub window_ms: i64,
    /// The first block's length; each repeat doubles it…
    pub block_ms: i64,
    /// …up to this.
    pub max_block_ms: i64,
}

/// Caps; 0 turns one off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Caps {
    pub account_hour_messages: u32,
    pub account_day_messages: u32,
    pub account_hour_credits: i64,
    pub account_day_credits: i64,
    /// Sends to one number across all accounts per day.
    pub destination_day_messages: u32,
}

// What [`decide_send`] weighs: a store reads the sends a cap counts only
// while that cap is on, so a cap that is off costs a send nothing.
impl Caps {
    /// Whether either of the account's hourly caps is on.
    pub fn account_hour_on(&self) -> bool {
        self.account_hour_messages > 0 || self.account_hour_credits > 0
    }

    /// Whether either of the account's daily caps is on.
    pub fn account_day_on(&self) -> bool {
        self.account_day_messages > 0 || self.account_day_credits > 0
    }

    /// Whether the cap on one number's sends across accounts is on.
    pub fn destination_day_on(&self) -> bool {
        self.destination_day_messages > 0
    }
}

/// Everything [`decide_send`] weighs, from the server's settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FraudPolicy {
    /// Off: no conversion guard and no blocks (caps still apply).
    pub guard: bool,
    /// Test credits pay only for the account's own verified numbers (and
    /// own-number verifications); otherwise for any send, as before.
    pub test_credits_verified_only: bool,
    pub prefix: GuardPolicy,
    pub country: GuardPolicy,
    pub caps: Caps,
}

impl FraudPolicy {
    /// No defence at all: for tools and tests about something else.
    pub fn off() -> Self {
        let guard = GuardPolicy {
            min_unconverted: 0,
            max_conversion_percent: 0,
            window_ms: HOUR_MS,
            block_ms: HOUR_MS,
            max_block_ms: HOUR_MS,
        };
        Self {
            guard: false,
            test_credits_verified_only: false,
            prefix: guard,
            country: guard,
            caps: Caps::default(),
        }
    }
}

/// Messages and credits an account spent in a window, and when the oldest
/// of those sends was made (for Retry-After).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub messages: u32,
    pub credits: i64,
    pub oldest_ms: Option<i64>,
}

pub const HOUR_MS: i64 = 3_600_000;
pub const DAY_MS: i64 = 86_400_000;

/// What a backend read inside a send's transaction.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SendFacts {
    /// What this send would cost.
    pub price: i64,
    pub account_hour: Usage,
    pub account_day: Usage,
    /// Sends to this destination by any account in the last day.
    pub destination_day: Usage,
    /// The destination is on the safe list (a number or a prefix of it).
    pub safe_listed: bool,
    pub prefix_block: Option<BlockRecord>,
    pub country_block: Option<BlockRecord>,
    pub prefix: Conversion,
    pub country: Conversion,
}

/// Why a send was refused with 800.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RefusalKind {
    AccountHourlyCap,
    AccountDailyCap,
    DestinationCap,
    PrefixBlocked,
    CountryBlocked,
}

impl RefusalKind {
    /// A short name for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::AccountHourlyCap => "account_hourly_cap",
            Self::AccountDailyCap => "account_daily_cap",
            Self::DestinationCap => "destination_cap",
            Self::PrefixBlocked => "prefix",
            Self::CountryBlocked => "country",
        }
    }
}

/// A refusal: nothing is charged or sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub kind: RefusalKind,
    /// When the send could go again (ms, absolute).
    pub until_ms: i64,
    pub reason: String,
}

/// A block to record (and this send refused by it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewBlock {
    pub scope: BlockScope,
    pub until_ms: i64,
    pub strikes: u32,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendVerdict {
    Allow,
    Refuse(Refusal),
    /// Record this block, refuse the send, keep the block even though the
    /// send is refused.
    Block(NewBlock),
}

fn cap_hit(used: Usage, window_ms: i64, now: i64) -> i64 {
    used.oldest_ms
        .map_or(now.saturating_add(window_ms), |o| {
            o.saturating_add(window_ms)
        })
        .max(now + 1)
}

/// Decides whether a send may go, by the module's order. Pure: the same
/// facts give the same verdict on every node and backend.
pub fn decide_send(facts: &SendFacts, policy: &FraudPolicy, now_ms: i64) -> SendVerdict {
    let caps = &policy.caps;
    let refuse = |kind, until_ms, reason: String| {
        SendVerdict::Refuse(Refusal {
            kind,
            until_ms,
            reason,
        })
    };
    // The account's two windows, by one rule: the message cap is reached, or
    // this send's price would pass the credit cap (0 turns either off).
    #[rustfmt::skip]
    let account_windows = [
        (RefusalKind::AccountHourlyCap, "hourly", "the last hour", facts.account_hour, HOUR_MS,
         caps.account_hour_messages, caps.account_hour_credits),
        (RefusalKind::AccountDailyCap, "daily", "the last 24 h", facts.account_day, DAY_MS,
         caps.account_day_messages, caps.account_day_credits),
    ];
    for (kind, cap, period, used, window_ms, max_messages, max_credits) in account_windows {
        if (max_messages > 0 && used.messages >= max_messages)
            || (max_credits > 0 && used.credits.saturating_add(facts.price) > max_credits)
        {
            return refuse(
                kind,
                cap_hit(used, window_ms, now_ms),
                format!(
                    "the account's {cap} cap is reached ({} messages / {} credits in {period}; caps {max_messages} / {max_credits})",
                    used.messages, used.credits
                ),
            );
        }
    }
    let n = facts.destination_day;
    if caps.destination_day_on() && n.messages >= caps.destination_day_messages {
        return refuse(
            RefusalKind::DestinationCap,
            cap_hit(n, DAY_MS, now_ms),
            format!(
                "this number received {} codes in the last 24 h, the most any number gets",
                n.messages
            ),
        );
    }
    if !policy.guard || facts.safe_listed {
        return SendVerdict::Allow;
    }
    for (scope, kind, block) in [
        (
            BlockScope::Prefix,
            RefusalKind::PrefixBlocked,
            &facts.prefix_block,
        ),
        (
            BlockScope::Country,
            RefusalKind::CountryBlocked,
            &facts.country_block,
        ),
    ] {
        if let Some(b) = block
            && b.until_ms > now_ms
        {
            return refuse(kind, b.until_ms, blocked_text(scope, &b.reason));
        }
    }
    for (scope, guard, conv, block) in [
        (
            BlockScope::Prefix,
            &policy.prefix,
            facts.prefix,
            &facts.prefix_block,
        ),
        (
            BlockScope::Country,
            &policy.country,
            facts.country,
            &facts.country_block,
        ),
    ] {
        if guard.min_unconverted == 0 {
            continue;
        }
        if conv.unconverted() >= guard.min_unconverted
            && conv.percent() < guard.max_conversion_percent
        {
            // A repeat within the longest block's length counts as one;
            // after a quiet spell that long, the count starts afresh.
            let strikes = block
                .as_ref()
                .filter(|b| now_ms.saturating_sub(b.until_ms) < guard.max_block_ms)
                .map_or(0, |b| b.strikes)
                .saturating_add(1);
            let len = block_length(guard, strikes);
            let reason = format!(
                "{} of {} recent sends unconverted ({}% converted, below {}%)",
                conv.unconverted(),
                conv.sent,
                conv.percent(),
                guard.max_conversion_percent
            );
            return SendVerdict::Block(NewBlock {
                scope,
                until_ms: now_ms.saturating_add(len),
                strikes,
                reason,
            });
        }
    }
    SendVerdict::Allow
}

/// The client's `errorMessage` for a send refused by a block.
pub fn blocked_text(scope: BlockScope, reason: &str) -> String {
    let what = match scope {
        BlockScope::Prefix => "this number's prefix is blocked",
        BlockScope::Country => "this account's sends to this country are blocked",
    };
    format!("fraud guard: {what} ({reason}); the server's operator can lift it")
}

/// The length of block number `strikes` (1 for the first).
pub fn block_length(guard: &GuardPolicy, strikes: u32) -> i64 {
    let doublings = strikes.saturating_sub(1).min(40);
    guard
        .block_ms
        .max(1)
        .saturating_mul(1i64 << doublings)
        .min(guard.max_block_ms.max(guard.block_ms.max(1)))
}

/// Why a send cannot be paid for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChargeRefusal {
    /// Paid and usable test credits together do not cover it (402).
    Insufficient,
    /// Only test credits would cover it, and they pay only for the
    /// account's own verified numbers (402 with that reason).
    TestCreditsRestricted,
}

/// Splits `price` into (cost, of which from test credits): test credits
/// first (contract §5), but only where `test_usable`.
///
/// # Errors
/// [`ChargeRefusal`] when the balance does not cover it.
pub fn charge(
    price: i64,
    credits: i64,
    test_credits: i64,
    test_usable: bool,
) -> Result<(i64, i64), ChargeRefusal> {
    let price = price.max(0);
    let from_test = if test_usable {
        test_credits.clamp(0, price)
    } else {
        0
    };
    if credits >= price - from_test {
        return Ok((price, from_test));
    }
    if !test_usable && test_credits > 0 {
        return Err(ChargeRefusal::TestCreditsRestricted);
    }
    Err(ChargeRefusal::Insufficient)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn guard(min: u32) -> GuardPolicy {
        GuardPolicy {
            min_unconverted: min,
            max_conversion_percent: 35,
            window_ms: HOUR_MS,
            block_ms: HOUR_MS,
            max_block_ms: 7 * DAY_MS,
        }
    }

    fn policy() -> FraudPolicy {
        FraudPolicy {
            guard: true,
            test_credits_verified_only: true,
            prefix: guard(20),
            country: guard(100),
            caps: Caps {
                account_hour_messages: 1000,
                account_day_messages: 10_000,
                account_hour_credits: 0,
                account_day_credits: 0,
                destination_day_messages: 25,
            },
        }
    }

    #[test]
    fn prefixes_drop_the_last_digits_but_keep_the_country() {
        assert_eq!(prefix_of("919876543210", 91, 4), "91987654");
        assert_eq!(prefix_of("919876543210", 91, 0), "919876543210");
        assert_eq!(prefix_of("4412", 44, 4), "441");
        assert_eq!(prefix_of("12", 1, 40), "12");
    }

    #[test]
    fn a_prefix_with_many_unconverted_sends_is_blocked_and_repeats_grow() {
        let mut f = SendFacts {
            price: 1,
            prefix: Conversion {
                sent: 20,
                completed: 0,
            },
            ..SendFacts::default()
        };
        let SendVerdict::Block(b) = decide_send(&f, &policy(), 0) else {
            panic!("not blocked")
        };
        assert_eq!(
            (b.scope, b.strikes, b.until_ms),
            (BlockScope::Prefix, 1, HOUR_MS)
        );
        f.prefix_block = Some(BlockRecord {
            until_ms: HOUR_MS,
            strikes: 1,
            reason: b.reason.clone(),
        });
        let SendVerdict::Refuse(r) = decide_send(&f, &policy(), 10) else {
            panic!("block not applied")
        };
        assert_eq!((r.kind, r.until_ms), (RefusalKind::PrefixBlocked, HOUR_MS));
        let SendVerdict::Block(b) = decide_send(&f, &policy(), HOUR_MS) else {
            panic!("not blocked again")
        };
        assert_eq!((b.strikes, b.until_ms), (2, 3 * HOUR_MS));
        f.safe_listed = true;
        assert_eq!(decide_send(&f, &policy(), 10), SendVerdict::Allow);
    }

    #[test]
    fn caps_refuse_until_the_oldest_send_leaves_the_window() {
        let f = SendFacts {
            price: 1,
            account_hour: Usage {
                messages: 1000,
                credits: 1000,
                oldest_ms: Some(500),
            },
            ..SendFacts::default()
        };
        let SendVerdict::Refuse(r) = decide_send(&f, &policy(), 1000) else {
            panic!("cap not applied")
        };
        assert_eq!(
            (r.kind, r.until_ms),
            (RefusalKind::AccountHourlyCap, 500 + HOUR_MS)
        );
    }

    #[test]
    fn test_credits_pay_only_where_usable() {
        assert_eq!(charge(1, 0, 5, true), Ok((1, 1)));
        assert_eq!(
            charge(1, 0, 5, false),
            Err(ChargeRefusal::TestCreditsRestricted)
        );
        assert_eq!(charge(1, 3, 5, false), Ok((1, 0)));
        assert_eq!(charge(3, 1, 1, true), Err(ChargeRefusal::Insufficient));
        assert_eq!(charge(0, 0, 0, false), Ok((0, 0)));
    }

    #[test]
    fn number_kinds_round_trip_their_names() {
        for k in NumberKind::ALL {
            assert_eq!(NumberKind::parse(k.as_str()), Some(k));
        }
        assert!(NumberKind::FixedLineOrMobile.accepted_by_default());
        assert!(!NumberKind::PremiumRate.accepted_by_default());
    }

    proptest! {
        /// Whatever the facts: an allowed send is under every cap and, unless
        /// safe-listed, under the guard's thresholds; a refusal or block
        /// always lies in the future; a safe-listed send is never blocked.
        #[test]
        fn verdicts_respect_caps_and_thresholds(
            hour in 0u32..1200, day in 0u32..12_000, dest in 0u32..30,
            sent in 0u32..200, completed in 0u32..200,
            csent in 0u32..300, ccompleted in 0u32..300,
            safe in any::<bool>(), now in 0i64..10_000_000,
            blocked_until in proptest::option::of(0i64..20_000_000),
        ) {
            let p = policy();
            let facts = SendFacts {
                price: 1,
                account_hour: Usage { messages: hour, credits: i64::from(hour), oldest_ms: Some(now - 10) },
                account_day: Usage { messages: day.max(hour), credits: i64::from(day.max(hour)), oldest_ms: Some(now - 10) },
                destination_day: Usage { messages: dest, credits: 0, oldest_ms: Some(now - 10) },
                safe_listed: safe,
                prefix_block: blocked_until.map(|u| BlockRecord { until_ms: u, strikes: 1, reason: "r".into() }),
                country_block: None,
                prefix: Conversion { sent, completed: completed.min(sent) },
                country: Conversion { sent: csent, completed: ccompleted.min(csent) },
            };
            match decide_send(&facts, &p, now) {
                SendVerdict::Allow => {
                    prop_assert!(hour < 1000 && day.max(hour) < 10_000 && dest < 25);
                    if !safe {
                        prop_assert!(blocked_until.is_none_or(|u| u <= now));
                        let c = facts.prefix;
                        prop_assert!(c.unconverted() < 20 || c.percent() >= 35);
                        let c = facts.country;
                        prop_assert!(c.unconverted() < 100 || c.percent() >= 35);
                    }
                }
                SendVerdict::Refuse(r) => prop_assert!(r.until_ms > now),
                SendVerdict::Block(b) => {
                    prop_assert!(!safe);
                    prop_assert!(b.until_ms > now && b.strikes >= 1);
                }
            }
        }
    }
}
