//! The waiting room's schedule: when each joiner's turn comes, as a pure function of
//! its place in the join order, the campaign start, the admission rate and the clock.
//!
//! Every node computes the same answer from the same numbers with its own clock, so
//! no node coordinates admissions and nothing but each joiner's slot needs storing:
//! slot `k` is admitted at `starts_at + k / rate` and has `window_ms` from then to
//! reserve, after which its turn lapses. Joiners take slots in the order they join
//! ([`Schedule::slot_for`]); one who joins when nobody waits takes the slot due at
//! that instant, so an empty room never makes a late joiner wait for elapsed slots.

/// How a campaign admits its waiting room.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Schedule {
    /// When the first joiner is admitted, Unix milliseconds: the campaign start.
    pub starts_at_ms: i64,
    /// Joiners admitted per second; positive.
    pub admit_per_second: i64,
    /// How long an admitted joiner may reserve before its turn lapses.
    pub window_ms: i64,
}

/// Where one joiner stands at a time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Standing {
    /// Joiners ahead of this one still waiting; 0 once admitted.
    pub position: i64,
    /// Whether its turn has come (it may have lapsed since).
    pub admitted: bool,
    /// When its turn came or will come, Unix milliseconds.
    pub admitted_at_ms: i64,
    /// When its turn lapses, Unix milliseconds.
    pub expires_at_ms: i64,
}

impl Standing {
    /// Whether it may reserve at `now_ms`: admitted and not lapsed.
    pub fn may_reserve(&self, now_ms: i64) -> bool {
        self.admitted && now_ms < self.expires_at_ms
    }

    /// Whether its turn lapsed by `now_ms`.
    pub fn lapsed(&self, now_ms: i64) -> bool {
        now_ms >= self.expires_at_ms
    }
}

/// What [`Schedule::assign`] gave a batch of joiners.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assigned<'s> {
    /// Each joiner's slot, in the batch's order.
    pub slots: Vec<i64>,
    /// The joiners that had no slot, with the slot each now takes, in order.
    pub new_sessions: Vec<(&'s str, i64)>,
    /// The first free slot after the batch.
    pub next_slot: i64,
}

impl Schedule {
    /// When the joiner of `rank` is admitted: the start plus `rank / rate` seconds,
    /// rounded up to the millisecond so no node admits early.
    pub fn admitted_at_ms(&self, rank: i64) -> i64 {
        let rate = self.admit_per_second.max(1);
        let offset = (i128::from(rank.max(0)) * 1000 + i128::from(rate) - 1) / i128::from(rate);
        self.starts_at_ms
            .saturating_add(i64::try_from(offset).unwrap_or(i64::MAX))
    }

    /// The slot of a joiner arriving at `joined_at_ms` when `next_slot` is the first
    /// free one: the next free slot, or the one due now if that has already passed
    /// (everyone earlier is then admitted, so the order holds).
    pub fn slot_for(&self, next_slot: i64, joined_at_ms: i64) -> i64 {
        next_slot.max(self.admitted_by(joined_at_ms) - 1).max(0)
    }

    /// Slots for a batch of joiners arriving at `joined_at_ms`, in their order, when
    /// `next_slot` is the first free one: a joiner that `existing` knows keeps its slot,
    /// a joiner named twice gets one slot, and each new one takes [`Self::slot_for`]
    /// in turn, exactly as if they had joined one by one.
    pub fn assign<'s>(
        &self,
        next_slot: i64,
        joined_at_ms: i64,
        joiners: &[&'s str],
        existing: impl Fn(&str) -> Option<i64>,
    ) -> Assigned<'s> {
        let mut next = next_slot;
        let mut fresh: Vec<(&'s str, i64)> = Vec::new();
        let slots = joiners
            .iter()
            .map(|&who| {
                if let Some(slot) = existing(who) {
                    return slot;
                }
                if let Some(&(_, slot)) = fresh.iter().find(|(s, _)| *s == who) {
                    return slot;
                }
                let slot = self.slot_for(next, joined_at_ms);
                next = slot + 1;
                fresh.push((who, slot));
                slot
            })
            .collect();
        Assigned {
            slots,
            new_sessions: fresh,
            next_slot: next,
        }
    }

    /// How many slots have been admitted by `now_ms` (lapsed ones included).
    pub fn admitted_by(&self, now_ms: i64) -> i64 {
        if now_ms < self.starts_at_ms {
            return 0;
        }
        let elapsed = i128::from(now_ms - self.starts_at_ms);
        let n = elapsed * i128::from(self.admit_per_second.max(1)) / 1000 + 1;
        i64::try_from(n).unwrap_or(i64::MAX)
    }

