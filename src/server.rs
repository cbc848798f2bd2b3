//! Startup and shutdown of a serving node, in three pieces: the core
//! ([`node::Node`]), the HTTP app ([`serve_http`]) and the background jobs
//! ([`jobs`]); then one shutdown path for both a graceful and an immediate stop.

mod jobs;
mod node;

use std::{future::Future, net::SocketAddr, time::Duration};

use actix_web::{
    dev::{Server, ServerHandle},
    http::KeepAlive,
    web, App, HttpServer,
};
use anyhow::Context as _;

use self::jobs::Jobs;
use crate::{config::ServeConfig, http, live::bus::Bus, state::AppState, store::leases};

/// How a node stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drain {
    /// Readiness off, wait the drain delay, ask sockets to reconnect elsewhere, let
    /// in-flight requests finish, return leases and deregister the node.
    Graceful,
    /// Stop at once, as a crash would, but without leaving tasks behind (tests).
    Immediate,
}

/// A running listener besides the public one.
struct Listener {
    addr: SocketAddr,
    handle: ServerHandle,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

/// A node that is accepting requests.
pub struct Application {
    addr: SocketAddr,
    state: web::Data<AppState>,
    bus: Bus,
    handle: ServerHandle,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
    metrics: Option<Listener>,
    jobs: Jobs,
    drain_delay: Duration,
    grace: Duration,
}

impl Application {
    /// Builds the core, loads the catalog, starts listening and starts the jobs. Must
    /// run inside an actix `System`.
    pub async fn build(cfg: ServeConfig) -> anyhow::Result<Self> {
        let node = node::Node::build(&cfg).await?;
        if cfg.admin_token.is_none() {
            tracing::info!("SURGE_ADMIN_TOKEN is not set: the admin API is off");
        }
        let (server, addr) = serve_http(&cfg, node.state.clone())?;
        let metrics = match cfg.metrics_bind {
            Some(bind) => {
                let (server, addr) = serve_metrics(bind, node.state.clone())?;
                tracing::info!(%addr, "/metrics is served on its own listener only");
                Some(Listener {
                    addr,
                    handle: server.handle(),
                    task: actix_web::rt::spawn(server),
                })
            }
            None => None,
        };
        let handle = server.handle();
        let server = actix_web::rt::spawn(server);
        let jobs = jobs::spawn(&cfg, &node.state);
        tracing::info!(%addr, node = %cfg.node_id, products = node.products, "surge is serving");
        Ok(Self {
            addr,
            state: node.state,
            bus: node.bus,
            handle,
            server,
            metrics,
            jobs,
            drain_delay: cfg.drain_delay,
            grace: cfg.shutdown_grace,
        })
    }

    /// The bound address (useful with port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The address of the private /metrics listener, when `SURGE_METRICS_BIND` is set.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics.as_ref().map(|m| m.addr)
    }

    /// The bound port.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Shared state, for tests.
    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// The node's bus, for tests.
    pub fn bus(&self) -> &Bus {
        &self.bus
    }

    /// Turns readiness off so that load balancers stop sending new requests.
    pub fn begin_drain(&self) {
        self.state.health.begin_drain();
    }

    /// Serves until `stop` resolves (e.g. [`wait_for_signal`]), then shuts down
    /// gracefully; returns `stop`'s error, if any, after the shutdown.
    pub async fn run_until_stopped(
        self,
        stop: impl Future<Output = anyhow::Result<()>>,
    ) -> anyhow::Result<()> {
        let stopped = stop.await;
        self.shutdown(Drain::Graceful).await;
        stopped
    }

    /// Stops the node: the listener, the jobs (each after its current run), the
    /// shards, the bus, the hub and the pools, in that order, so that nothing still
    /// running needs what was stopped before it.
    pub async fn shutdown(self, drain: Drain) {
        let graceful = drain == Drain::Graceful;
        if graceful {
            self.begin_drain();
            tracing::info!(delay = ?self.drain_delay, "draining: /readyz now answers 503");
            tokio::time::sleep(self.drain_delay).await;
            // Sockets are long-lived: ask them to reconnect elsewhere (1001) rather than
            // hold the graceful stop for the whole grace period.
            self.state.live.hub().close_all();
            tracing::info!("closing the listener; finishing in-flight requests");
        }
        self.handle.stop(graceful).await;
        if let Err(err) = self.server.await {
            tracing::warn!(%err, "server task ended abnormally");
        }
        // Scrapes go on through the drain; the metrics listener closes last.
        if let Some(metrics) = self.metrics {
            metrics.handle.stop(graceful).await;
            if let Err(err) = metrics.task.await {
                tracing::warn!(%err, "metrics server task ended abnormally");
            }
        }
        self.jobs.stop(self.grace).await;
        if graceful {
            // The last second's refusals, which the stopped job did not write.
            if let Err(err) = self.state.reports.flush_refusals().await {
                tracing::warn!(error = %err, "could not write the last refusal counts");
            }
        }
        let returned = self.state.shards.shutdown().await;
        if graceful {
            tracing::info!(units = returned, "leases returned");
        }
        self.bus.stop().await;
        self.state.live.hub().stop();
        if graceful {
            return_and_leave(&self.state).await;
        }
        self.state.db.close();
        tracing::info!(?drain, "stopped");
    }
}

