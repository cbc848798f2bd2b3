//! Startup and graceful shutdown of a serving node.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use actix_web::{
    dev::ServerHandle,
    middleware::{from_fn, Compress, DefaultHeaders},
    web, App, HttpServer,
};
use anyhow::Context as _;
use tracing_actix_web::TracingLogger;

use crate::{
    assets::Assets,
    catalog::{CatalogStore, StockLevels},
    config::ServeConfig,
    http,
    state::{AppState, Health},
    store::{migrate, Db},
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
    let db = Db::new(&cfg.db)?;
    {
        let mut client = db
            .primary
            .get()
            .await
            .context("connecting to PostgreSQL (DATABASE_URL)")?;
        migrate::run(&mut client).await?;
    }
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
    }));
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
            .wrap(TracingLogger::default())
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

    tracing::info!(%addr, node = %cfg.node_id, products, "surge is serving");
    Ok(RunningServer {
        addr,
        state,
        handle,
        server,
        background: vec![partitions],
        drain_delay: cfg.drain_delay,
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
        tracing::info!("closing the listener; finishing in-flight requests");
        self.handle.stop(true).await;
        if let Err(err) = self.server.await {
            tracing::warn!(%err, "server task ended abnormally");
        }
        for task in self.background {
            task.abort();
        }
        self.state.db.close();
        tracing::info!("stopped");
    }

    /// Immediate stop without draining; for tests.
    pub async fn stop_now(self) {
        self.handle.stop(false).await;
        for task in self.background {
            task.abort();
        }
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
