//! Stock accounting without IO.
//!
//! Every unit of a SKU sits in exactly one bucket: `available` (in PostgreSQL, free),
//! `leased` (held by a node's shard, free), `reserved` (held by a cart line) or `sold`.
//! A [`Delta`] moves units between buckets; [`Buckets`] is one SKU's row and refuses any
//! delta that would break conservation. [`SkuStock`] is one node's view of a SKU: the
//! lease it holds in memory and whether PostgreSQL has run dry.

use std::collections::HashMap;

use thiserror::Error;

/// A movement of units between the buckets of one SKU.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Delta {
    /// Change of the total (only restocks change it).
    pub total: i64,
    /// Change of units free in PostgreSQL.
    pub available: i64,
    /// Change of units held by nodes.
    pub leased: i64,
    /// Change of units held by carts.
    pub reserved: i64,
    /// Change of units sold.
    pub sold: i64,
}

impl Delta {
    /// A node takes `n` free units from PostgreSQL into its lease.
    pub fn grant(n: i64) -> Self {
        Self {
            available: -n,
            leased: n,
            ..Self::default()
        }
    }

    /// A node gives `n` unused leased units back to PostgreSQL.
    pub fn give_back(n: i64) -> Self {
        Self {
            available: n,
            leased: -n,
            ..Self::default()
        }
    }

    /// A cart reserves `n` units out of a node's lease.
    pub fn reserve(n: i64) -> Self {
        Self {
            leased: -n,
            reserved: n,
            ..Self::default()
        }
    }

    /// A cart releases `n` reserved units (or they expire) into a node's lease.
    pub fn unreserve(n: i64) -> Self {
        Self {
            leased: n,
            reserved: -n,
            ..Self::default()
        }
    }

    /// The reaper returns `n` units of an expired reservation of a dead node's cart.
    pub fn reap_reservation(n: i64) -> Self {
        Self {
            available: n,
            reserved: -n,
            ..Self::default()
        }
    }

    /// A checkout sells `n` reserved units.
    pub fn sell(n: i64) -> Self {
        Self {
            reserved: -n,
            sold: n,
            ..Self::default()
        }
    }

    /// A cancelled order puts its `n` sold units back on sale; the total stays.
    pub fn cancel(n: i64) -> Self {
        Self {
            available: n,
            sold: -n,
            ..Self::default()
        }
    }

    /// An admin adds `n` units.
    pub fn restock(n: i64) -> Self {
        Self {
            total: n,
            available: n,
            ..Self::default()
        }
    }

    /// The sum of two movements.
    #[must_use]
    pub fn plus(self, o: Delta) -> Self {
        Self {
            total: self.total + o.total,
            available: self.available + o.available,
            leased: self.leased + o.leased,
            reserved: self.reserved + o.reserved,
            sold: self.sold + o.sold,
        }
    }

    /// Whether the movement keeps `total = available + leased + reserved + sold`.
    pub fn is_balanced(&self) -> bool {
        self.total == self.available + self.leased + self.reserved + self.sold
    }

    /// Whether the movement changes nothing.
    pub fn is_zero(&self) -> bool {
        *self == Self::default()
    }

    /// Change of the units a shopper can buy (see [`Buckets::sellable`]); live stock
    /// updates are sent only when it is not zero.
    pub fn sellable(&self) -> i64 {
        self.available + self.leased
    }
}

/// Why a delta was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum StockError {
    /// The delta would make a bucket negative or break conservation.
    #[error("stock accounting would break: {0:?} + {1:?}")]
    Broken(Buckets, Delta),
}

/// One SKU's buckets, as the `inventory` row holds them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Buckets {
    /// Units ever stocked.
    pub total: i64,
    /// Free units in PostgreSQL.
    pub available: i64,
    /// Units held by nodes.
    pub leased: i64,
    /// Units held by carts.
    pub reserved: i64,
    /// Units sold.
    pub sold: i64,
}

impl Buckets {
    /// A fresh SKU with `n` units.
    pub fn stocked(n: i64) -> Self {
        Self {
            total: n,
            available: n,
            ..Self::default()
        }
    }

    /// Units a shopper can buy: free in PostgreSQL plus free in some node's lease.
    pub fn sellable(&self) -> i64 {
        self.available + self.leased
    }

    /// Invariant 1: conservation, no negative term, `sold <= total`.
    pub fn is_sound(&self) -> bool {
        self.total == self.available + self.leased + self.reserved + self.sold
            && self.available >= 0
            && self.leased >= 0
            && self.reserved >= 0
            && self.sold >= 0
            && self.sold <= self.total
    }