/// Returns whatever this node's lease rows still hold after the shards returned theirs
/// (never in memory: a drift the books must not keep), so no unit stays stranded on a
/// node that is gone, then deregisters the node. A pooled connection opened by an HTTP
/// worker can die with that worker's runtime at shutdown, so a statement that finds
/// its connection closed is tried again on another, a few times.
async fn return_and_leave(state: &AppState) {
    const TRIES: usize = 3;
    for attempt in 1..=TRIES {
        let mut client = match state.db.primary.get().await {
            Ok(client) => client,
            Err(err) => {
                tracing::warn!(error = %err, "no connection to return this node's last lease rows; the reaper will");
                return;
            }
        };
        let outcome = match leases::reap(&mut client, leases::Scope::Own(&state.node_id)).await {
            Ok(r) => {
                if r.lease_units > 0 {
                    tracing::warn!(
                        units = r.lease_units,
                        "units left in this node's lease rows after the shards returned theirs; returned"
                    );
                }
                leases::leave(&client, &state.node_id)
                    .await
                    .map_err(|e| e.context("deregistering the node"))
            }
            Err(err) => Err(err.context("returning this node's last lease rows")),
        };
        match outcome {
            Ok(()) => return,
            Err(_) if client.is_closed() && attempt < TRIES => {
                tracing::debug!(
                    attempt,
                    "a pooled connection had closed at shutdown; another"
                );
            }
            Err(err) => {
                tracing::warn!(
                    error = format!("{err:#}"),
                    "could not return this node's lease rows or deregister it; the reaper will"
                );
                return;
            }
        }
    }
}

/// The HTTP server over `state`, bound but not yet running; and its address.
fn serve_http(
    cfg: &ServeConfig,
    state: web::Data<AppState>,
) -> anyhow::Result<(Server, SocketAddr)> {
    let body_limit = cfg.body_limit;
    let send_timeout = cfg.live.send_timeout;
    let metrics_elsewhere = cfg.metrics_bind.is_some();
    let document = http::api_document(&cfg.commerce);
    let server = HttpServer::new(move || {
        App::new()
            .app_data(state.clone())
            .app_data(http::ops::MetricsPlacement {
                elsewhere: metrics_elsewhere,
            })
            .configure(|c| http::routes(c, body_limit, document.clone()))
            .default_service(web::to(http::not_found))
            .wrap(http::compress::Compress)
            // Outermost: the id, span, metrics and default headers cover every answer,
            // a `406` of the compression negotiation included.
            .wrap(http::middleware::Observe)
    })
    .on_connect(move |conn, _| {
        if let (Some(timeout), Some(tcp)) = (
            send_timeout,
            conn.downcast_ref::<actix_web::rt::net::TcpStream>(),
        ) {
            // A peer that stops reading stalls the connection's writer, and the socket
            // actor with it: only the kernel can let such a connection go.
            if let Err(err) = socket2::SockRef::from(tcp).set_tcp_user_timeout(Some(timeout)) {
                tracing::debug!(error = %err, "TCP_USER_TIMEOUT not set");
            }
        }
    })
    .workers(cfg.workers)
    .keep_alive(
        cfg.keep_alive
            .map_or(KeepAlive::Disabled, KeepAlive::Timeout),
    )
    .disable_signals()
    .shutdown_timeout(cfg.shutdown_grace.as_secs())
    .bind(cfg.bind)
    .with_context(|| format!("binding SURGE_BIND={}", cfg.bind))?;
    let addr = server
        .addrs()
        .first()
        .copied()
        .context("the server bound no address")?;
    Ok((server.run(), addr))
}

/// The private /metrics listener (`SURGE_METRICS_BIND`): one worker, nothing else
/// served, so that it costs nothing beside the public one.
fn serve_metrics(
    bind: SocketAddr,
    state: web::Data<AppState>,
) -> anyhow::Result<(Server, SocketAddr)> {
    let server = HttpServer::new(move || {
        App::new()
            .app_data(state.clone())
            .route("/metrics", web::get().to(http::ops::render_metrics))
            .route("/metrics", web::head().to(http::ops::render_metrics))
            .default_service(web::to(http::not_found))
    })
    .workers(1)
    .disable_signals()
    .bind(bind)
    .with_context(|| format!("binding SURGE_METRICS_BIND={bind}"))?;
    let addr = server
        .addrs()
        .first()
        .copied()
        .context("the metrics server bound no address")?;
    Ok((server.run(), addr))
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
