//! The stock conservation check behind `surge check`: for every SKU,
//! `total = available + leased + reserved + sold` with no negative term and
//! `sold <= total`, and each bucket equal to the rows that make it up (`sold`: the
//! order lines of orders that were not cancelled).

use anyhow::Context as _;
use tokio_postgres::GenericClient;

/// One SKU whose accounting does not add up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// The SKU.
    pub sku: String,
    /// Units ever stocked.
    pub total: i64,
    /// Units in PostgreSQL not leased.
    pub available: i64,
    /// Units held by nodes (the counter).
    pub leased: i64,
    /// Units held by carts (the counter).
    pub reserved: i64,
    /// Units sold (the counter).
    pub sold: i64,
    /// Sum of `stock_leases` rows.
    pub lease_rows: i64,
    /// Sum of `reservations` rows.
    pub reservation_rows: i64,
    /// Sum of the `order_lines` rows of orders not cancelled (a cancellation puts its
    /// units back to `available`).
    pub order_line_rows: i64,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: total={} available={} leased={} (rows {}) reserved={} (rows {}) sold={} (rows {})",
            self.sku,
            self.total,
            self.available,
            self.leased,
            self.lease_rows,
            self.reserved,
            self.reservation_rows,
            self.sold,
            self.order_line_rows
        )
    }
}

/// The conservation query; documented in the README so operators can run it by hand.
pub const CHECK_SQL: &str = "
WITH l AS (SELECT sku, SUM(quantity)::bigint AS q FROM stock_leases GROUP BY sku),
     r AS (SELECT sku, SUM(quantity)::bigint AS q FROM reservations GROUP BY sku),
     s AS (SELECT ol.sku, SUM(ol.quantity)::bigint AS q
             FROM order_lines ol JOIN orders o ON o.id = ol.order_id
            WHERE o.status <> 'cancelled' GROUP BY ol.sku)
SELECT i.sku, i.total, i.available, i.leased, i.reserved, i.sold,
       COALESCE(l.q, 0), COALESCE(r.q, 0), COALESCE(s.q, 0)
  FROM inventory i
  LEFT JOIN l ON l.sku = i.sku
  LEFT JOIN r ON r.sku = i.sku
  LEFT JOIN s ON s.sku = i.sku
 WHERE i.total <> i.available + i.leased + i.reserved + i.sold
    OR i.available < 0 OR i.leased < 0 OR i.reserved < 0 OR i.sold < 0
    OR i.sold > i.total
    OR i.leased <> COALESCE(l.q, 0)
    OR i.reserved <> COALESCE(r.q, 0)
    OR i.sold <> COALESCE(s.q, 0)
 ORDER BY i.sku";

/// SKUs the check covers, for its summary line.
pub async fn sku_count(client: &impl GenericClient) -> anyhow::Result<i64> {
    Ok(client
        .query_one("SELECT count(*) FROM inventory", &[])
        .await
        .context("counting SKUs")?
        .get(0))
}

/// Runs the check in one snapshot and returns every violation.
pub async fn violations(client: &impl GenericClient) -> anyhow::Result<Vec<Violation>> {
    let rows = client
        .query(CHECK_SQL, &[])
        .await
        .context("running the stock check")?;
    Ok(rows
        .iter()
        .map(|r| Violation {
            sku: r.get(0),
            total: r.get(1),
            available: r.get(2),
            leased: r.get(3),
            reserved: r.get(4),
            sold: r.get(5),
            lease_rows: r.get(6),
            reservation_rows: r.get(7),
            order_line_rows: r.get(8),
        })
        .collect())
}
