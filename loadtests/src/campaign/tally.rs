//! The arithmetic of the campaign run, with no IO: who shares an email, when each
//! slot is due, what the buyers saw, and the fairness and spread figures drawn from it.
//! Kept apart from the HTTP so each rule is tested on its own.

use std::collections::{BTreeMap, HashMap, HashSet};

use crate::util::Rng;

/// The buyers' checkout emails: `shared` of them spell another buyer's address with a
/// different case or a `+tag`, so they are one customer to a per-customer limit.
#[derive(Debug, Clone)]
pub struct Emails {
    /// Buyer index → the address it checks out with.
    pub of: Vec<String>,
    /// Buyers whose address is a variant of another buyer's.
    pub shared: usize,
}

impl Emails {
    /// Addresses for `buyers` buyers, `percent` % of them (rounded) variants of another
    /// buyer's; pairs are drawn at random, each original used once.
    pub fn new(buyers: usize, percent: f64, rng: &mut Rng) -> Self {
        let mut of: Vec<String> = (0..buyers)
            .map(|i| format!("buyer{i}@lt.example"))
            .collect();
        let shared = (((buyers as f64) * percent / 100.0).round() as usize).min(buyers / 2);
        let mut order: Vec<usize> = (0..buyers).collect();
        for i in (1..order.len()).rev() {
            order.swap(i, rng.below(i + 1));
        }
        for k in 0..shared {
            let (dup, orig) = (order[k], order[shared + k]);
            of[dup] = match k % 3 {
                0 => format!("Buyer{orig}@LT.example"),
                1 => format!("buyer{orig}+{k}@lt.example"),
                _ => format!("BUYER{orig}+sale@Lt.Example"),
            };
        }
        Self { of, shared }
    }

    /// Distinct customers among the buyers.
    pub fn customers(&self) -> usize {
        self.of
            .iter()
            .map(|e| customer(e))
            .collect::<HashSet<_>>()
            .len()
    }
}

/// The customer behind an address as a per-customer limit counts it: trimmed,
/// lower-cased, `+tag` dropped from the local part. Written here independently of the
/// server, so the audit does not trust the code it audits.
pub fn customer(email: &str) -> String {
    let lower = email.trim().to_lowercase();
    match lower.rsplit_once('@') {
        Some((local, domain)) => {
            let local = local.split_once('+').map_or(local, |(l, _)| l);
            format!("{local}@{domain}")
        }
        None => lower,
    }
}

/// Customers whose units exceed `limit`, from `(email, units)` rows of orders.
pub fn limit_violations(rows: &[(String, i64)], limit: i64) -> Vec<(String, i64)> {
    let mut by: BTreeMap<String, i64> = BTreeMap::new();
    for (email, units) in rows {
        *by.entry(customer(email)).or_default() += units;
    }
    by.into_iter().filter(|(_, u)| *u > limit).collect()
}

/// When slot `k` is admitted, Unix ms: the campaign start plus `k / rate` seconds,
/// rounded up to the millisecond (the schedule `docs/QUEUE.md` documents).
pub fn due_ms(starts_at_ms: i64, rate: i64, slot: i64) -> i64 {
    let rate = rate.max(1);
    starts_at_ms + (slot.max(0) * 1000 + rate - 1) / rate
}

/// When a joiner in `slot` reaches `position` (earlier joiners still waiting), Unix
/// ms; `None` for a position it holds from its join (before the start).
pub fn position_due_ms(starts_at_ms: i64, rate: i64, slot: i64, position: i64) -> Option<i64> {
    (position < slot).then(|| due_ms(starts_at_ms, rate, slot - position - 1))
}

/// How a buyer ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Checked out.
    Ordered,
    /// Told `409 insufficient_stock`.
    SoldOut,
    /// Told `409 limit_exceeded` (another buyer of the same customer bought first).
    OverLimit,
    /// Its turn lapsed before it reserved (`409 queue_lapsed`).
    Lapsed,
    /// It never got a place in the queue.
    NotJoined,
    /// The deadline came first.
    GaveUp,
    /// An answer the scenario does not expect.
    Failed,
}

