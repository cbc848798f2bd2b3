//! `InventoryShard`: the actor that owns a [`ShardStock`] and decides reservations for
//! its SKUs in memory. It goes to PostgreSQL (through the Journal) only to take a new
//! lease chunk, to give idle units back, and now and then to recheck sold-out SKUs.

use std::{
    collections::HashMap,
    error::Error,
    hash::{DefaultHasher, Hash, Hasher},
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use actix::prelude::*;
use thiserror::Error;
use tokio::sync::oneshot;

use crate::{
    ports::{Journal, JournalError, Peers, Store, WriteOp, WriteOutcome},
    stock::{LeasePolicy, Next, Refusal, ShardStock, Take, WaiterId},
};

/// Why a shard could not hand out units.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum TakeError {
    /// Not enough stock in the cluster: `available` more units could be had.
    #[error("only {available} units available")]
    Short {
        /// Units PostgreSQL and every node's free lease hold together.
        available: i64,
    },
    /// Enough units exist, but some are in leases of nodes whose heartbeat lapsed:
    /// the reaper will return them.
    #[error("stock recovering: units are held by a node that stopped")]
    Recovering,
    /// Enough units exist, but the live nodes holding them did not return them in time.
    #[error("stock contended: units are held by other nodes")]
    Contended,
    /// The shard's queue is too deep; the caller should shed the request.
    #[error("inventory shard is busy")]
    Busy,
    /// The Journal did not commit the lease grant (PostgreSQL unreachable, or it
    /// refused the grant).
    #[error("stock unavailable: no lease was granted")]
    Grant(#[source] JournalError),
    /// The shard actor is gone (the node is stopping).
    #[error("stock unavailable: the inventory shard stopped")]
    Stopped(#[source] MailboxError),
}

impl From<Refusal> for TakeError {
    fn from(r: Refusal) -> Self {
        match r {
            Refusal::Short { available } => Self::Short { available },
            Refusal::Recovering => Self::Recovering,
            Refusal::Contended => Self::Contended,
        }
    }
}

/// Units handed out, with the epoch of the lease row they came from (the reserve
/// carries it, so that a reaped lease cannot be sold from).
pub type Taken = Result<Option<i64>, TakeError>;

/// Shard settings.
#[derive(Debug, Clone, Copy)]
pub struct ShardConfig {
    /// Lease chunking.
    pub policy: LeasePolicy,
    /// A lease unused for this long goes back to PostgreSQL.
    pub idle_return: Duration,
    /// How often idle leases and sold-out SKUs are checked.
    pub tick: Duration,
    /// Requests waiting beyond this depth are refused with [`TakeError::Busy`].
    pub max_queue: usize,
    /// Longest wait for other nodes to answer a recall before the last grant.
    pub recall_wait: Duration,
}

impl ShardConfig {
    /// How often a shard looks for idle leases and rechecks sold-out SKUs: often
    /// enough that a restock elsewhere sells within a second, rarely enough to be free.
    pub const TICK: Duration = Duration::from_millis(500);
}

/// The actor.
pub struct InventoryShard {
    stock: ShardStock,
    journal: Arc<dyn Journal>,
    store: Arc<dyn Store>,
    peers: Arc<dyn Peers>,
    cfg: ShardConfig,
    epoch: Instant,
    /// Parked takers; the core decides who is answered when.
    parked: HashMap<WaiterId, oneshot::Sender<Taken>>,
    next_id: WaiterId,
}

impl InventoryShard {
    fn now(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Gives idle leases back and rechecks SKUs refused from memory.
    fn tick(&mut self, ctx: &mut Context<Self>) {
        let idle_ms = u64::try_from(self.cfg.idle_return.as_millis()).unwrap_or(u64::MAX);
        let idle_before = self.now().saturating_sub(idle_ms);
        for (sku, quantity) in self.stock.drain_idle(idle_before) {
            self.give_back(ctx, sku, quantity);
        }
        let empty = self.stock.empty_skus();
        if !empty.is_empty() {
            let store = Arc::clone(&self.store);
            ctx.spawn(
                async move { store.available(empty).await }
                    .into_actor(self)
                    .map(|result, act, _| match result {
                        Ok(levels) => {
                            for (sku, available) in levels {
                                if available > 0 {
                                    act.stock.sku(&sku).refreshed(available);
                                }
                            }
                        }
                        Err(err) => tracing::warn!(
                            error = &err as &dyn Error,
                            "could not recheck sold-out SKUs"
                        ),
                    }),
            );
        }
    }

    fn give_back(&mut self, ctx: &mut Context<Self>, sku: String, quantity: i64) {
        let journal = Arc::clone(&self.journal);
        let op = WriteOp::ReturnLease {
            sku: sku.clone(),
            quantity,
        };
        ctx.spawn(async move { journal.write(op).await }.into_actor(self).map(move |result, act, _| {
            match result {
                Ok(_) => metrics::counter!("lease_units_returned_total").increment(quantity.unsigned_abs()),
                // The row does not hold them (it was reaped): they are not ours to keep.
                Err(JournalError::Rejected(why)) => {
                    tracing::warn!(error = %why, sku = %sku, quantity, "lease return refused; dropping the units");
                }
                Err(err) => {
                    // Nothing was committed: the units are still ours.
                    tracing::warn!(error = &err as &dyn Error, sku = %sku, quantity, "lease return failed; keeping the units");
                    let now = act.now();
                    act.stock.sku(&sku).put(quantity, now);
                }
            }
        }));
    }

    /// Sends the one grant in flight for `sku`.
    fn grant(&mut self, ctx: &mut Context<Self>, sku: String, want: i64) {
        let journal = Arc::clone(&self.journal);
        let op = WriteOp::Grant {
            sku: sku.clone(),
            want,
        };
        ctx.spawn(
            async move { journal.write(op).await }
                .into_actor(self)
                .map(move |result, act, ctx| act.granted(ctx, sku, result)),
        );
    }

    /// The grant came back: answer the takers the core settles, then do what it says.
    fn granted(
        &mut self,
        ctx: &mut Context<Self>,
        sku: String,
        result: Result<WriteOutcome, JournalError>,
    ) {
        let outcome = match result {
            Ok(WriteOutcome::Granted(g)) => g,
            Ok(WriteOutcome::Done) => {
                self.fail(&sku, JournalError::Stopped);
                return;
            }
            Err(err) => {
                self.fail(&sku, err);
                return;
            }
        };
        metrics::counter!("lease_units_granted_total").increment(outcome.granted.unsigned_abs());
        let now = self.now();
        let settled = self.stock.granted(&sku, outcome, now);
        for (id, answer) in settled.answers {
            if answer.is_err() {
                metrics::counter!("stock_refusals_total", "source" => "grant").increment(1);
            }
            self.answer(id, answer.map_err(TakeError::from));
        }
        self.follow(ctx, sku, settled.next);
    }

    fn follow(&mut self, ctx: &mut Context<Self>, sku: String, next: Next) {
        match next {
            Next::Idle => {}
            Next::Grant { want } => self.grant(ctx, sku, want),
            Next::Recall { want } => {
                metrics::counter!("lease_recalls_total").increment(1);
                self.peers.recall(&sku, want);
                ctx.run_later(self.cfg.recall_wait, move |act, ctx| {
                    let next = act.stock.recall_over(&sku);
                    act.follow(ctx, sku, next);
                });
            }
        }
    }

    fn fail(&mut self, sku: &str, err: JournalError) {
        for id in self.stock.sku(sku).grant_failed() {
            self.answer(id, Err(TakeError::Grant(err.clone())));
        }
    }

    fn answer(&mut self, id: WaiterId, answer: Taken) {
        if let Some(tx) = self.parked.remove(&id) {
            let _ = tx.send(answer);
        }
    }
}

impl Actor for InventoryShard {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(self.cfg.max_queue.max(16));
        ctx.run_interval(self.cfg.tick, Self::tick);
    }
}

/// Take `quantity` units of `sku` for a reservation.
#[derive(Message)]
#[rtype(result = "Taken")]
pub struct TakeUnits {
    /// The SKU.
    pub sku: String,
    /// Units wanted.
    pub quantity: i64,
}

impl Handler<TakeUnits> for InventoryShard {
    type Result = ResponseFuture<Taken>;

    fn handle(&mut self, msg: TakeUnits, ctx: &mut Self::Context) -> Self::Result {
        let now = self.now();
        let id = self.next_id;
        self.next_id += 1;
        let parked = match self.stock.take(&msg.sku, id, msg.quantity, now) {
            Take::Taken { epoch } => return Box::pin(std::future::ready(Ok(epoch))),
            Take::Short { available } => {
                metrics::counter!("stock_refusals_total", "source" => "memory").increment(1);
                return Box::pin(std::future::ready(Err(TakeError::Short { available })));
            }
            Take::Wait => None,
            Take::NeedLease { want } => Some(want),
        };
        // The actor never waits: the caller is parked until the core answers it.
        let (tx, rx) = oneshot::channel();
        self.parked.insert(id, tx);
        if let Some(want) = parked {
            self.grant(ctx, msg.sku, want);
        }
        Box::pin(async move {
            rx.await
                .unwrap_or(Err(TakeError::Stopped(MailboxError::Closed)))
        })
    }
}

/// Another node is short of `sku`: give back this node's free units of it now.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Recall {
    /// The SKU.
    pub sku: String,
}

impl Handler<Recall> for InventoryShard {
    type Result = ();

    fn handle(&mut self, msg: Recall, ctx: &mut Self::Context) {
        let units = self.stock.sku(&msg.sku).drain();
        if units > 0 {
            metrics::counter!("lease_recalled_units_total").increment(units.unsigned_abs());
            self.give_back(ctx, msg.sku, units);
        }
    }
}

/// Fencing: this node's lease rows as a heartbeat read them.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Fence {
    /// `(sku, epoch)` of every lease row this node has.
    pub rows: Arc<HashMap<String, i64>>,
    /// When the read began; SKUs granted since are left alone.
    pub read_at: Instant,
}

