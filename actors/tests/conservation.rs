//! Property test: random interleavings of reserve, release, expire, checkout, lease
//! grant, lease return, restock and node death across several simulated nodes, using
//! the same core the actors use. After every step the PostgreSQL row must be sound
//! (`total = available + leased + reserved + sold`, nothing negative, `sold <= total`)
//! and every bucket must equal what the nodes and carts hold.

use proptest::prelude::*;
use surge_actors::stock::{Buckets, Delta, LeasePolicy, SkuStock, Take};

const NODES: usize = 3;
const TTL: i64 = 100;
const REAP_GRACE: i64 = 10;

#[derive(Debug, Clone)]
enum Op {
    Reserve { node: usize, n: i64 },
    Release { node: usize, pick: usize },
    Checkout { node: usize, pick: usize },
    Advance { by: i64 },
    ReturnIdle { node: usize },
    Kill { node: usize },
    Restart { node: usize },
    Reap,
    Resume { node: usize, pick: usize },
    Restock { n: i64 },
    Refresh { node: usize },
}

fn op() -> impl Strategy<Value = Op> {
    let node = 0..NODES;
    prop_oneof![
        6 => (node.clone(), 1i64..6).prop_map(|(node, n)| Op::Reserve { node, n }),
        2 => (node.clone(), any::<usize>()).prop_map(|(node, pick)| Op::Release { node, pick }),
        3 => (node.clone(), any::<usize>()).prop_map(|(node, pick)| Op::Checkout { node, pick }),
        2 => (1i64..60).prop_map(|by| Op::Advance { by }),
        1 => node.clone().prop_map(|node| Op::ReturnIdle { node }),
        1 => node.clone().prop_map(|node| Op::Kill { node }),
        1 => node.clone().prop_map(|node| Op::Restart { node }),
        1 => Just(Op::Reap),
        1 => (node.clone(), any::<usize>()).prop_map(|(node, pick)| Op::Resume { node, pick }),
        1 => (1i64..20).prop_map(|n| Op::Restock { n }),
        1 => node.clone().prop_map(|node| Op::Refresh { node }),
    ]
}

#[derive(Debug, Default)]
struct Node {
    alive: bool,
    stock: SkuStock,
    /// This node's `stock_leases` row.
    lease_row: i64,
    /// Reservations of carts this node owns: (quantity, expires_at).
    carts: Vec<(i64, i64)>,
}

#[derive(Debug)]
struct World {
    db: Buckets,
    nodes: Vec<Node>,
    /// Lease rows of dead nodes, not yet reaped.
    dead_leases: Vec<i64>,
    /// Reservations of carts whose node died: (quantity, expires_at).
    orphans: Vec<(i64, i64)>,
    now: i64,
    policy: LeasePolicy,
    sold_units: i64,
}

impl World {
    fn new(stock: i64) -> Self {
        Self {
            db: Buckets::stocked(stock),
            nodes: (0..NODES)
                .map(|_| Node {
                    alive: true,
                    ..Node::default()
                })
                .collect(),
            dead_leases: Vec::new(),
            orphans: Vec::new(),
            now: 0,
            policy: LeasePolicy {
                max_chunk: 16,
                spread: 4,
            },
            sold_units: 0,
        }
    }

    /// What the Journal commits: the delta must be accepted by PostgreSQL's CHECK.
    fn commit(&mut self, d: Delta) {
        assert!(d.is_balanced(), "unbalanced delta {d:?}");
        self.db
            .apply(d)
            .expect("PostgreSQL would refuse this commit");
    }

    fn release(&mut self, node: usize, q: i64) {
        self.commit(Delta::unreserve(q));
        let now = self.now as u64;
        let n = &mut self.nodes[node];
        n.lease_row += q;
        n.stock.put(q, now);
    }

