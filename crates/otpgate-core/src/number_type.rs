//! A national number's type (mobile, fixed-line, premium-rate, …) by
//! libphonenumber's metadata, decided exactly as the `phonenumber` crate's
//! `PhoneNumber::number_type` decides it, but with each dialing code's
//! patterns compiled once into anchored regexes.
//!
//! Why not the crate's own: every send asks for the type (validity and the
//! fraud guard's "mobile only" both come from it), and the crate matches
//! each of up to a dozen patterns through one process-wide regex cache,
//! which takes a global lock and hashes the whole pattern text (hundreds of
//! characters) with SipHash on every lookup, then searches the number
//! unanchored from every position. Under the send benchmark that was about
//! 6% of the server's CPU. The rules here are the crate's, step for step
//! (`validator::source_for` and `validator::number_type`), and a test
//! checks that both agree on numbers of every dialing code.
//!
//! What it holds: the compiled patterns of each dialing code asked about,
//! kept for the life of the process. The metadata has about 215 codes, so
//! that is bounded whatever numbers a caller sends: all of them together
//! took 11 MB and 74 ms to compile (one code, +91, well under 1 MB; +1,
//! with its 25 regions, 132 kB).

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex, PoisonError};

use phonenumber::Type;
use phonenumber::metadata::{DATABASE, Descriptor, Metadata};
use regex::{Regex, RegexBuilder};

/// One pattern of the metadata, with the lengths it allows.
struct Pattern {
    /// Empty means any length (the metadata gives none).
    lengths: Vec<u16>,
    /// The crate's pattern, matched from the first digit.
    re: Regex,
}

impl Pattern {
    fn of(d: &Descriptor) -> Option<Self> {
        Some(Self {
            lengths: d.possible_length().to_vec(),
            re: anchored(d.national_number().as_str())?,
        })
    }

    /// The crate's `Descriptor::is_match`: a length it allows, and a match
    /// that starts at the first digit (not necessarily the whole number).
    fn is_match(&self, value: &str) -> bool {
        let len = u16::try_from(value.len()).unwrap_or(u16::MAX);
        (self.lengths.is_empty() || self.lengths.contains(&len)) && self.re.is_match(value)
    }
}

/// Compiles `pattern` as the crate does (whitespace ignored), anchored at
/// the start. A match the crate's unanchored search finds at position 0 is
/// exactly a match of the anchored one: the leftmost match starts at 0 if
/// any match does. The pattern sits on lines of its own so that a `#` in it
/// (a comment, with whitespace ignored) could not swallow the closing group.
///
/// Without Unicode: `\d` is then `[0-9]`, the same on the ASCII digits this
/// is only ever given, and the compiled patterns take about a seventh of the
/// memory (with Unicode, every code's took over 100 MB).
fn anchored(pattern: &str) -> Option<Regex> {
    RegexBuilder::new(&format!("^(?:\n{pattern}\n)"))
        .ignore_whitespace(true)
        .unicode(false)
        .build()
        .ok()
}

/// One region's patterns, in the order `number_type` tries them.
struct Region {
    /// The region's leading digits, which pick it among the regions sharing
    /// a dialing code (`None`: decided by its number types instead).
    leading: Option<Regex>,
    general: Option<Pattern>,
    /// Premium-rate to voicemail, each returned as soon as it matches.
    special: Vec<(Type, Pattern)>,
    fixed_line: Option<Pattern>,
    mobile: Option<Pattern>,
    /// Fixed-line and mobile numbers share one pattern (the crate compares
    /// the pattern texts): a fixed-line match is then "fixed line or mobile".
    same_fixed_and_mobile: bool,
}

impl Region {
    fn of(meta: &Metadata) -> Self {
        let d = meta.descriptors();
        let special = [
            (Type::PremiumRate, d.premium_rate()),
            (Type::TollFree, d.toll_free()),
            (Type::SharedCost, d.shared_cost()),
            (Type::Voip, d.voip()),
            (Type::PersonalNumber, d.personal_number()),
            (Type::Pager, d.pager()),
            (Type::Uan, d.uan()),
            (Type::Voicemail, d.voicemail()),
        ]
        .into_iter()
        .filter_map(|(t, d)| Some((t, Pattern::of(d?)?)))
        .collect();
        Self {
            leading: meta.leading_digits().and_then(|l| anchored(l.as_str())),
            general: Pattern::of(d.general()),
            special,
            fixed_line: d.fixed_line().and_then(Pattern::of),
            mobile: d.mobile().and_then(Pattern::of),
            same_fixed_and_mobile: d.fixed_line().map(|f| f.national_number().as_str())
                == d.mobile().map(|m| m.national_number().as_str()),
        }
    }

    /// The crate's `validator::number_type` for this region.
    fn number_type(&self, value: &str) -> Type {
        if !self.general.as_ref().is_some_and(|g| g.is_match(value)) {
            return Type::Unknown;
        }
        if let Some((t, _)) = self.special.iter().find(|(_, p)| p.is_match(value)) {
            return *t;
        }
        let mobile = |v| self.mobile.as_ref().is_some_and(|m| m.is_match(v));
        if self.fixed_line.as_ref().is_some_and(|f| f.is_match(value)) {
            if self.same_fixed_and_mobile || mobile(value) {
                return Type::FixedLineOrMobile;
            }
            return Type::FixedLine;
        }
        if mobile(value) {
            return Type::Mobile;
        }
        Type::Unknown
    }
}

/// The regions of one dialing code, in the metadata's order.
enum Code {
    /// One region (or a non-geographic code): its type is that region's.
    One(Box<Region>),
    /// Several regions (+1, +7, +44, …): the first whose leading digits
    /// match, or, without leading digits, that knows the number's type.
    /// `None` stands for a region the crate could not pick either.
    Many(Vec<Option<Region>>),
}