impl Handler<Fence> for InventoryShard {
    type Result = ();

    fn handle(&mut self, msg: Fence, _: &mut Self::Context) {
        let read_at = u64::try_from(
            msg.read_at
                .saturating_duration_since(self.epoch)
                .as_millis(),
        )
        .unwrap_or(u64::MAX);
        for (sku, units) in self.stock.fence(&msg.rows, read_at) {
            metrics::counter!("lease_units_fenced_total").increment(units.unsigned_abs());
            tracing::warn!(sku = %sku, units, "lease row gone or re-created: dropped the memory lease");
        }
    }
}

/// A reserve from the lease of `epoch` was refused with `LeaseLost`: the row is gone.
#[derive(Message)]
#[rtype(result = "()")]
pub struct LeaseLost {
    /// The SKU.
    pub sku: String,
    /// The epoch the refused reserve named.
    pub epoch: Option<i64>,
}

impl Handler<LeaseLost> for InventoryShard {
    type Result = ();

    fn handle(&mut self, msg: LeaseLost, _: &mut Self::Context) {
        let stock = self.stock.sku(&msg.sku);
        if stock.epoch == msg.epoch && stock.phase == crate::stock::Phase::Idle {
            let units = stock.fence(None);
            metrics::counter!("lease_units_fenced_total").increment(units.unsigned_abs());
        }
    }
}

