//! `CartActor`: one per active session. It owns a [`Cart`], loaded from PostgreSQL when
//! the actor starts, and turns each change into a durable Journal write before it
//! answers. Messages are handled one at a time, start to finish, so a shopper's
//! requests never interleave. The actor stops after an idle spell once its cart is empty,
//! and [`CartRegistry`] passivates the least recently used one when the node holds its
//! cap of live carts: everything a cart holds is in PostgreSQL already, so a passivated
//! cart comes back as it was on its session's next request.

use std::{
    collections::HashMap,
    error::Error,
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use actix::prelude::*;
use serde::Serialize;
use thiserror::Error;
use uuid::Uuid;

use crate::{
    cart::{CampaignLine, Cart, CartError, CartLimits, CartLine},
    lru::Lru,
    money::Money,
    ports::{
        Journal, JournalError, OrderLine, OrderSummary, PlaceOrder, Rejection, SetLine, Store,
        StoreError, WriteOp,
    },
    shard::{Shards, TakeError},
};

/// Unix time in milliseconds.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Why a cart operation failed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CartFailure {
    /// The request breaks a cart rule.
    #[error(transparent)]
    Invalid(#[from] CartError),
    /// Not enough stock; `available` units of the SKU could be in the line.
    #[error("only {available} available")]
    InsufficientStock {
        /// Largest quantity the line could have now.
        available: i64,
    },
    /// PostgreSQL refused the change for a reason the shopper can act on: a price
    /// that moved, a retired variant, a closed campaign or a per-customer limit
    /// (`Rejection::is_for_shopper`); nothing changed.
    #[error(transparent)]
    Refused(Rejection),
    /// The node is shedding load.
    #[error("busy")]
    Busy,
    /// The cart changed on another node; the caller should retry on a fresh actor.
    #[error("the cart changed elsewhere")]
    Stale,
    /// Something the cart depends on could not be reached; nothing changed.
    #[error(transparent)]
    Unavailable(Unreachable),
}

/// What a cart could not reach, with the cause.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum Unreachable {
    /// The cart's state could not be loaded, so the actor cannot answer.
    #[error("cart unavailable: the cart is not loaded")]
    NotLoaded,
    /// The Journal did not commit the write.
    #[error(transparent)]
    Journal(JournalError),
    /// The inventory shard could not get stock.
    #[error(transparent)]
    Stock(TakeError),
    /// A read failed.
    #[error(transparent)]
    Store(StoreError),
}

impl From<JournalError> for CartFailure {
    fn from(e: JournalError) -> Self {
        match e {
            JournalError::Stale => Self::Stale,
            JournalError::Rejected(r) if r.is_for_shopper() => Self::Refused(r),
            other => Self::Unavailable(Unreachable::Journal(other)),
        }
    }
}

/// What the actors of carts share.
pub struct CartDeps {
    /// Durable writes.
    pub journal: Arc<dyn Journal>,
    /// Reads.
    pub store: Arc<dyn Store>,
    /// This node's inventory shards.
    pub shards: Shards,
    /// Cart rules.
    pub limits: CartLimits,
    /// An empty cart's actor stops after this long without a request.
    pub idle: Duration,
    /// Most cart actors live at once on this node; past it the least recently used is
    /// passivated, so memory stays bounded whatever the number of sessions.
    pub max_live: usize,
    /// Live updates to the shopper's sockets.
    pub events: Arc<dyn CartEvents>,
}

/// A cart as its owner sees it: the core's lines (the view adds the products).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CartView {
    /// Lines, by SKU.
    pub lines: Vec<CartLine>,
    /// Sum of the lines (0 when empty).
    pub total_minor: i64,
    /// Currency of the total (null when empty).
    pub currency: Option<String>,
    /// Version of the last durable change.
    pub version: i64,
}

impl CartView {
    /// The view of `cart`: also what a handler answers for a cart it read without an
    /// actor (an empty one, say).
    pub fn of(cart: &Cart) -> Self {
        let total = cart.total().ok().flatten();
        Self {
            lines: cart.lines.values().cloned().collect(),
            total_minor: total.map_or(0, |m| m.minor),
            currency: total.map(|m| m.currency.to_string()),
            version: cart.version,
        }
    }
}

/// The lines of an order of `cart`: exactly its reservations, at their prices.
pub fn order_lines(cart: &Cart) -> Vec<OrderLine> {
    cart.lines
        .values()
        .map(|l| OrderLine {
            sku: l.sku.clone(),
            quantity: l.quantity,
            unit_price_minor: l.unit_price.minor,
        })
        .collect()
}

