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

/// Identifies a parked taker, so that the shell can answer it when its turn comes.
pub type WaiterId = u64;

/// The answer of a shard asked for units.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Take {
    /// The units came out of the lease, which belongs to lease row `epoch`.
    Taken {
        /// Epoch of the lease row the units came from (`None`: no row is known).
        epoch: Option<i64>,
    },
    /// The caller is parked; send a grant of `want` units, then call
    /// [`SkuStock::granted`]. Only one grant per SKU is in flight at a time.
    NeedLease {
        /// Units to request.
        want: i64,
    },
    /// The caller is parked behind the grant (or recall) in flight.
    Wait,
    /// Not enough stock exists anywhere (as of the last grant): `available` units
    /// could be had.
    Short {
        /// Units the cluster could still hand out.
        available: i64,
    },
}

/// Why a parked taker cannot have its units, decided after the last try.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// PostgreSQL and every node's free lease together hold fewer units than asked.
    Short {
        /// `lease + remaining + held_live + recovering`.
        available: i64,
    },
    /// Enough units exist, but some sit in leases of nodes whose heartbeat lapsed;
    /// the reaper will return them.
    Recovering,
    /// Enough units exist in live nodes' leases, but they did not answer the recall in
    /// time (Redis down, or a holder frozen).
    Contended,
}

/// What a grant found, besides the units it moved.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GrantOutcome {
    /// Units moved into this node's lease.
    pub granted: i64,
    /// PostgreSQL's available count afterwards.
    pub remaining: i64,
    /// Free leased units of other nodes whose heartbeat is fresh.
    pub held_live: i64,
    /// Units in lease rows of nodes whose heartbeat lapsed.
    pub recovering: i64,
    /// Epoch of this node's lease row afterwards (`None`: there is no row).
    pub epoch: Option<i64>,
}

/// What the shell does next for a SKU after a grant settled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Nothing is waiting.
    Idle,
    /// Send one more grant of `want` units.
    Grant {
        /// Units to request.
        want: i64,
    },
    /// Ask the other nodes to return `want` units, then call [`SkuStock::recall_over`]
    /// when a stock event arrives or the recall wait ends.
    Recall {
        /// Units missing.
        want: i64,
    },
}

/// The answers a settled grant gives its parked takers, in arrival order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settled {
    /// One answer per taker served or refused.
    pub answers: Vec<(WaiterId, Result<Option<i64>, Refusal>)>,
    /// What to do for the takers still parked.
    pub next: Next,
}

/// Where a SKU's lease stands between takes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Phase {
    /// Nothing in flight: a short take starts a grant.
    #[default]
    Idle,
    /// A grant is in flight.
    Granting {
        /// Recalls made before it; at [`MAX_RECALLS`] its outcome is final.
        recalls: u8,
    },
    /// Waiting for other nodes to return units.
    Recalling {
        /// Which recall this is, from 1.
        round: u8,
    },
}

/// Recalls a short SKU makes before it answers with the truth. More than one, because
/// with three or more nodes the first return to commit may fall short while another
/// holder's is a moment behind, or a holder that was itself granting had nothing free
/// yet; few, because each costs up to the recall wait before the shopper hears.
pub const MAX_RECALLS: u8 = 3;

/// One node's stock of one SKU.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SkuStock {
    /// Free units this node holds (its `stock_leases` row).
    pub lease: i64,
    /// Epoch of the lease row the units in memory belong to.
    pub epoch: Option<i64>,
    /// PostgreSQL's available count when last seen.
    pub db_hint: Option<i64>,
    /// Nothing was left anywhere at the last grant: refuse from memory.
    pub db_empty: bool,
    /// Logical time of the last take or put, for idle returns.
    pub last_used: u64,
    /// The grant or recall in flight, if any.
    pub phase: Phase,
    /// Takers parked behind it, in arrival order.
    pub waiters: std::collections::VecDeque<(WaiterId, i64)>,
    /// Logical time of the last grant, so that a heartbeat read before it cannot fence
    /// the row it created.
    pub granted_at: u64,
}

