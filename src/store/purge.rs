//! Deletes what anonymous and departed traffic leaves behind, so that tables stay
//! bounded: empty carts nobody touched for the retention age, idempotency keys past
//! their 24 hours, and the rows of nodes long gone. Each call is one statement that
//! deletes at most `batch` rows and skips rows another transaction holds (`SKIP
//! LOCKED`), so every node may run it at once and none waits on another or on a
//! shopper's write.

use std::time::Duration;

use tokio_postgres::Client;

use super::error::DbError;

/// How long a checkout's Idempotency-Key replays its order: a client retries within
/// minutes, and a day covers any outage it might wait out.
pub const IDEMPOTENCY_RETENTION: Duration = Duration::from_secs(24 * 3600);

/// A node whose heartbeat is this old is gone (a live one renews every few seconds);
/// its row goes once it holds no lease.
pub const GONE_NODE_AGE: Duration = Duration::from_secs(3600);

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// Deletes up to `batch` carts without a reservation whose last change is older than
/// `age`; returns how many. A cart being written is locked by the Journal and skipped,
/// and one that gained a line since the scan has a newer `updated_at` (every line
/// change bumps the cart row) and no longer qualifies. A session whose empty cart went
/// gets a new row with its next line; an actor still holding the old copy finds its
/// write stale and reloads.
pub async fn empty_carts(client: &Client, age: Duration, batch: i64) -> Result<u64, DbError> {
    let sql = "DELETE FROM carts WHERE id IN (
                SELECT c.id FROM carts c
                 WHERE c.updated_at < now() - $1::bigint * interval '1 millisecond'
                   AND NOT EXISTS (SELECT 1 FROM reservations r WHERE r.cart_id = c.id)
                 ORDER BY c.updated_at
                 LIMIT $2
                 FOR UPDATE SKIP LOCKED)";
    Ok(client.execute(sql, &[&millis(age), &batch]).await?)
}

/// Deletes up to `batch` idempotency keys older than [`IDEMPOTENCY_RETENTION`]; the
/// orders they name stay.
pub async fn idempotency_keys(client: &Client, batch: i64) -> Result<u64, DbError> {
    let sql = "DELETE FROM idempotency_keys WHERE (session_id, key) IN (
                SELECT session_id, key FROM idempotency_keys
                 WHERE created_at < now() - $1::bigint * interval '1 millisecond'
                 ORDER BY created_at
                 LIMIT $2
                 FOR UPDATE SKIP LOCKED)";
    Ok(client
        .execute(sql, &[&millis(IDEMPOTENCY_RETENTION), &batch])
        .await?)
}

/// Deletes up to `batch` rows of nodes silent for longer than `age` that hold no lease
/// row. A node whose leases are still held keeps its row until the reaper has taken
/// them back; a node that comes back writes its row again with its next heartbeat.
pub async fn gone_nodes(client: &Client, age: Duration, batch: i64) -> Result<u64, DbError> {
    let sql = "DELETE FROM nodes WHERE node_id IN (
                SELECT n.node_id FROM nodes n
                 WHERE n.heartbeat_at < now() - $1::bigint * interval '1 millisecond'
                   AND NOT EXISTS (SELECT 1 FROM stock_leases l WHERE l.node_id = n.node_id)
                 ORDER BY n.heartbeat_at
                 LIMIT $2
                 FOR UPDATE SKIP LOCKED)
               AND NOT EXISTS (SELECT 1 FROM stock_leases l WHERE l.node_id = nodes.node_id)";
    Ok(client.execute(sql, &[&millis(age), &batch]).await?)
}