/// Units come back to the lease: a committed release or expiry, or an undo.
#[derive(Message)]
#[rtype(result = "()")]
pub struct PutUnits {
    /// The SKU.
    pub sku: String,
    /// Units.
    pub quantity: i64,
}

impl Handler<PutUnits> for InventoryShard {
    type Result = ();

    fn handle(&mut self, msg: PutUnits, _: &mut Self::Context) {
        let now = self.now();
        self.stock.sku(&msg.sku).put(msg.quantity, now);
    }
}

/// A reserve was refused because the lease row held fewer units than memory thought.
#[derive(Message)]
#[rtype(result = "()")]
pub struct LeaseShort {
    /// The SKU.
    pub sku: String,
    /// Epoch of the lease the units were taken from.
    pub epoch: Option<i64>,
    /// Units the refused reserve had taken.
    pub taken: i64,
    /// Units the row held when the batch locked it.
    pub row: i64,
}

impl Handler<LeaseShort> for InventoryShard {
    type Result = ();

    fn handle(&mut self, msg: LeaseShort, _: &mut Self::Context) {
        let now = self.now();
        tracing::warn!(sku = %msg.sku, row = msg.row, "memory held more than the lease row; clamped");
        metrics::counter!("lease_clamps_total").increment(1);
        self.stock
            .sku(&msg.sku)
            .clamp(msg.epoch, msg.taken, msg.row, now);
    }
}

