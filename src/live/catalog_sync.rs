//! Keeping this node's catalog at the committed `catalog_version`. A node learns that
//! its snapshot is behind in three ways: a bus `Catalog` event carrying a newer
//! version, the periodic resync reading the version, or one of its own writes refused
//! at a price its snapshot does not show. Each ends in the same reload, and a reload
//! that fails is owed and paid by the next resync. The Journal refuses stale prices
//! meanwhile, so being behind costs a retry, never a wrong charge (docs/CATALOG.md).

use std::time::Duration;

use deadpool_postgres::Pool;
use surge_actors::money::Currency;

use super::{bus::BusEvent, Live};
use crate::store::catalog_repo;

/// How long a refused write waits for the reload it triggered before it answers, so
/// that the shopper's next try normally meets the new price on this node.
const REFUSAL_RELOAD_WAIT: Duration = Duration::from_secs(1);

impl Live {
    /// The catalog changed by a write of this node, now at `version`: other nodes
    /// reload theirs.
    pub fn catalog_changed(&self, version: i64) {
        self.0.catalog.hear(version);
        self.0.bus.publish(BusEvent::Catalog { version });
    }

    /// Reloads catalog and stock from `pool` into this node's memory; returns the
    /// number of products. A failure leaves a reload owed to the next resync.
    pub async fn reload_catalog(&self, pool: &Pool) -> anyhow::Result<usize> {
        let loaded = async {
            let client = pool.get().await?;
            let (catalog, stock) = catalog_repo::load(&**client).await?;
            let n = catalog.len();
            self.0.catalog.replace(catalog);
            self.0.stock.merge(stock);
            anyhow::Ok(n)
        }
        .await;
        let result = if loaded.is_ok() { "loaded" } else { "failed" };
        metrics::counter!("catalog_reloads_total", "result" => result).increment(1);
        if loaded.is_err() {
            self.0.catalog.owe_reload();
        }
        loaded
    }

    /// Another node says the catalog is at `version` (0: an event that carries none):
    /// reload in the background if this node is behind.
    pub(super) fn catalog_heard(&self, version: i64) {
        if self.0.catalog.hear(version) || version == 0 {
            let live = self.clone();
            tokio::spawn(async move {
                if let Err(err) = live.catch_up().await {
                    tracing::warn!(
                        error = format!("{err:#}"),
                        "catalog reload after a bus event failed; the next resync retries"
                    );
                }
            });
        }
    }

    /// Reads the committed version (from the replica, cheaply) and reloads when this
    /// node is behind it, behind a version it heard of, or owes a reload; returns
    /// whether it reloaded. Called by every resync.
    pub async fn catch_up(&self) -> anyhow::Result<bool> {
        let catalog = &self.0.catalog;
        let _gate = catalog.reload_gate().await;
        let version = {
            let client = self.0.reads.get().await?;
            catalog_repo::version(&**client).await?
        };
        catalog.hear(version);
        if !catalog.is_behind() {
            return Ok(false);
        }
        // An owed reload may stem from a price only the primary shows yet.
        let only_owed = catalog.heard() <= catalog.version();
        let first = if only_owed {
            &self.0.primary
        } else {
            &self.0.reads
        };
        self.reload_catalog(first).await?;
        if catalog.heard() > catalog.version() {
            // The replica lags behind a version this node heard of.
            self.reload_catalog(&self.0.primary).await?;
        }
        if catalog.heard() > catalog.version() {
            catalog.owe_reload();
            anyhow::bail!(
                "catalog still at version {} after a reload, {} is committed",
                catalog.version(),
                catalog.heard()
            );
        }
        catalog.paid();
        tracing::info!(version = catalog.version(), "catalog caught up");
        Ok(true)
    }

    /// A write of this node was refused because `sku` now sells at `committed`
    /// (`None`: no longer sold): reload from the primary unless the snapshot already
    /// shows it. Waits a bounded time, so that the answer normally follows the reload;
    /// a slower reload goes on, and a failed one is owed to the next resync.
    pub async fn price_refused(&self, sku: &str, committed: Option<(i64, Currency)>) {
        if self.shows(sku, committed) {
            return;
        }
        let live = self.clone();
        let sku_owned = sku.to_owned();
        let reload = tokio::spawn(async move {
            let _gate = live.0.catalog.reload_gate().await;
            // Another refusal's reload may have brought the price meanwhile.
            if live.shows(&sku_owned, committed) {
                return;
            }
            live.0.catalog.owe_reload();
            match live.reload_catalog(&live.0.primary).await {
                Ok(_) if live.shows(&sku_owned, committed) => live.0.catalog.paid(),
                Ok(_) => {}
                Err(err) => tracing::warn!(
                    error = format!("{err:#}"),
                    "catalog reload after a refused price failed; the next resync retries"
                ),
            }
        });
        if tokio::time::timeout(REFUSAL_RELOAD_WAIT, reload)
            .await
            .is_err()
        {
            tracing::warn!(sku, "catalog reload after a refused price is slow");
        }
    }

    fn shows(&self, sku: &str, committed: Option<(i64, Currency)>) -> bool {
        self.0
            .catalog
            .shows(sku, committed.as_ref().map(|(m, c)| (*m, c.as_str())))
    }
}