impl Outcome {
    /// Every outcome, in report order.
    pub const ALL: [Outcome; 7] = [
        Outcome::Ordered,
        Outcome::SoldOut,
        Outcome::OverLimit,
        Outcome::Lapsed,
        Outcome::NotJoined,
        Outcome::GaveUp,
        Outcome::Failed,
    ];

    /// Its figure's name.
    pub fn label(&self) -> &'static str {
        match self {
            Outcome::Ordered => "buyers with an order",
            Outcome::SoldOut => "buyers told sold out",
            Outcome::OverLimit => "buyers refused by the per-customer limit",
            Outcome::Lapsed => "buyers whose turn lapsed",
            Outcome::NotJoined => "buyers without a place in the queue",
            Outcome::GaveUp => "buyers stopped by the deadline",
            Outcome::Failed => "buyers stopped by an unexpected answer",
        }
    }
}

/// What one buyer saw, times in Unix milliseconds (client clock, the servers' too: all
/// run on this machine).
#[derive(Debug, Clone)]
pub struct Record {
    /// Buyer index.
    pub buyer: usize,
    /// Whether it waited on a WebSocket (else it polled).
    pub socket: bool,
    /// When its first join attempt was sent (a retry may report a place an attempt
    /// whose answer was lost took).
    pub join_sent_ms: f64,
    /// When its join answer arrived.
    pub join_answered_ms: f64,
    /// Its session id (from the cookie), to find its stored slot.
    pub session: Option<String>,
    /// The position its join answered: its slot, when the join preceded the start.
    pub join_position: Option<i64>,
    /// Its slot in the join order, as PostgreSQL stored it.
    pub slot: Option<i64>,
    /// When its socket opened (socket buyers).
    pub socket_opened_ms: Option<f64>,
    /// When it first learned it was admitted (push, or poll answer).
    pub admitted_seen_ms: Option<f64>,
    /// When the `admitted: true` push arrived (socket buyers).
    pub admitted_push_ms: Option<f64>,
    /// Sending time of the latest request answered "not admitted yet".
    pub last_wait_sent_ms: Option<f64>,
    /// `(position, arrival)` of every `queue` push with `admitted: false`.
    pub position_pushes: Vec<(i64, f64)>,
    /// When its order was answered.
    pub ordered_ms: Option<f64>,
    /// How it ended.
    pub outcome: Outcome,
}

impl Record {
    /// A buyer that has not joined yet.
    pub fn new(buyer: usize, socket: bool) -> Self {
        Self {
            buyer,
            socket,
            join_sent_ms: 0.0,
            join_answered_ms: 0.0,
            session: None,
            join_position: None,
            slot: None,
            socket_opened_ms: None,
            admitted_seen_ms: None,
            admitted_push_ms: None,
            last_wait_sent_ms: None,
            position_pushes: Vec::new(),
            ordered_ms: None,
            outcome: Outcome::NotJoined,
        }
    }

    /// Notes an answer that said "not admitted" to a request sent at `sent_ms`.
    pub fn waited(&mut self, sent_ms: f64) {
        self.last_wait_sent_ms = Some(self.last_wait_sent_ms.map_or(sent_ms, |l| l.max(sent_ms)));
    }

    /// Notes the first sign of admission, arriving at `at_ms`.
    pub fn admitted(&mut self, at_ms: f64) {
        self.admitted_seen_ms = Some(self.admitted_seen_ms.map_or(at_ms, |a| a.min(at_ms)));
    }
}

/// First, median, 99th percentile and last of a set of values.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Spread {
    /// How many.
    pub count: usize,
    /// Smallest.
    pub first: f64,
    /// Median.
    pub p50: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Largest.
    pub last: f64,
}

impl Spread {
    /// The spread of `values` (any order); all zero when empty.
    pub fn of(mut values: Vec<f64>) -> Self {
        values.retain(|v| v.is_finite());
        if values.is_empty() {
            return Self::default();
        }
        values.sort_by(f64::total_cmp);
        let at = |q: f64| values[((values.len() - 1) as f64 * q).round() as usize];
        Self {
            count: values.len(),
            first: values[0],
            p50: at(0.5),
            p99: at(0.99),
            last: values[values.len() - 1],
        }
    }