/// What carts tell the shopper's live sockets (on every node) about.
pub trait CartEvents: Send + Sync + 'static {
    /// The cart changed.
    fn cart_changed(&self, session_id: &str, cart: &CartView);
    /// A reservation lapsed and its units went back to stock.
    fn reservation_expired(&self, session_id: &str, sku: &str, quantity: i64);
    /// An order was placed.
    fn order_placed(&self, session_id: &str, order: &OrderSummary);
    /// This node now owns the session's cart at `version`; another node's older copy
    /// must stop.
    fn cart_claimed(&self, session_id: &str, version: i64);
}

/// Events that go nowhere, for tests and tools.
pub struct NoEvents;

impl CartEvents for NoEvents {
    fn cart_changed(&self, _: &str, _: &CartView) {}
    fn reservation_expired(&self, _: &str, _: &str, _: i64) {}
    fn order_placed(&self, _: &str, _: &OrderSummary) {}
    fn cart_claimed(&self, _: &str, _: i64) {}
}

/// The actor.
pub struct CartActor {
    session_id: String,
    /// The session was created by this very request: no cart can exist yet.
    fresh: bool,
    /// Whether the cart row exists in PostgreSQL.
    persisted: bool,
    cart: Option<Cart>,
    deps: Arc<CartDeps>,
    registry: CartRegistry,
    last_used: Instant,
    orders: HashMap<String, OrderSummary>,
    expiry: Option<SpawnHandle>,
}

impl CartActor {
    fn cart(&self) -> Result<&Cart, CartFailure> {
        self.cart
            .as_ref()
            .ok_or(CartFailure::Unavailable(Unreachable::NotLoaded))
    }

    /// Schedules the next expiry check at the earliest reservation expiry.
    fn schedule_expiry(&mut self, ctx: &mut Context<Self>) {
        if let Some(h) = self.expiry.take() {
            ctx.cancel_future(h);
        }
        if let Some(at) = self.cart.as_ref().and_then(Cart::next_expiry) {
            let wait = Duration::from_millis(u64::try_from(at - now_ms()).unwrap_or(0));
            self.expiry = Some(ctx.notify_later(ExpireDue, wait));
        }
    }

    /// Claims the session's cart for this node and loads it; messages wait meanwhile.
    fn load(&mut self, ctx: &mut Context<Self>) {
        let store = Arc::clone(&self.deps.store);
        let session = self.session_id.clone();
        ctx.wait(
            async move { store.claim_cart(session).await }
                .into_actor(self)
                .map(|result, act, ctx| match result {
                    Ok(Some(cart)) => {
                        act.deps.events.cart_claimed(&act.session_id, cart.version);
                        act.cart = Some(cart);
                        act.persisted = true;
                        act.schedule_expiry(ctx);
                    }
                    Ok(None) => {
                        // No row: like a fresh session, the row comes with the first line.
                        act.cart = Some(Cart::new(Uuid::new_v4(), 0));
                        act.persisted = false;
                    }
                    Err(err) => {
                        tracing::warn!(error = &err as &dyn Error, "could not load cart");
                        ctx.stop();
                    }
                }),
        );
    }

    /// Stop and let a fresh actor reload the cart (after a stale write).
    fn reload(&mut self, ctx: &mut Context<Self>) {
        self.cart = None;
        ctx.stop();
    }
}

impl Actor for CartActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(64);
        if self.fresh {
            // Nothing to load: the cart row is written with the first line.
            self.cart = Some(Cart::new(Uuid::new_v4(), 0));
            self.persisted = false;
        } else {
            self.load(ctx);
        }
        let idle = self.deps.idle;
        ctx.run_interval(idle.max(Duration::from_millis(100)) / 2, move |act, ctx| {
            let empty = act.cart.as_ref().is_none_or(|c| c.lines.is_empty());
            if empty && act.last_used.elapsed() >= idle {
                ctx.stop();
            }
        });
        metrics::gauge!("carts_active").increment(1.0);
    }

    fn stopped(&mut self, ctx: &mut Self::Context) {
        self.registry.forget(&self.session_id, &ctx.address());
        metrics::gauge!("carts_active").decrement(1.0);
    }
}

/// Reads the cart.
#[derive(Message)]
#[rtype(result = "Result<CartView, CartFailure>")]
pub struct GetCart;

impl Handler<GetCart> for CartActor {
    type Result = Result<CartView, CartFailure>;