/// PostgreSQL has units of `sku` again (a restock on this node).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Restocked {
    /// The SKU.
    pub sku: String,
    /// PostgreSQL's available count now.
    pub available: i64,
}

impl Handler<Restocked> for InventoryShard {
    type Result = ();

    fn handle(&mut self, msg: Restocked, ctx: &mut Self::Context) {
        self.stock.sku(&msg.sku).refreshed(msg.available);
        // A recall is answered by the holders' commits: grant again at once.
        let next = self.stock.recall_over(&msg.sku);
        self.follow(ctx, msg.sku, next);
    }
}

/// Gives every leased unit back (graceful shutdown); resolves when committed.
#[derive(Message)]
#[rtype(result = "i64")]
pub struct ReturnAll;

impl Handler<ReturnAll> for InventoryShard {
    type Result = ResponseActFuture<Self, i64>;

    fn handle(&mut self, _: ReturnAll, _: &mut Self::Context) -> Self::Result {
        let drained = self.stock.drain_all();
        let journal = Arc::clone(&self.journal);
        let work = async move {
            let mut returned = 0;
            let mut failed = Vec::new();
            for (sku, quantity) in drained {
                match journal
                    .write(WriteOp::ReturnLease {
                        sku: sku.clone(),
                        quantity,
                    })
                    .await
                {
                    Ok(_) => returned += quantity,
                    Err(err) => {
                        tracing::warn!(error = &err as &dyn Error, sku = %sku, "lease not returned; the reaper will");
                        failed.push((sku, quantity));
                    }
                }
            }
            (returned, failed)
        };
        Box::pin(work.into_actor(self).map(|(returned, failed), act, _| {
            let now = act.now();
            for (sku, q) in failed {
                act.stock.sku(&sku).put(q, now);
            }
            returned
        }))
    }
}

/// Units of `sku` this shard holds free in memory (for checks and tests).
#[derive(Message)]
#[rtype(result = "i64")]
pub struct LeaseOf {
    /// The SKU.
    pub sku: String,
}

impl Handler<LeaseOf> for InventoryShard {
    type Result = i64;

    fn handle(&mut self, msg: LeaseOf, _: &mut Self::Context) -> i64 {
        self.stock.lease_of(&msg.sku)
    }
}

/// A shard's address with a depth counter, so callers can shed load before queueing.
#[derive(Clone)]
pub struct ShardHandle {
    addr: Addr<InventoryShard>,
    depth: Arc<AtomicUsize>,
    max_queue: usize,
}

struct DepthGuard(Arc<AtomicUsize>);

impl Drop for DepthGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl ShardHandle {
    /// Asks for units; refuses at once with `Busy` when the shard's queue is too deep.
    pub async fn take(&self, sku: &str, quantity: i64) -> Taken {
        let depth = self.depth.fetch_add(1, Ordering::Relaxed) + 1;
        let _guard = DepthGuard(Arc::clone(&self.depth));
        if depth > self.max_queue {
            metrics::counter!("shard_shed_total").increment(1);
            return Err(TakeError::Busy);
        }
        self.addr
            .send(TakeUnits {
                sku: sku.to_owned(),
                quantity,
            })
            .await
            .unwrap_or_else(|e| Err(TakeError::Stopped(e)))
    }

