//! Connection pools: the primary's request pool, the Journal's, the heartbeat's single
//! connection, and the read replica's when one is configured.
//!
//! Every connection sets session limits (`statement_timeout`, `lock_timeout`,
//! `idle_in_transaction_session_timeout`) and TCP keepalives on both ends, so that a node
//! that freezes, or loses its network, in the middle of a transaction has its locks
//! released by PostgreSQL within seconds instead of holding them until someone notices.
//!
//! Every pool speaks TLS as its URL's `sslmode` and `sslrootcert` say (see
//! [`super::tls`]); the Journal's and the heartbeat's connections go where the
//! primary's go and share its TLS settings.

use std::time::Duration;

use super::tls::PgTls;
use crate::config::{DatabaseConfig, SessionLimits};
use anyhow::Context as _;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};

/// How long a request waits for a free connection before failing fast.
const POOL_WAIT: Duration = Duration::from_secs(5);
/// How long opening a new connection may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Keepalive probes after the idle time, and the gap between them: a silent peer is
/// given up on after idle + 3 s.
const KEEPALIVE_PROBES: u32 = 3;
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(1);

/// The database handles of a node.
#[derive(Clone)]
pub struct Db {
    /// Primary: every write and every read that must see the latest write.
    pub primary: Pool,
    /// Replica for catalog reads, or the primary again when none is configured.
    pub read: Pool,
    /// The Journal's own connections, so that request traffic never starves commits.
    pub journal: Pool,
    /// One connection for the lease heartbeat alone: waiting behind a busy request
    /// pool, three heartbeats would outlast the lease TTL and get a live node reaped.
    pub heartbeat: Pool,
}

impl Db {
    /// Builds the pools; connections open lazily, on first use.
    pub fn new(cfg: &DatabaseConfig) -> anyhow::Result<Self> {
        Self::with_journal(cfg, 1)
    }

    /// Builds the pools, with `journal_size` connections for the Journal.
    pub fn with_journal(cfg: &DatabaseConfig, journal_size: usize) -> anyhow::Result<Self> {
        let limits = cfg.session;
        let tls = &cfg.tls.primary;
        let primary = build_pool(cfg.primary.clone(), tls, cfg.pool_size, limits)
            .context("DATABASE_URL: primary pool")?;
        let journal_pg = cfg.journal_via.as_ref().unwrap_or(&cfg.primary).clone();
        let journal = build_pool(journal_pg, tls, journal_size, limits)
            .context("DATABASE_URL: journal pool")?;
        let heartbeat = build_pool(cfg.primary.clone(), tls, 1, limits)
            .context("DATABASE_URL: heartbeat pool")?;
        let read = match &cfg.replica {
            Some(replica) => build_pool(
                replica.clone(),
                &cfg.tls.replica,
                cfg.read_pool_size,
                limits,
            )
            .context("DATABASE_READ_URL: replica pool")?,
            None => primary.clone(),
        };
        Ok(Self {
            primary,
            read,
            journal,
            heartbeat,
        })
    }

    /// Closes every pool; waiting callers get an error instead of hanging.
    pub fn close(&self) {
        self.primary.close();
        self.read.close();
        self.journal.close();
        self.heartbeat.close();
    }

    /// Publishes pool gauges; called on each scrape of /metrics.
    pub fn record_metrics(&self) {
        for (name, pool) in [
            ("primary", &self.primary),
            ("read", &self.read),
            ("journal", &self.journal),
            ("heartbeat", &self.heartbeat),
        ] {
            let status = pool.status();
            metrics::gauge!("db_pool_connections", "pool" => name).set(status.size as f64);
            metrics::gauge!("db_pool_idle", "pool" => name).set(status.available as f64);
            metrics::gauge!("db_pool_waiting", "pool" => name).set(status.waiting as f64);
            metrics::gauge!("db_pool_max", "pool" => name).set(status.max_size as f64);
        }
    }
}

fn build_pool(
    mut pg: tokio_postgres::Config,
    tls: &PgTls,
    size: usize,
    limits: SessionLimits,
) -> anyhow::Result<Pool> {
    pg.connect_timeout(CONNECT_TIMEOUT);
    // The TLS settings decide, whatever the Config was built with.
    pg.ssl_mode(tls.mode.wire());
    let connector = tls.connector()?;
    if pg.get_application_name().is_none() {
        pg.application_name("surge");
    }
    limit(&mut pg, limits);
    let manager = Manager::from_config(
        pg,
        connector,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Ok(Pool::builder(manager)
        .max_size(size)
        .runtime(Runtime::Tokio1)
        .wait_timeout(Some(POOL_WAIT))
        .create_timeout(Some(CONNECT_TIMEOUT))
        .build()?)
}

/// Sets the session limits as startup options (no extra round trip per connection) and
/// TCP keepalives on the client's socket; the server's side of the socket gets the same
/// keepalives through its `tcp_keepalives_*` settings.
fn limit(pg: &mut tokio_postgres::Config, limits: SessionLimits) {
    let keepalive_secs = limits.keepalive.as_secs().max(1);
    let mut options = pg.get_options().map(str::to_owned).unwrap_or_default();
    for (name, value) in [
        ("statement_timeout", limits.statement_timeout.as_millis()),
        ("lock_timeout", limits.lock_timeout.as_millis()),
        (
            "idle_in_transaction_session_timeout",
            limits.idle_in_tx_timeout.as_millis(),
        ),
        ("tcp_keepalives_idle", u128::from(keepalive_secs)),
        (
            "tcp_keepalives_interval",
            u128::from(KEEPALIVE_INTERVAL.as_secs()),
        ),
        ("tcp_keepalives_count", u128::from(KEEPALIVE_PROBES)),
    ] {
        if !options.is_empty() {
            options.push(' ');
        }
        options.push_str(&format!("-c {name}={value}"));
    }
    pg.options(&options);
    pg.keepalives(true)
        .keepalives_idle(Duration::from_secs(keepalive_secs))
        .keepalives_interval(KEEPALIVE_INTERVAL)
        .keepalives_retries(KEEPALIVE_PROBES);
}

#[cfg(test)]
mod tests {
    use std::str::FromStr as _;

    use super::*;

    #[test]
    fn every_connection_carries_the_session_limits() {
        let mut pg =
            tokio_postgres::Config::from_str("postgres://u@h/d?options=-c%20search_path%3Dpublic")
                .expect("url");
        limit(
            &mut pg,
            SessionLimits {
                statement_timeout: Duration::from_millis(5000),
                lock_timeout: Duration::from_millis(2000),
                idle_in_tx_timeout: Duration::from_millis(4000),
                keepalive: Duration::from_secs(7),
            },
        );
        let options = pg.get_options().expect("options");
        for want in [
            "-c search_path=public",
            "-c statement_timeout=5000",
            "-c lock_timeout=2000",
            "-c idle_in_transaction_session_timeout=4000",
            "-c tcp_keepalives_idle=7",
        ] {
            assert!(options.contains(want), "{want} missing from {options}");
        }
        assert!(pg.get_keepalives());
        assert_eq!(pg.get_keepalives_idle(), Duration::from_secs(7));
    }
}
