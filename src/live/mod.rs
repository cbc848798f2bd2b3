//! Live updates: stock, cart and order changes pushed to shoppers' sockets on every
//! node. A change is delivered to this node's hub at once and published on the bus for
//! the others; values are absolute and ordered by each SKU's `stock_seq`, so a message
//! lost on the bus is repaired by the next resync rather than corrupting anything.
//!
//! [`Live`] is what this node says; [`sink::LiveSink`] is what it does with what the
//! other nodes say. They are separate so that the carts, which talk through `Live`,
//! exist before the sink, which evicts carts.

pub mod bus;
pub mod campaigns;
mod catalog_sync;
pub mod hub;
pub mod message;
pub mod queue;
pub mod report;
pub mod sink;

use std::sync::Arc;

use deadpool_postgres::Pool;
use surge_actors::{
    cart_actor::{CartEvents, CartView},
    ports::{OrderSummary, Peers, StockLevel},
};

use self::{
    bus::{BusEvent, Publisher},
    hub::Hub,
    message::ServerMessage,
};
use crate::{
    catalog::{CatalogStore, StockLevels},
    store::inventory,
    views::cart_body,
};

/// What the live layer works with, handed over when it is built.
pub struct LiveDeps {
    /// This node's sockets.
    pub hub: Hub,
    /// The other nodes.
    pub bus: Publisher,
    /// This node's view of every SKU's sellable units.
    pub stock: Arc<StockLevels>,
    /// The in-memory catalog (a cart message shows each line's product).
    pub catalog: Arc<CatalogStore>,
    /// Where resyncs and catalog reloads read from (the replica when there is one).
    pub reads: Pool,
    /// The primary, for a catalog reload that must not meet a lagging replica.
    pub primary: Pool,
    /// This node's id, stamped on the takeovers it announces.
    pub node_id: String,
    /// Coalescing interval of stock messages, in milliseconds (told to clients).
    pub coalesce_ms: u64,
}

/// The node's live layer; cheap to clone.
#[derive(Clone)]
pub struct Live(Arc<LiveDeps>);

impl Live {
    /// A live layer over its dependencies.
    pub fn new(deps: LiveDeps) -> Self {
        Self(Arc::new(deps))
    }

    /// The local fan-out.
    pub fn hub(&self) -> &Hub {
        &self.0.hub
    }

    /// Coalescing interval of stock messages, in milliseconds.
    pub fn coalesce_ms(&self) -> u64 {
        self.0.coalesce_ms
    }

    /// Applies stock values to this node (catalog numbers and sockets); returns the
    /// ones that were news.
    fn apply(&self, levels: Vec<StockLevel>) -> Vec<StockLevel> {
        let changed = self.0.stock.merge(levels);
        if !changed.is_empty() {
            self.0.hub.stock(changed.clone());
        }
        changed
    }

    /// Stock changed by a commit of this node: show it here and tell the other nodes.
    pub fn stock_changed(&self, levels: Vec<StockLevel>) {
        for level in self.apply(levels) {
            self.0.bus.publish(BusEvent::Stock {
                sku: level.sku,
                available: level.available,
                seq: level.seq,
            });
        }
    }

    /// A message for every socket of one session, on every node.
    pub fn to_session(&self, session_id: &str, message: ServerMessage) {
        self.0.hub.to_session(session_id, &message);
        self.0.bus.publish(BusEvent::Session {
            session_id: session_id.to_owned(),
            payload: message,
        });
    }

    /// An order of the session was placed or changed status: its sockets, on every
    /// node, get the order as it is now.
    pub fn order_changed(&self, session_id: &str, order: &OrderSummary) {
        self.to_session(
            session_id,
            ServerMessage::Order {
                order: order.clone(),
            },
        );
    }

    /// Reads every SKU's stock from PostgreSQL and pushes what changed, then catches
    /// the catalog up to its committed version: after a bus reconnect, and
    /// periodically as a safety net for lost messages. Returns the stock values changed.
    pub async fn resync(&self) -> anyhow::Result<usize> {
        let stock = async {
            let client = self.0.reads.get().await?;
            let levels = inventory::stock_levels(&**client).await?;
            anyhow::Ok(self.apply(levels).len())
        }
        .await;
        let catalog = self.catch_up().await;
        let changed = stock?;
        catalog?;
        Ok(changed)
    }
}

/// A shard short of units asks the other nodes over the bus.
impl Peers for Live {
    fn recall(&self, sku: &str, want: i64) {
        self.0.bus.publish(BusEvent::Recall {
            sku: sku.to_owned(),
            want,
        });
    }
}

impl CartEvents for Live {
    fn cart_changed(&self, session_id: &str, cart: &CartView) {
        let cart = cart_body(&self.0.catalog.snapshot(), cart.clone());
        self.to_session(session_id, ServerMessage::Cart { cart });
    }

    fn reservation_expired(&self, session_id: &str, sku: &str, quantity: i64) {
        self.to_session(
            session_id,
            ServerMessage::ReservationExpired {
                sku: sku.to_owned(),
                quantity,
            },
        );
    }

    fn order_placed(&self, session_id: &str, order: &OrderSummary) {
        self.order_changed(session_id, order);
    }

    fn cart_claimed(&self, session_id: &str, version: i64) {
        self.0.bus.publish(BusEvent::Takeover {
            session_id: session_id.to_owned(),
            node_id: self.0.node_id.clone(),
            version,
        });
    }
}