    /// Where the joiner in `slot` stands at `now_ms`. Slots below `slot` that are not
    /// yet admitted are all taken (a slot is skipped only when everyone before it is
    /// in), so the position is the count of earlier joiners still waiting.
    pub fn standing(&self, slot: i64, now_ms: i64) -> Standing {
        let admitted_at_ms = self.admitted_at_ms(slot);
        let admitted = now_ms >= admitted_at_ms;
        Standing {
            position: if admitted {
                0
            } else {
                slot - self.admitted_by(now_ms).min(slot)
            },
            admitted,
            admitted_at_ms,
            expires_at_ms: admitted_at_ms.saturating_add(self.window_ms),
        }
    }

    /// How many joiners still wait at `now_ms`, given the first free slot: every slot
    /// from the first not yet admitted up to it is taken.
    pub fn waiting(&self, next_slot: i64, now_ms: i64) -> i64 {
        (next_slot - self.admitted_by(now_ms)).max(0)
    }
}

/// One joiner of a campaign's queue, as a report sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Joiner {
    /// Its slot.
    pub slot: i64,
    /// When it joined, Unix milliseconds.
    pub joined_at_ms: i64,
    /// Whether its session ordered any of the campaign's SKUs in the window.
    pub ordered: bool,
}

/// A waiting room's numbers at one instant, for the merchant's report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueStats {
    /// Joiners whose turn has come (lapsed ones included).
    pub admitted: i64,
    /// Joiners still waiting.
    pub waiting: i64,
    /// Admitted joiners whose turn lapsed without an order.
    pub abandoned: i64,
    /// Median wait from joining to admission, milliseconds; `None` before anyone is in.
    pub wait_p50_ms: Option<i64>,
    /// 99th percentile of that wait.
    pub wait_p99_ms: Option<i64>,
}

/// The `p`-th percentile (0 to 100) of `sorted` by nearest rank: a value that occurred,
/// never an interpolation; `None` for no values.
pub fn percentile(sorted: &[i64], p: u32) -> Option<i64> {
    if sorted.is_empty() {
        return None;
    }
    let n = sorted.len();
    let rank = (n * p.min(100) as usize).div_ceil(100).max(1);
    sorted.get(rank - 1).copied()
}

