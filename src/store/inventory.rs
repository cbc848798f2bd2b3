//! Inventory rows: stock as PostgreSQL holds it.

use anyhow::Context as _;
use surge_actors::ports::StockLevel;
use tokio_postgres::GenericClient;

/// Every SKU's sellable units (available plus every node's unsold lease) with its
/// change counter: what a node resynchronises its in-memory levels from.
pub async fn stock_levels(client: &impl GenericClient) -> anyhow::Result<Vec<StockLevel>> {
    let rows = client
        .query(
            "SELECT sku, available + leased, stock_seq FROM inventory",
            &[],
        )
        .await
        .context("reading stock levels")?;
    Ok(rows
        .iter()
        .map(|r| StockLevel {
            sku: r.get(0),
            available: r.get(1),
            seq: r.get(2),
        })
        .collect())
}
