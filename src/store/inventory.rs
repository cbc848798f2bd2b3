//! The `inventory` rows. Every change of a SKU's buckets goes through [`apply`],
//! whoever makes it (a Journal batch, the reaper, a restock): the domain core computes
//! the per-SKU [`Delta`], and one statement writes any set of them, bumps each row's
//! `stock_seq` and reports the new levels. PostgreSQL's CHECK constraints refuse any
//! movement that would break conservation, so a wrong delta fails its transaction.

use std::collections::BTreeMap;

use anyhow::Context as _;
use surge_actors::{
    ports::StockLevel,
    stock::{Buckets, Delta},
};
use tokio_postgres::{types::Type, GenericClient};

/// A row after a movement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Moved {
    /// The SKU.
    pub sku: String,
    /// The row's buckets afterwards.
    pub buckets: Buckets,
    /// `stock_seq` afterwards.
    pub seq: i64,
    /// Whether the units a shopper can buy changed (live updates go out only then).
    pub sellable_changed: bool,
}

impl Moved {
    /// The SKU's sellable count, for live updates.
    pub fn level(&self) -> StockLevel {
        StockLevel {
            sku: self.sku.clone(),
            available: self.buckets.sellable(),
            seq: self.seq,
        }
    }
}

/// The levels of the rows whose sellable count changed.
pub fn changed_levels(moved: &[Moved]) -> Vec<StockLevel> {
    moved
        .iter()
        .filter(|m| m.sellable_changed)
        .map(Moved::level)
        .collect()
}

/// Adds each SKU's delta to its row in one statement, in the caller's transaction.
/// Zero deltas are skipped; unknown SKUs are absent from the answer.
pub async fn apply(
    client: &impl GenericClient,
    moves: &BTreeMap<String, Delta>,
) -> Result<Vec<Moved>, tokio_postgres::Error> {
    let moves: BTreeMap<&str, &Delta> = moves
        .iter()
        .filter(|(_, d)| !d.is_zero())
        .map(|(s, d)| (s.as_str(), d))
        .collect();
    if moves.is_empty() {
        return Ok(Vec::new());
    }
    let skus: Vec<&str> = moves.keys().copied().collect();
    let col = |f: fn(&Delta) -> i64| moves.values().map(|d| f(d)).collect::<Vec<i64>>();
    let (t, a, l, r, s) = (
        col(|d| d.total),
        col(|d| d.available),
        col(|d| d.leased),
        col(|d| d.reserved),
        col(|d| d.sold),
    );
    // One round trip without a prepared statement, so every kind of client can call it.
    let rows = client
        .query_typed(
            "UPDATE inventory i
                SET total = i.total + d.t, available = i.available + d.a, leased = i.leased + d.l,
                    reserved = i.reserved + d.r, sold = i.sold + d.s, updated_at = now(),
                    stock_seq = i.stock_seq + 1
               FROM UNNEST($1::text[], $2::bigint[], $3::bigint[], $4::bigint[], $5::bigint[], $6::bigint[])
                    AS d(sku, t, a, l, r, s)
              WHERE i.sku = d.sku
          RETURNING i.sku, i.total, i.available, i.leased, i.reserved, i.sold, i.stock_seq",
            &[
                (&skus, Type::TEXT_ARRAY),
                (&t, Type::INT8_ARRAY),
                (&a, Type::INT8_ARRAY),
                (&l, Type::INT8_ARRAY),
                (&r, Type::INT8_ARRAY),
                (&s, Type::INT8_ARRAY),
            ],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|row| {
            let sku: String = row.get(0);
            let sellable_changed = moves.get(sku.as_str()).is_some_and(|d| d.sellable() != 0);
            Moved {
                buckets: Buckets {
                    total: row.get(1),
                    available: row.get(2),
                    leased: row.get(3),
                    reserved: row.get(4),
                    sold: row.get(5),
                },
                seq: row.get(6),
                sellable_changed,
                sku,
            }
        })
        .collect())
}

/// Stock of one SKU after a restock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Restocked {
    /// Units ever stocked.
    pub total: i64,
    /// Units in PostgreSQL not leased to any node.
    pub available: i64,
    /// Units a shopper can buy now (available plus unreserved leases).
    pub sellable: i64,
    /// The row's change counter after the restock.
    pub seq: i64,
}

/// Adds `quantity` (at least 1) units to a SKU's total and available; `None` when the
/// SKU is unknown.
pub async fn restock(
    client: &impl GenericClient,
    sku: &str,
    quantity: i64,
) -> anyhow::Result<Option<Restocked>> {
    let moves = BTreeMap::from([(sku.to_owned(), Delta::restock(quantity))]);
    let moved = apply(client, &moves).await.context("restocking")?;
    Ok(moved.into_iter().next().map(|m| Restocked {
        total: m.buckets.total,
        available: m.buckets.available,
        sellable: m.buckets.sellable(),
        seq: m.seq,
    }))
}

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