    fn handle(&mut self, _: GetCart, _: &mut Self::Context) -> Self::Result {
        self.last_used = Instant::now();
        Ok(CartView::of(self.cart()?))
    }
}

/// Sets a line's quantity (1..=max), reserving or releasing the difference.
#[derive(Message)]
#[rtype(result = "Result<CartView, CartFailure>")]
pub struct SetQuantity {
    /// The SKU (already known to exist in the catalog).
    pub sku: String,
    /// New quantity; 0 removes the line.
    pub quantity: i64,
    /// Current catalog price of one unit.
    pub unit_price: Money,
    /// The rules of the SKU's live campaign, if it is in one.
    pub campaign: Option<CampaignLine>,
}

impl Handler<SetQuantity> for CartActor {
    type Result = AtomicResponse<Self, Result<CartView, CartFailure>>;

    fn handle(&mut self, msg: SetQuantity, _: &mut Self::Context) -> Self::Result {
        self.last_used = Instant::now();
        let now = now_ms();
        let ttl = self.deps.limits.reservation_ttl_ms;
        if msg.quantity == 0 {
            // Removing a line that is not there changes nothing: no write, no row.
            if let Ok(cart) = self.cart() {
                if cart.quantity_of(&msg.sku) == 0 {
                    let view = CartView::of(cart);
                    return AtomicResponse::new(Box::pin(fut::ready(Ok(view))));
                }
            }
        }
        let planned = self.cart().and_then(|cart| {
            let delta = if msg.quantity == 0 {
                -cart.quantity_of(&msg.sku)
            } else {
                cart.plan_set(&msg.sku, msg.quantity, &self.deps.limits)?
            };
            let expires_at_ms = match &msg.campaign {
                Some(rule) if msg.quantity > 0 => {
                    if let Some(remaining) = rule
                        .allowance(cart, &msg.sku)
                        .filter(|allowed| msg.quantity > *allowed)
                    {
                        return Err(CartFailure::Refused(Rejection::LimitExceeded {
                            campaign_id: rule.campaign_id,
                            remaining,
                        }));
                    }
                    rule.expires_at_ms(cart, &msg.sku, now)
                }
                _ => now + ttl,
            };
            Ok((
                cart.id,
                cart.version,
                cart.quantity_of(&msg.sku),
                delta,
                expires_at_ms,
            ))
        });
        let (cart_id, version, prev, delta, expires_at_ms) = match planned {
            Ok(p) => p,
            Err(e) => return AtomicResponse::new(Box::pin(fut::ready(Err(e)))),
        };
        let deps = Arc::clone(&self.deps);
        let sku = msg.sku.clone();
        let price = msg.unit_price;
        let create_for_session = (!self.persisted).then(|| self.session_id.clone());
        let work = async move {
            let shard = deps.shards.for_sku(&sku);
            // A reserve from a lease the reaper took is refused; the shard drops that
            // lease and the second try reserves from a fresh grant.
            for attempt in 0..2 {
                let lease_epoch = if delta > 0 {
                    shard.take(&sku, delta).await.map_err(|e| match e {
                        TakeError::Short { available } => CartFailure::InsufficientStock {
                            available: prev + available,
                        },
                        TakeError::Busy => CartFailure::Busy,
                        e @ (TakeError::Grant(_)
                        | TakeError::Stopped(_)
                        | TakeError::Recovering
                        | TakeError::Contended) => CartFailure::Unavailable(Unreachable::Stock(e)),
                    })?
                } else {
                    None
                };
                let op = WriteOp::SetLine(SetLine {
                    cart_id,
                    version,
                    sku: sku.clone(),
                    quantity: msg.quantity,
                    prev_quantity: prev,
                    lease_epoch,
                    expires_at_ms,
                    unit_price_minor: price.minor,
                    currency: price.currency,
                    create_for_session: create_for_session.clone(),
                });
                match deps.journal.write(op).await {
                    Ok(_) => {
                        if delta < 0 {
                            shard.put(&sku, -delta);
                        }
                        return Ok(());
                    }
                    Err(JournalError::Rejected(Rejection::LeaseLost { .. })) if attempt == 0 => {
                        shard.lease_lost(&sku, lease_epoch);
                    }
                    Err(e) => {
                        match &e {
                            JournalError::Rejected(Rejection::LeaseLost { .. }) => {}
                            JournalError::Rejected(Rejection::LeaseShort { lease, .. })
                                if delta > 0 =>
                            {
                                shard.lease_short(&sku, lease_epoch, delta, *lease);
                            }
                            _ if delta > 0 => shard.put(&sku, delta),
                            _ => {}
                        }
                        return Err(CartFailure::from(e));
                    }
                }
            }
            Err(CartFailure::Stale)
        };
        AtomicResponse::new(Box::pin(work.into_actor(self).map(
            move |result, act, ctx| match result {
                Ok(()) => {
                    act.persisted = true;
                    if let Some(cart) = act.cart.as_mut() {
                        cart.apply_set(&msg.sku, msg.quantity, price, expires_at_ms);
                    }
                    act.schedule_expiry(ctx);
                    let view = CartView::of(act.cart()?);
                    act.deps.events.cart_changed(&act.session_id, &view);
                    Ok(view)
                }
                Err(CartFailure::Stale) => {
                    act.reload(ctx);
                    Err(CartFailure::Stale)
                }
                Err(e) => Err(e),
            },
        )))
    }
}

