//! Property test of the stock arithmetic as the server runs it.
//!
//! PostgreSQL's rows (inventory buckets, lease rows per node, reservation rows, carts
//! with their versions and owners, node heartbeats, order lines) are modelled as plain
//! data. Several simulated nodes, each with its in-memory [`ShardStock`] and cart
//! copies, turn shoppers' requests into [`WriteOp`]s the way the actors do, and commit
//! them in batches through the real planner ([`journal_plan::plan`]); reaper passes run
//! the real [`reaper::plan`] on the rows. After every step, every row must be sound
//! and every bucket must equal what the rows hold, and no node's memory may hand out
//! units its lease row does not have.
//!
//! The lease protocol runs as the shard runs it: concurrent takers park behind the one
//! grant in flight per SKU, a short node recalls other nodes' free units, and the
//! reaper may take a live node's lease (a node frozen past its TTL): the node's
//! reserves from that lease are refused and its heartbeat fences the memory lease.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::Duration,
};

use proptest::prelude::*;
use surge_actors::{
    cart::{Cart, CartLimits, CartLine},
    cart_actor::order_lines,
    journal_plan::{self, Locked},
    money::{Currency, Money},
    ports::{JournalError, PlaceOrder, Rejection, SetLine, WriteOp, WriteOutcome},
    reaper::{self, HeldReservation, LeaseRow, Scope},
    stock::{Buckets, Delta, LeasePolicy, Next, ShardStock, Take, WaiterId},
};
use uuid::Uuid;

const NODES: usize = 3;
const SKUS: [&str; 2] = ["A", "B"];
const SESSIONS: usize = 6;
/// Lifetime of a lease row after its last renewal, and of a node's heartbeat (ms).
const TTL: i64 = 100;
/// Reservations are reaped this long after they expire (ms).
const GRACE: i64 = 10;
/// A lease unused this long goes back at the shard's next tick (ms).
const IDLE: i64 = 40;
const PRICE: i64 = 100;

fn limits() -> CartLimits {
    CartLimits {
        max_line_quantity: 4,
        max_lines: 2,
        reservation_ttl_ms: 60,
        checkout_margin_ms: 5,
    }
}

fn eur() -> Currency {
    Currency::parse("EUR").expect("valid")
}

fn price() -> Money {
    Money::new(PRICE, eur())
}

fn node_id(n: usize) -> String {
    format!("node-{n}")
}

fn session_id(s: usize) -> String {
    format!("session-{s}")
}

fn dead_scope() -> Scope<'static> {
    Scope::Dead {
        grace: Duration::from_millis(GRACE as u64),
    }
}

#[derive(Debug, Clone)]
enum Intent {
    /// `PUT /api/cart/items/{sku}` (quantity 0: `DELETE`). `evict`: the bus delivers
    /// the takeover to other nodes if this request claims the cart.
    Set {
        session: usize,
        sku: usize,
        quantity: i64,
        evict: bool,
    },
    /// `POST /api/checkout`.
    Checkout { session: usize, evict: bool },
}

#[derive(Debug, Clone)]
enum Op {
    /// A node's requests arrive together and its Journal commits them as one batch.
    Batch { node: usize, intents: Vec<Intent> },
    /// Time passes; live nodes heartbeat.
    Advance { by: i64 },
    /// A shard's tick: idle leases go back, sold-out SKUs are rechecked.
    Tick { node: usize },
    /// The carts' expiry timers fire.
    Expire { node: usize },
    /// `kill -9`.
    Kill { node: usize },
    /// Graceful shutdown: leases go back, the node leaves.
    Stop { node: usize },
    /// A new process under the same node id.
    Restart { node: usize },
    /// A reaper pass for dead nodes.
    Reap,
    /// An admin restock.
    Restock { sku: usize, n: i64 },
    /// The reaper takes a live node's leases (it was frozen past its TTL).
    ReapLive { node: usize },
}

