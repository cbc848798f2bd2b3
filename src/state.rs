//! State shared by every request handler of a node.

use std::sync::{
    atomic::{AtomicBool, Ordering},
    Arc,
};

use metrics_exporter_prometheus::PrometheusHandle;
use surge_actors::{cart::CartLimits, cart_actor::CartRegistry, shard::Shards};

use crate::{
    assets::Assets,
    catalog::{CatalogStore, StockLevels},
    session_cookie::SessionSigner,
    store::Db,
};

/// Readiness facts, flipped by startup and shutdown.
#[derive(Debug, Default)]
pub struct Health {
    draining: AtomicBool,
    migrated: AtomicBool,
    catalog_loaded: AtomicBool,
}

impl Health {
    /// Marks the node as draining: /readyz answers 503 from now on.
    pub fn begin_drain(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    /// Whether a drain has begun.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// Records that migrations are applied.
    pub fn set_migrated(&self) {
        self.migrated.store(true, Ordering::SeqCst);
    }

    /// Whether migrations are applied.
    pub fn is_migrated(&self) -> bool {
        self.migrated.load(Ordering::SeqCst)
    }

    /// Records that the catalog is in memory.
    pub fn set_catalog_loaded(&self) {
        self.catalog_loaded.store(true, Ordering::SeqCst);
    }

    /// Whether the catalog is in memory.
    pub fn is_catalog_loaded(&self) -> bool {
        self.catalog_loaded.load(Ordering::SeqCst)
    }
}

/// Everything a handler needs; cloned cheaply into each worker.
pub struct AppState {
    /// Database pools.
    pub db: Db,
    /// The in-memory catalog (shared with the live layer).
    pub catalog: Arc<CatalogStore>,
    /// Sellable units per SKU (shared with the live layer).
    pub stock: Arc<StockLevels>,
    /// Admin bearer token; `None` turns the admin API off.
    pub admin_token: Option<crate::secret::Secret>,
    /// Readiness facts.
    pub health: Health,
    /// The storefront.
    pub assets: Assets,
    /// Renders /metrics.
    pub metrics: PrometheusHandle,
    /// This node's identity.
    pub node_id: String,
    /// Signs session cookies.
    pub sessions: SessionSigner,
    /// Live carts of this node.
    pub carts: CartRegistry,
    /// Inventory shards of this node.
    pub shards: Shards,
    /// Cart rules, for validating input before it reaches an actor.
    pub limits: CartLimits,
    /// Live updates: hub and bus.
    pub live: crate::live::Live,
    /// Socket limits.
    pub ws_limits: crate::ws::protocol::WsLimits,
    /// Open sockets per client IP, held to `ws_limits.max_per_ip`.
    pub ws_sockets: crate::ws::protocol::SocketsPerIp,
    /// Rate limits on writes and new sessions, and who a request counts against.
    pub rate_limits: crate::rate_limit::RateLimits,
    /// Campaign waiting rooms.
    pub queue: Arc<crate::live::queue::WaitingRoom>,
    /// Campaign reports: refusal counts, open sockets, monitors.
    pub reports: Arc<crate::live::report::CampaignReports>,
}

impl AppState {
    /// Reloads catalog and stock from `pool` (the replica at startup, the primary after
    /// an admin write so the change is visible at once).
    pub async fn reload_catalog(&self, pool: &deadpool_postgres::Pool) -> anyhow::Result<usize> {
        let n = self.live.reload_catalog(pool).await?;
        self.health.set_catalog_loaded();
        Ok(n)
    }
}

/// Shared handle to the state.
pub type SharedState = Arc<AppState>;
