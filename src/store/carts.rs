//! The reads the actors need ([`Store`]), on PostgreSQL, and the plain reads of a cart
//! that handlers answer from when no actor is needed. None of them writes a cart row:
//! the Journal makes it with the cart's first line.

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

use super::error::DbError;

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
    fn claim_cart(&self, session_id: String) -> BoxFut<Result<Option<Cart>, StoreError>> {
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
            order_for_key(&**client, &session_id, &key)
                .await
                .map_err(StoreError::query)
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

/// The order `session_id` placed with Idempotency-Key `key`, if any.
async fn order_for_key(
    client: &impl GenericClient,
    session_id: &str,
    key: &str,
) -> Result<Option<OrderSummary>, DbError> {
    let row = client
        .query_opt(
            "SELECT order_id FROM idempotency_keys WHERE session_id = $1 AND key = $2",
            &[&session_id, &key],
        )
        .await?;
    match row {
        None => Ok(None),
        Some(r) => super::orders::find(client, r.get(0), session_id).await,
    }
}

/// Makes this node the owner of the session's cart and loads its lines; `None` when
/// the session has no cart row, which a claim does not create. The version rises when
/// the owner changes, so writes still in flight from a previous owner are refused; a
/// claim by the owner itself (a cart passivated and loaded again, whose actor stopped
/// between two requests) keeps the version, so the cart comes back exactly as it was.
async fn claim_cart(
    client: &impl GenericClient,
    node: &str,
    session_id: &str,
) -> anyhow::Result<Option<Cart>> {
    let row = client
        .query_opt(
            "UPDATE carts
                SET version = version + (owner_node IS DISTINCT FROM $2)::int,
                    owner_node = $2,
                    updated_at = now()
              WHERE session_id = $1
          RETURNING id, version",
            &[&session_id, &node],
        )
        .await
        .context("claiming the cart")?;
    let Some(row) = row else {
        return Ok(None);
    };
    let (id, version): (Uuid, i64) = (row.get(0), row.get(1));
    Ok(Some(Cart {
        id,
        version,
        lines: lines(client, id).await?,
    }))
}

/// The session's cart as PostgreSQL holds it, without claiming it or writing anything;
/// `None` when the session has no cart row. What a handler answers from when the
/// session has no live actor and the answer needs none (an empty cart, a line that is
/// not there).
pub async fn peek(pool: &Pool, session_id: &str) -> Result<Option<Cart>, DbError> {
    let client = pool.get().await?;
    let row = client
        .query_opt(
            "SELECT id, version FROM carts WHERE session_id = $1",
            &[&session_id],
        )
        .await?;
    let Some(row) = row else {
        return Ok(None);
    };
    let (id, version): (Uuid, i64) = (row.get(0), row.get(1));
    let lines = lines(&**client, id)
        .await
        .map_err(|e| DbError::Corrupt(format!("{e:#}")))?;
    Ok(Some(Cart { id, version, lines }))
}

/// The order `session_id` placed with `key`, for a checkout answered without an actor.
pub async fn order_for_session_key(
    pool: &Pool,
    session_id: &str,
    key: &str,
) -> Result<Option<OrderSummary>, DbError> {
    let client = pool.get().await?;
    order_for_key(&**client, session_id, key).await
}

/// A cart's lines, from its reservations.
async fn lines(
    client: &impl GenericClient,
    id: Uuid,
) -> anyhow::Result<BTreeMap<String, CartLine>> {
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
    Ok(lines)
}
