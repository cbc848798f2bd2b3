//! What a campaign report reads: its sales, the refusals every node counted, the
//! sockets of the live nodes and the waiting room's joiners. Refusal counts arrive as
//! per-node deltas ([`flush_refusals`]), so no row is written per refusal.

use std::{collections::BTreeMap, time::Duration};

use deadpool_postgres::Pool;
use surge_actors::{campaign::Campaign, queue::Joiner};
use tokio_postgres::Client;
use uuid::Uuid;

use super::DbError;

/// Adds this node's refusal deltas, one statement for all of them. Deltas of a
/// campaign that no longer exists are dropped rather than failing the rest.
pub async fn flush_refusals(
    pool: &Pool,
    node_id: &str,
    deltas: &[(Uuid, &'static str, i64)],
) -> Result<(), DbError> {
    if deltas.is_empty() {
        return Ok(());
    }
    let campaigns: Vec<Uuid> = deltas.iter().map(|d| d.0).collect();
    let codes: Vec<&str> = deltas.iter().map(|d| d.1).collect();
    let counts: Vec<i64> = deltas.iter().map(|d| d.2).collect();
    let client = pool.get().await?;
    client
        .execute(
            "INSERT INTO campaign_refusals (campaign_id, node_id, code, count)
             SELECT u.campaign_id, $1, u.code, u.n
               FROM unnest($2::uuid[], $3::text[], $4::bigint[]) AS u (campaign_id, code, n)
              WHERE EXISTS (SELECT 1 FROM campaigns c WHERE c.id = u.campaign_id)
             ON CONFLICT (campaign_id, node_id, code)
             DO UPDATE SET count = campaign_refusals.count + EXCLUDED.count",
            &[&node_id, &campaigns, &codes, &counts],
        )
        .await?;
    Ok(())
}

/// Records this node's open sockets on its row, on the heartbeat's own connection.
pub async fn record_sockets(client: &Client, node_id: &str, sockets: i64) -> Result<(), DbError> {
    client
        .execute(
            "UPDATE nodes SET sockets = $2 WHERE node_id = $1",
            &[&node_id, &sockets.max(0)],
        )
        .await?;
    Ok(())
}

/// A campaign's numbers as PostgreSQL holds them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CampaignNumbers {
    /// Units of its SKUs in orders created within its window, cancelled orders aside.
    pub units_sold: i64,
    /// Those orders.
    pub orders: i64,
    /// Their lines' value, minor units.
    pub revenue_minor: i64,
    /// When the last of those lines was created, Unix milliseconds.
    pub last_sale_ms: Option<i64>,
    /// Refusals by code, summed over every node.
    pub refusals: BTreeMap<String, i64>,
    /// Open sockets of the nodes that heartbeated within the lease TTL.
    pub sockets: i64,
    /// The waiting room's joiners (empty without one).
    pub joiners: Vec<Joiner>,
    /// `queue_counters.joined`.
    pub joined: i64,
}

/// Reads `campaign`'s numbers on one connection; `live_within` is how recent a
/// heartbeat must be for a node's sockets to count.
pub async fn campaign_numbers(
    pool: &Pool,
    campaign: &Campaign,
    live_within: Duration,
) -> Result<CampaignNumbers, DbError> {
    let client = pool.get().await?;
    let skus: Vec<&str> = campaign.skus.iter().map(|(s, _)| s.as_str()).collect();
    let (start, end) = (campaign.window.starts_at_ms, campaign.window.ends_at_ms);
    let sales = client
        .query_one(
            "SELECT coalesce(sum(l.quantity), 0)::bigint,
                    count(DISTINCT l.order_id),
                    coalesce(sum(l.quantity * l.unit_price_minor), 0)::bigint,
                    (extract(epoch FROM max(l.created_at)) * 1000)::bigint
               FROM order_lines l
               JOIN orders o ON o.id = l.order_id AND o.created_at = l.created_at
              WHERE l.sku = ANY($1)
                AND l.created_at >= to_timestamp($2::bigint / 1000.0)
                AND l.created_at < to_timestamp($3::bigint / 1000.0)
                AND o.status <> 'cancelled'",
            &[&skus, &start, &end],
        )
        .await?;
    let refusals = client
        .query(
            "SELECT code, sum(count)::bigint FROM campaign_refusals
              WHERE campaign_id = $1 GROUP BY code",
            &[&campaign.id],
        )
        .await?
        .iter()
        .map(|r| (r.get::<_, String>(0), r.get::<_, i64>(1)))
        .collect();
    let live_ms = i64::try_from(live_within.as_millis()).unwrap_or(i64::MAX);
    let sockets: i64 = client
        .query_one(
            "SELECT coalesce(sum(sockets), 0)::bigint FROM nodes
              WHERE heartbeat_at > now() - $1::bigint * interval '1 millisecond'",
            &[&live_ms],
        )
        .await?
        .get(0);
    let (joiners, joined) = if campaign.admit_per_second.is_some() {
        let joiners = client
            .query(
                "SELECT q.slot, (extract(epoch FROM q.joined_at) * 1000)::bigint,
                        EXISTS (SELECT 1 FROM orders o
                                  JOIN order_lines l
                                    ON l.order_id = o.id AND l.created_at = o.created_at
                                 WHERE o.session_id = q.session_id AND l.sku = ANY($2)
                                   AND o.created_at >= to_timestamp($3::bigint / 1000.0)
                                   AND o.created_at < to_timestamp($4::bigint / 1000.0))
                   FROM queue_entries q WHERE q.campaign_id = $1",
                &[&campaign.id, &skus, &start, &end],
            )
            .await?
            .iter()
            .map(|r| Joiner {
                slot: r.get(0),
                joined_at_ms: r.get(1),
                ordered: r.get(2),
            })
            .collect();
        let joined = client
            .query_opt(
                "SELECT joined FROM queue_counters WHERE campaign_id = $1",
                &[&campaign.id],
            )
            .await?
            .map_or(0, |r| r.get(0));
        (joiners, joined)
    } else {
        (Vec::new(), 0)
    };
    Ok(CampaignNumbers {
        units_sold: sales.get(0),
        orders: sales.get(1),
        revenue_minor: sales.get(2),
        last_sale_ms: sales.get(3),
        refusals,
        sockets,
        joiners,
        joined,
    })
}