fn intent() -> impl Strategy<Value = Intent> {
    prop_oneof![
        5 => (0..SESSIONS, 0..SKUS.len(), 0i64..=4, any::<bool>()).prop_map(
            |(session, sku, quantity, evict)| Intent::Set { session, sku, quantity, evict }
        ),
        2 => (0..SESSIONS, any::<bool>())
            .prop_map(|(session, evict)| Intent::Checkout { session, evict }),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    let node = 0..NODES;
    prop_oneof![
        10 => (node.clone(), proptest::collection::vec(intent(), 0..5))
            .prop_map(|(node, intents)| Op::Batch { node, intents }),
        3 => (1i64..30).prop_map(|by| Op::Advance { by }),
        2 => node.clone().prop_map(|node| Op::Tick { node }),
        2 => node.clone().prop_map(|node| Op::Expire { node }),
        1 => node.clone().prop_map(|node| Op::Kill { node }),
        1 => node.clone().prop_map(|node| Op::Stop { node }),
        1 => node.clone().prop_map(|node| Op::Restart { node }),
        2 => Just(Op::Reap),
        1 => (0..SKUS.len(), 1i64..10).prop_map(|(sku, n)| Op::Restock { sku, n }),
        1 => node.clone().prop_map(|node| Op::ReapLive { node }),
    ]
}

/// A `carts` row.
#[derive(Debug, Clone)]
struct CartRow {
    session: String,
    version: i64,
    owner: String,
}

/// PostgreSQL's rows.
#[derive(Debug, Default)]
struct Db {
    inventory: BTreeMap<String, Buckets>,
    /// `stock_leases`: (node, SKU) → (quantity, expires_at).
    leases: BTreeMap<(String, String), (i64, i64)>,
    /// `stock_leases.epoch`: (node, SKU) → epoch.
    epochs: BTreeMap<(String, String), i64>,
    /// `stock_lease_epoch`, the sequence.
    next_epoch: i64,
    /// `reservations`: (cart, SKU) → (quantity, expires_at).
    reservations: BTreeMap<(Uuid, String), (i64, i64)>,
    carts: BTreeMap<Uuid, CartRow>,
    /// `nodes`: node → heartbeat_at.
    heartbeats: BTreeMap<String, i64>,
    /// Units in `order_lines`, per SKU.
    ordered: BTreeMap<String, i64>,
}

impl Db {
    /// `store::inventory::apply`: PostgreSQL's CHECK constraints refuse an unsound row,
    /// which would fail the whole transaction; the arithmetic must never ask for one.
    fn apply(&mut self, moves: &BTreeMap<String, Delta>) {
        for (sku, d) in moves.iter().filter(|(_, d)| !d.is_zero()) {
            let row = self.inventory.get_mut(sku).expect("a known SKU");
            if let Err(e) = row.apply(*d) {
                panic!("PostgreSQL's CHECK refuses the commit: {e}");
            }
        }
    }

    fn reservations_of(&self, cart: Uuid) -> impl Iterator<Item = (&String, &(i64, i64))> {
        self.reservations
            .range((cart, String::new())..)
            .take_while(move |((c, _), _)| *c == cart)
            .map(|((_, sku), row)| (sku, row))
    }

    /// `store::journal::commit`: lock, plan with the real planner, write the plan.
    fn commit(
        &mut self,
        node: &str,
        ops: &[WriteOp],
        now: i64,
    ) -> Vec<Result<WriteOutcome, JournalError>> {
        for op in ops {
            if let WriteOp::SetLine(SetLine {
                cart_id,
                create_for_session: Some(session),
                ..
            }) = op
            {
                // INSERT ... ON CONFLICT DO NOTHING on the id and on the session.
                if !self.carts.contains_key(cart_id)
                    && !self.carts.values().any(|c| &c.session == session)
                {
                    self.carts.insert(
                        *cart_id,
                        CartRow {
                            session: session.clone(),
                            version: 0,
                            owner: node.to_owned(),
                        },
                    );
                }
            }
        }
        let mut locked = Locked::default();
        let grants: BTreeSet<&String> = ops
            .iter()
            .filter_map(|op| match op {
                WriteOp::Grant { sku, .. } => Some(sku),
                _ => None,
            })
            .collect();
        if !grants.is_empty() {
            self.next_epoch += 1;
            locked.new_epoch = self.next_epoch;
        }
        for sku in journal_plan::skus(ops) {
            let key = (node.to_owned(), sku.clone());
            if let Some(&(q, _)) = self.leases.get(&key) {
                locked.lease.insert(sku.clone(), q);
                locked.lease_epoch.insert(sku.clone(), self.epochs[&key]);
            }
            if grants.contains(&sku) {
                // `read_others`: other nodes' free units, by heartbeat freshness.
                let mut others = (0, 0);
                for ((holder, s), &(q, _)) in &self.leases {
                    if holder != node && *s == sku && q > 0 {
                        let fresh = self
                            .heartbeats
                            .get(holder)
                            .is_some_and(|h| *h >= now - TTL * 2 / 3);
                        if fresh {
                            others.0 += q;
                        } else {
                            others.1 += q;
                        }
                    }
                }
                locked.others.insert(sku.clone(), others);
            }
            if let Some(b) = self.inventory.get(&sku) {
                locked.available.insert(sku, b.available);
            }
        }
        // Every SKU of the model sells at one committed price.
        for sku in journal_plan::priced_skus(ops) {
            if self.inventory.contains_key(&sku) {
                locked.prices.insert(sku, price());
            }
        }
        for cart in journal_plan::carts(ops) {
            if let Some(c) = self.carts.get(&cart) {
                locked.carts.insert(cart, c.version);
            }
            let held: Vec<(String, i64)> = self
                .reservations_of(cart)
                .map(|(sku, (q, _))| (sku.clone(), *q))
                .collect();
            for (sku, q) in held {
                locked.reservations.insert((cart, sku), q);
            }
        }
        let plan = journal_plan::plan(ops, locked);
        let new_epoch = plan.new_epoch;
        self.apply(&plan.inventory);
        for (sku, &q) in plan.lease.iter().filter(|(_, q)| **q != 0) {
            let key = (node.to_owned(), sku.clone());
            if plan.lease_rows.contains(sku) {
                let row = self
                    .leases
                    .get_mut(&key)
                    .expect("the row was read under lock");
                row.0 += q;
                row.1 = now + TTL;
                assert!(row.0 >= 0, "CHECK (quantity >= 0) on {key:?}");
            } else {
                assert!(q >= 0, "a new lease row of {q} units for {key:?}");
                self.epochs.insert(key.clone(), new_epoch);
                let old = self.leases.insert(key, (q, now + TTL));
                assert!(old.is_none(), "the lease row existed");
            }
        }
        for (key, row) in &plan.reservations {
            match row {
                None => {
                    self.reservations.remove(key);
                }
                Some(r) => {
                    assert!(r.quantity > 0, "CHECK (quantity > 0)");
                    assert!(self.carts.contains_key(&key.0), "the cart row exists");
                    self.reservations
                        .insert(key.clone(), (r.quantity, r.expires_at_ms));
                }
            }
        }
        for (cart, v) in &plan.cart_versions {
            self.carts.get_mut(cart).expect("a locked cart").version = *v;
        }
        for &i in &plan.orders {
            if let WriteOp::PlaceOrder(o) = &ops[i] {
                for l in &o.lines {
                    *self.ordered.entry(l.sku.clone()).or_default() += l.quantity;
                }
            }
        }
        plan.results
    }

    /// `store::carts::claim_cart`: this node owns the session's cart now; its version
    /// rises when it changes owner, and its lines are loaded from the reservations.
    /// A session without a cart row gets `None`: a claim writes no row.
    fn claim(&mut self, node: &str, session: &str) -> Option<Cart> {
        let (id, c) = self.carts.iter_mut().find(|(_, c)| c.session == session)?;
        if c.owner != node {
            c.owner = node.to_owned();
            c.version += 1;
        }
        let id = *id;
        let mut cart = Cart::new(id, self.carts[&id].version);
        for (sku, &(quantity, expires_at_ms)) in self.reservations_of(id) {
            cart.lines.insert(
                sku.clone(),
                CartLine {
                    sku: sku.clone(),
                    quantity,
                    unit_price: price(),
                    expires_at_ms,
                },
            );
        }
        Some(cart)
    }

    /// `store::leases::reap`: read the rows, plan with the real reaper arithmetic,
    /// delete exactly what it names and apply its movement.
    fn reap(&mut self, scope: Scope<'_>, now: i64) {
        let leases: Vec<LeaseRow> = self
            .leases
            .iter()
            .map(|((node, sku), &(quantity, expires_at_ms))| LeaseRow {
                node_id: node.clone(),
                sku: sku.clone(),
                quantity,
                expires_at_ms,
            })
            .collect();
        let reservations: Vec<HeldReservation> = self
            .reservations
            .iter()
            .filter(|(_, (_, expires))| *expires < now)
            .map(
                |((cart, sku), &(quantity, expires_at_ms))| HeldReservation {
                    cart_id: *cart,
                    session_id: self.carts[cart].session.clone(),
                    sku: sku.clone(),
                    quantity,
                    expires_at_ms,
                },
            )
            .collect();
        let reaping = reaper::plan(scope, now, &leases, &reservations);
        for key in &reaping.leases {
            assert!(self.leases.remove(key).is_some(), "{key:?} was read");
            self.epochs.remove(key);
        }
        for key in &reaping.reservations {
            assert!(self.reservations.remove(key).is_some(), "{key:?} was read");
        }
        for cart in &reaping.carts {
            self.carts.get_mut(cart).expect("the cart row").version += 1;
        }
        self.apply(&reaping.inventory);
    }
}

/// What a node does with the answer to one write.
#[derive(Debug, Clone)]
enum Then {
    /// The one grant in flight for `sku`; the core then answers the parked takers.
    Grant { sku: String },
    /// A line change; memory already took `delta` units when it is positive.
    Line {
        session: usize,
        sku: String,
        quantity: i64,
        delta: i64,
        expires_at_ms: i64,
    },
    /// An expired line released.
    Expire {
        session: usize,
        sku: String,
        quantity: i64,
    },
    /// Units drained from memory, given back.
    Return { sku: String, quantity: i64 },
    /// A checkout.
    Order { session: usize },
}

/// A cart actor's state.
#[derive(Debug, Clone)]
struct CartCopy {
    cart: Cart,
    /// Whether the cart row exists (a fresh session's row comes with its first write).
    persisted: bool,
}

/// One `surge` process.
#[derive(Debug)]
struct Node {
    alive: bool,
    stock: ShardStock,
    carts: BTreeMap<usize, CartCopy>,
    /// Writes whose units memory already took, queued for the next batch.
    pending: Vec<(WriteOp, Then)>,
    /// Takers parked behind a grant: the line each will write once served.
    parked: BTreeMap<WaiterId, (SetLine, usize, i64)>,
}

impl Node {
    fn new(alive: bool) -> Self {
        Self {
            alive,
            stock: ShardStock::new(LeasePolicy {
                max_chunk: 16,
                spread: 4,
            }),
            carts: BTreeMap::new(),
            pending: Vec::new(),
            parked: BTreeMap::new(),
        }
    }

    fn busy(&self, session: usize) -> bool {
        self.pending
            .iter()
            .any(|(_, then)| matches!(then, Then::Line { session: s, .. } if *s == session))
            || self.parked.values().any(|(_, s, _)| *s == session)
    }
}

struct World {
    db: Db,
    nodes: Vec<Node>,
    now: i64,
    /// Sessions that have made a request (the first one creates the cookie).
    seen: BTreeSet<usize>,
    ids: u128,
    /// Recalls published and not yet delivered: (asking node, SKU).
    recalls: Vec<(usize, String)>,
    /// Nodes whose lease the reaper took while they were alive (only their refusals
    /// are expected), until they die.
    fenced: BTreeSet<usize>,
}

impl World {
    fn new(stock: [i64; 2]) -> Self {
        let mut db = Db::default();
        for (sku, n) in SKUS.iter().zip(stock) {
            db.inventory.insert((*sku).to_owned(), Buckets::stocked(n));
        }
        for n in 0..NODES {
            db.heartbeats.insert(node_id(n), 0);
        }
        Self {
            db,
            nodes: (0..NODES).map(|_| Node::new(true)).collect(),
            now: 0,
            seen: BTreeSet::new(),
            ids: 0,
            recalls: Vec::new(),
            fenced: BTreeSet::new(),
        }
    }

    fn new_id(&mut self) -> Uuid {
        self.ids += 1;
        Uuid::from_u128(self.ids)
    }

    fn clock(&self) -> u64 {
        u64::try_from(self.now).unwrap_or(0)
    }

    /// The session's cart actor on node `n`, started (and its cart claimed) on first use.
    fn cart(&mut self, n: usize, session: usize, evict: bool) -> CartCopy {
        if let Some(copy) = self.nodes[n].carts.get(&session) {
            return copy.clone();
        }
        let id = self.new_id();
        let copy = if self.seen.insert(session) {
            CartCopy {
                cart: Cart::new(id, 0),
                persisted: false,
            }
        } else if let Some(cart) = self.db.claim(&node_id(n), &session_id(session)) {
            if evict {
                // The takeover carries the claimed version: only older copies stop.
                for (m, other) in self.nodes.iter_mut().enumerate() {
                    let older = other
                        .carts
                        .get(&session)
                        .is_some_and(|c| c.cart.version < cart.version);
                    if m != n && older && !other.busy(session) {
                        other.carts.remove(&session);
                    }
                }
            }
            CartCopy {
                cart,
                persisted: true,
            }
        } else {
            // Seen before but never written: still no row, as for a fresh session.
            CartCopy {
                cart: Cart::new(id, 0),
                persisted: false,
            }
        };
        self.nodes[n].carts.insert(session, copy.clone());
        copy
    }

    /// `SetQuantity`: plan the line, take units from the shard, write.
    fn set(
        &mut self,
        n: usize,
        session: usize,
        sku: &str,
        quantity: i64,
        evict: bool,
    ) -> Option<(WriteOp, Then)> {
        let copy = self.cart(n, session, evict);
        let prev = copy.cart.quantity_of(sku);
        let delta = if quantity == 0 {
            -prev
        } else {
            copy.cart.plan_set(sku, quantity, &limits()).ok()?
        };
        let expires_at_ms = self.now + limits().reservation_ttl_ms;
        let line = SetLine {
            cart_id: copy.cart.id,
            version: copy.cart.version,
            sku: sku.to_owned(),
            quantity,
            prev_quantity: prev,
            lease_epoch: None,
            expires_at_ms,
            unit_price_minor: PRICE,
            currency: eur(),
            create_for_session: (!copy.persisted).then(|| session_id(session)),
        };
        let mut line = line;
        if delta > 0 {
            let clock = self.clock();
            let id = u64::try_from(self.new_id().as_u128()).unwrap_or(0);
            let node = &mut self.nodes[n];
            match node.stock.take(sku, id, delta, clock) {
                Take::Taken { epoch } => line.lease_epoch = epoch,
                Take::NeedLease { want } => {
                    node.parked.insert(id, (line, session, delta));
                    return Some(grant(sku, want));
                }
                Take::Wait => {
                    node.parked.insert(id, (line, session, delta));
                    return None;
                }
                Take::Short { .. } => return None,
            }
        }
        Some(line_write(line, session, delta))
    }

    /// `Checkout`: the order is exactly the cart's lines.
    fn checkout(&mut self, n: usize, session: usize, evict: bool) -> Option<(WriteOp, Then)> {
        let order_id = self.new_id();
        let copy = self.cart(n, session, evict);
        let total = copy.cart.check_checkout(self.now, &limits()).ok()?;
        let order = PlaceOrder {
            order_id,
            cart_id: copy.cart.id,
            version: copy.cart.version,
            session_id: session_id(session),
            customer: "a@b.c".into(),
            email: "a@b.c".into(),
            idempotency_key: order_id.to_string(),
            lines: order_lines(&copy.cart),
            total_minor: total.minor,
            currency: total.currency,
        };
        Some((WriteOp::PlaceOrder(order), Then::Order { session }))
    }

    /// Commits `work` as one batch of node `n` and hands each answer back.
    fn run(&mut self, n: usize, work: Vec<(WriteOp, Then)>) {
        if work.is_empty() {
            return;
        }
        let ops: Vec<WriteOp> = work.iter().map(|(op, _)| op.clone()).collect();
        let results = self.db.commit(&node_id(n), &ops, self.now);
        assert_eq!(results.len(), ops.len());
        for ((_, then), result) in work.into_iter().zip(results) {
            self.answer(n, then, result);
        }
        // The bus delivers recalls to every live node; each returns its free units.
        for (asker, sku) in std::mem::take(&mut self.recalls) {
            let holders: Vec<usize> = (0..NODES)
                .filter(|m| *m != asker && self.nodes[*m].alive)
                .collect();
            for m in holders {
                let units = self.nodes[m].stock.sku(&sku).drain();
                if units > 0 {
                    self.give_back(m, vec![(sku.clone(), units)]);
                }
            }
            // The stock event (or the timer) ends the asker's recall: grant once more.
            if self.nodes[asker].alive {
                let next = self.nodes[asker].stock.recall_over(&sku);
                self.follow(asker, &sku, next);
            }
        }
    }

    /// What the shard does after a grant settled.
    fn follow(&mut self, n: usize, sku: &str, next: Next) {
        match next {
            Next::Idle => {}
            Next::Grant { want } => self.nodes[n].pending.push(grant(sku, want)),
            Next::Recall { .. } => self.recalls.push((n, sku.to_owned())),
        }
    }

    /// What the actors do with an answer.
    fn answer(&mut self, n: usize, then: Then, result: Result<WriteOutcome, JournalError>) {
        // Only a node whose lease the reaper took may be refused: its reserves name
        // the old row's epoch, its returns exceed the (gone) row.
        let fenced = matches!(
            result,
            Err(JournalError::Rejected(
                Rejection::LeaseLost { .. } | Rejection::ReturnExceedsLease { .. }
            ))
        );
        assert!(
            !matches!(result, Err(JournalError::Rejected(_))) || (fenced && self.fenced.contains(&n)),
            "node {n}: {then:?} refused with {result:?}: memory handed out units its lease row does not have"
        );
        let clock = self.clock();
        let node = &mut self.nodes[n];
        match then {
            Then::Grant { sku } => match result {
                Ok(WriteOutcome::Granted(g)) => {
                    let settled = node.stock.granted(&sku, g, clock);
                    for (id, answer) in settled.answers {
                        let parked = node.parked.remove(&id);
                        if let (Some((mut line, session, delta)), Ok(epoch)) = (parked, answer) {
                            line.lease_epoch = epoch;
                            node.pending.push(line_write(line, session, delta));
                        }
                    }
                    self.follow(n, &sku, settled.next);
                }
                _ => {
                    for id in node.stock.sku(&sku).grant_failed() {
                        node.parked.remove(&id);
                    }
                }
            },
            Then::Line {
                session,
                sku,
                quantity,
                delta,
                expires_at_ms,
            } => match result {
                Ok(_) => {
                    if delta < 0 {
                        node.stock.sku(&sku).put(-delta, clock);
                    }
                    if let Some(copy) = node.carts.get_mut(&session) {
                        copy.persisted = true;
                        copy.cart.apply_set(&sku, quantity, price(), expires_at_ms);
                    }
                }
                Err(e) => {
                    if delta > 0 && !fenced {
                        node.stock.sku(&sku).put(delta, clock);
                    }
                    if fenced {
                        // `LeaseLost`: the shard drops the lease the reserve named.
                        if let Some(stock) = node.stock.sku_mut(&sku) {
                            stock.fence(None);
                        }
                    }
                    if e == JournalError::Stale {
                        node.carts.remove(&session);
                    }
                }
            },
            Then::Expire {
                session,
                sku,
                quantity,
            } => match result {
                Ok(_) => {
                    node.stock.sku(&sku).put(quantity, clock);
                    if let Some(copy) = node.carts.get_mut(&session) {
                        copy.cart.apply_set(&sku, 0, price(), 0);
                    }
                }
                Err(e) => {
                    if e == JournalError::Stale {
                        node.carts.remove(&session);
                    }
                }
            },
            Then::Return { sku, quantity } => {
                if result.is_err() && !fenced {
                    node.stock.sku(&sku).put(quantity, clock);
                }
            }
            Then::Order { session } => match result {
                Ok(_) => {
                    if let Some(copy) = node.carts.get_mut(&session) {
                        copy.cart.clear();
                    }
                }
                Err(e) => {
                    if e == JournalError::Stale {
                        node.carts.remove(&session);
                    }
                }
            },
        }
    }

    fn batch(&mut self, n: usize, intents: &[Intent]) {
        if !self.nodes[n].alive {
            return;
        }
        let mut work = std::mem::take(&mut self.nodes[n].pending);
        let mut busy: BTreeSet<usize> = work
            .iter()
            .filter_map(|(_, then)| match then {
                Then::Line { session, .. } => Some(*session),
                _ => None,
            })
            .collect();
        for intent in intents {
            // A cart actor handles one request at a time.
            let write = match *intent {
                Intent::Set {
                    session,
                    sku,
                    quantity,
                    evict,
                } if busy.insert(session) => self.set(n, session, SKUS[sku], quantity, evict),
                Intent::Checkout { session, evict } if busy.insert(session) => {
                    self.checkout(n, session, evict)
                }
                _ => None,
            };
            work.extend(write);
        }
        self.run(n, work);
    }

    /// Units drained from node `n`'s memory go back to PostgreSQL in one batch.
    fn give_back(&mut self, n: usize, drained: Vec<(String, i64)>) {
        let work = drained
            .into_iter()
            .map(|(sku, quantity)| {
                let op = WriteOp::ReturnLease {
                    sku: sku.clone(),
                    quantity,
                };
                (op, Then::Return { sku, quantity })
            })
            .collect();
        self.run(n, work);
    }

    fn tick(&mut self, n: usize) {
        if !self.nodes[n].alive {
            return;
        }
        let idle_before = u64::try_from(self.now - IDLE).unwrap_or(0);
        let drained = self.nodes[n].stock.drain_idle(idle_before);
        self.give_back(n, drained);
        for sku in self.nodes[n].stock.empty_skus() {
            let available = self.db.inventory[&sku].available;
            if available > 0 {
                self.nodes[n].stock.sku(&sku).refreshed(available);
            }
        }
    }

    fn expire(&mut self, n: usize) {
        let node = &self.nodes[n];
        if !node.alive {
            return;
        }
        let mut work = Vec::new();
        for (&session, copy) in node.carts.iter().filter(|(s, _)| !node.busy(**s)) {
            // Released one after another, each against the version the previous left.
            for (version, sku) in (copy.cart.version..).zip(copy.cart.expired(self.now)) {
                let quantity = copy.cart.quantity_of(&sku);
                let op = WriteOp::SetLine(SetLine {
                    cart_id: copy.cart.id,
                    version,
                    sku: sku.clone(),
                    quantity: 0,
                    prev_quantity: quantity,
                    lease_epoch: None,
                    expires_at_ms: self.now,
                    unit_price_minor: PRICE,
                    currency: eur(),
                    create_for_session: None,
                });
                work.push((
                    op,
                    Then::Expire {
                        session,
                        sku,
                        quantity,
                    },
                ));
            }
        }
        self.run(n, work);
    }

    fn advance(&mut self, by: i64) {
        self.now += by;
        let clock = self.clock();
        let alive: Vec<usize> = (0..NODES).filter(|n| self.nodes[*n].alive).collect();
        for n in alive {
            let id = node_id(n);
            self.db.heartbeats.insert(id.clone(), self.now);
            let mut rows = std::collections::HashMap::new();
            for ((node, sku), row) in self.db.leases.iter_mut() {
                if *node == id {
                    row.1 = self.now + TTL;
                    rows.insert(sku.clone(), self.db.epochs[&(node.clone(), sku.clone())]);
                }
            }
            // The heartbeat's answer fences the shard.
            self.nodes[n].stock.fence(&rows, clock);
        }
    }

    fn step(&mut self, op: &Op) {
        match *op {
            Op::Batch { node, ref intents } => self.batch(node, intents),
            Op::Advance { by } => self.advance(by),
            Op::Tick { node } => self.tick(node),
            Op::Expire { node } => self.expire(node),
            Op::Kill { node } => self.nodes[node] = Node::new(false),
            Op::Stop { node } if self.nodes[node].alive => {
                let pending = std::mem::take(&mut self.nodes[node].pending);
                self.run(node, pending);
                let drained = self.nodes[node].stock.drain_all();
                self.give_back(node, drained);
                self.db.heartbeats.remove(&node_id(node));
                self.nodes[node] = Node::new(false);
            }
            Op::Restart { node } if !self.nodes[node].alive => {
                // `wait_for_id`: another process may still heartbeat under this id.
                let id = node_id(node);
                if self
                    .db
                    .heartbeats
                    .get(&id)
                    .is_some_and(|h| *h >= self.now - TTL)
                {
                    return;
                }
                self.db.reap(Scope::Own(&id), self.now);
                // Startup recovery lets go of the id's carts too.
                for cart in self.db.carts.values_mut().filter(|c| c.owner == id) {
                    cart.owner.clear();
                }
                self.db.heartbeats.insert(id, self.now);
                self.nodes[node] = Node::new(true);
            }
            Op::Reap => {
                self.db.reap(dead_scope(), self.now);
                // Whoever holds the cart (a live node, a restart under the same id, an
                // evicted copy), no reservation outlives its expiry by the grace.
                for ((cart, sku), (_, expires)) in &self.db.reservations {
                    assert!(
                        *expires >= self.now - GRACE,
                        "{cart}/{sku}: a reservation expired at {expires} survived a pass at {}",
                        self.now
                    );
                }
            }
            Op::ReapLive { node } if self.nodes[node].alive => {
                self.fenced.insert(node);
                self.db.reap(Scope::Own(&node_id(node)), self.now);
            }
            Op::Restock { sku, n } => {
                let sku = SKUS[sku].to_owned();
                self.db
                    .apply(&BTreeMap::from([(sku.clone(), Delta::restock(n))]));
                let available = self.db.inventory[&sku].available;
                for node in self.nodes.iter_mut().filter(|n| n.alive) {
                    node.stock.sku(&sku).refreshed(available);
                }
            }
            _ => {}
        }
    }

    fn check(&self) {
        for (sku, b) in &self.db.inventory {
            assert!(b.is_sound(), "{sku}: unsound row {b:?}");
            assert_eq!(
                b.leased,
                units(&self.db.leases, sku),
                "{sku}: leased = the lease rows"
            );
            assert_eq!(
                b.reserved,
                units(&self.db.reservations, sku),
                "{sku}: reserved = the reservations"
            );
            let ordered = self.db.ordered.get(sku).copied().unwrap_or(0);
            assert_eq!(b.sold, ordered, "{sku}: sold = the order lines");
        }
        for (n, node) in self.nodes.iter().enumerate().filter(|(_, n)| n.alive) {
            for sku in SKUS {
                let key = (node_id(n), sku.to_owned());
                let row_epoch = self.db.epochs.get(&key).copied();
                let memory_epoch = node.stock.epoch_of(sku);
                let in_flight: i64 = node
                    .pending
                    .iter()
                    .filter_map(|(op, then)| match (op, then) {
                        (WriteOp::SetLine(l), Then::Line { sku: s, delta, .. })
                            if s == sku && *delta > 0 && l.lease_epoch == row_epoch =>
                        {
                            Some(*delta)
                        }
                        _ => None,
                    })
                    .sum();
                let row = self.db.leases.get(&key).map_or(0, |r| r.0);
                if memory_epoch == row_epoch && row_epoch.is_some() {
                    assert_eq!(
                        node.stock.lease_of(sku) + in_flight,
                        row,
                        "node {n}, {sku}: memory holds what its lease row holds"
                    );
                } else {
                    // Memory's lease belongs to a row that is gone: nothing can be
                    // reserved from it (the planner refuses its epoch), and the row
                    // memory does not know of holds only units in flight.
                    assert!(
                        self.fenced.contains(&n) || node.stock.lease_of(sku) == 0,
                        "node {n}, {sku}: a memory lease without its row"
                    );
                    assert!(
                        row <= in_flight || self.fenced.contains(&n),
                        "node {n}, {sku}: a lease row memory does not know"
                    );
                }
            }
            for copy in node.carts.values() {
                let current = self
                    .db
                    .carts
                    .get(&copy.cart.id)
                    .is_some_and(|c| c.version == copy.cart.version);
                if current {
                    let rows: BTreeMap<&String, (i64, i64)> = self
                        .db
                        .reservations_of(copy.cart.id)
                        .map(|(s, r)| (s, *r))
                        .collect();
                    let lines: BTreeMap<&String, (i64, i64)> = copy
                        .cart
                        .lines
                        .iter()
                        .map(|(s, l)| (s, (l.quantity, l.expires_at_ms)))
                        .collect();
                    assert_eq!(
                        lines, rows,
                        "node {n}: a current cart copy agrees with its rows"
                    );
                }
            }
        }
    }

    /// Every process dies and the reaper runs after every lease and reservation has
    /// lapsed: no unit may stay anywhere but `available` or `sold`.
    fn settle(&mut self) {
        for n in 0..NODES {
            self.step(&Op::Kill { node: n });
        }
        self.advance(TTL + limits().reservation_ttl_ms + GRACE + 1);
        self.step(&Op::Reap);
        self.check();
        for (sku, b) in &self.db.inventory {
            assert_eq!(
                (b.leased, b.reserved),
                (0, 0),
                "{sku}: units stranded after every node died: {b:?}"
            );
        }
    }
}

/// Units of `sku` in rows keyed by (owner, SKU).
fn units<K>(rows: &BTreeMap<(K, String), (i64, i64)>, sku: &str) -> i64 {
    rows.iter()
        .filter(|((_, s), _)| s == sku)
        .map(|(_, (q, _))| q)
        .sum()
}

fn grant(sku: &str, want: i64) -> (WriteOp, Then) {
    let op = WriteOp::Grant {
        sku: sku.to_owned(),
        want,
    };
    (
        op,
        Then::Grant {
            sku: sku.to_owned(),
        },
    )
}

fn line_write(line: SetLine, session: usize, delta: i64) -> (WriteOp, Then) {
    let then = Then::Line {
        session,
        sku: line.sku.clone(),
        quantity: line.quantity,
        delta,
        expires_at_ms: line.expires_at_ms,
    };
    (WriteOp::SetLine(line), then)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn stock_is_conserved_under_any_interleaving(
        a in 0i64..40,
        b in 0i64..40,
        ops in proptest::collection::vec(op(), 1..150),
    ) {
        let mut world = World::new([a, b]);
        world.check();
        for op in &ops {
            world.step(op);
            world.check();
        }
        world.settle();
    }

    #[test]
    fn everything_sells_when_buyers_keep_coming(stock in 1i64..80) {
        // Buyers on every node buy one unit at a time; nodes give idle leases back.
        // Every unit must sell: no unit may stay stranded on a node.
        let mut world = World::new([stock, 0]);
        let mut session = SESSIONS;
        let mut buy = |world: &mut World, node: usize| {
            session += 1;
            world.batch(node, &[Intent::Set { session, sku: 0, quantity: 1, evict: true }]);
            // The grant (a recall may add one more), then the line.
            for _ in 0..3 {
                world.batch(node, &[]);
            }
            world.batch(node, &[Intent::Checkout { session, evict: true }]);
        };
        for round in 0..(stock * 4 + 20) {
            let node = usize::try_from(round).unwrap_or(0) % NODES;
            world.advance(10);
            buy(&mut world, node);
            if round % 7 == 6 {
                world.tick((node + 1) % NODES);
            }
            if round % 5 == 4 {
                world.tick((node + 2) % NODES);
            }
            world.check();
        }
        world.advance(IDLE + 1);
        for node in 0..NODES {
            world.tick(node);
        }
        for _ in 0..stock {
            for node in 0..NODES {
                world.tick(node);
                buy(&mut world, node);
            }
        }
        world.check();
        prop_assert_eq!(world.db.inventory["A"].sold, stock, "every unit sold, none stranded");
    }
}