impl Code {
    fn of(code: u16) -> Option<Self> {
        let regions = DATABASE.region(&code)?;
        if let [only] = regions.as_slice() {
            // The crate's `source_for`: "001" is a non-geographic code,
            // whose metadata is found by the code itself.
            let meta = if *only == "001" {
                DATABASE.by_code(&code)?.into_iter().next()?
            } else {
                // A region id the crate cannot parse is a source it does
                // not find: no type.
                only.parse::<phonenumber::country::Id>().ok()?;
                DATABASE.by_id(*only)?
            };
            return Some(Self::One(Box::new(Region::of(meta))));
        }
        Some(Self::Many(
            regions
                .iter()
                .map(|r| {
                    r.parse::<phonenumber::country::Id>().ok()?;
                    DATABASE.by_id(*r).map(Region::of)
                })
                .collect(),
        ))
    }

    fn number_type(&self, value: &str) -> Type {
        match self {
            Self::One(r) => r.number_type(value),
            Self::Many(regions) => {
                for region in regions {
                    let Some(r) = region else {
                        return Type::Unknown;
                    };
                    // Picked by its leading digits, the region's type is
                    // the answer even if unknown; without them, a known
                    // type both picks it and is the answer.
                    match &r.leading {
                        Some(l) if l.is_match(value) => return r.number_type(value),
                        Some(_) => {}
                        None => match r.number_type(value) {
                            Type::Unknown => {}
                            t => return t,
                        },
                    }
                }
                Type::Unknown
            }
        }
    }
}

/// Each dialing code's compiled patterns, built on first use.
static CODES: LazyLock<Mutex<HashMap<u16, Option<Arc<Code>>>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

/// The type of national number `value` (digits, without the zeros the
/// crate keeps apart) under dialing code `code`, as
/// `phonenumber::PhoneNumber::number_type` gives it.
pub(crate) fn of(code: u16, value: &str) -> Type {
    let table = {
        let mut codes = CODES.lock().unwrap_or_else(PoisonError::into_inner);
        // Compiling under the lock: a code is compiled once, and the first
        // number of a code waits for it either way.
        codes
            .entry(code)
            .or_insert_with(|| Code::of(code).map(Arc::new))
            .clone()
    };
    table.map_or(Type::Unknown, |t| t.number_type(value))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Every dialing code the metadata knows.
    fn codes() -> Vec<u16> {
        let mut v: Vec<u16> = (1..1000).filter(|c| DATABASE.region(c).is_some()).collect();
        v.dedup();
        v
    }

    /// Parses `+{code}{digits}` with the crate and asks both for the type
    /// of what it parsed: `None` when the crate does not parse it.
    fn both(code: u16, digits: &str) -> Option<(Type, Type)> {
        let p = phonenumber::parse(None, format!("+{code}{digits}")).ok()?;
        let national = p.national().value().to_string();
        Some((of(p.code().value(), &national), p.number_type(&DATABASE)))
    }

    #[test]
    fn every_codes_example_numbers_get_the_crates_type() {
        let (mut checked, mut known) = (0, 0);
        for (code, example) in examples() {
            if let Some((ours, theirs)) = both(code, &example) {
                assert_eq!(ours, theirs, "+{code} {example}");
                checked += 1;
                known += usize::from(ours != Type::Unknown);
            }
        }
        // Hundreds of regions, most with several examples; and examples are
        // valid numbers, so agreeing on "unknown" alone would not pass.
        assert!(checked > 1000, "only {checked} examples checked");
        assert!(known > 1000, "only {known} examples of a known type");
    }

    /// Every example number of the metadata, by dialing code.
    fn examples() -> Vec<(u16, String)> {
        let mut v = Vec::new();
        for code in codes() {
            for meta in DATABASE.by_code(&code).unwrap_or_default() {
                let d = meta.descriptors();
                let all = [
                    Some(d.general()),
                    d.fixed_line(),
                    d.mobile(),
                    d.toll_free(),
                    d.premium_rate(),
                    d.shared_cost(),
                    d.personal_number(),
                    d.voip(),
                    d.pager(),
                    d.uan(),
                    d.voicemail(),
                ];
                v.extend(
                    all.into_iter()
                        .flatten()
                        .filter_map(Descriptor::example)
                        .map(|e| (code, e.to_owned())),
                );
            }
        }
        v
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(400))]
        /// Example numbers with their last digits changed, one digit added
        /// or one dropped: mostly valid numbers, of every type, and some
        /// just outside a pattern or a length.
        #[test]
        fn numbers_near_the_examples_get_the_crates_type(
            i in 0usize..100_000,
            tail in "[0-9]{0,4}",
            cut in 0usize..5,
        ) {
            static ALL: LazyLock<Vec<(u16, String)>> = LazyLock::new(examples);
            let (code, example) = &ALL[i % ALL.len()];
            let keep = example.len().saturating_sub(cut);
            let value = format!("{}{tail}", &example[..keep]);
            if let Some((ours, theirs)) = both(*code, &value) {
                prop_assert_eq!(ours, theirs, "+{} {}", code, value);
            }
        }

        /// Random digits under every code: the same type as the crate's,
        /// including `Unknown` for the many that are no valid number.
        #[test]
        fn random_numbers_get_the_crates_type(
            i in 0usize..1000,
            value in "[1-9][0-9]{3,13}",
        ) {
            static ALL: LazyLock<Vec<u16>> = LazyLock::new(codes);
            let code = ALL[i % ALL.len()];
            if let Some((ours, theirs)) = both(code, &value) {
                prop_assert_eq!(ours, theirs, "+{} {}", code, value);
            }
        }
    }
}
