//! The reads the actors need ([`Store`]), on PostgreSQL.

use std::collections::BTreeMap;

use anyhow::Context as _;
use deadpool_postgres::Pool;
use surge_actors::{
    cart::{Cart, CartLine},
    money::{Currency, Money},
    ports::{BoxFut, OrderSummary, Store, StoreError},
};
use tokio_postgres::GenericClient;
use uuid::Uuid;

/// [`Store`] on a connection pool.
#[derive(Clone)]
pub struct PgStore {
    pool: Pool,
    node_id: String,
}

impl PgStore {
    /// A store that claims carts for `node_id`.
    pub fn new(pool: Pool, node_id: String) -> Self {
        Self { pool, node_id }
    }
}

impl Store for PgStore {
    fn claim_cart(&self, session_id: String) -> BoxFut<Result<Cart, StoreError>> {
        let (pool, node) = (self.pool.clone(), self.node_id.clone());
        Box::pin(async move {
            let client = pool.get().await.map_err(StoreError::connect)?;
            claim_cart(&**client, &node, &session_id)
                .await
                .map_err(StoreError::query)
        })
    }

    fn order_for_key(
        &self,
        session_id: String,
        key: String,
    ) -> BoxFut<Result<Option<OrderSummary>, StoreError>> {
        let pool = self.pool.clone();
        Box::pin(async move {
            let client = pool.get().await.map_err(StoreError::connect)?;
            let row = client
                .query_opt(
                    "SELECT order_id FROM idempotency_keys WHERE session_id = $1 AND key = $2",
                    &[&session_id, &key],
                )
                .await
                .map_err(StoreError::query)?;
            match row {
                None => Ok(None),
                Some(r) => super::orders::find(&**client, r.get(0), &session_id)
                    .await
                    .map_err(StoreError::query),
            }
        })
    }

    fn available(&self, skus: Vec<String>) -> BoxFut<Result<Vec<(String, i64)>, StoreError>> {
        let pool = self.pool.clone();
        Box::pin(async move {
            let client = pool.get().await.map_err(StoreError::connect)?;
            let rows = client
                .query(
                    "SELECT sku, available FROM inventory WHERE sku = ANY($1)",
                    &[&skus],
                )
                .await
                .map_err(StoreError::query)?;
            Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
        })
    }
}

/// Makes this node the owner of the session's cart (creating it) and loads its lines.
/// The version rises, so writes still in flight from a previous owner are refused.
async fn claim_cart(
    client: &impl GenericClient,
    node: &str,
    session_id: &str,
) -> anyhow::Result<Cart> {
    let row = client
        .query_one(
            "INSERT INTO carts (id, session_id, owner_node) VALUES ($1, $2, $3)
             ON CONFLICT (session_id) DO UPDATE
                SET owner_node = EXCLUDED.owner_node, version = carts.version + 1, updated_at = now()
             RETURNING id, version",
            &[&Uuid::new_v4(), &session_id, &node],
        )
        .await
        .context("claiming the cart")?;
    let (id, version): (Uuid, i64) = (row.get(0), row.get(1));
    let rows = client
        .query(
            "SELECT sku, quantity, (extract(epoch FROM expires_at) * 1000)::bigint, unit_price_minor, currency
               FROM reservations WHERE cart_id = $1",
            &[&id],
        )
        .await
        .context("loading the cart's reservations")?;
    let mut lines = BTreeMap::new();
    for r in rows {
        let sku: String = r.get(0);
        let currency: String = r.get(4);
        let currency = Currency::parse(&currency).context("stored currency")?;
        lines.insert(
            sku.clone(),
            CartLine {
                sku,
                quantity: r.get(1),
                expires_at_ms: r.get(2),
                unit_price: Money::new(r.get(3), currency),
            },
        );
    }
    Ok(Cart { id, version, lines })
}
