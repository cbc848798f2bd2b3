//! Moving an order along its lifecycle: the status (and, for a cancellation, the
//! units going back on sale) is committed first, then the shopper's sockets, every
//! screen showing the SKUs and this node's shards hear of it.

use deadpool_postgres::Pool;
use surge_actors::{
    order::OrderStatus,
    ports::OrderSummary,
    shard::{Restocked, Shards},
};
use thiserror::Error;
use uuid::Uuid;

use crate::{
    live::Live,
    store::{
        inventory,
        orders::{self, StatusChanged},
        DbError,
    },
};

/// Why an order's status did not change.
#[derive(Debug, Error)]
pub enum StatusError {
    /// No such order.
    #[error("no such order")]
    NotFound,
    /// The lifecycle does not allow the move; nothing changed.
    #[error("an order that is {from} cannot become {to}")]
    InvalidTransition {
        /// The order's status, unchanged.
        from: OrderStatus,
        /// The status asked for.
        to: OrderStatus,
    },
    /// PostgreSQL failed; nothing changed.
    #[error(transparent)]
    Db(#[from] DbError),
}

/// Moves order `id` to `next` in PostgreSQL (`db`, the primary), then tells the owner's
/// sockets on every node (`live`). A cancellation's units are on sale again at once:
/// their new levels go to every node, and this node's shards stop refusing them.
pub async fn set_status(
    db: &Pool,
    live: &Live,
    shards: &Shards,
    id: Uuid,
    next: OrderStatus,
) -> Result<OrderSummary, StatusError> {
    let (session_id, order, returned) = match orders::set_status(db, id, next).await? {
        StatusChanged::NotFound => return Err(StatusError::NotFound),
        StatusChanged::Refused { current } => {
            return Err(StatusError::InvalidTransition {
                from: current,
                to: next,
            })
        }
        StatusChanged::Changed {
            session_id,
            order,
            returned,
        } => (session_id, order, returned),
    };
    live.stock_changed(inventory::changed_levels(&returned));
    for moved in returned.iter().filter(|m| m.buckets.available > 0) {
        shards.for_sku(&moved.sku).addr().do_send(Restocked {
            sku: moved.sku.clone(),
            available: moved.buckets.available,
        });
    }
    live.order_changed(&session_id, &order);
    tracing::info!(order = %id, status = %next, "order status changed");
    Ok(order)
}
