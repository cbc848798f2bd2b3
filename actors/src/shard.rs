//! `InventoryShard`: the actor that owns a [`ShardStock`] and decides reservations for
//! its SKUs in memory. It goes to PostgreSQL (through the Journal) only to take a new
//! lease chunk, to give idle units back, and now and then to recheck sold-out SKUs.

use std::{
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

use crate::{
    ports::{Journal, JournalError, Store, WriteOp, WriteOutcome},
    stock::{LeasePolicy, ShardStock, Take},
};

/// Why a shard could not hand out units.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum TakeError {
    /// Not enough stock: `available` more units could be had.
    #[error("only {available} units available")]
    Short {
        /// Units this node could still hand out.
        available: i64,
    },
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
    cfg: ShardConfig,
    epoch: Instant,
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
                Err(err) => {
                    // Nothing was committed: the units are still ours.
                    tracing::warn!(error = &err as &dyn Error, sku = %sku, quantity, "lease return failed; keeping the units");
                    let now = act.now();
                    act.stock.sku(&sku).put(quantity, now);
                }
            }
        }));
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
#[rtype(result = "Result<(), TakeError>")]
pub struct TakeUnits {
    /// The SKU.
    pub sku: String,
    /// Units wanted.
    pub quantity: i64,
}

impl Handler<TakeUnits> for InventoryShard {
    type Result = ResponseActFuture<Self, Result<(), TakeError>>;

    fn handle(&mut self, msg: TakeUnits, _: &mut Self::Context) -> Self::Result {
        let now = self.now();
        match self.stock.take(&msg.sku, msg.quantity, now) {
            Take::Taken => Box::pin(fut::ready(Ok(()))),
            Take::Short { available } => {
                metrics::counter!("stock_refusals_total", "source" => "memory").increment(1);
                Box::pin(fut::ready(Err(TakeError::Short { available })))
            }
            Take::NeedLease { want } => {
                let journal = Arc::clone(&self.journal);
                let sku = msg.sku.clone();
                let grant = async move { journal.write(WriteOp::Grant { sku, want }).await };
                // While the grant is in flight this shard waits: its SKUs' decisions stay
                // strictly ordered, and a grant is one batched commit.
                Box::pin(grant.into_actor(self).map(move |result, act, _| {
                    match result {
                        Ok(WriteOutcome::Granted { granted, remaining }) => {
                            metrics::counter!("lease_units_granted_total")
                                .increment(granted.unsigned_abs());
                            act.stock.sku(&msg.sku).granted(granted, remaining);
                        }
                        Ok(WriteOutcome::Done) => {}
                        Err(err) => return Err(TakeError::Grant(err)),
                    }
                    let now = act.now();
                    match act.stock.take(&msg.sku, msg.quantity, now) {
                        Take::Taken => Ok(()),
                        Take::Short { available } => Err(TakeError::Short { available }),
                        Take::NeedLease { .. } => Err(TakeError::Short {
                            available: act.stock.lease_of(&msg.sku),
                        }),
                    }
                }))
            }
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

    fn handle(&mut self, msg: Restocked, _: &mut Self::Context) {
        self.stock.sku(&msg.sku).refreshed(msg.available);
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
    pub async fn take(&self, sku: &str, quantity: i64) -> Result<(), TakeError> {
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
        cfg: ShardConfig,
    ) -> Self {
        let count = count.max(1);
        let mut arbiters = Vec::with_capacity(count);
        let mut shards = Vec::with_capacity(count);
        for _ in 0..count {
            let arbiter = Arbiter::new();
            let (journal, store) = (Arc::clone(&journal), Arc::clone(&store));
            let addr =
                InventoryShard::start_in_arbiter(&arbiter.handle(), move |_| InventoryShard {
                    stock: ShardStock::new(cfg.policy),
                    journal,
                    store,
                    cfg,
                    epoch: Instant::now(),
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
