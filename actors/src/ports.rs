//! What the actors need from the outside world, as traits: the durable Journal and the
//! store's reads. The `surge` crate implements them on PostgreSQL.

use std::{fmt, future::Future, pin::Pin, sync::Arc};

use serde::{Deserialize, Serialize};
use thiserror::Error;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::{cart::Cart, money::Currency, stock::GrantOutcome};

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
    /// Epoch of the lease row the added units were taken from (fencing): a reserve
    /// against a row that was reaped and re-created is refused with `LeaseLost`.
    pub lease_epoch: Option<i64>,
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

/// One line of an order, as the Journal writes it and the shopper sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[schema(as = OrderLineBody)]
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
    /// The customer the address names ([`crate::validated::Email::customer`]), whose
    /// units a campaign's per-customer limit counts.
    pub customer: String,
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
    /// A grant: units given, what PostgreSQL has left and what other nodes hold.
    Granted(GrantOutcome),
    /// The write is committed.
    Done,
}

/// Why the Journal refused a write: it contradicts what PostgreSQL holds. Nothing of the
/// write was committed; retrying the same write cannot succeed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum Rejection {
    /// The SKU has no inventory row.
    #[error("unknown sku {sku}")]
    UnknownSku {
        /// The SKU.
        sku: String,
    },
    /// A grant asked for a negative number of units.
    #[error("negative grant of {want} units of {sku}")]
    NegativeGrant {
        /// The SKU.
        sku: String,
        /// Units asked for.
        want: i64,
    },
    /// A line's new quantity is negative.
    #[error("negative quantity {quantity} of {sku}")]
    NegativeQuantity {
        /// The SKU.
        sku: String,
        /// The quantity asked for.
        quantity: i64,
    },
    /// A line wants more units than this node's lease row holds (the row was reaped,
    /// or memory and row disagree).
    #[error("lease of {sku} holds {lease} units and cannot cover {units}")]
    LeaseShort {
        /// The SKU.
        sku: String,
        /// Units the line needs from the lease.
        units: i64,
        /// Units the lease row holds.
        lease: i64,
    },
    /// The units were taken from a lease row that is gone or was re-created since
    /// (the reaper took this node's lease while it was frozen or cut off).
    #[error("the lease of {sku} this write was planned against is gone")]
    LeaseLost {
        /// The SKU.
        sku: String,
    },
    /// A line or an order carries a unit price other than the committed one (the
    /// node's catalog is behind): the shopper sees the new price and asks again.
    #[error("the price of {sku} is now {price_minor} {currency}")]
    PriceChanged {
        /// The SKU.
        sku: String,
        /// The committed unit price, in minor units.
        price_minor: i64,
        /// The committed currency.
        currency: crate::money::Currency,
    },
    /// The SKU's variant is retired (or was never sold): nothing may be reserved or
    /// ordered at any price.
    #[error("{sku} is not for sale")]
    NotForSale {
        /// The SKU.
        sku: String,
    },
    /// The SKU is in a campaign whose window is not open at the commit's `now()`:
    /// nothing is reserved before the start or after the end, on any node.
    #[error("{sku}: {closed}")]
    CampaignClosed {
        /// The SKU.
        sku: String,
        /// Whether the campaign is still to start or over.
        closed: crate::campaign::Closed,
    },
    /// The order would take the customer past the campaign's per-customer limit,
    /// counting every order they placed from any session on any node.
    #[error("the customer may order {remaining} more units of campaign {campaign_id}")]
    LimitExceeded {
        /// The campaign.
        campaign_id: Uuid,
        /// Units the customer may still order in it.
        remaining: i64,
    },
    /// A return gives back more than the lease row holds, or a negative amount.
    #[error("cannot return {quantity} units of {sku}: the lease holds {lease}")]
    ReturnExceedsLease {
        /// The SKU.
        sku: String,
        /// Units to return.
        quantity: i64,
        /// Units the lease row holds.
        lease: i64,
    },
}

impl Rejection {
    /// Refusals the shopper can act on (a new price, a retired variant, a closed
    /// campaign, a limit), as opposed to ones that mean this node's memory was wrong.
    pub fn is_for_shopper(&self) -> bool {
        matches!(
            self,
            Self::PriceChanged { .. }
                | Self::NotForSale { .. }
                | Self::CampaignClosed { .. }
                | Self::LimitExceeded { .. }
        )
    }
}

/// The failure behind an error, shared by every caller it reached: one failed batch
/// answers all of its writes with the same cause.
#[derive(Clone)]
pub struct Cause(Arc<dyn std::error::Error + Send + Sync>);

impl Cause {
    /// Wraps any error (an `anyhow::Error` too).
    pub fn new(err: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        Self(Arc::from(err.into()))
    }
}

