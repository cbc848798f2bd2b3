//! Startup and graceful shutdown of a serving node.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use actix_web::{
    dev::ServerHandle,
    middleware::{from_fn, Compress, DefaultHeaders},
    web, App, HttpServer,
};
use anyhow::Context as _;
use tracing_actix_web::TracingLogger;

use surge_actors::{
    cart::CartLimits,
    cart_actor::{CartDeps, CartRegistry},
    ports::{Journal, Store},
    shard::{ShardConfig, Shards},
    stock::LeasePolicy,
};

use crate::{
    assets::Assets,
    catalog::{CatalogStore, StockLevels},
    config::ServeConfig,
    http,
    live::{
        bus::{Bus, BusConfig},
        hub::Hub,
        Live, LiveSink,
    },
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

/// How often order partitions are topped up.
const PARTITION_PERIOD: Duration = Duration::from_secs(6 * 3600);

/// A node that is accepting requests.
pub struct RunningServer {
    /// The bound address (useful with port 0).
    pub addr: SocketAddr,
    /// Shared state, for tests and shutdown.
    pub state: web::Data<AppState>,
    handle: ServerHandle,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
    background: Vec<tokio::task::JoinHandle<()>>,
    drain_delay: Duration,
}

/// Migrates, loads the catalog and starts listening. Must run inside an actix `System`.
pub async fn start(cfg: ServeConfig) -> anyhow::Result<RunningServer> {
    let commerce = cfg.commerce.clone();
    let db = Db::with_journal(&cfg.db, commerce.journal_pool_size)?;
    {
        let mut client = db
            .primary
            .get()
            .await
            .context("connecting to PostgreSQL (DATABASE_URL)")?;
        migrate::run(&mut client).await?;
        // A previous process with this node id may have died holding leases.
        leases::wait_for_id(&client, &cfg.node_id, commerce.lease_ttl).await?;
        let recovered = leases::reap(&mut client, Scope::Own(&cfg.node_id)).await?;
        if recovered.lease_units > 0 {
            tracing::info!(
                units = recovered.lease_units,
                "recovered this node's old leases"
            );
        }
        leases::heartbeat(&client, &cfg.node_id, commerce.lease_ttl).await?;
    }
    let hub = Hub::start(cfg.live.hub_shards, cfg.live.coalesce);
    let live = Live::new(
        hub,
        u64::try_from(cfg.live.coalesce.as_millis()).unwrap_or(100),
    );
    let journal = PgJournal::spawn(
        db.journal.clone(),
        cfg.node_id.clone(),
        JournalConfig {
            max_batch: commerce.journal_max_batch,
            max_wait: commerce.journal_max_wait,
            lease_ttl: commerce.lease_ttl,
            ..JournalConfig::default()
        },
        {
            let live = live.clone();
            Arc::new(move |levels| live.stock_changed(levels))
        },
    );
    let journal: Arc<dyn Journal> = Arc::new(journal);
    let store: Arc<dyn Store> = Arc::new(PgStore::new(db.primary.clone(), cfg.node_id.clone()));
    let shards = Shards::start(
        commerce.shards,
        Arc::clone(&journal),
        Arc::clone(&store),
        ShardConfig {
            policy: LeasePolicy {
                max_chunk: commerce.lease_max_chunk,
                ..LeasePolicy::default()
            },
            idle_return: commerce.lease_idle,
            max_queue: commerce.shard_queue,
            ..ShardConfig::default()
        },
    );
    let ttl_ms = i64::try_from(commerce.reservation_ttl.as_millis()).unwrap_or(i64::MAX);
    let limits = CartLimits {
        max_line_quantity: commerce.max_line_quantity,
        reservation_ttl_ms: ttl_ms,
        checkout_margin_ms: (ttl_ms / 10).min(1000),
        ..CartLimits::default()
    };
    let carts = CartRegistry::new(CartDeps {
        journal: Arc::clone(&journal),
        store: Arc::clone(&store),
        shards: shards.clone(),
        limits,
        idle: commerce.cart_idle,
        events: Arc::new(live.clone()),
    });
    let assets = match &cfg.static_dir {
        Some(dir) => Assets::from_dir(dir).with_context(|| format!("reading {}", dir.display()))?,
        None => Assets::embedded(),
    };
    let state = web::Data::from(Arc::new(AppState {
        db,
        catalog: CatalogStore::default(),
        stock: StockLevels::default(),
        admin_token: cfg.admin_token.clone(),
        health: Health::default(),
        assets,
        metrics: telemetry::metrics_handle(),
        node_id: cfg.node_id.clone(),
        sessions: SessionSigner::new(cfg.session_key.clone(), cfg.cookie_secure),
        carts,
        shards,
        limits,
        live: live.clone(),
        ws_limits: cfg.live.limits.clone(),
    }));
    let bus = Bus::start(
        BusConfig {
            redis_url: cfg.redis_url.clone(),
            prefix: cfg.live.bus_prefix.clone(),
            node_id: cfg.node_id.clone(),
            reconnect_min: cfg.live.bus_reconnect,
            reconnect_max: Duration::from_secs(5).max(cfg.live.bus_reconnect),
            publish_queue: 10_000,
        },
        Arc::new(LiveSink(live.clone())),
    )
    .await?;
    live.attach(state.clone(), bus);
    state.health.set_migrated();
    let products = state.reload_catalog(&state.db.read).await?;
    if cfg.admin_token.is_none() {
        tracing::info!("SURGE_ADMIN_TOKEN is not set: the admin API is off");
    }

    let app_state = state.clone();
    let body_limit = cfg.body_limit;
    let server = HttpServer::new(move || {
        App::new()
            .app_data(app_state.clone())
            .configure(|c| http::routes(c, body_limit))
            .default_service(web::to(http::not_found))
            .wrap(from_fn(http::middleware::observe))
            .wrap(Compress::default())
            .wrap(
                DefaultHeaders::new()
                    .add(("X-Content-Type-Options", "nosniff"))
                    .add(("Referrer-Policy", "strict-origin-when-cross-origin")),
            )
            .wrap(TracingLogger::<http::request_span::LeanSpan>::new())
    })
    .workers(cfg.workers)
    .disable_signals()
    .shutdown_timeout(cfg.shutdown_grace.as_secs())
    .bind(cfg.bind)
    .with_context(|| format!("binding SURGE_BIND={}", cfg.bind))?;
    let addr = server
        .addrs()
        .first()
        .copied()
        .context("the server bound no address")?;
    let server = server.run();
    let handle = server.handle();
    let server = actix_web::rt::spawn(server);

    let partitions_state = state.clone();
    let partitions = actix_web::rt::spawn(async move {
        let mut tick = tokio::time::interval(PARTITION_PERIOD);
        tick.tick().await;
        loop {
            tick.tick().await;
            let result = async {
                let client = partitions_state.db.primary.get().await?;
                migrate::ensure_partitions(&client).await
            }
            .await;
            if let Err(err) = result {
                tracing::error!(
                    error = format!("{err:#}"),
                    "could not create order partitions"
                );
            }
        }
    });

    let background = vec![
        partitions,
        every(state.clone(), commerce.lease_ttl / 3, "heartbeat", {
            let (node, ttl) = (cfg.node_id.clone(), commerce.lease_ttl);
            move |state| {
                let node = node.clone();
                async move {
                    let client = state.db.primary.get().await?;
                    leases::heartbeat(&client, &node, ttl).await
                }
            }
        }),
        every(state.clone(), commerce.reaper_period, "reaper", {
            let scope_ttl = commerce.lease_ttl;
            let grace = commerce.reaper_period.max(Duration::from_secs(1));
            move |state| async move {
                let mut client = state.db.primary.get().await?;
                let scope = Scope::Dead {
                    ttl: scope_ttl,
                    grace,
                };
                let reaped = leases::reap(&mut client, scope).await?;
                state.live.stock_changed(reaped.levels);
                Ok(())
            }
        }),
        every(state.clone(), Duration::from_secs(1), "campaigns", {
            let announced = Arc::new(std::sync::Mutex::new(std::collections::HashSet::new()));
            move |state| {
                let announced = Arc::clone(&announced);
                async move { state.live.announce_campaigns(&announced).await }
            }
        }),
        every(
            state.clone(),
            cfg.live.resync,
            "stock resync",
            |state| async move { state.live.resync().await.map(|_| ()) },
        ),
    ];

    tracing::info!(%addr, node = %cfg.node_id, products, "surge is serving");
    Ok(RunningServer {
        addr,
        state,
        handle,
        server,
        background,
        drain_delay: cfg.drain_delay,
    })
}

/// Runs `job` every `period` until aborted, logging failures.
fn every<F, Fut>(
    state: web::Data<AppState>,
    period: Duration,
    name: &'static str,
    job: F,
) -> tokio::task::JoinHandle<()>
where
    F: Fn(web::Data<AppState>) -> Fut + 'static,
    Fut: std::future::Future<Output = anyhow::Result<()>> + 'static,
{
    actix_web::rt::spawn(async move {
        let mut tick = tokio::time::interval(period.max(Duration::from_millis(50)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if let Err(err) = job(state.clone()).await {
                tracing::warn!(
                    task = name,
                    error = format!("{err:#}"),
                    "background task failed"
                );
            }
        }
    })
}

impl RunningServer {
    /// Turns readiness off so that load balancers stop sending new requests.
    pub fn begin_drain(&self) {
        self.state.health.begin_drain();
    }

    /// Graceful stop: readiness off, wait the drain delay, stop accepting, let
    /// in-flight requests finish within the grace period, then close the pools.
    pub async fn shutdown(self) {
        self.begin_drain();
        tracing::info!(delay = ?self.drain_delay, "draining: /readyz now answers 503");
        tokio::time::sleep(self.drain_delay).await;
        // Sockets are long-lived: ask them to reconnect elsewhere (1001) rather than
        // hold the graceful stop for the whole grace period.
        self.state.live.hub().close_all();
        tracing::info!("closing the listener; finishing in-flight requests");
        self.handle.stop(true).await;
        if let Err(err) = self.server.await {
            tracing::warn!(%err, "server task ended abnormally");
        }
        for task in self.background {
            task.abort();
        }
        let returned = self.state.shards.shutdown().await;
        tracing::info!(units = returned, "leases returned");
        if let Some(bus) = self.state.live.bus() {
            bus.stop().await;
        }
        self.state.live.hub().stop();
        if let Ok(client) = self.state.db.primary.get().await {
            if let Err(err) = leases::leave(&client, &self.state.node_id).await {
                tracing::warn!(error = format!("{err:#}"), "could not deregister the node");
            }
        }
        self.state.db.close();
        tracing::info!("stopped");
    }

    /// Immediate stop without draining or returning leases; for tests.
    pub async fn stop_now(self) {
        self.handle.stop(false).await;
        for task in self.background {
            task.abort();
        }
        let _ = self.state.shards.shutdown().await;
        if let Some(bus) = self.state.live.bus() {
            bus.stop().await;
        }
        self.state.live.hub().stop();
        self.state.db.close();
    }
}

/// Resolves when SIGTERM or SIGINT arrives.
pub async fn wait_for_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
    }
    Ok(())
}
