//! Orders: reading one for its owner, and moving it along its lifecycle.

use std::collections::BTreeMap;

use deadpool_postgres::Pool;
use surge_actors::{
    order::OrderStatus,
    ports::{OrderLine, OrderSummary},
    stock::Delta,
};
use tokio_postgres::{GenericClient, Transaction};
use uuid::Uuid;

use super::{
    inventory::{self, Moved},
    DbError,
};

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

/// What a status change did.
#[derive(Debug)]
pub enum StatusChanged {
    /// No such order.
    NotFound,
    /// The order's lifecycle does not allow the move; nothing changed.
    Refused {
        /// The order's status, unchanged.
        current: OrderStatus,
    },
    /// The order moved.
    Changed {
        /// The owner's session, whose sockets hear of it.
        session_id: String,
        /// The order as it is now.
        order: OrderSummary,
        /// Inventory rows a cancellation put units back into.
        returned: Vec<Moved>,
    },
}

/// Moves an order to `next` if its lifecycle allows ([`OrderStatus::can_become`]), in
/// one transaction. A cancellation puts the order's units back to `available` in that
/// same transaction, so stock and status never disagree.
///
/// The order row is locked first, then the inventory rows in SKU order like every other
/// writer; no writer locks an existing order row while it holds inventory, so this
/// cannot deadlock with the Journal or the reaper.
pub async fn set_status(
    pool: &Pool,
    id: Uuid,
    next: OrderStatus,
) -> Result<StatusChanged, DbError> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    let Some(row) = tx
        .query_opt(
            "SELECT status, session_id FROM orders WHERE id = $1 FOR UPDATE",
            &[&id],
        )
        .await?
    else {
        return Ok(StatusChanged::NotFound);
    };
    let current: &str = row.get(0);
    let current = OrderStatus::parse(current)
        .map_err(|_| DbError::Corrupt(format!("order {id} has status {current:?}")))?;
    if !current.can_become(next) {
        return Ok(StatusChanged::Refused { current });
    }
    let session_id: String = row.get(1);
    tx.execute(
        "UPDATE orders SET status = $2 WHERE id = $1",
        &[&id, &next.as_str()],
    )
    .await?;
    let returned = if next == OrderStatus::Cancelled {
        return_units(&tx, id).await?
    } else {
        Vec::new()
    };
    let order = find(&*tx, id, &session_id)
        .await?
        .ok_or_else(|| DbError::Corrupt(format!("order {id} vanished under lock")))?;
    tx.commit().await?;
    Ok(StatusChanged::Changed {
        session_id,
        order,
        returned,
    })
}

/// Puts a cancelled order's units back on sale (sold -> available, per SKU) and back
/// into its customer's allowance in every limited campaign it counted against.
async fn return_units(tx: &Transaction<'_>, id: Uuid) -> Result<Vec<Moved>, DbError> {
    let moves: BTreeMap<String, Delta> = tx
        .query(
            "SELECT sku, sum(quantity)::bigint FROM order_lines WHERE order_id = $1 GROUP BY sku",
            &[&id],
        )
        .await?
        .iter()
        .map(|r| (r.get(0), Delta::cancel(r.get(1))))
        .collect();
    let skus: Vec<&str> = moves.keys().map(String::as_str).collect();
    tx.execute(
        "SELECT 1 FROM inventory WHERE sku = ANY($1) ORDER BY sku FOR UPDATE",
        &[&skus],
    )
    .await?;
    let moved = inventory::apply(tx, &moves).await?;
    // Then the customer's allowance, after the inventory rows as the Journal locks them,
    // and its rows in key order as the Journal does: the UPDATE would lock them in
    // whatever order its join runs, and a checkout of the same customer holding one of
    // them would deadlock with it.
    tx.execute(
        "SELECT 1 FROM campaign_customers
          WHERE (campaign_id, customer) IN
                (SELECT campaign_id, customer FROM campaign_order_units WHERE order_id = $1)
          ORDER BY campaign_id, customer FOR UPDATE",
        &[&id],
    )
    .await?;
    tx.execute(
        "UPDATE campaign_customers cc SET units = cc.units - c.units
           FROM (SELECT campaign_id, customer, units FROM campaign_order_units
                  WHERE order_id = $1 ORDER BY campaign_id, customer) c
          WHERE cc.campaign_id = c.campaign_id AND cc.customer = c.customer",
        &[&id],
    )
    .await?;
    Ok(moved)
}