impl SkuStock {
    /// Tries to take `n` units for taker `id`; never goes to PostgreSQL itself. A taker
    /// that cannot be served from the lease is parked (`NeedLease` or `Wait`).
    pub fn take(&mut self, id: WaiterId, n: i64, policy: &LeasePolicy, now: u64) -> Take {
        self.last_used = now;
        if self.waiters.is_empty() && n <= self.lease {
            self.lease -= n;
            return Take::Taken { epoch: self.epoch };
        }
        if self.phase != Phase::Idle {
            self.waiters.push_back((id, n));
            return Take::Wait;
        }
        if self.db_empty {
            return Take::Short {
                available: self.lease,
            };
        }
        self.waiters.push_back((id, n));
        self.phase = Phase::Granting { recalls: 0 };
        Take::NeedLease {
            want: self.want(policy),
        }
    }

    /// Units the parked takers need beyond the lease, sized by the policy.
    fn want(&self, policy: &LeasePolicy) -> i64 {
        let demand: i64 = self.waiters.iter().map(|(_, n)| n).sum();
        policy.chunk(demand - self.lease, self.db_hint)
    }

    /// Units come back into the lease (a release, an expiry, or an undo). With no
    /// lease row known (fenced), a release went back to PostgreSQL: nothing to add.
    pub fn put(&mut self, n: i64, now: u64) {
        if self.epoch.is_some() {
            self.lease += n;
        }
        self.last_used = now;
    }

    /// The grant in flight committed: the lease grows (or is replaced, when the row
    /// it belonged to is gone), parked takers are served in order, and the core says
    /// whether to grant again, recall, or answer the rest with the truth.
    pub fn granted(&mut self, g: GrantOutcome, policy: &LeasePolicy, now: u64) -> Settled {
        self.granted_at = now;
        let recalls = match self.phase {
            Phase::Granting { recalls } => recalls,
            _ => 0,
        };
        if g.epoch == self.epoch {
            self.lease += g.granted;
        } else {
            // The row memory knew was reaped: its units are not ours any more.
            self.lease = g.granted;
            self.epoch = g.epoch;
        }
        self.db_hint = Some(g.remaining);
        self.db_empty = g.remaining == 0 && g.held_live == 0 && g.recovering == 0;
        let mut answers = self.serve();
        self.phase = Phase::Idle;
        let next = match self.waiters.front() {
            None => Next::Idle,
            Some(_) if g.remaining > 0 => {
                self.phase = Phase::Granting { recalls };
                Next::Grant {
                    want: self.want(policy),
                }
            }
            Some(_) if g.held_live > 0 && recalls < MAX_RECALLS => {
                self.phase = Phase::Recalling { round: recalls + 1 };
                let demand: i64 = self.waiters.iter().map(|(_, n)| n).sum();
                Next::Recall {
                    want: demand - self.lease,
                }
            }
            Some(_) => {
                answers.extend(self.refuse_all(g));
                Next::Idle
            }
        };
        Settled { answers, next }
    }

    /// Serves parked takers from the lease, strictly in arrival order.
    fn serve(&mut self) -> Vec<(WaiterId, Result<Option<i64>, Refusal>)> {
        let mut out = Vec::new();
        while let Some(&(id, n)) = self.waiters.front() {
            if n > self.lease {
                break;
            }
            self.lease -= n;
            self.waiters.pop_front();
            out.push((id, Ok(self.epoch)));
        }
        out
    }

    /// After the last try: serves whoever the lease covers and refuses the others with
    /// what the cluster holds.
    fn refuse_all(&mut self, g: GrantOutcome) -> Vec<(WaiterId, Result<Option<i64>, Refusal>)> {
        let mut out = Vec::new();
        while let Some((id, n)) = self.waiters.pop_front() {
            if n <= self.lease {
                self.lease -= n;
                out.push((id, Ok(self.epoch)));
                continue;
            }
            let available = self.lease + g.remaining + g.held_live + g.recovering;
            let why = if available < n {
                Refusal::Short { available }
            } else if g.recovering > 0 {
                Refusal::Recovering
            } else {
                Refusal::Contended
            };
            out.push((id, Err(why)));
        }
        out
    }