    /// Applies `d`, or changes nothing and refuses when the result would be unsound.
    pub fn apply(&mut self, d: Delta) -> Result<(), StockError> {
        let next = Self {
            total: self.total + d.total,
            available: self.available + d.available,
            leased: self.leased + d.leased,
            reserved: self.reserved + d.reserved,
            sold: self.sold + d.sold,
        };
        if next.is_sound() {
            *self = next;
            Ok(())
        } else {
            Err(StockError::Broken(*self, d))
        }
    }
}

/// How much stock a node asks PostgreSQL for at a time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeasePolicy {
    /// Largest chunk taken at once.
    pub max_chunk: i64,
    /// The chunk is at most `db_available / spread`, so that near sell-out a node
    /// takes only what it needs and leaves the rest to the other nodes.
    pub spread: i64,
}

impl LeasePolicy {
    /// Near sell-out a node takes at most this fraction of what PostgreSQL has left, so
    /// that the other nodes still find units to lease.
    pub const SPREAD: i64 = 8;
}

impl LeasePolicy {
    /// Units to ask for when `need` more are wanted; `db_hint` is PostgreSQL's
    /// available count as last seen, if known.
    pub fn chunk(&self, need: i64, db_hint: Option<i64>) -> i64 {
        let spread = self.spread.max(1);
        let share = match db_hint {
            Some(h) => (h / spread).clamp(0, self.max_chunk),
            None => self.max_chunk,
        };
        need.max(share).max(1)
    }
}

/// The answer of a shard asked for units.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Take {
    /// The units came out of the lease.
    Taken,
    /// The lease is short: ask PostgreSQL for `want` units, then try again.
    NeedLease {
        /// Units to request.
        want: i64,
    },
    /// Not enough stock exists: `available` units could be had.
    Short {
        /// Units this node can still hand out.
        available: i64,
    },
}

/// One node's stock of one SKU.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SkuStock {
    /// Free units this node holds (its `stock_leases` row).
    pub lease: i64,
    /// PostgreSQL's available count when last seen.
    pub db_hint: Option<i64>,
    /// PostgreSQL had nothing left at the last grant: refuse from memory.
    pub db_empty: bool,
    /// Logical time of the last take or put, for idle returns.
    pub last_used: u64,
}

impl SkuStock {
    /// Tries to take `n` units from the lease; never goes to PostgreSQL itself.
    pub fn take(&mut self, n: i64, policy: &LeasePolicy, now: u64) -> Take {
        self.last_used = now;
        if n <= self.lease {
            self.lease -= n;
            Take::Taken
        } else if self.db_empty {
            Take::Short {
                available: self.lease,
            }
        } else {
            Take::NeedLease {
                want: policy.chunk(n - self.lease, self.db_hint),
            }
        }
    }

    /// Units come back into the lease (a release, an expiry, or an undo).
    pub fn put(&mut self, n: i64, now: u64) {
        self.lease += n;
        self.last_used = now;
    }

    /// PostgreSQL granted `granted` units and has `remaining` left.
    pub fn granted(&mut self, granted: i64, remaining: i64) {
        self.lease += granted;
        self.db_hint = Some(remaining);
        self.db_empty = remaining == 0;
    }

    /// Takes every leased unit out for return to PostgreSQL.
    pub fn drain(&mut self) -> i64 {
        std::mem::take(&mut self.lease)
    }

    /// PostgreSQL has `available` units again (a restock or another node's return).
    pub fn refreshed(&mut self, available: i64) {
        self.db_hint = Some(available);
        self.db_empty = available == 0;
    }
}

/// The stock of every SKU that hashes to one shard on this node.
#[derive(Debug)]
pub struct ShardStock {
    skus: HashMap<String, SkuStock>,
    /// Chunking policy.
    pub policy: LeasePolicy,
}

impl ShardStock {
    /// An empty shard.
    pub fn new(policy: LeasePolicy) -> Self {
        Self {
            skus: HashMap::new(),
            policy,
        }
    }

    /// The stock of a SKU, created empty on first use.
    pub fn sku(&mut self, sku: &str) -> &mut SkuStock {
        if !self.skus.contains_key(sku) {
            self.skus.insert(sku.to_owned(), SkuStock::default());
        }
        self.skus.entry(sku.to_owned()).or_default()
    }

    /// See [`SkuStock::take`].
    pub fn take(&mut self, sku: &str, n: i64, now: u64) -> Take {
        let policy = self.policy;
        self.sku(sku).take(n, &policy, now)
    }

    /// SKUs whose lease has sat unused since `idle_before`, with their units taken out.
    pub fn drain_idle(&mut self, idle_before: u64) -> Vec<(String, i64)> {
        self.skus
            .iter_mut()
            .filter(|(_, s)| s.lease > 0 && s.last_used < idle_before)
            .map(|(k, s)| (k.clone(), s.drain()))
            .collect()
    }

