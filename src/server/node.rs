//! The node's core, built in the order its parts depend on each other: the database
//! (migrated, this node's old leases recovered), the live layer's publishing half, the
//! Journal, the shards, the carts, and last the bus subscriber that acts on them.

use std::sync::Arc;

use actix_web::web;
use anyhow::Context as _;
use surge_actors::{
    cart_actor::{CartDeps, CartRegistry},
    ports::{Journal, Store},
    shard::Shards,
};

use crate::{
    assets::Assets,
    catalog::{CatalogStore, StockLevels},
    config::ServeConfig,
    live::{
        bus::{Bus, BusConfig, Publisher, Subscriber},
        hub::Hub,
        queue::WaitingRoom,
        report::{CampaignReports, ReportDeps},
        sink::LiveSink,
        Live, LiveDeps,
    },
    rate_limit::RateLimits,
    session_cookie::SessionSigner,
    state::{AppState, Health},
    store::{
        carts::PgStore,
        journal::{JournalConfig, PgJournal},
        leases::{self, Scope},
        migrate, Db,
    },
    telemetry,
};

/// A node ready to serve: its state and its bus (stopped at shutdown).
pub struct Node {
    /// What every handler shares.
    pub state: web::Data<AppState>,
    /// Both halves of the bus.
    pub bus: Bus,
    /// Products in the catalog at startup.
    pub products: usize,
}

impl Node {
    /// Builds every part and loads the catalog. Must run inside an actix `System`.
    pub async fn build(cfg: &ServeConfig) -> anyhow::Result<Node> {
        // The recorder goes in first: a gauge set before it (the bus's first
        // `bus_connected`) would be lost, and /metrics would lack it until it changed.
        let metrics = telemetry::metrics_handle();
        let commerce = &cfg.commerce;
        let db = Db::with_journal(&cfg.db, commerce.journal_pool_size)?;
        prepare_database(&db, cfg).await?;

        let stock = Arc::new(StockLevels::default());
        let catalog = Arc::new(CatalogStore::default());
        let bus_cfg = BusConfig::for_node(cfg);
        let publisher = Publisher::start(&bus_cfg).await?;
        let live = Live::new(LiveDeps {
            hub: Hub::start(cfg.live.hub_shards, cfg.live.coalesce),
            bus: publisher.clone(),
            stock: Arc::clone(&stock),
            catalog: Arc::clone(&catalog),
            reads: db.read.clone(),
            primary: db.primary.clone(),
            node_id: cfg.node_id.clone(),
            coalesce_ms: u64::try_from(cfg.live.coalesce.as_millis()).unwrap_or(100),
        });

        let journal: Arc<dyn Journal> = Arc::new(PgJournal::spawn(
            db.journal.clone(),
            cfg.node_id.clone(),
            JournalConfig::from_commerce(commerce),
            {
                let live = live.clone();
                Arc::new(move |levels| live.stock_changed(levels))
            },
        ));
        let store: Arc<dyn Store> = Arc::new(PgStore::new(db.primary.clone(), cfg.node_id.clone()));
        let shards = Shards::start(
            commerce.shards,
            Arc::clone(&journal),
            Arc::clone(&store),
            Arc::new(live.clone()),
            commerce.shard(),
        );
        let limits = commerce.cart_limits();
        let carts = CartRegistry::new(CartDeps {
            journal,
            store,
            shards: shards.clone(),
            limits,
            idle: commerce.cart_idle,
            max_live: commerce.max_cart_actors,
            events: Arc::new(live.clone()),
        });

        let sink = LiveSink::new(live.clone(), shards.clone(), carts.clone());
        let subscriber = Subscriber::start(&bus_cfg, Arc::new(sink)).await?;

        let assets = match &cfg.static_dir {
            Some(dir) => {
                Assets::from_dir(dir).with_context(|| format!("reading {}", dir.display()))?
            }
            None => Assets::embedded(),
        };
        let queue = Arc::new(WaitingRoom::new(
            db.primary.clone(),
            live.hub().clone(),
            Arc::clone(&catalog),
            i64::try_from(commerce.queue_window.as_millis()).unwrap_or(i64::MAX),
        ));
        let reports = Arc::new(CampaignReports::new(ReportDeps {
            pool: db.primary.clone(),
            catalog: Arc::clone(&catalog),
            stock: Arc::clone(&stock),
            queue: Arc::clone(&queue),
            node_id: cfg.node_id.clone(),
            live_within: commerce.lease_ttl,
        }));
        let state = web::Data::from(Arc::new(AppState {
            db,
            catalog,
            stock,
            admin_token: cfg.admin_token.clone(),
            health: Health::default(),
            assets,
            metrics,
            node_id: cfg.node_id.clone(),
            sessions: SessionSigner::new(cfg.session_keys(), cfg.cookie_secure),
            carts,
            shards,
            limits,
            live,
            ws_limits: cfg.live.limits.clone(),
            ws_sockets: crate::ws::protocol::SocketsPerIp::default(),
            rate_limits: RateLimits::new(&cfg.rate_limits),
            queue,
            reports,
        }));
        state.health.set_migrated();
        let products = state.reload_catalog(&state.db.read).await?;
        Ok(Node {
            state,
            bus: Bus::new(publisher, subscriber),
            products,
        })
    }
}

/// Migrates, then takes this node id over: waits out a live process that still uses
/// it, returns what a dead one leased, lets go of the carts it owned (their lapsed
/// reservations go back with the reaper's next pass), and heartbeats.
async fn prepare_database(db: &Db, cfg: &ServeConfig) -> anyhow::Result<()> {
    let ttl = cfg.commerce.lease_ttl;
    let mut client = db
        .primary
        .get()
        .await
        .context("connecting to PostgreSQL (DATABASE_URL)")?;
    migrate::run(&mut client).await?;
    leases::wait_for_id(&client, &cfg.node_id, ttl).await?;
    let recovered = leases::reap(&mut client, Scope::Own(&cfg.node_id)).await?;
    if recovered.lease_units > 0 || recovered.disowned_carts > 0 {
        tracing::info!(
            units = recovered.lease_units,
            carts = recovered.disowned_carts,
            "recovered this node id's old leases and let go of its carts"
        );
    }
    leases::heartbeat(&client, &cfg.node_id, ttl).await?;
    Ok(())
}