/// Internal: release every line whose reservation has lapsed.
#[derive(Message)]
#[rtype(result = "()")]
struct ExpireDue;

impl Handler<ExpireDue> for CartActor {
    type Result = AtomicResponse<Self, ()>;

    fn handle(&mut self, _: ExpireDue, _: &mut Self::Context) -> Self::Result {
        self.expiry = None;
        let Some(cart) = self.cart.as_ref() else {
            return AtomicResponse::new(Box::pin(fut::ready(())));
        };
        let now = now_ms();
        let due: Vec<(String, i64, Money)> = cart
            .expired(now)
            .into_iter()
            .filter_map(|sku| {
                cart.lines
                    .get(&sku)
                    .map(|l| (sku, l.quantity, l.unit_price))
            })
            .collect();
        let (cart_id, mut version) = (cart.id, cart.version);
        let deps = Arc::clone(&self.deps);
        let work = async move {
            let mut released = Vec::new();
            for (sku, quantity, price) in due {
                let op = WriteOp::SetLine(SetLine {
                    cart_id,
                    version,
                    sku: sku.clone(),
                    quantity: 0,
                    prev_quantity: quantity,
                    lease_epoch: None,
                    expires_at_ms: now,
                    unit_price_minor: price.minor,
                    currency: price.currency,
                    create_for_session: None,
                });
                match deps.journal.write(op).await {
                    Ok(_) => {
                        deps.shards.for_sku(&sku).put(&sku, quantity);
                        version += 1;
                        released.push((sku, quantity, price));
                    }
                    Err(e) => return (released, Some(CartFailure::from(e))),
                }
            }
            (released, None)
        };
        AtomicResponse::new(Box::pin(work.into_actor(self).map(
            |(released, failure), act, ctx| {
                if let Some(cart) = act.cart.as_mut() {
                    let any = !released.is_empty();
                    for (sku, quantity, price) in released {
                        cart.apply_set(&sku, 0, price, 0);
                        metrics::counter!("reservations_expired_total")
                            .increment(quantity.unsigned_abs());
                        act.deps
                            .events
                            .reservation_expired(&act.session_id, &sku, quantity);
                    }
                    if any {
                        act.deps
                            .events
                            .cart_changed(&act.session_id, &CartView::of(cart));
                    }
                }
                match failure {
                    Some(CartFailure::Stale) => act.reload(ctx),
                    Some(err) => {
                        tracing::warn!(
                            error = &err as &dyn Error,
                            "expiry not committed; retrying in a second"
                        );
                        act.expiry = Some(ctx.notify_later(ExpireDue, Duration::from_secs(1)));
                    }
                    None => act.schedule_expiry(ctx),
                }
            },
        )))
    }
}

/// Whether a checkout must look its key up before it writes, to replay an earlier
/// order. An actor that started with its session (`fresh`) has seen every order of the
/// session: its own are in its memory, and one placed elsewhere meant a claim of the
/// cart, so the write is refused as stale and the retry, on an actor that loads the
/// cart, looks the key up. The Journal refuses an order under a used key in any case
/// (`journal_plan::Locked::used_keys`), so skipping the lookup can never make a second
/// order; a checkout that writes nothing (an empty or expired cart) always looks.
fn replay_lookup_needed<T, E>(fresh: bool, total: &Result<T, E>) -> bool {
    !fresh || total.is_err()
}

/// Turns the cart into an order, once per idempotency key.
#[derive(Message)]
#[rtype(result = "Result<(OrderSummary, bool), CartFailure>")]
pub struct Checkout {
    /// The client's Idempotency-Key.
    pub key: String,
    /// A validated email address.
    pub email: String,
    /// The customer it names, for per-customer limits.
    pub customer: String,
}