    /// The recall wait ended (a stock event came, or time ran out): grant once more;
    /// after the [`MAX_RECALLS`]th recall, for the last time before answering.
    pub fn recall_over(&mut self, policy: &LeasePolicy) -> Next {
        let Phase::Recalling { round } = self.phase else {
            return Next::Idle;
        };
        if self.waiters.is_empty() {
            self.phase = Phase::Idle;
            return Next::Idle;
        }
        self.phase = Phase::Granting { recalls: round };
        Next::Grant {
            want: self.want(policy),
        }
    }

    /// The grant in flight failed (nothing committed): every parked taker is answered
    /// with that failure.
    pub fn grant_failed(&mut self) -> Vec<WaiterId> {
        self.phase = Phase::Idle;
        self.waiters.drain(..).map(|(id, _)| id).collect()
    }

    /// Takes every free leased unit out for return to PostgreSQL.
    pub fn drain(&mut self) -> i64 {
        std::mem::take(&mut self.lease)
    }

    /// PostgreSQL has `available` units again (a restock or another node's return).
    pub fn refreshed(&mut self, available: i64) {
        self.db_hint = Some(available);
        self.db_empty = available == 0;
    }

    /// A reserve of `taken` units from the lease of `epoch` was refused because the
    /// row held only `row` units when the batch locked it: memory counted units the row
    /// does not have. The taken units come back, but memory never holds more than the
    /// row did: the row's free units are what memory may hand out, less what is still
    /// in flight, so the clamp can only remove units no row backs. Repeated refusals
    /// converge instead of repeating.
    pub fn clamp(&mut self, epoch: Option<i64>, taken: i64, row: i64, now: u64) {
        self.last_used = now;
        if epoch.is_some() && epoch == self.epoch {
            self.lease = (self.lease + taken).min(row.max(0));
        }
    }

