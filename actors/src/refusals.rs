//! Refusals of shoppers' campaign writes, counted by (campaign, code) in memory and
//! handed out as deltas: a node writes one row per pair it saw, once a second, instead
//! of one row per refusal, so a flash sale's refusal storm never becomes a hot row.

use std::collections::HashMap;

use uuid::Uuid;

/// Refusal counts not yet written. Bounded by campaigns × codes: a code is one of the
/// error answers' fixed `&'static str` codes, and a campaign is one the catalog knows.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RefusalTally {
    counts: HashMap<(Uuid, &'static str), i64>,
}

impl RefusalTally {
    /// Counts one refusal of `code` for `campaign`.
    pub fn record(&mut self, campaign: Uuid, code: &'static str) {
        *self.counts.entry((campaign, code)).or_insert(0) += 1;
    }

    /// The counts since the last take, sorted (so concurrent flushes of two nodes lock
    /// rows in one order), leaving the tally empty.
    pub fn take(&mut self) -> Vec<(Uuid, &'static str, i64)> {
        let mut out: Vec<_> = self
            .counts
            .drain()
            .map(|((campaign, code), n)| (campaign, code, n))
            .collect();
        out.sort_unstable();
        out
    }

    /// Puts back deltas whose write failed, so the next flush carries them.
    pub fn restore(&mut self, deltas: Vec<(Uuid, &'static str, i64)>) {
        for (campaign, code, n) in deltas {
            *self.counts.entry((campaign, code)).or_insert(0) += n;
        }
    }

    /// Whether nothing waits to be written.
    pub fn is_empty(&self) -> bool {
        self.counts.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn take_hands_out_each_pair_once_and_restore_keeps_a_failed_write() {
        // Guards against a refusal counted twice (a delta not cleared) or lost (a
        // failed flush dropping its deltas).
        let (a, b) = (Uuid::from_u128(1), Uuid::from_u128(2));
        let mut t = RefusalTally::default();
        t.record(b, "queued");
        t.record(a, "queued");
        t.record(a, "queued");
        t.record(a, "limit_exceeded");
        let first = t.take();
        assert_eq!(
            first,
            vec![(a, "limit_exceeded", 1), (a, "queued", 2), (b, "queued", 1)]
        );
        assert!(t.is_empty());
        assert!(t.take().is_empty());
        t.record(a, "queued");
        t.restore(first);
        assert_eq!(
            t.take(),
            vec![(a, "limit_exceeded", 1), (a, "queued", 3), (b, "queued", 1)]
        );
    }
}
