//! Node liveness and the recovery of stock from dead nodes.
//!
//! Every node renews its `nodes` row and its lease rows on a heartbeat. The reaper,
//! which runs on every node, returns the expired leases of dead nodes, and every
//! reservation expired for longer than a grace (whoever owns its cart), to `available`
//! in one transaction. It
//! locks inventory rows first, in SKU order, like the Journal, so two reapers (or a
//! reaper and a batch) serialise instead of double-counting or deadlocking. What goes
//! back is decided by the domain core ([`surge_actors::reaper`]).

use std::{collections::HashMap, time::Duration};

use anyhow::Context as _;
pub use surge_actors::reaper::Scope;
use surge_actors::{
    ports::StockLevel,
    reaper::{self, HeldReservation, Lapsed, LeaseRow, Reaping},
};
use tokio_postgres::{types::ToSql, Client, Transaction};
use uuid::Uuid;

use super::inventory;

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// Records that this node is alive and extends its leases by `ttl`; returns the epoch
/// of every lease row the node has, so that its shards drop any memory lease whose row
/// the reaper took (fencing).
pub async fn heartbeat(
    client: &Client,
    node_id: &str,
    ttl: Duration,
) -> anyhow::Result<HashMap<String, i64>> {
    client
        .execute(
            "INSERT INTO nodes (node_id, heartbeat_at) VALUES ($1, now())
             ON CONFLICT (node_id) DO UPDATE SET heartbeat_at = now()",
            &[&node_id],
        )
        .await
        .context("node heartbeat")?;
    let rows = client
        .query(
            "UPDATE stock_leases SET expires_at = now() + $2::bigint * interval '1 millisecond'
              WHERE node_id = $1
                AND sku IN (SELECT sku FROM stock_leases WHERE node_id = $1 ORDER BY sku FOR UPDATE)
          RETURNING sku, epoch",
            &[&node_id, &millis(ttl)],
        )
        .await
        .context("renewing leases")?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

/// Waits while another live process heartbeats under `node_id` (at most `2 * ttl`):
/// two processes sharing an id would take each other's leases.
pub async fn wait_for_id(client: &Client, node_id: &str, ttl: Duration) -> anyhow::Result<()> {
    let deadline = std::time::Instant::now() + ttl * 2;
    loop {
        let fresh: bool = client
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM nodes WHERE node_id = $1
                                   AND heartbeat_at >= now() - $2::bigint * interval '1 millisecond')",
                &[&node_id, &millis(ttl)],
            )
            .await
            .context("checking the node id")?
            .get(0);
        if !fresh {
            return Ok(());
        }
        if std::time::Instant::now() >= deadline {
            anyhow::bail!(
                "another live process uses SURGE_NODE_ID={node_id}; give each node its own id"
            );
        }
        tracing::warn!(
            node = node_id,
            "a process with this node id was alive moments ago; waiting for its heartbeat to lapse"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Forgets this node, so that its carts count as orphaned at once (graceful exit).
pub async fn leave(client: &Client, node_id: &str) -> anyhow::Result<()> {
    client
        .execute("DELETE FROM nodes WHERE node_id = $1", &[&node_id])
        .await
        .context("leaving")?;
    Ok(())
}

/// What one reaper pass returned to `available`.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Reaped {
    /// Units from leases.
    pub lease_units: i64,
    /// Units from expired reservations.
    pub reservation_units: i64,
    /// SKUs whose sellable count changed (reservations freed).
    pub levels: Vec<StockLevel>,
    /// PostgreSQL's `available` afterwards, for each SKU the pass returned units to, so
    /// that this node's shards stop refusing them at once.
    pub available: Vec<(String, i64)>,
    /// The reservations released, by session, for the shoppers' sockets.
    pub lapsed: Vec<Lapsed>,
    /// Carts whose owner was this node id (startup recovery only): they count as
    /// nobody's now, so no process believes it holds them.
    pub disowned_carts: u64,
}

/// The grace after a reservation's expiry before the reaper takes it back: long enough
/// for a live cart actor's own expiry to come first, never longer than a reaper period.
pub fn reservation_grace(reaper_period: Duration) -> Duration {
    reaper_period.min(Duration::from_secs(1))
}

/// One reaper pass in one transaction; safe to run on many nodes at once.
///
/// It locks the inventory rows of every SKU with something to take back, reads the
/// lease and reservation rows of those SKUs, lets [`reaper::plan`] decide what goes
/// back, then deletes exactly those rows and applies the movement. Under
/// [`Scope::Own`] it also clears the id's ownership of its carts.
pub async fn reap(client: &mut Client, scope: Scope<'_>) -> anyhow::Result<Reaped> {
    let (own, node, grace) = match scope {
        Scope::Dead { grace, .. } => (false, "", millis(grace)),
        Scope::Own(node) => (true, node, 0),
    };
    // On its own, before any inventory lock: it takes only cart rows, in id order.
    let disowned_carts = if own {
        client
            .execute(
                "UPDATE carts SET owner_node = NULL
                  WHERE id IN (SELECT id FROM carts WHERE owner_node = $1 ORDER BY id FOR UPDATE)",
                &[&node],
            )
            .await
            .context("disowning this id's carts")?
    } else {
        0
    };
    let tx = client.transaction().await.context("begin")?;
    // A cheap, unlocked look for candidates; the plan decides on the locked rows.
    let skus: Vec<String> = tx
        .query(
            "SELECT sku FROM stock_leases
              WHERE CASE WHEN $1 THEN node_id = $2 ELSE expires_at < now() END
             UNION
             SELECT sku FROM reservations
              WHERE NOT $1 AND expires_at < now() - $3::bigint * interval '1 millisecond'",
            &[&own, &node, &grace],
        )
        .await
        .context("finding stock to reap")?
        .iter()
        .map(|r| r.get(0))
        .collect();
    if skus.is_empty() {
        tx.commit().await?;
        return Ok(Reaped {
            disowned_carts,
            ..Reaped::default()
        });
    }
    // Inventory first, in SKU order, like the Journal: the Journal changes lease and
    // reservation rows only under these locks.
    tx.execute(
        "SELECT 1 FROM inventory WHERE sku = ANY($1) ORDER BY sku FOR UPDATE",
        &[&skus],
    )
    .await
    .context("locking inventory")?;
    let now_ms: i64 = tx
        .query_one(
            "SELECT floor(extract(epoch FROM now()) * 1000)::bigint",
            &[],
        )
        .await
        .context("reading the time")?
        .get(0);
    // Heartbeats renew lease rows without the inventory lock: lock the rows themselves.
    let leases: Vec<LeaseRow> = tx
        .query(
            "SELECT node_id, sku, quantity, floor(extract(epoch FROM expires_at) * 1000)::bigint
               FROM stock_leases WHERE sku = ANY($1) ORDER BY sku, node_id FOR UPDATE",
            &[&skus],
        )
        .await
        .context("reading leases")?
        .iter()
        .map(|r| LeaseRow {
            node_id: r.get(0),
            sku: r.get(1),
            quantity: r.get(2),
            expires_at_ms: r.get(3),
        })
        .collect();
    let reservations: Vec<HeldReservation> = if own {
        Vec::new()
    } else {
        // Only expired reservations can go back; the plan applies the grace.
        tx.query(
            "SELECT r.cart_id, c.session_id, r.sku, r.quantity,
                    floor(extract(epoch FROM r.expires_at) * 1000)::bigint
               FROM reservations r JOIN carts c ON c.id = r.cart_id
              WHERE r.sku = ANY($1) AND r.expires_at < now()",
            &[&skus],
        )
        .await
        .context("reading expired reservations")?
        .iter()
        .map(|r| HeldReservation {
            cart_id: r.get(0),
            session_id: r.get(1),
            sku: r.get(2),
            quantity: r.get(3),
            expires_at_ms: r.get(4),
        })
        .collect()
    };
    let reaping = reaper::plan(scope, now_ms, &leases, &reservations);
    if reaping.is_empty() {
        tx.commit().await?;
        return Ok(Reaped {
            disowned_carts,
            ..Reaped::default()
        });
    }
    delete(&tx, &reaping).await?;
    let moved = inventory::apply(&tx, &reaping.inventory)
        .await
        .context("returning stock")?;
    tx.commit().await.context("commit")?;
    let reaped = Reaped {
        lease_units: reaping.lease_units,
        reservation_units: reaping.reservation_units,
        levels: inventory::changed_levels(&moved),
        available: moved
            .iter()
            .map(|m| (m.sku.clone(), m.buckets.available))
            .collect(),
        lapsed: reaping.lapsed,
        disowned_carts,
    };
    if reaped.lease_units + reaped.reservation_units > 0 {
        tracing::info!(
            lease_units = reaped.lease_units,
            reservation_units = reaped.reservation_units,
            "reaped stock"
        );
        metrics::counter!("reaped_units_total", "from" => "lease")
            .increment(reaped.lease_units.unsigned_abs());
        metrics::counter!("reaped_units_total", "from" => "reservation")
            .increment(reaped.reservation_units.unsigned_abs());
    }
    Ok(reaped)
}

/// Deletes the rows a plan takes back and bumps the carts that lost a reservation.
async fn delete(tx: &Transaction<'_>, reaping: &Reaping) -> anyhow::Result<()> {
    delete_rows(
        tx,
        "DELETE FROM stock_leases l USING UNNEST($1::text[], $2::text[]) AS d(node_id, sku)
          WHERE l.node_id = d.node_id AND l.sku = d.sku",
        &reaping.leases,
        "deleting leases",
    )
    .await?;
    if !reaping.reservations.is_empty() {
        delete_rows(
            tx,
            "DELETE FROM reservations r USING UNNEST($1::uuid[], $2::text[]) AS d(cart_id, sku)
              WHERE r.cart_id = d.cart_id AND r.sku = d.sku",
            &reaping.reservations,
            "deleting expired reservations",
        )
        .await?;
        let carts: Vec<Uuid> = reaping.carts.iter().copied().collect();
        tx.execute(
            "UPDATE carts SET version = version + 1 WHERE id = ANY($1)",
            &[&carts],
        )
        .await
        .context("bumping carts")?;
    }
    Ok(())
}

/// Deletes the rows keyed by (owner, SKU); every one must have been there, since they
/// were read under lock.
async fn delete_rows<K: ToSql + Sync>(
    tx: &Transaction<'_>,
    sql: &str,
    keys: &[(K, String)],
    what: &'static str,
) -> anyhow::Result<()> {
    if keys.is_empty() {
        return Ok(());
    }
    let (owners, skus): (Vec<&K>, Vec<&str>) = keys.iter().map(|(k, s)| (k, s.as_str())).unzip();
    let deleted = tx.execute(sql, &[&owners, &skus]).await.context(what)?;
    anyhow::ensure!(
        deleted == keys.len() as u64,
        "{what}: rows changed under lock"
    );
    Ok(())
}