impl Handler<Checkout> for CartActor {
    type Result = AtomicResponse<Self, Result<(OrderSummary, bool), CartFailure>>;

    fn handle(&mut self, msg: Checkout, _: &mut Self::Context) -> Self::Result {
        self.last_used = Instant::now();
        if let Some(order) = self.orders.get(&msg.key) {
            return AtomicResponse::new(Box::pin(fut::ready(Ok((order.clone(), true)))));
        }
        let planned = self.cart().map(|cart| {
            let total = cart.check_checkout(now_ms(), &self.deps.limits);
            (cart.clone(), total)
        });
        let (cart, total) = match planned {
            Ok(p) => p,
            Err(e) => return AtomicResponse::new(Box::pin(fut::ready(Err(e)))),
        };
        let deps = Arc::clone(&self.deps);
        let session = self.session_id.clone();
        let key = msg.key.clone();
        let lookup = replay_lookup_needed(self.fresh, &total);
        let work = async move {
            // A key already used (perhaps on another node before a failover) replays.
            if lookup {
                match deps.store.order_for_key(session.clone(), key.clone()).await {
                    Ok(Some(order)) => return Ok((order, true)),
                    Ok(None) => {}
                    Err(e) => return Err(CartFailure::Unavailable(Unreachable::Store(e))),
                }
            }
            let total = total?;
            let lines = order_lines(&cart);
            let order = PlaceOrder {
                order_id: Uuid::new_v4(),
                cart_id: cart.id,
                version: cart.version,
                session_id: session,
                email: msg.email,
                customer: msg.customer,
                idempotency_key: key,
                lines,
                total_minor: total.minor,
                currency: total.currency,
            };
            let summary = OrderSummary {
                id: order.order_id,
                status: crate::order::OrderStatus::Placed,
                email: order.email.clone(),
                lines: order.lines.clone(),
                total_minor: order.total_minor,
                currency: order.currency.to_string(),
                created_at_ms: now_ms(),
            };
            deps.journal.write(WriteOp::PlaceOrder(order)).await?;
            metrics::counter!("orders_placed_total").increment(1);
            Ok((summary, false))
        };
        AtomicResponse::new(Box::pin(work.into_actor(self).map(
            move |result, act, ctx| {
                match &result {
                    Ok((order, replayed)) => {
                        if !replayed {
                            if let Some(cart) = act.cart.as_mut() {
                                cart.clear();
                                let view = CartView::of(cart);
                                act.deps.events.cart_changed(&act.session_id, &view);
                            }
                            act.deps.events.order_placed(&act.session_id, order);
                            act.schedule_expiry(ctx);
                        }
                        act.orders.insert(msg.key, order.clone());
                    }
                    Err(CartFailure::Stale) => act.reload(ctx),
                    Err(_) => {}
                }
                result
            },
        )))
    }
}

/// Another node claimed the cart at `version`: a copy older than that stops, so it can
/// neither write nor expire. A copy at `version` or newer (this node claimed it again
/// since) stays: takeovers can arrive late and out of order.
#[derive(Message)]
#[rtype(result = "bool")]
pub struct Evict {
    /// The cart's version as the new owner claimed it.
    pub version: i64,
}

impl Handler<Evict> for CartActor {
    type Result = bool;

    fn handle(&mut self, msg: Evict, ctx: &mut Self::Context) -> bool {
        // Loading runs in `ctx.wait`, so a loaded cart's version is known here; a fresh
        // session's unsaved cart (version 0) is older than any claim.
        let newer = self
            .cart
            .as_ref()
            .is_some_and(|c| self.persisted && c.version >= msg.version);
        if newer {
            return false;
        }
        // Out of the registry at once, so the session's next request starts a fresh
        // actor rather than reaching this one while it stops.
        self.registry.forget(&self.session_id, &ctx.address());
        self.cart = None;
        ctx.stop();
        true
    }
}

/// The registry needs the room: stop, the cart's state being in PostgreSQL already.
/// Handled between two requests (every write holds the mailbox until it is answered),
/// so no write of this actor is in flight when it stops.
#[derive(Message)]
#[rtype(result = "()")]
struct Passivate;

impl Handler<Passivate> for CartActor {
    type Result = ();