    /// Returns units to the lease.
    pub fn put(&self, sku: &str, quantity: i64) {
        if quantity > 0 {
            self.addr.do_send(PutUnits {
                sku: sku.to_owned(),
                quantity,
            });
        }
    }

    /// Units of `sku` free in this shard's memory (0 if the shard stopped).
    pub async fn lease(&self, sku: &str) -> i64 {
        self.addr
            .send(LeaseOf {
                sku: sku.to_owned(),
            })
            .await
            .unwrap_or(0)
    }

    /// A reserve of `taken` units from the lease of `epoch` was refused because the row
    /// held only `row`: give them back, but never beyond what the row holds.
    pub fn lease_short(&self, sku: &str, epoch: Option<i64>, taken: i64, row: i64) {
        self.addr.do_send(LeaseShort {
            sku: sku.to_owned(),
            epoch,
            taken,
            row,
        });
    }

    /// A reserve from the lease of `epoch` was refused as lost: drop that lease.
    pub fn lease_lost(&self, sku: &str, epoch: Option<i64>) {
        self.addr.do_send(LeaseLost {
            sku: sku.to_owned(),
            epoch,
        });
    }

    /// The actor's address.
    pub fn addr(&self) -> &Addr<InventoryShard> {
        &self.addr
    }
}

/// Every shard of this node; a SKU always maps to the same one.
#[derive(Clone)]
pub struct Shards {
    shards: Arc<Vec<ShardHandle>>,
    _arbiters: Arc<Vec<Arbiter>>,
}

impl Shards {
    /// Starts `count` shards, each on its own arbiter (thread).
    pub fn start(
        count: usize,
        journal: Arc<dyn Journal>,
        store: Arc<dyn Store>,
        peers: Arc<dyn Peers>,
        cfg: ShardConfig,
    ) -> Self {
        let count = count.max(1);
        let mut arbiters = Vec::with_capacity(count);
        let mut shards = Vec::with_capacity(count);
        for _ in 0..count {
            let arbiter = Arbiter::new();
            let (journal, store, peers) =
                (Arc::clone(&journal), Arc::clone(&store), Arc::clone(&peers));
            let addr =
                InventoryShard::start_in_arbiter(&arbiter.handle(), move |_| InventoryShard {
                    stock: ShardStock::new(cfg.policy),
                    journal,
                    store,
                    peers,
                    cfg,
                    epoch: Instant::now(),
                    parked: HashMap::new(),
                    next_id: 0,
                });
            shards.push(ShardHandle {
                addr,
                depth: Arc::new(AtomicUsize::new(0)),
                max_queue: cfg.max_queue,
            });
            arbiters.push(arbiter);
        }
        Self {
            shards: Arc::new(shards),
            _arbiters: Arc::new(arbiters),
        }
    }

    /// The shard that owns `sku`.
    pub fn for_sku(&self, sku: &str) -> &ShardHandle {
        let mut h = DefaultHasher::new();
        sku.hash(&mut h);
        let i = usize::try_from(h.finish() % self.shards.len() as u64).unwrap_or(0);
        &self.shards[i]
    }

    /// Another node asked for `sku`: its shard returns what it holds.
    pub fn recall(&self, sku: &str) {
        self.for_sku(sku).addr.do_send(Recall {
            sku: sku.to_owned(),
        });
    }

    /// Fences every shard against this node's lease rows, read from `read_at` on.
    pub fn fence(&self, rows: HashMap<String, i64>, read_at: Instant) {
        let rows = Arc::new(rows);
        for shard in self.shards.iter() {
            shard.addr.do_send(Fence {
                rows: Arc::clone(&rows),
                read_at,
            });
        }
    }

    /// Gives every lease back and stops the shard threads.
    pub async fn shutdown(&self) -> i64 {
        let mut returned = 0;
        for shard in self.shards.iter() {
            returned += shard.addr.send(ReturnAll).await.unwrap_or(0);
        }
        for arbiter in self._arbiters.iter() {
            arbiter.stop();
        }
        returned
    }
}
