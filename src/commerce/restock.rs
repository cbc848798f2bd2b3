//! Restocking a SKU: the units land in PostgreSQL first, then every screen showing the
//! SKU and the shard that sells it hear of them.

use deadpool_postgres::Pool;
use surge_actors::{
    ports::StockLevel,
    shard::{Restocked, Shards},
    validated::Sku,
};
use thiserror::Error;

use crate::{live::Live, store::DbError};

/// Why a restock did not happen.
#[derive(Debug, Error)]
pub enum RestockError {
    /// No inventory row has this SKU.
    #[error("no sku {0:?}")]
    UnknownSku(String),
    /// No connection could be had; nothing changed.
    #[error(transparent)]
    Db(#[from] DbError),
    /// The write failed.
    #[error(transparent)]
    Write(#[from] anyhow::Error),
}

/// Adds `quantity` units to `sku`'s total and available stock in PostgreSQL (`db`, the
/// primary), then tells the shoppers' sockets on every node (`live`) and the shard of
/// this node that sells the SKU (`shards`): nobody hears of units not yet committed.
pub async fn restock(
    db: &Pool,
    live: &Live,
    shards: &Shards,
    sku: &Sku,
    quantity: i64,
) -> Result<crate::store::inventory::Restocked, RestockError> {
    let client = db.get().await.map_err(DbError::from)?;
    let restocked = crate::store::inventory::restock(&**client, sku.as_str(), quantity)
        .await?
        .ok_or_else(|| RestockError::UnknownSku(sku.to_string()))?;
    drop(client);
    live.stock_changed(vec![StockLevel {
        sku: sku.to_string(),
        available: restocked.sellable,
        seq: restocked.seq,
    }]);
    // This node sells again at once; other nodes notice on their next sold-out recheck.
    shards.for_sku(sku.as_str()).addr().do_send(Restocked {
        sku: sku.to_string(),
        available: restocked.available,
    });
    tracing::info!(%sku, quantity, total = restocked.total, "restocked");
    Ok(restocked)
}