    /// As JSON, milliseconds.
    pub fn to_json(self) -> serde_json::Value {
        serde_json::json!({
            "count": self.count, "first_ms": self.first.round(), "p50_ms": self.p50.round(),
            "p99_ms": self.p99.round(), "last_ms": self.last.round(),
        })
    }

    /// As a table cell, seconds.
    pub fn shown(self) -> String {
        format!(
            "{:.3} / {:.3} / {:.3} / {:.3} s",
            self.first / 1000.0,
            self.p50 / 1000.0,
            self.p99 / 1000.0,
            self.last / 1000.0
        )
    }
}

/// What the records say about the queue.
#[derive(Debug, Clone, Default)]
pub struct Queue {
    /// Buyers with a slot.
    pub joined: usize,
    /// Buyers given a slot another buyer was given too.
    pub duplicate_slots: usize,
    /// Slots below the largest one joined before the start given to nobody (slots are
    /// dense before the start).
    pub missing_slots: usize,
    /// Joins answered before the start whose position is not the stored slot.
    pub position_mismatches: usize,
    /// Buyers whose join was answered before another's was sent, yet got the later
    /// slot: the join order itself broken.
    pub join_order_inversions: usize,
    /// Scheduled admission minus the start, over every slot (ms).
    pub scheduled: Spread,
    /// Observed admission minus the start (ms).
    pub observed: Spread,
    /// Observed admission minus the slot's scheduled time, socket buyers (ms).
    pub lag_socket: Spread,
    /// The same for polling buyers (ms).
    pub lag_poll: Spread,
    /// Buyers seen admitted before their scheduled time (1 ms tolerance).
    pub early: usize,
    /// Buyers admitted (as observed) before some buyer of an earlier slot.
    pub out_of_order: usize,
    /// The same, ignoring overtakes by less than [`OBSERVED_TOLERANCE_MS`].
    pub out_of_order_beyond_tolerance: usize,
    /// Buyers told "not yet" by a request sent after a later joiner had been told
    /// "admitted": a breach of first-in-first-out the answers prove, free of any
    /// polling or push delay.
    pub overtaken: usize,
    /// Buyers with an observed admission (the denominator of the fractions).
    pub observed_buyers: usize,
    /// `admitted: true` push arrival minus the scheduled time, ms.
    pub admitted_push: Spread,
    /// `queue` position push arrival minus when that position became true, ms.
    pub position_push: Spread,
    /// Socket buyers whose socket opened before their due time but never got their
    /// `admitted: true` push.
    pub missing_pushes: usize,
    /// Socket buyers whose socket opened only after their due time.
    pub late_sockets: usize,
    /// Position pushes that arrived before their position was true (1 ms tolerance).
    pub early_position_pushes: usize,
}

/// Overtakes by less than this are what push ticks and poll intervals blur.
pub const OBSERVED_TOLERANCE_MS: f64 = 250.0;

