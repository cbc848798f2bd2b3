//! Orders: reading one for its owner, and changing its status.

use deadpool_postgres::Pool;
use surge_actors::{
    order::OrderStatus,
    ports::{OrderLine, OrderSummary},
};
use tokio_postgres::GenericClient;
use uuid::Uuid;

use super::DbError;

/// An order, only if `session_id` placed it.
pub async fn find(
    client: &impl GenericClient,
    id: Uuid,
    session_id: &str,
) -> Result<Option<OrderSummary>, DbError> {
    let Some(o) = client
        .query_opt(
            "SELECT status, email, total_minor, currency, (extract(epoch FROM created_at) * 1000)::bigint
               FROM orders WHERE id = $1 AND session_id = $2",
            &[&id, &session_id],
        )
        .await?
    else {
        return Ok(None);
    };
    let status: &str = o.get(0);
    let status = OrderStatus::parse(status)
        .map_err(|_| DbError::Corrupt(format!("order {id} has status {status:?}")))?;
    let lines = client
        .query(
            "SELECT sku, quantity, unit_price_minor FROM order_lines WHERE order_id = $1 ORDER BY sku",
            &[&id],
        )
        .await?
        .iter()
        .map(|r| OrderLine {
            sku: r.get(0),
            quantity: r.get(1),
            unit_price_minor: r.get(2),
        })
        .collect();
    Ok(Some(OrderSummary {
        id,
        status,
        email: o.get(1),
        lines,
        total_minor: o.get(2),
        currency: o.get::<_, String>(3).trim().to_owned(),
        created_at_ms: o.get(4),
    }))
}

/// [`find`] on a connection of `pool`.
pub async fn find_for_session(
    pool: &Pool,
    id: Uuid,
    session_id: &str,
) -> Result<Option<OrderSummary>, DbError> {
    let client = pool.get().await?;
    find(&**client, id, session_id).await
}

/// An order after its status changed: the owner's session (whose sockets hear of it)
/// and the order. `None` when there is no such order.
pub async fn set_status(
    pool: &Pool,
    id: Uuid,
    status: OrderStatus,
) -> Result<Option<(String, OrderSummary)>, DbError> {
    let client = pool.get().await?;
    let Some(row) = client
        .query_opt(
            "UPDATE orders SET status = $2 WHERE id = $1 RETURNING session_id",
            &[&id, &status.as_str()],
        )
        .await?
    else {
        return Ok(None);
    };
    let session: String = row.get(0);
    Ok(find(&**client, id, &session)
        .await?
        .map(|order| (session, order)))
}
