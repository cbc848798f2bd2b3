//! Live updates: stock, cart and order changes pushed to shoppers' sockets on every
//! node. A change is delivered to this node's hub at once and published on the bus for
//! the others; values are absolute and ordered by each SKU's `stock_seq`, so a message
//! lost on the bus is repaired by the next resync rather than corrupting anything.

pub mod bus;
pub mod hub;

use std::sync::{Arc, OnceLock};

use actix_web::web;
use surge_actors::{
    cart_actor::{CartEvents, CartView},
    ports::{OrderSummary, StockLevel},
};

use self::{
    bus::{Bus, BusEvent, BusSink, Envelope},
    hub::Hub,
};
use crate::{
    http::cart::{cart_body, OrderBody},
    state::AppState,
};

struct Inner {
    hub: Hub,
    bus: OnceLock<Bus>,
    state: OnceLock<web::Data<AppState>>,
    coalesce_ms: u64,
}

/// The node's live layer; cheap to clone.
#[derive(Clone)]
pub struct Live(Arc<Inner>);

impl Live {
    /// A live layer over `hub`; call [`Live::attach`] once the state and bus exist.
    pub fn new(hub: Hub, coalesce_ms: u64) -> Self {
        Self(Arc::new(Inner {
            hub,
            bus: OnceLock::new(),
            state: OnceLock::new(),
            coalesce_ms,
        }))
    }

    /// Completes the wiring (the state needs the live layer, and the other way round).
    pub fn attach(&self, state: web::Data<AppState>, bus: Bus) {
        let _ = self.0.state.set(state);
        let _ = self.0.bus.set(bus);
    }

    /// The local fan-out.
    pub fn hub(&self) -> &Hub {
        &self.0.hub
    }

    /// The bus, once attached.
    pub fn bus(&self) -> Option<&Bus> {
        self.0.bus.get()
    }

    /// Coalescing interval of stock messages, in milliseconds.
    pub fn coalesce_ms(&self) -> u64 {
        self.0.coalesce_ms
    }

    fn publish(&self, event: BusEvent) {
        if let Some(bus) = self.0.bus.get() {
            bus.publish(event);
        }
    }

    /// Applies stock values to this node (catalog numbers and sockets); returns the
    /// ones that were news.
    fn apply(&self, levels: Vec<StockLevel>) -> Vec<StockLevel> {
        let Some(state) = self.0.state.get() else {
            return Vec::new();
        };
        let changed = state.stock.merge(levels);
        if !changed.is_empty() {
            self.0.hub.stock(changed.clone());
        }
        changed
    }

    /// Stock changed by a commit of this node: show it here and tell the other nodes.
    pub fn stock_changed(&self, levels: Vec<StockLevel>) {
        for level in self.apply(levels) {
            self.publish(BusEvent::Stock {
                sku: level.sku,
                available: level.available,
                seq: level.seq,
            });
        }
    }

    /// A message for every socket of one session, on every node.
    pub fn to_session(&self, session_id: &str, payload: serde_json::Value) {
        self.0.hub.to_session(session_id, payload.to_string());
        self.publish(BusEvent::Session {
            session_id: session_id.to_owned(),
            payload,
        });
    }

    /// A message for every socket on every node.
    pub fn to_all(&self, payload: serde_json::Value) {
        self.0.hub.to_all(payload.to_string());
        self.publish(BusEvent::Campaign { payload });
    }

    /// The catalog changed: other nodes reload theirs.
    pub fn catalog_changed(&self) {
        self.publish(BusEvent::Catalog);
    }

    /// Announces campaigns that have started and not yet been announced on this node
    /// (every node runs this, for its own sockets).
    pub async fn announce_campaigns(
        &self,
        announced: &std::sync::Mutex<std::collections::HashSet<uuid::Uuid>>,
    ) -> anyhow::Result<()> {
        let Some(state) = self.0.state.get() else {
            return Ok(());
        };
        let client = state.db.read.get().await?;
        let rows = client
            .query(
                "SELECT c.id, c.name, p.slug, (extract(epoch FROM c.starts_at) * 1000)::bigint,
                        (extract(epoch FROM c.ends_at) * 1000)::bigint
                   FROM campaigns c LEFT JOIN products p ON p.id = c.product_id
                  WHERE c.starts_at <= now() AND c.ends_at > now()",
                &[],
            )
            .await?;
        for r in rows {
            let id: uuid::Uuid = r.get(0);
            let fresh = announced.lock().map(|mut a| a.insert(id)).unwrap_or(false);
            if fresh {
                let campaign = serde_json::json!({
                    "id": id, "name": r.get::<_, String>(1), "product_slug": r.get::<_, Option<String>>(2),
                    "starts_at_ms": r.get::<_, i64>(3), "ends_at_ms": r.get::<_, i64>(4),
                });
                self.0.hub.to_all(
                    serde_json::json!({ "type": "campaign", "campaign": campaign }).to_string(),
                );
            }
        }
        Ok(())
    }