impl Queue {
    /// Everything the records say, for a campaign starting at `starts_at_ms` and
    /// admitting `rate` a second.
    pub fn new(records: &[Record], starts_at_ms: i64, rate: i64) -> Self {
        let mut q = Queue::default();
        let start = starts_at_ms as f64;
        let joined: Vec<&Record> = records.iter().filter(|r| r.slot.is_some()).collect();
        q.joined = joined.len();
        let mut counts: HashMap<i64, usize> = HashMap::new();
        for r in &joined {
            *counts.entry(r.slot.unwrap_or_default()).or_default() += 1;
        }
        q.duplicate_slots = counts.values().filter(|n| **n > 1).copied().sum();
        let early: Vec<&&Record> = joined
            .iter()
            .filter(|r| r.join_answered_ms < start)
            .collect();
        let max_slot = early.iter().filter_map(|r| r.slot).max().unwrap_or(-1);
        q.missing_slots = (0..=max_slot).filter(|s| !counts.contains_key(s)).count();
        q.position_mismatches = early.iter().filter(|r| r.join_position != r.slot).count();
        q.join_order_inversions = join_order_inversions(&joined);
        let due = |r: &Record| due_ms(starts_at_ms, rate, r.slot.unwrap_or_default()) as f64;
        q.scheduled = Spread::of(joined.iter().map(|r| due(r) - start).collect());
        q.observed = Spread::of(
            joined
                .iter()
                .filter_map(|r| r.admitted_seen_ms.map(|a| a - start))
                .collect(),
        );
        let lag = |socket: bool| {
            Spread::of(
                joined
                    .iter()
                    .filter(|r| r.socket == socket)
                    .filter_map(|r| r.admitted_seen_ms.map(|a| a - due(r)))
                    .collect(),
            )
        };
        q.lag_socket = lag(true);
        q.lag_poll = lag(false);
        q.early = joined
            .iter()
            .filter(|r| r.admitted_seen_ms.is_some_and(|a| a + 1.0 < due(r)))
            .count();
        let (any, beyond) = observed_out_of_order(&joined);
        q.out_of_order = any;
        q.out_of_order_beyond_tolerance = beyond;
        q.observed_buyers = joined
            .iter()
            .filter(|r| r.admitted_seen_ms.is_some())
            .count();
        q.overtaken = overtaken(&joined);
        q.admitted_push = Spread::of(
            joined
                .iter()
                .filter_map(|r| r.admitted_push_ms.map(|a| a - due(r)))
                .collect(),
        );
        let opened_in_time = |r: &&Record| r.socket_opened_ms.is_some_and(|o| o < due(r));
        q.missing_pushes = joined
            .iter()
            .filter(|r| opened_in_time(r) && r.admitted_push_ms.is_none())
            .count();
        q.late_sockets = joined
            .iter()
            .filter(|r| r.socket_opened_ms.is_some() && !opened_in_time(r))
            .count();
        let mut position_lags = Vec::new();
        for r in &joined {
            let slot = r.slot.unwrap_or_default();
            for (pos, at) in &r.position_pushes {
                if let Some(d) = position_due_ms(starts_at_ms, rate, slot, *pos) {
                    let lag = at - d as f64;
                    if lag < -1.0 {
                        q.early_position_pushes += 1;
                    }
                    position_lags.push(lag);
                }
            }
        }
        q.position_push = Spread::of(position_lags);
        q
    }

    /// `n` as a fraction of the buyers with an observed admission.
    pub fn fraction(&self, n: usize) -> f64 {
        if self.observed_buyers == 0 {
            0.0
        } else {
            n as f64 / self.observed_buyers as f64
        }
    }
}

/// Buyers whose join was answered before a later-sent join of another buyer was sent,
/// yet hold the later slot.
fn join_order_inversions(joined: &[&Record]) -> usize {
    // For each buyer b: the largest slot among joins answered before b's was sent.
    let mut by_answer: Vec<(f64, i64)> = joined
        .iter()
        .map(|r| (r.join_answered_ms, r.slot.unwrap_or_default()))
        .collect();
    by_answer.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut by_sent: Vec<(f64, i64)> = joined
        .iter()
        .map(|r| (r.join_sent_ms, r.slot.unwrap_or_default()))
        .collect();
    by_sent.sort_by(|a, b| a.0.total_cmp(&b.0));
    let (mut i, mut max_before) = (0, i64::MIN);
    let mut inversions = 0;
    for (sent, slot) in by_sent {
        while i < by_answer.len() && by_answer[i].0 < sent {
            max_before = max_before.max(by_answer[i].1);
            i += 1;
        }
        if max_before > slot {
            inversions += 1;
        }
    }
    inversions
}

/// Buyers seen admitted before a buyer of an earlier slot: at all, and by more than
/// [`OBSERVED_TOLERANCE_MS`].
fn observed_out_of_order(joined: &[&Record]) -> (usize, usize) {
    let mut seen: Vec<(i64, f64)> = joined
        .iter()
        .filter_map(|r| Some((r.slot?, r.admitted_seen_ms?)))
        .collect();
    seen.sort_by_key(|(s, _)| *s);
    let (mut any, mut beyond, mut latest) = (0, 0, f64::NEG_INFINITY);
    for (_, at) in seen {
        if latest > at {
            any += 1;
            if latest - at > OBSERVED_TOLERANCE_MS {
                beyond += 1;
            }
        }
        latest = latest.max(at);
    }
    (any, beyond)
}