impl Schedule {
    /// The room's numbers at `now_ms` from its joiners: admitted and waiting from the
    /// schedule alone (the same on every node), waits as each admitted joiner's
    /// admission time minus its join time (0 for one admitted on arrival).
    pub fn stats(&self, joiners: &[Joiner], now_ms: i64) -> QueueStats {
        let admitted_by = self.admitted_by(now_ms);
        let mut waits = Vec::new();
        let mut abandoned = 0;
        for j in joiners.iter().filter(|j| j.slot < admitted_by) {
            waits.push((self.admitted_at_ms(j.slot) - j.joined_at_ms).max(0));
            if !j.ordered && self.standing(j.slot, now_ms).lapsed(now_ms) {
                abandoned += 1;
            }
        }
        waits.sort_unstable();
        let admitted = i64::try_from(waits.len()).unwrap_or(i64::MAX);
        let joined = i64::try_from(joiners.len()).unwrap_or(i64::MAX);
        QueueStats {
            admitted,
            waiting: joined - admitted,
            abandoned,
            wait_p50_ms: percentile(&waits, 50),
            wait_p99_ms: percentile(&waits, 99),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Schedule = Schedule {
        starts_at_ms: 10_000,
        admit_per_second: 20,
        window_ms: 120_000,
    };

    #[test]
    fn joiners_are_admitted_in_rank_order_at_the_rate() {
        // Guards against an admission out of order or faster than the rate.
        let times: Vec<i64> = (0..100).map(|k| S.admitted_at_ms(k)).collect();
        assert_eq!(times[0], 10_000);
        assert_eq!(times[1], 10_050);
        assert_eq!(times[20], 11_000);
        assert!(times.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn a_batch_of_joins_gets_the_slots_of_joins_one_by_one() {
        // Guards against a batched join reordering joiners, giving a joiner two slots,
        // or moving one that had joined already.
        let known = |s: &str| (s == "old").then_some(3);
        let before = S.assign(7, 0, &["a", "old", "b", "a", "c"], known);
        assert_eq!(before.slots, vec![7, 3, 8, 7, 9]);
        assert_eq!(before.new_sessions, vec![("a", 7), ("b", 8), ("c", 9)]);
        assert_eq!(before.next_slot, 10);
        // Late to an empty room: the first takes the slot due now, the rest follow it,
        // as repeated `slot_for` would give.
        let late = 10_000 + 5_000;
        let batch = S.assign(2, late, &["x", "y"], |_| None);
        let first = S.slot_for(2, late);
        assert_eq!(batch.slots, vec![first, S.slot_for(first + 1, late)]);
        assert_eq!(batch.next_slot, first + 2);
    }

    #[test]
    fn nobody_is_admitted_before_the_start() {
        // Guards against early joiners getting in before the campaign opens.
        let s = S.standing(0, 9_999);
        assert!(!s.admitted);
        assert_eq!(s.position, 0);
        assert_eq!(S.standing(5, 9_999).position, 5);
        assert_eq!(S.waiting(7, 9_999), 7);
    }

    #[test]
    fn position_counts_earlier_joiners_still_waiting() {
        // Guards against a position that does not fall as earlier joiners go in.
        assert_eq!(S.standing(10, 10_000).position, 9);
        assert_eq!(S.standing(10, 10_100).position, 7);
        let s = S.standing(10, 10_500);
        assert!(s.admitted);
        assert_eq!(s.position, 0);
        assert_eq!(S.waiting(100, 10_500), 89);
    }

    #[test]
    fn joiners_before_the_start_take_slots_in_arrival_order() {
        // Guards against early joiners being reordered or bunched into one slot.
        assert_eq!(S.slot_for(0, 1_000), 0);
        assert_eq!(S.slot_for(1, 2_000), 1);
        assert_eq!(S.slot_for(2, 9_999), 2);
    }

    #[test]
    fn a_late_joiner_to_an_empty_room_is_admitted_at_once_and_keeps_its_window() {
        // Guards against a joiner arriving long after the start being handed a slot
        // whose window already ran out.
        let slot = S.slot_for(3, 70_000);
        assert!(slot > 3);
        let s = S.standing(slot, 70_000);
        assert!(s.may_reserve(70_000));
        assert!(s.expires_at_ms >= 70_000 + 120_000 - 50);
        // And the next joiner right behind it waits its turn.
        let next = S.slot_for(slot + 1, 70_000);
        assert_eq!(next, slot + 1);
        assert!(!S.standing(next, 70_000).admitted);
        assert_eq!(S.standing(next, 70_000).position, 0);
    }

    #[test]
    fn a_turn_lapses_after_its_window() {
        // Guards against an admitted joiner reserving forever.
        let s = S.standing(0, 10_000);
        assert!(s.may_reserve(129_999));
        assert!(!s.may_reserve(130_000));
        assert!(s.lapsed(130_000));
    }

    #[test]
    fn every_standing_agrees_with_the_admission_time() {
        // Guards against two nodes answering differently at the same instant.
        for rank in 0..200 {
            for now in (9_000..21_000).step_by(7) {
                let s = S.standing(rank, now);
                assert_eq!(s.admitted, now >= S.admitted_at_ms(rank));
                assert_eq!(s.admitted, rank < S.admitted_by(now));
            }
        }
    }
    #[test]
    fn percentiles_are_nearest_rank_values() {
        // Guards against an off-by-one rank (p99 of 100 values must be the 99th, not
        // the largest) and a panic on no values.
        let v: Vec<i64> = (1..=100).collect();
        assert_eq!(percentile(&v, 50), Some(50));
        assert_eq!(percentile(&v, 99), Some(99));
        assert_eq!(percentile(&v, 100), Some(100));
        assert_eq!(percentile(&[7], 99), Some(7));
        assert_eq!(percentile(&[1, 9], 50), Some(1));
        assert_eq!(percentile(&[], 50), None);
    }

    #[test]
    fn stats_count_waits_admissions_and_abandoned_turns() {
        // Guards against waits measured from the wrong end, a waiting joiner counted
        // as admitted, or an admitted joiner who ordered counted as abandoned.
        let joiners = [
            // Joined before the start: waits until 10_000 and 10_050.
            Joiner {
                slot: 0,
                joined_at_ms: 9_000,
                ordered: true,
            },
            Joiner {
                slot: 1,
                joined_at_ms: 9_500,
                ordered: false,
            },
            // Admitted the instant it joined.
            Joiner {
                slot: 2,
                joined_at_ms: 10_110,
                ordered: false,
            },
            // Still waiting at 10_120.
            Joiner {
                slot: 5,
                joined_at_ms: 10_100,
                ordered: false,
            },
        ];
        let at = S.stats(&joiners, 10_120);
        assert_eq!((at.admitted, at.waiting, at.abandoned), (3, 1, 0));
        // Waits 1_000, 550, 0 (slot 2 is due at 10_100, before its join).
        assert_eq!(at.wait_p50_ms, Some(550));
        assert_eq!(at.wait_p99_ms, Some(1_000));
        // Once every window has passed, the two that never ordered abandoned.
        let late = S.stats(&joiners, 10_000 + 120_000 + 1_000);
        assert_eq!((late.admitted, late.waiting, late.abandoned), (4, 0, 3));
        let none = S.stats(&[], 10_000);
        assert_eq!((none.admitted, none.wait_p50_ms), (0, None));
    }
}