impl fmt::Debug for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl fmt::Display for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl std::error::Error for Cause {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}

/// Two causes are equal only when they are the same failure.
impl PartialEq for Cause {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for Cause {}

/// Why a write was not committed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum JournalError {
    /// The cart changed elsewhere (another node, or the reaper): reload and retry.
    #[error("the cart changed elsewhere")]
    Stale,
    /// The write contradicts PostgreSQL (e.g. an unknown SKU or a lost lease).
    #[error("write refused: {0}")]
    Rejected(Rejection),
    /// Too many writes are waiting: the node sheds this one.
    #[error("journal unavailable: the queue is full")]
    QueueFull,
    /// The writer has stopped (the node is shutting down).
    #[error("journal unavailable: the writer stopped")]
    Stopped,
    /// The batch failed in PostgreSQL and was rolled back.
    #[error("journal unavailable: the batch was not committed")]
    NotCommitted(#[source] Cause),
}

/// The durable, batched writer (group commit). `write` resolves after the commit.
pub trait Journal: Send + Sync + 'static {
    /// Queues a write and resolves when its batch has committed (or failed).
    fn write(&self, op: WriteOp) -> BoxFut<Result<WriteOutcome, JournalError>>;
}

/// The other nodes, as a shard short of units sees them: it can ask them to return
/// what they hold (over the bus; nothing is guaranteed to arrive).
pub trait Peers: Send + Sync + 'static {
    /// Asks every other node to return its free leased units of `sku` now.
    fn recall(&self, sku: &str, want: i64);
}

/// An order as its owner sees it: the body of the order answers and of the `order`
/// socket message, so that no copy of it drifts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[schema(as = OrderBody)]
pub struct OrderSummary {
    /// Order id.
    pub id: Uuid,
    /// Where the order stands.
    pub status: crate::order::OrderStatus,
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

/// Why a read failed; nothing changed and the caller may retry later.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum StoreError {
    /// No connection could be had (the pool is exhausted or PostgreSQL is down).
    #[error("store unavailable: no connection")]
    Connect(#[source] Cause),
    /// A query failed.
    #[error("store unavailable: the read failed")]
    Query(#[source] Cause),
}

impl StoreError {
    /// A pool that gave no connection.
    pub fn connect(err: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        Self::Connect(Cause::new(err))
    }

    /// A query that failed.
    pub fn query(err: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        Self::Query(Cause::new(err))
    }
}

/// Reads the actors need from PostgreSQL.
pub trait Store: Send + Sync + 'static {
    /// Makes this node the owner of the session's cart and loads it; `None` when the
    /// session has no cart row (nothing was ever reserved, or it was purged), which
    /// stays so: the row is written with the cart's first line, never by a read.
    fn claim_cart(&self, session_id: String) -> BoxFut<Result<Option<Cart>, StoreError>>;
    /// The order placed by `session_id` with `key`, if any.
    fn order_for_key(
        &self,
        session_id: String,
        key: String,
    ) -> BoxFut<Result<Option<OrderSummary>, StoreError>>;
    /// PostgreSQL's available count for each SKU.
    fn available(&self, skus: Vec<String>) -> BoxFut<Result<Vec<(String, i64)>, StoreError>>;
}

#[cfg(test)]
mod tests {
    use std::error::Error as _;

    use super::*;

    #[derive(Debug, Error)]
    #[error("timed out")]
    struct Timeout;

    #[derive(Debug, Error)]
    #[error("journal connection")]
    struct Connect(#[source] Timeout);

    fn chain(err: &(dyn std::error::Error + 'static)) -> Vec<String> {
        let mut out = Vec::new();
        let mut next = Some(err);
        while let Some(e) = next {
            out.push(e.to_string());
            next = e.source();
        }
        out
    }

    #[test]
    fn a_failed_batch_keeps_its_cause_for_every_writer() {
        let err = JournalError::NotCommitted(Cause::new(Connect(Timeout)));
        let copy = err.clone();
        assert_eq!(copy, err, "every writer of the batch sees the same failure");
        assert_eq!(
            chain(&copy),
            [
                "journal unavailable: the batch was not committed",
                "journal connection",
                "timed out"
            ]
        );
        assert_ne!(
            JournalError::NotCommitted(Cause::new(Timeout)),
            JournalError::NotCommitted(Cause::new(Timeout)),
            "two failures are two causes"
        );
    }

    #[test]
    fn rejections_say_what_was_refused() {
        let err = JournalError::Rejected(Rejection::LeaseShort {
            sku: "A".into(),
            units: 3,
            lease: 1,
        });
        assert_eq!(
            err.to_string(),
            "write refused: lease of A holds 1 units and cannot cover 3"
        );
        assert!(err.source().is_none());
    }
}
