//! Campaigns: a window `[starts_at_ms, ends_at_ms)` in which some SKUs sell, at a sale
//! price when one is set. One rule decides whether a campaign SKU sells at a time and at
//! what price; the HTTP layer applies it at the node's clock and the Journal again at
//! the database's `now()` in the commit, so the start is the same instant on every node.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use thiserror::Error;
use uuid::Uuid;

use crate::cart::CampaignLine;

/// The latest timestamp a campaign may name: 9999-12-31T23:59:59.999Z, the end of what
/// PostgreSQL's `timestamptz` and every client's date type hold alike.
pub const MAX_TIMESTAMP_MS: i64 = 253_402_300_799_999;

/// Where a campaign stands at a time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// Before its start.
    Scheduled,
    /// Within its window.
    Live,
    /// At or after its end.
    Ended,
}

/// Why a campaign is not scheduled.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum Invalid {
    /// A timestamp is before 1970 or after [`MAX_TIMESTAMP_MS`].
    #[error("timestamps must be from 0 to {MAX_TIMESTAMP_MS} ms")]
    TimestampOutOfRange,
    /// The window is empty.
    #[error("ends_at_ms must be after starts_at_ms")]
    EmptyWindow,
    /// A sale price is not positive.
    #[error("sale_price_minor of {0} must be a positive integer")]
    SalePrice(String),
    /// A sale price names a SKU the campaign does not sell.
    #[error("sale_price_minor names {0}, which is not in the campaign")]
    SalePriceForOtherSku(String),
    /// The per-customer limit is not positive.
    #[error("per_customer_limit must be a positive integer")]
    Limit,
    /// The hold is not positive.
    #[error("hold_secs must be a positive integer")]
    Hold,
    /// The admission rate is not positive.
    #[error("queue.admit_per_second must be a positive integer")]
    AdmitRate,
    /// The campaign names no SKU.
    #[error("a campaign names at least one sku")]
    NoSkus,
}

/// A campaign's window, half-open: the start sells, the end does not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// Start, Unix milliseconds.
    pub starts_at_ms: i64,
    /// End, Unix milliseconds.
    pub ends_at_ms: i64,
}

impl Window {
    /// A window both of whose ends a timestamp column holds, and that is not empty.
    pub fn new(starts_at_ms: i64, ends_at_ms: i64) -> Result<Self, Invalid> {
        let in_range = |t: i64| (0..=MAX_TIMESTAMP_MS).contains(&t);
        if !in_range(starts_at_ms) || !in_range(ends_at_ms) {
            return Err(Invalid::TimestampOutOfRange);
        }
        if ends_at_ms <= starts_at_ms {
            return Err(Invalid::EmptyWindow);
        }
        Ok(Self {
            starts_at_ms,
            ends_at_ms,
        })
    }

    /// Where the window stands at `now_ms`.
    pub fn state_at(&self, now_ms: i64) -> State {
        if now_ms < self.starts_at_ms {
            State::Scheduled
        } else if now_ms < self.ends_at_ms {
            State::Live
        } else {
            State::Ended
        }
    }

    /// Whether two windows share an instant.
    pub fn overlaps(&self, other: &Window) -> bool {
        self.starts_at_ms < other.ends_at_ms && other.starts_at_ms < self.ends_at_ms
    }
}

/// Why a campaign SKU does not sell now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum Closed {
    /// Its next campaign has not started.
    #[error("the campaign starts at {starts_at_ms}")]
    NotStarted {
        /// When it starts, Unix milliseconds.
        starts_at_ms: i64,
    },
    /// Every campaign it was in has ended.
    #[error("the campaign has ended")]
    Ended,
}

/// One campaign a SKU is in: its window and the SKU's sale price there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slot {
    /// The campaign's window.
    pub window: Window,
    /// The SKU's price within it; `None` keeps the variant's price.
    pub sale_price_minor: Option<i64>,
}

