//! What the actors need from the outside world, as traits: the durable Journal and the
//! store's reads. The `surge` crate implements them on PostgreSQL.

use std::{future::Future, pin::Pin};

use serde::Serialize;
use thiserror::Error;
use uuid::Uuid;

use crate::{cart::Cart, money::Currency};

/// A boxed future, so that the traits stay object-safe.
pub type BoxFut<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// A cart line's durable state after a change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetLine {
    /// The cart.
    pub cart_id: Uuid,
    /// Version the change was planned against; the write is refused if it moved.
    pub version: i64,
    /// The SKU.
    pub sku: String,
    /// New quantity; 0 deletes the reservation.
    pub quantity: i64,
    /// Quantity the cart believed it had; the write is refused if PostgreSQL disagrees.
    pub prev_quantity: i64,
    /// New expiry, Unix milliseconds.
    pub expires_at_ms: i64,
    /// Unit price.
    pub unit_price_minor: i64,
    /// Currency of the price.
    pub currency: Currency,
    /// Set on a cart's first write: create the cart row for this session in the same
    /// batch (a brand-new session costs no write of its own).
    pub create_for_session: Option<String>,
}

/// One line of an order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OrderLine {
    /// The SKU.
    pub sku: String,
    /// Units.
    pub quantity: i64,
    /// Unit price in minor units.
    pub unit_price_minor: i64,
}

/// A checkout: the cart's reservations become an order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlaceOrder {
    /// New order id.
    pub order_id: Uuid,
    /// The cart.
    pub cart_id: Uuid,
    /// Version the checkout was planned against.
    pub version: i64,
    /// The owner's session.
    pub session_id: String,
    /// Contact address.
    pub email: String,
    /// The client's Idempotency-Key.
    pub idempotency_key: String,
    /// Lines, exactly the cart's reservations.
    pub lines: Vec<OrderLine>,
    /// Sum of the lines.
    pub total_minor: i64,
    /// Currency of every line.
    pub currency: Currency,
}

/// A write the Journal commits durably, in a batch with others.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteOp {
    /// Take up to `want` units of `sku` from PostgreSQL into this node's lease.
    Grant {
        /// The SKU.
        sku: String,
        /// Units wanted.
        want: i64,
    },
    /// Give `quantity` leased units of `sku` back to PostgreSQL.
    ReturnLease {
        /// The SKU.
        sku: String,
        /// Units returned.
        quantity: i64,
    },
    /// Change a cart line and its reservation.
    SetLine(SetLine),
    /// Turn a cart into an order.
    PlaceOrder(PlaceOrder),
}

/// What a committed write produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteOutcome {
    /// A grant: units given, and what PostgreSQL has left.
    Granted {
        /// Units moved into the lease.
        granted: i64,
        /// PostgreSQL's available count afterwards.
        remaining: i64,
    },
    /// The write is committed.
    Done,
}

/// Why a write was not committed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum JournalError {
    /// The cart changed elsewhere (another node, or the reaper): reload and retry.
    #[error("the cart changed elsewhere")]
    Stale,
    /// The write contradicts PostgreSQL (e.g. an unknown SKU or a lost lease).
    #[error("write refused: {0}")]
    Rejected(String),
    /// PostgreSQL could not be reached or the queue is full; nothing was committed.
    #[error("journal unavailable: {0}")]
    Unavailable(String),
}

/// The durable, batched writer (group commit). `write` resolves after the commit.
pub trait Journal: Send + Sync + 'static {
    /// Queues a write and resolves when its batch has committed (or failed).
    fn write(&self, op: WriteOp) -> BoxFut<Result<WriteOutcome, JournalError>>;
}

/// An order as its owner sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OrderSummary {
    /// Order id.
    pub id: Uuid,
    /// `placed`, `paid`, `shipped`, `delivered` or `cancelled`.
    pub status: String,
    /// Contact address.
    pub email: String,
    /// Lines.
    pub lines: Vec<OrderLine>,
    /// Sum of the lines.
    pub total_minor: i64,
    /// Currency.
    pub currency: String,
    /// Creation time, Unix milliseconds.
    pub created_at_ms: i64,
}

/// Units a shopper can buy of one SKU (PostgreSQL's available plus every node's
/// unsold lease), with the row's change counter so that every node orders values alike.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StockLevel {
    /// The SKU.
    pub sku: String,
    /// Sellable units.
    pub available: i64,
    /// `inventory.stock_seq` of this value.
    pub seq: i64,
}

/// A failed read.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("store unavailable: {0}")]
pub struct StoreError(pub String);

/// Reads the actors need from PostgreSQL.
pub trait Store: Send + Sync + 'static {
    /// Loads (creating if needed) the cart of a session and makes this node its owner.
    fn claim_cart(&self, session_id: String) -> BoxFut<Result<Cart, StoreError>>;
    /// The order placed by `session_id` with `key`, if any.
    fn order_for_key(
        &self,
        session_id: String,
        key: String,
    ) -> BoxFut<Result<Option<OrderSummary>, StoreError>>;
    /// PostgreSQL's available count for each SKU.
    fn available(&self, skus: Vec<String>) -> BoxFut<Result<Vec<(String, i64)>, StoreError>>;
}