    /// Fencing: this node's lease row for the SKU now has epoch `row` (`None`: it is
    /// gone). Units memory holds under another epoch are not backed by any row, so
    /// they are dropped before anything is sold from them; returns how many.
    pub fn fence(&mut self, row: Option<i64>) -> i64 {
        if row == self.epoch {
            return 0;
        }
        self.epoch = row;
        std::mem::take(&mut self.lease)
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
    pub fn take(&mut self, sku: &str, id: WaiterId, n: i64, now: u64) -> Take {
        let policy = self.policy;
        self.sku(sku).take(id, n, &policy, now)
    }

    /// See [`SkuStock::granted`].
    pub fn granted(&mut self, sku: &str, g: GrantOutcome, now: u64) -> Settled {
        let policy = self.policy;
        self.sku(sku).granted(g, &policy, now)
    }

    /// See [`SkuStock::recall_over`].
    pub fn recall_over(&mut self, sku: &str) -> Next {
        let policy = self.policy;
        self.sku(sku).recall_over(&policy)
    }

    /// SKUs whose lease has sat unused since `idle_before`, with their units taken out.
    /// A SKU with a grant in flight is busy, never idle.
    pub fn drain_idle(&mut self, idle_before: u64) -> Vec<(String, i64)> {
        self.skus
            .iter_mut()
            .filter(|(_, s)| s.lease > 0 && s.last_used < idle_before && s.phase == Phase::Idle)
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

    /// The epoch of the lease row memory sells from, per SKU.
    pub fn epoch_of(&self, sku: &str) -> Option<i64> {
        self.skus.get(sku).and_then(|s| s.epoch)
    }

    /// The stock of a SKU, if this shard has seen it.
    pub fn sku_mut(&mut self, sku: &str) -> Option<&mut SkuStock> {
        self.skus.get_mut(sku)
    }

    /// Fencing against this node's live lease rows `(sku, epoch)` as the heartbeat
    /// read them, starting at logical time `read_at`: drops every memory lease whose
    /// row is gone or was re-created. SKUs granted since `read_at` (or with a grant in
    /// flight) are skipped: the read may predate their row. Returns what was dropped.
    pub fn fence(&mut self, rows: &HashMap<String, i64>, read_at: u64) -> Vec<(String, i64)> {
        self.skus
            .iter_mut()
            .filter(|(_, s)| s.phase == Phase::Idle && s.granted_at < read_at)
            .filter_map(|(k, s)| {
                let dropped = s.fence(rows.get(k).copied());
                (dropped > 0).then(|| (k.clone(), dropped))
            })
            .collect()
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

    fn policy() -> LeasePolicy {
        LeasePolicy {
            max_chunk: 64,
            spread: LeasePolicy::SPREAD,
        }
    }

    fn outcome(granted: i64, remaining: i64) -> GrantOutcome {
        GrantOutcome {
            granted,
            remaining,
            epoch: Some(1),
            ..GrantOutcome::default()
        }
    }

    #[test]
    fn sold_out_is_answered_from_memory() {
        let p = policy();
        let mut s = SkuStock::default();
        assert_eq!(s.take(1, 1, &p, 1), Take::NeedLease { want: 64 });
        let settled = s.granted(outcome(2, 0), &p, 1);
        assert_eq!(settled.answers, vec![(1, Ok(Some(1)))]);
        assert_eq!(settled.next, Next::Idle);
        assert_eq!(s.take(2, 2, &p, 3), Take::Short { available: 1 });
        assert_eq!(s.take(3, 1, &p, 4), Take::Taken { epoch: Some(1) });
        assert_eq!(s.take(4, 1, &p, 5), Take::Short { available: 0 });
        s.refreshed(5);
        assert!(matches!(s.take(5, 1, &p, 6), Take::NeedLease { .. }));
    }

    /// Guards against parallel grants: 100 concurrent takers used to send 100 grants
    /// and one node took everything.
    #[test]
    fn concurrent_takers_share_one_grant_in_arrival_order() {
        let p = policy();
        let mut s = SkuStock::default();
        assert_eq!(s.take(0, 1, &p, 0), Take::NeedLease { want: 64 });
        for id in 1..100 {
            assert_eq!(s.take(id, 1, &p, 0), Take::Wait, "one grant in flight");
        }
        let settled = s.granted(outcome(64, 236), &p, 1);
        let served: Vec<u64> = settled.answers.iter().map(|(id, _)| *id).collect();
        assert_eq!(served, (0..64).collect::<Vec<_>>(), "FIFO");
        assert_eq!(
            settled.next,
            Next::Grant { want: 36 },
            "the next grant is sized to the waiting demand"
        );
        let settled = s.granted(outcome(36, 200), &p, 2);
        assert_eq!(settled.answers.len(), 36);
        assert_eq!(settled.next, Next::Idle);
        assert_eq!(s.lease, 0, "the node holds no more than its demand");
    }

    /// Guards against a false sold-out while other nodes hold free units, and against
    /// a short SKU recalling for ever instead of answering.
    #[test]
    fn a_short_grant_recalls_a_few_times_then_answers_the_truth() {
        let p = policy();
        let mut s = SkuStock::default();
        assert!(matches!(s.take(0, 3, &p, 0), Take::NeedLease { .. }));
        let g = GrantOutcome {
            granted: 1,
            remaining: 0,
            held_live: 5,
            recovering: 0,
            epoch: Some(1),
        };
        let settled = s.granted(g, &p, 1);
        assert!(settled.answers.is_empty());
        assert_eq!(settled.next, Next::Recall { want: 2 });
        assert_eq!(s.take(1, 1, &p, 1), Take::Wait, "a recall parks newcomers");
        assert_eq!(s.recall_over(&p), Next::Grant { want: 3 });
        // Nobody answered: the units are live elsewhere. Ask again, up to the bound.
        let nothing = GrantOutcome { granted: 0, ..g };
        for round in 2..=MAX_RECALLS {
            let settled = s.granted(nothing, &p, u64::from(round));
            assert!(settled.answers.is_empty(), "round {round}");
            assert_eq!(settled.next, Next::Recall { want: 3 }, "round {round}");
            assert_eq!(s.recall_over(&p), Next::Grant { want: 3 });
        }
        let settled = s.granted(nothing, &p, 9);
        assert_eq!(
            settled.answers,
            vec![(0, Err(Refusal::Contended)), (1, Ok(Some(1)))]
        );
        assert_eq!(settled.next, Next::Idle);
        assert!(!s.db_empty, "units exist elsewhere: not sold out");

        let mut s = SkuStock::default();
        s.take(0, 3, &p, 0);
        let dead = GrantOutcome {
            granted: 0,
            remaining: 0,
            held_live: 0,
            recovering: 4,
            epoch: None,
        };
        let settled = s.granted(dead, &p, 1);
        assert_eq!(settled.answers, vec![(0, Err(Refusal::Recovering))]);
        s.take(1, 9, &p, 2);
        let settled = s.granted(dead, &p, 3);
        assert_eq!(
            settled.answers,
            vec![(1, Err(Refusal::Short { available: 4 }))],
            "a 409 carries what the cluster holds"
        );
    }

    /// Guards against selling from a lease the reaper took while this node was frozen.
    #[test]
    fn a_reaped_lease_is_dropped_before_it_sells() {
        let p = policy();
        let mut s = SkuStock::default();
        s.take(0, 1, &p, 0);
        s.granted(outcome(10, 100), &p, 1);
        assert_eq!(s.lease, 9);
        let rows = HashMap::new();
        let mut shard = ShardStock::new(p);
        *shard.sku("A") = s.clone();
        assert!(
            shard.fence(&rows, 1).is_empty(),
            "a read older than the grant fences nothing"
        );
        assert_eq!(shard.fence(&rows, 2), vec![("A".to_owned(), 9)]);
        assert_eq!(shard.lease_of("A"), 0);
        let s = shard.sku("A");
        assert_eq!(s.take(1, 1, &p, 3), Take::NeedLease { want: 12 });
        // A grant onto a new row replaces whatever memory believed.
        let settled = s.granted(
            GrantOutcome {
                epoch: Some(7),
                ..outcome(4, 90)
            },
            &p,
            4,
        );
        assert_eq!(settled.answers, vec![(1, Ok(Some(7)))]);
        assert_eq!(s.lease, 3);
    }

    #[test]
    fn idle_leases_are_drained() {
        let mut shard = ShardStock::new(LeasePolicy {
            max_chunk: 64,
            spread: LeasePolicy::SPREAD,
        });
        shard.sku("A").lease = 5;
        shard.sku("A").last_used = 10;
        shard.sku("B").lease = 3;
        shard.sku("B").last_used = 100;
        assert_eq!(shard.drain_idle(50), vec![("A".to_owned(), 5)]);
        assert_eq!(shard.lease_of("A"), 0);
        assert_eq!(shard.lease_of("B"), 3);
    }

    /// Guards against phantom units answered 503 on every try: memory counted more
    /// than its lease row, a reserve was refused `LeaseShort`, and putting the taken
    /// units back would make the next reserve fail the same way.
    #[test]
    fn a_short_lease_is_clamped_to_its_row() {
        let mut s = SkuStock {
            lease: 4,
            epoch: Some(3),
            ..SkuStock::default()
        };
        // Took 2 of 6 believed; the row held 3 when the batch locked it.
        s.clamp(Some(3), 2, 3, 1);
        assert_eq!(s.lease, 3, "never more than the row held");
        // A refusal about another epoch's lease changes nothing.
        s.clamp(Some(2), 2, 0, 2);
        assert_eq!(s.lease, 3);
        // With memory already below the row, the taken units simply come back.
        s.lease = 1;
        s.clamp(Some(3), 1, 10, 3);
        assert_eq!(s.lease, 2);
    }
}