/// The unit price of a SKU at `now_ms`, given its variant's price and the campaigns it
/// is in: the variant's price outside every campaign, the sale price within a live one,
/// and closed around them. A SKU in a campaign sells only within a campaign window: a
/// campaign is a gated start, so a SKU before its first window waits for it, and one
/// whose every window has passed stays closed.
pub fn price_at(regular_minor: i64, slots: &[Slot], now_ms: i64) -> Result<i64, Closed> {
    if slots.is_empty() {
        return Ok(regular_minor);
    }
    let mut next_start: Option<i64> = None;
    for slot in slots {
        match slot.window.state_at(now_ms) {
            State::Live => return Ok(slot.sale_price_minor.unwrap_or(regular_minor)),
            State::Scheduled => {
                let s = slot.window.starts_at_ms;
                next_start = Some(next_start.map_or(s, |n| n.min(s)));
            }
            State::Ended => {}
        }
    }
    Err(match next_start {
        Some(starts_at_ms) => Closed::NotStarted { starts_at_ms },
        None => Closed::Ended,
    })
}

/// A scheduled campaign, as every node keeps it in memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Campaign {
    /// Campaign id.
    pub id: Uuid,
    /// Display name.
    pub name: String,
    /// The featured product, if the campaign was made for one.
    pub product_slug: Option<String>,
    /// When it sells.
    pub window: Window,
    /// Units one customer may buy across its SKUs: at the PUT per cart, and in the
    /// checkout's commit per customer.
    pub per_customer_limit: Option<i64>,
    /// How long one hold of its SKUs lasts from the first reservation, seconds;
    /// `None`: the node's reservation TTL.
    pub hold_secs: Option<i64>,
    /// Waiting-room admissions per second (stored; the waiting room comes later).
    pub admit_per_second: Option<i64>,
    /// Its SKUs, sorted, with their sale prices.
    pub skus: Vec<(String, Option<i64>)>,
}

impl Campaign {
    /// Checks the parts of a new campaign that need no catalog.
    pub fn validate(&self) -> Result<(), Invalid> {
        Window::new(self.window.starts_at_ms, self.window.ends_at_ms)?;
        if self.skus.is_empty() {
            return Err(Invalid::NoSkus);
        }
        if let Some((sku, _)) = self.skus.iter().find(|(_, p)| p.is_some_and(|p| p <= 0)) {
            return Err(Invalid::SalePrice(sku.clone()));
        }
        if self.per_customer_limit.is_some_and(|l| l <= 0) {
            return Err(Invalid::Limit);
        }
        if self.hold_secs.is_some_and(|h| h <= 0) {
            return Err(Invalid::Hold);
        }
        if self.admit_per_second.is_some_and(|r| r <= 0) {
            return Err(Invalid::AdmitRate);
        }
        Ok(())
    }

    /// Where the campaign stands at `now_ms`.
    pub fn state_at(&self, now_ms: i64) -> State {
        self.window.state_at(now_ms)
    }
}

/// Every campaign, indexed by id and by SKU.
#[derive(Debug, Default, Clone)]
pub struct Campaigns {
    all: Vec<Campaign>,
    by_id: HashMap<Uuid, usize>,
    by_sku: HashMap<String, Vec<(usize, Option<i64>)>>,
}

impl Campaigns {
    /// Indexes `all`.
    pub fn new(all: Vec<Campaign>) -> Self {
        let mut by_id = HashMap::new();
        let mut by_sku: HashMap<String, Vec<(usize, Option<i64>)>> = HashMap::new();
        for (i, c) in all.iter().enumerate() {
            by_id.insert(c.id, i);
            for (sku, price) in &c.skus {
                by_sku.entry(sku.clone()).or_default().push((i, *price));
            }
        }
        Self { all, by_id, by_sku }
    }

    /// A campaign by id.
    pub fn get(&self, id: Uuid) -> Option<&Campaign> {
        self.by_id.get(&id).map(|&i| &self.all[i])
    }

    /// Every campaign.
    pub fn all(&self) -> &[Campaign] {
        &self.all
    }