/// Buyers told "not yet" in answer to a request sent after a later slot's buyer had
/// already been told "admitted".
fn overtaken(joined: &[&Record]) -> usize {
    let mut by_slot: Vec<(i64, Option<f64>, Option<f64>)> = joined
        .iter()
        .map(|r| {
            (
                r.slot.unwrap_or_default(),
                r.last_wait_sent_ms,
                r.admitted_seen_ms,
            )
        })
        .collect();
    by_slot.sort_by_key(|(s, _, _)| std::cmp::Reverse(*s));
    // Walking down from the last slot: the earliest admission among later slots.
    let (mut earliest_later, mut n) = (f64::INFINITY, 0);
    for (_, wait_sent, admitted) in by_slot {
        if wait_sent.is_some_and(|w| w > earliest_later) {
            n += 1;
        }
        if let Some(a) = admitted {
            earliest_later = earliest_later.min(a);
        }
    }
    n
}

/// Units left unsold although a buyer who could still have bought (its customer holds
/// no order) was told sold out; 0 when every unit sold or nobody eligible was refused.
pub fn undersold(units: i64, sold: i64, refused_customers: &[String], ordered: &[String]) -> i64 {
    let have: HashSet<&String> = ordered.iter().collect();
    let eligible_refused = refused_customers.iter().any(|c| !have.contains(c));
    if sold < units && eligible_refused {
        units - sold
    } else {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(slot: i64, sent: f64, answered: f64, seen: Option<f64>) -> Record {
        let mut r = Record::new(slot as usize, false);
        r.slot = Some(slot);
        r.join_position = Some(slot);
        r.join_sent_ms = sent;
        r.join_answered_ms = answered;
        r.admitted_seen_ms = seen;
        r
    }

    #[test]
    fn shared_emails_are_one_customer_each_and_the_rest_distinct() {
        // Guards against the scenario promising 5 % shared addresses but giving
        // addresses the limit sees as distinct (or merging unrelated buyers).
        let e = Emails::new(1000, 5.0, &mut Rng::new(7));
        assert_eq!(e.shared, 50);
        assert_eq!(e.customers(), 950);
        let variants =
            e.of.iter()
                .filter(|a| !a.starts_with("buyer") || a.contains('+'));
        assert_eq!(variants.count(), 50);
    }

    #[test]
    fn customers_are_normalized_like_the_contract_says() {
        // Guards against an audit that counts `A@x.io` and `a+2@x.io` as two customers.
        for same in ["A@x.io", "a@x.io", " a+2@x.io ", "A+Sale@X.IO"] {
            assert_eq!(customer(same), "a@x.io", "{same}");
        }
        let rows = vec![
            ("A@x.io".to_owned(), 1),
            ("a+2@x.io".to_owned(), 1),
            ("b@x.io".to_owned(), 1),
        ];
        assert_eq!(limit_violations(&rows, 1), vec![("a@x.io".to_owned(), 2)]);
        assert!(limit_violations(&rows, 2).is_empty());
    }

    #[test]
    fn the_schedule_matches_the_servers() {
        // Guards against delays measured from the wrong due time: slot k is due at
        // start + ceil(k * 1000 / rate) ms, and position p is reached when slot k-p-1 is.
        assert_eq!(due_ms(10_000, 20, 0), 10_000);
        assert_eq!(due_ms(10_000, 20, 1), 10_050);
        assert_eq!(due_ms(10_000, 3, 1), 10_334);
        assert_eq!(position_due_ms(10_000, 20, 10, 9), Some(10_000));
        assert_eq!(position_due_ms(10_000, 20, 10, 7), Some(10_100));
        assert_eq!(position_due_ms(10_000, 20, 10, 10), None);
    }

    #[test]
    fn spreads_pick_first_median_p99_last() {
        // Guards against percentiles read from unsorted values.
        let s = Spread::of((0..=100).rev().map(f64::from).collect());
        assert_eq!((s.first, s.p50, s.p99, s.last), (0.0, 50.0, 99.0, 100.0));
        assert_eq!(Spread::of(Vec::new()), Spread::default());
    }

    #[test]
    fn slots_must_be_unique_dense_and_follow_the_join_order() {
        // Guards against a queue that hands one place twice, skips places, or gives a
        // later joiner an earlier place than one whose join had already completed.
        let good = vec![
            rec(0, 0.0, 5.0, None),
            rec(1, 6.0, 9.0, None),
            rec(2, 7.0, 8.0, None),
        ];
        let q = Queue::new(&good, 100, 10);
        assert_eq!(
            (q.duplicate_slots, q.missing_slots, q.join_order_inversions),
            (0, 0, 0)
        );
        let bad = vec![
            rec(1, 0.0, 5.0, None),
            rec(0, 6.0, 9.0, None),
            rec(1, 7.0, 8.0, None),
            rec(4, 10.0, 11.0, None),
        ];
        let mut bad = bad;
        bad[3].join_position = Some(3);
        let q = Queue::new(&bad, 100, 10);
        assert_eq!(q.position_mismatches, 1);
        assert_eq!(q.duplicate_slots, 2);
        assert_eq!(q.missing_slots, 2);
        assert_eq!(q.join_order_inversions, 1);
    }

    #[test]
    fn fairness_counts_overtakes_observed_and_proven() {
        // Guards against a fairness figure that cannot see a buyer admitted before an
        // earlier joiner, or that blames the server for polling delays.
        let mut rs = vec![
            rec(0, 0.0, 1.0, Some(1_000.0)),
            rec(1, 0.0, 1.0, Some(1_400.0)),
            rec(2, 0.0, 1.0, Some(1_050.0)), // seen 350 ms before slot 1
            rec(3, 0.0, 1.0, Some(1_390.0)), // 10 ms before slot 1: within tolerance
        ];
        let q = Queue::new(&rs, 1_000, 10);
        assert_eq!((q.out_of_order, q.out_of_order_beyond_tolerance), (2, 1));
        assert_eq!(q.overtaken, 0, "late observation alone proves nothing");
        // Slot 1 was told "wait" by a request sent after slot 2 was told "in".
        rs[1].waited(1_200.0);
        assert_eq!(Queue::new(&rs, 1_000, 10).overtaken, 1);
        rs[1].last_wait_sent_ms = Some(1_040.0);
        assert_eq!(Queue::new(&rs, 1_000, 10).overtaken, 0);
    }

    #[test]
    fn pushes_are_measured_from_their_due_time() {
        // Guards against push delays measured from the start, or early pushes missed.
        let mut r = rec(10, 0.0, 1.0, Some(1_530.0));
        r.socket = true;
        r.socket_opened_ms = Some(2.0);
        r.admitted_push_ms = Some(1_530.0);
        r.position_pushes = vec![(9, 1_020.0), (7, 1_100.0), (2, 1_300.0)];
        let q = Queue::new(&[r.clone()], 1_000, 20);
        assert_eq!(q.admitted_push.p50, 30.0);
        assert_eq!(q.position_push.count, 3);
        assert_eq!(q.position_push.first, -50.0);
        assert_eq!(q.position_push.last, 20.0);
        assert_eq!(q.early_position_pushes, 1, "position 2 is due at 1 350");
        let mut silent = r;
        silent.admitted_push_ms = None;
        assert_eq!(Queue::new(&[silent.clone()], 1_000, 20).missing_pushes, 1);
        // A socket that opened after its turn came is not owed the push.
        silent.socket_opened_ms = Some(1_600.0);
        let q = Queue::new(&[silent], 1_000, 20);
        assert_eq!((q.missing_pushes, q.late_sockets), (0, 1));
    }

    #[test]
    fn early_admissions_are_counted() {
        // Guards against a server admitting a slot before its time unnoticed.
        let q = Queue::new(&[rec(5, 0.0, 1.0, Some(1_100.0))], 1_000, 10);
        assert_eq!(q.early, 1, "slot 5 at 10/s is due at 1 500");
    }

    #[test]
    fn undersold_only_when_an_eligible_buyer_was_refused() {
        // Guards against counting a limit refusal (or a sale that sold every unit) as
        // units left behind, and against missing a real one.
        let (a, b) = (vec!["a@x".to_owned()], vec!["b@x".to_owned()]);
        assert_eq!(undersold(10, 10, &b, &[]), 0);
        assert_eq!(undersold(10, 9, &a, &a), 0);
        assert_eq!(undersold(10, 9, &b, &a), 1);
    }
}