    /// Every leased unit taken out, for return at shutdown.
    pub fn drain_all(&mut self) -> Vec<(String, i64)> {
        self.skus
            .iter_mut()
            .filter(|(_, s)| s.lease > 0)
            .map(|(k, s)| (k.clone(), s.drain()))
            .collect()
    }

    /// SKUs refused from memory, to recheck against PostgreSQL now and then.
    pub fn empty_skus(&self) -> Vec<String> {
        self.skus
            .iter()
            .filter(|(_, s)| s.db_empty)
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// Units this node can hand out now, per SKU.
    pub fn lease_of(&self, sku: &str) -> i64 {
        self.skus.get(sku).map_or(0, |s| s.lease)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_movement_takes_from_one_bucket_and_gives_to_another() {
        let row = |d: Delta| [d.total, d.available, d.leased, d.reserved, d.sold];
        // [total, available, leased, reserved, sold]
        let cases = [
            (Delta::grant(3), [0, -3, 3, 0, 0]),
            (Delta::give_back(3), [0, 3, -3, 0, 0]),
            (Delta::reserve(3), [0, 0, -3, 3, 0]),
            (Delta::unreserve(3), [0, 0, 3, -3, 0]),
            (Delta::reap_reservation(3), [0, 3, 0, -3, 0]),
            (Delta::sell(3), [0, 0, 0, -3, 3]),
            (Delta::cancel(3), [0, 3, 0, 0, -3]),
            (Delta::restock(3), [3, 3, 0, 0, 0]),
        ];
        for (d, want) in cases {
            assert_eq!(row(d), want, "{d:?}");
            assert!(d.is_balanced(), "{d:?}");
        }
        assert_eq!(Delta::grant(3).plus(Delta::give_back(3)), Delta::default());
        assert_eq!(
            Delta::reserve(3).plus(Delta::unreserve(3)),
            Delta::default()
        );
        assert_eq!(
            Delta::grant(3)
                .plus(Delta::reserve(3))
                .plus(Delta::reap_reservation(3)),
            Delta::default(),
            "a reaped reservation ends where its units began"
        );
    }

    #[test]
    fn buckets_refuse_and_stay_unchanged() {
        let mut b = Buckets::stocked(2);
        assert!(b.apply(Delta::grant(3)).is_err());
        assert_eq!(b, Buckets::stocked(2));
        assert!(b.apply(Delta::grant(2)).is_ok());
        assert!(b.apply(Delta::reserve(2)).is_ok());
        assert!(b.apply(Delta::sell(3)).is_err());
        assert!(b.apply(Delta::sell(2)).is_ok());
        assert_eq!(b.sold, 2);
        assert!(b.is_sound());
    }

    #[test]
    fn chunk_shrinks_near_sell_out() {
        let p = LeasePolicy {
            max_chunk: 64,
            spread: 8,
        };
        assert_eq!(p.chunk(1, None), 64);
        assert_eq!(p.chunk(1, Some(10_000)), 64);
        assert_eq!(p.chunk(1, Some(80)), 10);
        assert_eq!(
            p.chunk(1, Some(7)),
            1,
            "the last units are taken one by one"
        );
        assert_eq!(p.chunk(5, Some(7)), 5, "never less than the need");
    }

    #[test]
    fn sold_out_is_answered_from_memory() {
        let p = LeasePolicy {
            max_chunk: 64,
            spread: LeasePolicy::SPREAD,
        };
        let mut s = SkuStock::default();
        assert_eq!(s.take(1, &p, 1), Take::NeedLease { want: 64 });
        s.granted(2, 0);
        assert_eq!(s.take(1, &p, 2), Take::Taken);
        assert_eq!(s.take(2, &p, 3), Take::Short { available: 1 });
        assert_eq!(s.take(1, &p, 4), Take::Taken);
        assert_eq!(s.take(1, &p, 5), Take::Short { available: 0 });
        s.refreshed(5);
        assert!(matches!(s.take(1, &p, 6), Take::NeedLease { .. }));
    }

    #[test]
    fn idle_leases_are_drained() {
        let mut shard = ShardStock::new(LeasePolicy {
            max_chunk: 64,
            spread: LeasePolicy::SPREAD,
        });
        shard.sku("A").granted(5, 10);
        shard.sku("A").last_used = 10;
        shard.sku("B").granted(3, 10);
        shard.sku("B").last_used = 100;
        assert_eq!(shard.drain_idle(50), vec![("A".to_owned(), 5)]);
        assert_eq!(shard.lease_of("A"), 0);
        assert_eq!(shard.lease_of("B"), 3);
    }
}