    /// The campaigns `sku` is in.
    pub fn slots(&self, sku: &str) -> Vec<Slot> {
        self.by_sku
            .get(sku)
            .map(|v| {
                v.iter()
                    .map(|&(i, sale_price_minor)| Slot {
                        window: self.all[i].window,
                        sale_price_minor,
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The unit price of `sku` at `now_ms` ([`price_at`]).
    pub fn price_at(&self, sku: &str, regular_minor: i64, now_ms: i64) -> Result<i64, Closed> {
        price_at(regular_minor, &self.slots(sku), now_ms)
    }

    /// The rules of a line of `sku` set at `now_ms`, if its campaign is live: its
    /// limit across the campaign's SKUs and its hold (`default_hold_ms` unless the
    /// campaign sets one).
    pub fn line_rule(&self, sku: &str, now_ms: i64, default_hold_ms: i64) -> Option<CampaignLine> {
        let &(i, _) = self
            .by_sku
            .get(sku)?
            .iter()
            .find(|(i, _)| self.all[*i].state_at(now_ms) == State::Live)?;
        let c = &self.all[i];
        Some(CampaignLine {
            campaign_id: c.id,
            per_customer_limit: c.per_customer_limit,
            skus: c.skus.iter().map(|(s, _)| s.clone()).collect(),
            hold_ms: c
                .hold_secs
                .map_or(default_hold_ms, |h| h.saturating_mul(1000)),
        })
    }

    /// The campaign whose queue a buyer of `sku` stands in at `now_ms`: the live one,
    /// or else the next to start (a SKU's campaigns never overlap, so the earliest not
    /// ended is that one), when it has a waiting room.
    pub fn queued_for(&self, sku: &str, now_ms: i64) -> Option<&Campaign> {
        self.by_sku
            .get(sku)?
            .iter()
            .map(|&(i, _)| &self.all[i])
            .filter(|c| c.state_at(now_ms) != State::Ended)
            .min_by_key(|c| c.window.starts_at_ms)
            .filter(|c| c.admit_per_second.is_some())
    }

    /// The campaign a refused write of `sku` at `now_ms` counts against: the live one,
    /// else the next to start, else the one that ended last; `None` outside campaigns.
    pub fn refused_by(&self, sku: &str, now_ms: i64) -> Option<&Campaign> {
        let mine = || {
            self.by_sku
                .get(sku)
                .into_iter()
                .flatten()
                .map(|&(i, _)| &self.all[i])
        };
        mine()
            .filter(|c| c.state_at(now_ms) != State::Ended)
            .min_by_key(|c| c.window.starts_at_ms)
            .or_else(|| mine().max_by_key(|c| c.window.ends_at_ms))
    }

    /// The first start after `now_ms`, if any: when the announcer next has news.
    pub fn next_start_after(&self, now_ms: i64) -> Option<i64> {
        self.all
            .iter()
            .map(|c| c.window.starts_at_ms)
            .filter(|&s| s > now_ms)
            .min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window(s: i64, e: i64) -> Window {
        Window::new(s, e).expect("valid window")
    }

    /// Guards against an off-by-one at the edges: the start sells, the end does not.
    #[test]
    fn the_window_is_half_open() {
        let w = window(100, 200);
        assert_eq!(w.state_at(99), State::Scheduled);
        assert_eq!(w.state_at(100), State::Live);
        assert_eq!(w.state_at(199), State::Live);
        assert_eq!(w.state_at(200), State::Ended);
    }

    /// Guards against timestamps no column holds reaching the database (a 500).
    #[test]
    fn timestamps_out_of_range_and_empty_windows_are_invalid() {
        assert_eq!(Window::new(-1, 5), Err(Invalid::TimestampOutOfRange));
        assert_eq!(
            Window::new(0, 1_000_000_000_000_000_000),
            Err(Invalid::TimestampOutOfRange)
        );
        assert_eq!(Window::new(5, 5), Err(Invalid::EmptyWindow));
        assert!(Window::new(0, MAX_TIMESTAMP_MS).is_ok());
    }

    /// Guards against a campaign SKU selling before its start or after its end, or at
    /// the wrong price within it.
    #[test]
    fn a_campaign_sku_sells_only_within_a_window_at_its_sale_price() {
        let slots = [
            Slot {
                window: window(100, 200),
                sale_price_minor: Some(50),
            },
            Slot {
                window: window(300, 400),
                sale_price_minor: None,
            },
        ];
        assert_eq!(price_at(80, &[], 0), Ok(80));
        assert_eq!(
            price_at(80, &slots, 99),
            Err(Closed::NotStarted { starts_at_ms: 100 })
        );
        assert_eq!(price_at(80, &slots, 100), Ok(50));
        assert_eq!(
            price_at(80, &slots, 200),
            Err(Closed::NotStarted { starts_at_ms: 300 })
        );
        assert_eq!(price_at(80, &slots, 300), Ok(80));
        assert_eq!(price_at(80, &slots, 400), Err(Closed::Ended));
    }

    /// Guards against two campaigns claiming a SKU at the same instant.
    #[test]
    fn windows_that_touch_do_not_overlap() {
        assert!(!window(0, 10).overlaps(&window(10, 20)));
        assert!(window(0, 11).overlaps(&window(10, 20)));
        assert!(window(12, 13).overlaps(&window(10, 20)));
    }

    /// Guards against a nonsensical campaign being stored.
    #[test]
    fn validation_refuses_bad_numbers() {
        let mut c = Campaign {
            id: Uuid::nil(),
            name: "x".into(),
            product_slug: None,
            window: Window {
                starts_at_ms: 0,
                ends_at_ms: 10,
            },
            per_customer_limit: Some(2),
            hold_secs: Some(60),
            admit_per_second: Some(5),
            skus: vec![("A".into(), Some(10))],
        };
        assert_eq!(c.validate(), Ok(()));
        c.skus[0].1 = Some(0);
        assert_eq!(c.validate(), Err(Invalid::SalePrice("A".into())));
        c.skus[0].1 = None;
        c.per_customer_limit = Some(0);
        assert_eq!(c.validate(), Err(Invalid::Limit));
        c.per_customer_limit = None;
        c.hold_secs = Some(0);
        assert_eq!(c.validate(), Err(Invalid::Hold));
        c.hold_secs = None;
        c.admit_per_second = Some(-1);
        assert_eq!(c.validate(), Err(Invalid::AdmitRate));
        c.admit_per_second = None;
        c.skus.clear();
        assert_eq!(c.validate(), Err(Invalid::NoSkus));
        let campaigns = Campaigns::new(vec![Campaign {
            skus: vec![("A".into(), Some(7))],
            ..c
        }]);
        assert_eq!(campaigns.price_at("A", 9, 5), Ok(7));
        assert_eq!(campaigns.price_at("B", 9, 5), Ok(9));
        assert_eq!(campaigns.next_start_after(-1), Some(0));
        assert_eq!(campaigns.next_start_after(0), None);
        let rule = campaigns.line_rule("A", 5, 900).expect("live");
        assert_eq!((rule.hold_ms, rule.skus.len()), (900, 1));
        assert_eq!(campaigns.line_rule("A", 10, 900), None, "ended");
        assert_eq!(campaigns.line_rule("B", 5, 900), None, "not in a campaign");
    }

    /// Guards against a buyer of a live campaign without a queue being held in the
    /// queue of the SKU's next campaign.
    #[test]
    fn the_queue_a_sku_stands_in_is_that_of_its_live_or_next_campaign() {
        let campaign = |id: u128, starts_at_ms: i64, rate: Option<i64>| Campaign {
            id: Uuid::from_u128(id),
            name: "x".into(),
            product_slug: None,
            window: Window {
                starts_at_ms,
                ends_at_ms: starts_at_ms + 10,
            },
            per_customer_limit: None,
            admit_per_second: rate,
            hold_secs: None,
            skus: vec![("A".into(), None)],
        };
        let campaigns = Campaigns::new(vec![
            campaign(1, 0, None),
            campaign(2, 20, Some(5)),
            campaign(3, 40, None),
        ]);
        assert_eq!(campaigns.queued_for("A", 5), None, "live without a queue");
        let next = campaigns.queued_for("A", 12).map(|c| c.id);
        assert_eq!(next, Some(Uuid::from_u128(2)), "the next one queues");
        assert_eq!(campaigns.queued_for("A", 25).map(|c| c.id), next);
        assert_eq!(campaigns.queued_for("A", 31), None);
        assert_eq!(campaigns.queued_for("B", 25), None);
        // Guards against a refusal counted against the wrong campaign of a SKU (or
        // against none when its campaigns have all ended).
        let refused = |now| campaigns.refused_by("A", now).map(|c| c.id.as_u128());
        assert_eq!(
            (refused(5), refused(12), refused(45)),
            (Some(1), Some(2), Some(3))
        );
        assert_eq!(refused(100), Some(3), "the one that ended last");
        assert_eq!(campaigns.refused_by("B", 5), None);
    }
}
