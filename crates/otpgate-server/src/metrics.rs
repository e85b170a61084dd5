//! Counters of this process, one function per event, for the `/metrics`
//! exposition to read. Plain atomics: counting must never slow a send or
//! fail it. Counts are per node (a scraper sums them); the blocks
//! themselves live in the store and hold across nodes.

use std::sync::atomic::{AtomicU64, Ordering};

use otpgate_core::fraud::RefusalKind;

/// Sends refused by a fraud defence, by kind, in [`KINDS`] order.
static FRAUD_REFUSED: [AtomicU64; 5] = [const { AtomicU64::new(0) }; 5];
/// Blocks this node's sends triggered (and the store recorded), by scope:
/// prefix, country.
static FRAUD_BLOCKS: [AtomicU64; 2] = [const { AtomicU64::new(0) }; 2];
/// Sends refused for their number type (premium-rate, fixed-line, …).
static NUMBER_TYPE_REFUSED: AtomicU64 = AtomicU64::new(0);

/// The refusal kinds in the order [`fraud_refused_counts`] reports them.
pub const KINDS: [RefusalKind; 5] = [
    RefusalKind::AccountHourlyCap,
    RefusalKind::AccountDailyCap,
    RefusalKind::DestinationCap,
    RefusalKind::PrefixBlocked,
    RefusalKind::CountryBlocked,
];

fn index(kind: RefusalKind) -> usize {
    KINDS.iter().position(|k| *k == kind).unwrap_or(0)
}

/// A send was refused by a cap or an active block.
pub fn fraud_refused(kind: RefusalKind) {
    FRAUD_REFUSED[index(kind)].fetch_add(1, Ordering::Relaxed);
}

/// A send triggered a new block of `scope`.
pub fn fraud_block(scope: otpgate_core::fraud::BlockScope) {
    let i = match scope {
        otpgate_core::fraud::BlockScope::Prefix => 0,
        otpgate_core::fraud::BlockScope::Country => 1,
    };
    FRAUD_BLOCKS[i].fetch_add(1, Ordering::Relaxed);
}

/// A send was refused for its number type.
pub fn number_type_refused() {
    NUMBER_TYPE_REFUSED.fetch_add(1, Ordering::Relaxed);
}

/// (kind name, count) of refused sends, for the exposition.
pub fn fraud_refused_counts() -> Vec<(&'static str, u64)> {
    KINDS
        .iter()
        .map(|k| (k.as_str(), FRAUD_REFUSED[index(*k)].load(Ordering::Relaxed)))
        .collect()
}

/// (scope name, count) of blocks triggered here.
pub fn fraud_block_counts() -> [(&'static str, u64); 2] {
    [
        ("prefix", FRAUD_BLOCKS[0].load(Ordering::Relaxed)),
        ("country", FRAUD_BLOCKS[1].load(Ordering::Relaxed)),
    ]
}

pub fn number_type_refused_count() -> u64 {
    NUMBER_TYPE_REFUSED.load(Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_count_by_kind() {
        let before = fraud_refused_counts();
        fraud_refused(RefusalKind::PrefixBlocked);
        fraud_block(otpgate_core::fraud::BlockScope::Country);
        let after = fraud_refused_counts();
        let prefix = |v: &[(&str, u64)]| v.iter().find(|(k, _)| *k == "prefix").map(|x| x.1);
        assert_eq!(prefix(&after), prefix(&before).map(|n| n + 1));
        assert!(fraud_block_counts()[1].1 >= 1);
    }
}