    fn step(&mut self, op: &Op) {
        let now = self.now as u64;
        match *op {
            Op::Reserve { node, n } if self.nodes[node].alive => {
                let policy = self.policy;
                let mut take = self.nodes[node].stock.take(n, &policy, now);
                if let Take::NeedLease { want } = take {
                    // The Journal's grant: whatever PostgreSQL has, up to `want`.
                    let granted = want.min(self.db.available);
                    self.commit(Delta::grant(granted));
                    let remaining = self.db.available;
                    let nd = &mut self.nodes[node];
                    nd.lease_row += granted;
                    nd.stock.granted(granted, remaining);
                    take = nd.stock.take(n, &policy, now);
                    assert!(
                        !matches!(take, Take::NeedLease { .. }),
                        "a grant must settle the request"
                    );
                }
                if take == Take::Taken {
                    self.commit(Delta::reserve(n));
                    let nd = &mut self.nodes[node];
                    nd.lease_row -= n;
                    nd.carts.push((n, self.now + TTL));
                } else if let Take::Short { available } = take {
                    // Refused from memory: PostgreSQL was empty at this node's last grant
                    // (another node may have returned units since; Refresh catches up).
                    assert!(available < n);
                    assert!(self.nodes[node].stock.db_empty);
                }
            }
            Op::Release { node, pick }
                if self.nodes[node].alive && !self.nodes[node].carts.is_empty() =>
            {
                let i = pick % self.nodes[node].carts.len();
                let (q, _) = self.nodes[node].carts.remove(i);
                self.release(node, q);
            }
            Op::Checkout { node, pick }
                if self.nodes[node].alive && !self.nodes[node].carts.is_empty() =>
            {
                let i = pick % self.nodes[node].carts.len();
                let (q, expires) = self.nodes[node].carts[i];
                if expires > self.now {
                    self.nodes[node].carts.remove(i);
                    self.commit(Delta::sell(q));
                    self.sold_units += q;
                }
            }
            Op::Advance { by } => {
                self.now += by;
                for node in 0..NODES {
                    if !self.nodes[node].alive {
                        continue;
                    }
                    let now = self.now;
                    let (expired, kept): (Vec<_>, Vec<_>) = self.nodes[node]
                        .carts
                        .drain(..)
                        .partition(|(_, e)| *e <= now);
                    self.nodes[node].carts = kept;
                    for (q, _) in expired {
                        self.release(node, q);
                    }
                }
            }
            Op::ReturnIdle { node } if self.nodes[node].alive => {
                let n = self.nodes[node].stock.drain();
                self.commit(Delta::give_back(n));
                self.nodes[node].lease_row -= n;
            }
            Op::Kill { node } if self.nodes[node].alive => {
                let nd = std::mem::take(&mut self.nodes[node]);
                self.dead_leases.push(nd.lease_row);
                self.orphans.extend(nd.carts);
            }
            Op::Restart { node } if !self.nodes[node].alive => {
                self.nodes[node] = Node {
                    alive: true,
                    ..Node::default()
                };
            }
            Op::Reap => {
                for q in std::mem::take(&mut self.dead_leases) {
                    self.commit(Delta::give_back(q));
                }
                let now = self.now;
                let (reap, keep): (Vec<_>, Vec<_>) = self
                    .orphans
                    .drain(..)
                    .partition(|(_, e)| e + REAP_GRACE <= now);
                self.orphans = keep;
                for (q, _) in reap {
                    self.commit(Delta::reap_reservation(q));
                }
            }
            Op::Resume { node, pick } if self.nodes[node].alive && !self.orphans.is_empty() => {
                let i = pick % self.orphans.len();
                let line = self.orphans.remove(i);
                self.nodes[node].carts.push(line);
            }
            Op::Refresh { node } if self.nodes[node].alive && self.nodes[node].stock.db_empty => {
                // The heartbeat's recheck of SKUs refused from memory.
                let available = self.db.available;
                self.nodes[node].stock.refreshed(available);
            }
            Op::Restock { n } => {
                self.commit(Delta::restock(n));
                let available = self.db.available;
                for nd in self.nodes.iter_mut().filter(|n| n.alive) {
                    nd.stock.refreshed(available);
                }
            }
            _ => {}
        }
    }

    fn check(&self) {
        assert!(self.db.is_sound(), "unsound row {:?}", self.db);
        let live_leases: i64 = self
            .nodes
            .iter()
            .filter(|n| n.alive)
            .map(|n| n.lease_row)
            .sum();
        assert_eq!(
            self.db.leased,
            live_leases + self.dead_leases.iter().sum::<i64>(),
            "leased bucket"
        );
        for n in self.nodes.iter().filter(|n| n.alive) {
            assert_eq!(
                n.lease_row, n.stock.lease,
                "memory lease equals the lease row"
            );
            assert!(n.stock.lease >= 0);
        }
        let reserved: i64 = self
            .nodes
            .iter()
            .flat_map(|n| n.carts.iter())
            .chain(self.orphans.iter())
            .map(|(q, _)| q)
            .sum();
        assert_eq!(self.db.reserved, reserved, "reserved bucket");
        assert_eq!(self.db.sold, self.sold_units, "sold bucket");
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn stock_is_conserved_under_any_interleaving(stock in 0i64..60, ops in proptest::collection::vec(op(), 1..200)) {
        let mut world = World::new(stock);
        world.check();
        for op in &ops {
            world.step(op);
            world.check();
        }
    }

    #[test]
    fn everything_sells_when_buyers_keep_coming(stock in 1i64..80) {
        // Buyers on every node buy one unit at a time; nodes return idle leases.
        // Every unit must sell: no unit may stay stranded on a node.
        let mut world = World::new(stock);
        for round in 0..(stock * 4 + 20) {
            let node = (round as usize) % NODES;
            world.step(&Op::Reserve { node, n: 1 });
            world.step(&Op::Checkout { node, pick: 0 });
            if round % 7 == 6 {
                world.step(&Op::ReturnIdle { node: (node + 1) % NODES });
            }
            if round % 5 == 4 {
                world.step(&Op::Refresh { node: (node + 2) % NODES });
            }
            world.check();
        }
        for node in 0..NODES {
            world.step(&Op::ReturnIdle { node });
        }
        for _ in 0..stock {
            for node in 0..NODES {
                world.step(&Op::Refresh { node });
                world.step(&Op::Reserve { node, n: 1 });
                world.step(&Op::Checkout { node, pick: 0 });
            }
        }
        world.check();
        prop_assert_eq!(world.db.sold, stock, "every unit sold, none stranded");
    }
}
