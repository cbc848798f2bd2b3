//! Connection pools: one for the primary, and one for the read replica when configured.

use std::time::Duration;

use anyhow::Context as _;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio_postgres::NoTls;

use crate::config::DatabaseConfig;

/// How long a request waits for a free connection before failing fast.
const POOL_WAIT: Duration = Duration::from_secs(5);
/// How long opening a new connection may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The database handles of a node.
#[derive(Clone)]
pub struct Db {
    /// Primary: every write and every read that must see the latest write.
    pub primary: Pool,
    /// Replica for catalog reads, or the primary again when none is configured.
    pub read: Pool,
    /// The Journal's own connections, so that request traffic never starves commits.
    pub journal: Pool,
}

impl Db {
    /// Builds the pools; connections open lazily, on first use.
    pub fn new(cfg: &DatabaseConfig) -> anyhow::Result<Self> {
        Self::with_journal(cfg, 1)
    }

    /// Builds the pools, with `journal_size` connections for the Journal.
    pub fn with_journal(cfg: &DatabaseConfig, journal_size: usize) -> anyhow::Result<Self> {
        let primary = build_pool(cfg.primary.clone(), cfg.pool_size).context("primary pool")?;
        let journal = build_pool(cfg.primary.clone(), journal_size).context("journal pool")?;
        let read = match &cfg.replica {
            Some(replica) => {
                build_pool(replica.clone(), cfg.read_pool_size).context("replica pool")?
            }
            None => primary.clone(),
        };
        Ok(Self {
            primary,
            read,
            journal,
        })
    }

    /// Closes both pools; waiting callers get an error instead of hanging.
    pub fn close(&self) {
        self.primary.close();
        self.read.close();
        self.journal.close();
    }

    /// Publishes pool gauges; called on each scrape of /metrics.
    pub fn record_metrics(&self) {
        for (name, pool) in [
            ("primary", &self.primary),
            ("read", &self.read),
            ("journal", &self.journal),
        ] {
            let status = pool.status();
            metrics::gauge!("db_pool_connections", "pool" => name).set(status.size as f64);
            metrics::gauge!("db_pool_idle", "pool" => name).set(status.available as f64);
            metrics::gauge!("db_pool_waiting", "pool" => name).set(status.waiting as f64);
            metrics::gauge!("db_pool_max", "pool" => name).set(status.max_size as f64);
        }
    }
}

fn build_pool(mut pg: tokio_postgres::Config, size: usize) -> anyhow::Result<Pool> {
    pg.connect_timeout(CONNECT_TIMEOUT);
    if pg.get_application_name().is_none() {
        pg.application_name("surge");
    }
    let manager = Manager::from_config(
        pg,
        NoTls,
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
