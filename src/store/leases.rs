//! Node liveness and the recovery of stock from dead nodes.
//!
//! Every node renews its `nodes` row and its lease rows on a heartbeat. The reaper,
//! which runs on every node, returns the expired leases of dead nodes, and the expired
//! reservations of carts whose owner is dead, to `available` in one transaction. It
//! locks inventory rows first, in SKU order, like the Journal, so two reapers (or a
//! reaper and a batch) serialise instead of double-counting or deadlocking.

use std::time::Duration;

use anyhow::Context as _;
use surge_actors::ports::StockLevel;
use tokio_postgres::Client;

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// Records that this node is alive and extends its leases by `ttl`.
pub async fn heartbeat(client: &Client, node_id: &str, ttl: Duration) -> anyhow::Result<()> {
    client
        .execute(
            "INSERT INTO nodes (node_id, heartbeat_at) VALUES ($1, now())
             ON CONFLICT (node_id) DO UPDATE SET heartbeat_at = now()",
            &[&node_id],
        )
        .await
        .context("node heartbeat")?;
    client
        .execute(
            "UPDATE stock_leases SET expires_at = now() + $2::bigint * interval '1 millisecond'
              WHERE node_id = $1
                AND sku IN (SELECT sku FROM stock_leases WHERE node_id = $1 ORDER BY sku FOR UPDATE)",
            &[&node_id, &millis(ttl)],
        )
        .await
        .context("renewing leases")?;
    Ok(())
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
}

/// Which leases a pass takes back.
#[derive(Debug, Clone, Copy)]
pub enum Scope<'a> {
    /// Expired leases of dead nodes, and expired reservations of their carts.
    Dead {
        /// A node is dead when its heartbeat is older than this.
        ttl: Duration,
        /// Reservations are reaped this long after they expire.
        grace: Duration,
    },
    /// Every lease of this node: run at startup, before this node leases anything, to
    /// recover what a previous process with the same id left behind.
    Own(&'a str),
}

/// One reaper pass in one transaction; safe to run on many nodes at once.
pub async fn reap(client: &mut Client, scope: Scope<'_>) -> anyhow::Result<Reaped> {
    let tx = client.transaction().await.context("begin")?;
    let (node, ttl, grace) = match scope {
        Scope::Dead { ttl, grace } => (String::new(), millis(ttl), millis(grace)),
        Scope::Own(node) => (node.to_owned(), 0, 0),
    };
    let own = !node.is_empty();
    let skus: Vec<String> = tx
        .query(
            "SELECT sku FROM stock_leases
              WHERE CASE WHEN $1 THEN node_id = $2 ELSE expires_at < now() END
             UNION
             SELECT r.sku FROM reservations r JOIN carts c ON c.id = r.cart_id
              WHERE NOT $1 AND r.expires_at < now() - $4::bigint * interval '1 millisecond'
                AND NOT EXISTS (SELECT 1 FROM nodes n WHERE n.node_id = c.owner_node
                                   AND n.heartbeat_at >= now() - $3::bigint * interval '1 millisecond')",
            &[&own, &node, &ttl, &grace],
        )
        .await
        .context("finding stock to reap")?
        .iter()
        .map(|r| r.get(0))
        .collect();
    if skus.is_empty() {
        tx.commit().await?;
        return Ok(Reaped::default());
    }
    tx.execute(
        "SELECT 1 FROM inventory WHERE sku = ANY($1) ORDER BY sku FOR UPDATE",
        &[&skus],
    )
    .await
    .context("locking inventory")?;
    let leases = tx
        .query(
            "WITH gone AS (
                DELETE FROM stock_leases
                 WHERE sku = ANY($1) AND CASE WHEN $2 THEN node_id = $3 ELSE expires_at < now() END
             RETURNING sku, quantity)
             SELECT sku, SUM(quantity)::bigint FROM gone GROUP BY sku",
            &[&skus, &own, &node],
        )
        .await
        .context("deleting leases")?;
    let reservations = if own {
        Vec::new()
    } else {
        tx.query(
            "WITH gone AS (
                DELETE FROM reservations r USING carts c
                 WHERE r.cart_id = c.id AND r.sku = ANY($1)
                   AND r.expires_at < now() - $3::bigint * interval '1 millisecond'
                   AND NOT EXISTS (SELECT 1 FROM nodes n WHERE n.node_id = c.owner_node
                                      AND n.heartbeat_at >= now() - $2::bigint * interval '1 millisecond')
             RETURNING r.cart_id, r.sku, r.quantity),
             bumped AS (UPDATE carts SET version = version + 1 WHERE id IN (SELECT cart_id FROM gone))
             SELECT sku, SUM(quantity)::bigint FROM gone GROUP BY sku",
            &[&skus, &ttl, &grace],
        )
        .await
        .context("deleting expired reservations")?
    };
    let mut moved: std::collections::BTreeMap<String, (i64, i64)> = Default::default();
    for r in &leases {
        moved.entry(r.get(0)).or_default().0 += r.get::<_, i64>(1);
    }
    for r in &reservations {
        moved.entry(r.get(0)).or_default().1 += r.get::<_, i64>(1);
    }
    let skus: Vec<&str> = moved.keys().map(String::as_str).collect();
    let lease_q: Vec<i64> = moved.values().map(|v| v.0).collect();
    let res_q: Vec<i64> = moved.values().map(|v| v.1).collect();
    let levels = tx
        .query(
            "UPDATE inventory i
                SET available = i.available + d.l + d.r, leased = i.leased - d.l, reserved = i.reserved - d.r,
                    updated_at = now(), stock_seq = i.stock_seq + 1
               FROM UNNEST($1::text[], $2::bigint[], $3::bigint[]) AS d(sku, l, r)
              WHERE i.sku = d.sku
          RETURNING i.sku, i.available + i.leased, i.stock_seq, d.r <> 0",
            &[&skus, &lease_q, &res_q],
        )
        .await
        .context("returning stock")?
        .iter()
        .filter(|r| r.get::<_, bool>(3))
        .map(|r| StockLevel { sku: r.get(0), available: r.get(1), seq: r.get(2) })
        .collect();
    tx.commit().await.context("commit")?;
    let reaped = Reaped {
        lease_units: lease_q.iter().sum(),
        reservation_units: res_q.iter().sum(),
        levels,
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