    /// Reads every SKU's stock from PostgreSQL and pushes what changed: after a bus
    /// reconnect, and periodically as a safety net for lost messages.
    pub async fn resync(&self) -> anyhow::Result<usize> {
        let Some(state) = self.0.state.get() else {
            return Ok(0);
        };
        let client = state.db.read.get().await?;
        let rows = client
            .query(
                "SELECT sku, available + leased, stock_seq FROM inventory",
                &[],
            )
            .await?;
        let levels = rows
            .iter()
            .map(|r| StockLevel {
                sku: r.get(0),
                available: r.get(1),
                seq: r.get(2),
            })
            .collect();
        Ok(self.apply(levels).len())
    }
}

/// Receives other nodes' events from the bus.
pub struct LiveSink(pub Live);

impl BusSink for LiveSink {
    fn deliver(&self, envelope: Envelope) {
        let live = &self.0;
        match envelope.event {
            BusEvent::Stock {
                sku,
                available,
                seq,
            } => {
                if available > 0 {
                    // Another node freed or restocked units: stop refusing from memory.
                    if let Some(state) = live.0.state.get() {
                        state
                            .shards
                            .for_sku(&sku)
                            .addr()
                            .do_send(surge_actors::shard::Restocked {
                                sku: sku.clone(),
                                available,
                            });
                    }
                }
                live.apply(vec![StockLevel {
                    sku,
                    available,
                    seq,
                }]);
            }
            BusEvent::Session {
                session_id,
                payload,
            } => live.0.hub.to_session(&session_id, payload.to_string()),
            BusEvent::Campaign { payload } => live.0.hub.to_all(payload.to_string()),
            BusEvent::Takeover { session_id, .. } => {
                if let Some(state) = live.0.state.get() {
                    state.carts.evict(&session_id);
                }
            }
            BusEvent::Catalog => {
                if let Some(state) = live.0.state.get().cloned() {
                    tokio::spawn(async move {
                        if let Err(err) = state.reload_catalog(&state.db.read).await {
                            tracing::warn!(
                                error = format!("{err:#}"),
                                "catalog reload after a bus event failed"
                            );
                        }
                    });
                }
            }
        }
    }

    fn resync(&self) {
        let live = self.0.clone();
        tokio::spawn(async move {
            match live.resync().await {
                Ok(n) => tracing::info!(changed = n, "stock resynchronised after a bus reconnect"),
                Err(err) => tracing::warn!(error = format!("{err:#}"), "stock resync failed"),
            }
        });
    }
}

impl CartEvents for Live {
    fn cart_changed(&self, session_id: &str, cart: &CartView) {
        let Some(state) = self.0.state.get() else {
            return;
        };
        let body = cart_body(state, cart.clone());
        self.to_session(
            session_id,
            serde_json::json!({ "type": "cart", "cart": body }),
        );
    }

    fn reservation_expired(&self, session_id: &str, sku: &str, quantity: i64) {
        self.to_session(
            session_id,
            serde_json::json!({ "type": "reservation_expired", "sku": sku, "quantity": quantity }),
        );
    }

    fn order_placed(&self, session_id: &str, order: &OrderSummary) {
        self.to_session(
            session_id,
            serde_json::json!({ "type": "order", "order": OrderBody::from(order.clone()) }),
        );
    }

    fn cart_claimed(&self, session_id: &str) {
        let node_id = self
            .0
            .state
            .get()
            .map(|s| s.node_id.clone())
            .unwrap_or_default();
        self.publish(BusEvent::Takeover {
            session_id: session_id.to_owned(),
            node_id,
        });
    }
}