    fn handle(&mut self, _: Passivate, ctx: &mut Self::Context) {
        // Out of the registry before the stop, so a request queued behind this message
        // is refused as closed and its retry starts a fresh actor.
        self.registry.forget(&self.session_id, &ctx.address());
        metrics::counter!("cart_passivations_total").increment(1);
        ctx.stop();
    }
}

/// The live actors and the order of their last use.
struct Live {
    addrs: HashMap<String, Addr<CartActor>>,
    recency: Lru<String>,
}

/// The live carts of this node, by session, at most [`CartDeps::max_live`] of them.
#[derive(Clone)]
pub struct CartRegistry {
    live: Arc<Mutex<Live>>,
    deps: Arc<CartDeps>,
}

impl CartRegistry {
    /// An empty registry.
    pub fn new(deps: CartDeps) -> Self {
        Self {
            live: Arc::new(Mutex::new(Live {
                addrs: HashMap::new(),
                recency: Lru::new(deps.max_live),
            })),
            deps: Arc::new(deps),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Live> {
        self.live
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The session's actor if one is live on this node (a use, for recency), without
    /// starting one: a handler that can answer from a plain value asks this first.
    pub fn live(&self, session_id: &str) -> Option<Addr<CartActor>> {
        let mut live = self.lock();
        let addr = live
            .addrs
            .get(session_id)
            .filter(|a| a.connected())
            .cloned()?;
        let key = session_id.to_owned();
        if let Some(victim) = live.recency.touch(&key) {
            Self::passivate(&live, &victim);
        }
        Some(addr)
    }

    /// Cart actors live on this node now (a passivated one counts until it stops).
    pub fn live_count(&self) -> usize {
        self.lock().addrs.len()
    }

    /// Asks the actor of `victim` to stop; it leaves the registry as it does.
    fn passivate(live: &Live, victim: &str) {
        if let Some(addr) = live.addrs.get(victim) {
            addr.do_send(Passivate);
        }
    }

    /// The session's actor, started (and its cart loaded) on first use; starting one
    /// past the cap passivates the least recently used.
    ///
    /// `fresh` says the session was created by this request, so no cart exists yet and
    /// nothing needs loading.
    pub fn get(&self, session_id: &str, fresh: bool) -> Addr<CartActor> {
        let mut live = self.lock();
        let key = session_id.to_owned();
        if let Some(addr) = live
            .addrs
            .get(session_id)
            .filter(|a| a.connected())
            .cloned()
        {
            if let Some(victim) = live.recency.touch(&key) {
                Self::passivate(&live, &victim);
            }
            return addr;
        }
        let actor = CartActor {
            session_id: session_id.to_owned(),
            fresh,
            persisted: false,
            cart: None,
            deps: Arc::clone(&self.deps),
            registry: self.clone(),
            last_used: Instant::now(),
            orders: HashMap::new(),
            expiry: None,
        };
        let addr = actor.start();
        live.addrs.insert(key.clone(), addr.clone());
        if let Some(victim) = live.recency.touch(&key) {
            Self::passivate(&live, &victim);
        }
        addr
    }

    /// Drops a stopped actor, unless a newer one already took its place.
    fn forget(&self, session_id: &str, addr: &Addr<CartActor>) {
        let mut live = self.lock();
        if live.addrs.get(session_id).is_some_and(|a| a == addr) {
            live.addrs.remove(session_id);
            live.recency.remove(&session_id.to_owned());
        }
    }

    /// Another node claimed the session's cart at `version`: this node's actor stops if
    /// its copy is older (it leaves the registry as it stops).
    pub fn evict(&self, session_id: &str, version: i64) {
        let addr = self.lock().addrs.get(session_id).cloned();
        if let Some(addr) = addr {
            addr.do_send(Evict { version });
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicI64, Ordering};

    use super::*;
    use crate::{
        ports::{BoxFut, WriteOutcome},
        shard::ShardConfig,
        stock::LeasePolicy,
    };

    /// Claims carts at the version it holds; nothing else is read.
    struct ClaimsAt(AtomicI64);

    impl Store for ClaimsAt {
        fn claim_cart(&self, _: String) -> BoxFut<Result<Option<Cart>, StoreError>> {
            let version = self.0.load(Ordering::SeqCst);
            Box::pin(async move { Ok(Some(Cart::new(Uuid::from_u128(1), version))) })
        }

        fn order_for_key(
            &self,
            _: String,
            _: String,
        ) -> BoxFut<Result<Option<OrderSummary>, StoreError>> {
            Box::pin(async { Ok(None) })
        }

        fn available(&self, _: Vec<String>) -> BoxFut<Result<Vec<(String, i64)>, StoreError>> {
            Box::pin(async { Ok(Vec::new()) })
        }
    }

    /// No write is expected in these tests.
    struct NoWrites;

    impl Journal for NoWrites {
        fn write(&self, _: WriteOp) -> BoxFut<Result<WriteOutcome, JournalError>> {
            Box::pin(async { Err(JournalError::Stopped) })
        }
    }

    /// A node alone: nobody to recall units from.
    struct NoPeers;

    impl crate::ports::Peers for NoPeers {
        fn recall(&self, _: &str, _: i64) {}
    }

    fn registry(version: i64) -> CartRegistry {
        registry_of(version, 1024)
    }

    fn registry_of(version: i64, max_live: usize) -> CartRegistry {
        registry_with(
            Arc::new(NoWrites),
            Arc::new(ClaimsAt(AtomicI64::new(version))),
            max_live,
        )
    }

    fn registry_with(
        journal: Arc<dyn Journal>,
        store: Arc<dyn Store>,
        max_live: usize,
    ) -> CartRegistry {
        let shards = Shards::start(
            1,
            Arc::clone(&journal),
            Arc::clone(&store),
            Arc::new(NoPeers),
            ShardConfig {
                policy: LeasePolicy {
                    max_chunk: 4,
                    spread: 2,
                },
                idle_return: Duration::from_secs(60),
                tick: ShardConfig::TICK,
                max_queue: 16,
                recall_wait: Duration::from_millis(300),
            },
        );
        CartRegistry::new(CartDeps {
            journal,
            store,
            shards,
            limits: CartLimits {
                max_line_quantity: 4,
                max_lines: 4,
                reservation_ttl_ms: 60_000,
                checkout_margin_ms: 1_000,
            },
            idle: Duration::from_secs(60),
            max_live,
            events: Arc::new(NoEvents),
        })
    }

    /// Carts load empty; counts the replay lookups of checkouts, which find nothing.
    struct CountsLookups(AtomicI64);

    impl Store for CountsLookups {
        fn claim_cart(&self, _: String) -> BoxFut<Result<Option<Cart>, StoreError>> {
            Box::pin(async { Ok(Some(Cart::new(Uuid::from_u128(2), 0))) })
        }

        fn order_for_key(
            &self,
            _: String,
            _: String,
        ) -> BoxFut<Result<Option<OrderSummary>, StoreError>> {
            self.0.fetch_add(1, Ordering::SeqCst);
            Box::pin(async { Ok(None) })
        }

        fn available(&self, _: Vec<String>) -> BoxFut<Result<Vec<(String, i64)>, StoreError>> {
            Box::pin(async { Ok(Vec::new()) })
        }
    }

    /// Commits every write; a grant gets all it asks for.
    struct Commits;

    impl Journal for Commits {
        fn write(&self, op: WriteOp) -> BoxFut<Result<WriteOutcome, JournalError>> {
            let outcome = match op {
                WriteOp::Grant { want, .. } => WriteOutcome::Granted(crate::stock::GrantOutcome {
                    granted: want,
                    remaining: 0,
                    held_live: 0,
                    recovering: 0,
                    epoch: Some(1),
                }),
                _ => WriteOutcome::Done,
            };
            Box::pin(async move { Ok(outcome) })
        }
    }

    /// Guards the checkout that skips its replay lookup: only an actor that started
    /// with its session skips it, it places the same order the actor that looked does,
    /// and a checkout that would write nothing (an empty cart) still looks.
    #[actix::test]
    async fn only_a_checkout_of_a_fresh_sessions_actor_skips_the_replay_lookup() {
        let store = Arc::new(CountsLookups(AtomicI64::new(0)));
        let carts = registry_with(Arc::new(Commits), Arc::clone(&store) as Arc<dyn Store>, 16);
        let eur = crate::money::Currency::parse("EUR").expect("valid");
        let mut placed = Vec::new();
        for (session, fresh, lookups) in [("new", true, 0), ("old", false, 1)] {
            let addr = carts.get(session, fresh);
            addr.send(SetQuantity {
                sku: "A".into(),
                quantity: 2,
                unit_price: Money::new(100, eur),
                campaign: None,
            })
            .await
            .expect("delivered")
            .expect("reserved");
            let checkout = || Checkout {
                key: "k".into(),
                email: "a@example.com".into(),
                customer: "a@example.com".into(),
            };
            let (order, replayed) = addr
                .send(checkout())
                .await
                .expect("delivered")
                .expect("placed");
            assert!(!replayed);
            assert_eq!(store.0.load(Ordering::SeqCst), lookups, "{session}");
            let (again, replayed) = addr
                .send(checkout())
                .await
                .expect("delivered")
                .expect("replayed");
            assert!(replayed && again == order, "replayed from memory");
            assert_eq!(store.0.load(Ordering::SeqCst), lookups, "{session}");
            placed.push((order.lines, order.total_minor, order.currency));
        }
        assert_eq!(placed[0], placed[1], "the same order either way");
        let addr = carts.get("empty", true);
        let empty = addr
            .send(Checkout {
                key: "k2".into(),
                email: "a@example.com".into(),
                customer: "a@example.com".into(),
            })
            .await
            .expect("delivered");
        assert_eq!(empty, Err(CartFailure::Invalid(CartError::Empty)));
        assert_eq!(store.0.load(Ordering::SeqCst), 2, "an empty cart looks");
    }

    async fn stops(addr: &Addr<CartActor>) -> bool {
        for _ in 0..100 {
            if !addr.connected() {
                return true;
            }
            actix::clock::sleep(Duration::from_millis(10)).await;
        }
        false
    }

    /// Guards against the cap being a hint: a third session on a registry of two
    /// passivates the least recently used actor (not the one just used), which leaves
    /// the registry, and its session's next request gets a fresh actor.
    #[actix::test]
    async fn past_the_cap_the_least_recently_used_cart_is_passivated() {
        let carts = registry_of(3, 2);
        let s1 = carts.get("s1", false);
        let s2 = carts.get("s2", false);
        for addr in [&s1, &s2] {
            addr.send(GetCart)
                .await
                .expect("delivered")
                .expect("loaded");
        }
        assert!(
            carts.live("s1").is_some(),
            "s1 is used again: s2 is now the stalest"
        );
        let s3 = carts.get("s3", false);
        assert!(stops(&s2).await, "the least recently used actor stops");
        assert!(s1.connected() && s3.connected(), "the others stay");
        assert_eq!(carts.live_count(), 2);
        assert!(carts.live("s2").is_none(), "it left the registry");
        let again = carts.get("s2", false);
        assert!(again != s2);
        assert_eq!(
            again
                .send(GetCart)
                .await
                .expect("delivered")
                .map(|v| v.version),
            Ok(3),
            "its cart is loaded again"
        );
        assert!(stops(&s1).await, "and s1, now the stalest, gave way");
    }

    /// Guards against a DELETE of a line that is not there costing a Journal write
    /// (the Journal here refuses every write, so any attempt would fail the request).
    #[actix::test]
    async fn removing_an_absent_line_writes_nothing() {
        let carts = registry(4);
        let addr = carts.get("s1", true);
        let view = addr
            .send(SetQuantity {
                sku: "A".into(),
                quantity: 0,
                unit_price: Money::new(100, crate::money::Currency::parse("EUR").expect("valid")),
                campaign: None,
            })
            .await
            .expect("delivered")
            .expect("answered without a write");
        assert!(view.lines.is_empty());
        assert_eq!(view.version, 0, "a fresh cart stays unsaved");
    }

    /// Guards against a late takeover evicting a newer owner: this node claimed the
    /// cart at version 7, and a takeover from an earlier claim (version 6) arrives
    /// afterwards. The actor must keep serving; only a newer claim stops it.
    #[actix::test]
    async fn a_late_takeover_does_not_evict_a_newer_owner() {
        let carts = registry(7);
        let addr = carts.get("s1", false);
        let view = addr
            .send(GetCart)
            .await
            .expect("delivered")
            .expect("loaded");
        assert_eq!(view.version, 7);

        carts.evict("s1", 6);
        let still = addr.send(GetCart).await.expect("the actor is alive");
        assert_eq!(
            still.map(|v| v.version),
            Ok(7),
            "the newer copy kept its cart"
        );
        assert_eq!(
            addr.send(Evict { version: 7 }).await,
            Ok(false),
            "its own claim's version does not evict it either"
        );
        assert!(carts.get("s1", false) == addr, "the registry still has it");

        assert_eq!(addr.send(Evict { version: 8 }).await, Ok(true));
        for _ in 0..100 {
            if !addr.connected() {
                break;
            }
            actix::clock::sleep(Duration::from_millis(10)).await;
        }
        assert!(!addr.connected(), "an older copy stops on a newer claim");
        assert!(carts.get("s1", false) != addr, "a new actor replaces it");
    }
}
