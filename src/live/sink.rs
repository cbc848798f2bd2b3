//! What this node does with the other nodes' events: show their stock, wake its shards
//! when units come back, pass session messages to its sockets, let go of carts taken
//! over elsewhere and reload the catalog they changed.

use surge_actors::{
    cart_actor::CartRegistry,
    ports::StockLevel,
    shard::{Restocked, Shards},
};

use super::{
    bus::{BusEvent, BusSink, Envelope},
    Live,
};

/// Receives other nodes' events from the bus; built once the carts and shards exist.
pub struct LiveSink {
    live: Live,
    shards: Shards,
    carts: CartRegistry,
}

impl LiveSink {
    /// A sink acting on this node's live layer, shards and carts.
    pub fn new(live: Live, shards: Shards, carts: CartRegistry) -> Self {
        Self {
            live,
            shards,
            carts,
        }
    }
}

impl BusSink for LiveSink {
    fn deliver(&self, envelope: Envelope) {
        match envelope.event {
            BusEvent::Stock {
                sku,
                available,
                seq,
            } => {
                if available > 0 {
                    // Another node freed or restocked units: stop refusing from memory.
                    self.shards.for_sku(&sku).addr().do_send(Restocked {
                        sku: sku.clone(),
                        available,
                    });
                }
                self.live.apply(vec![StockLevel {
                    sku,
                    available,
                    seq,
                }]);
            }
            BusEvent::Session {
                session_id,
                payload,
            } => self.live.hub().to_session(&session_id, &payload),
            BusEvent::Takeover {
                session_id,
                version,
                ..
            } => self.carts.evict(&session_id, version),
            BusEvent::Recall { sku, .. } => self.shards.recall(&sku),
            BusEvent::Catalog { version } => self.live.catalog_heard(version),
        }
    }

    fn resync(&self) {
        let live = self.live.clone();
        tokio::spawn(async move {
            match live.resync().await {
                Ok(n) => tracing::info!(
                    changed = n,
                    "stock and catalog resynchronised after a bus reconnect"
                ),
                Err(err) => tracing::warn!(
                    error = format!("{err:#}"),
                    "stock and catalog resync failed"
                ),
            }
        });
    }
}
