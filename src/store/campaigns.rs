//! Campaign rows.

use anyhow::Context as _;
use tokio_postgres::GenericClient;

use crate::views::CampaignView;

/// Campaigns whose window is open right now.
pub async fn live_now(client: &impl GenericClient) -> anyhow::Result<Vec<CampaignView>> {
    let rows = client
        .query(
            "SELECT c.id, c.name, p.slug, (extract(epoch FROM c.starts_at) * 1000)::bigint,
                    (extract(epoch FROM c.ends_at) * 1000)::bigint
               FROM campaigns c LEFT JOIN products p ON p.id = c.product_id
              WHERE c.starts_at <= now() AND c.ends_at > now()",
            &[],
        )
        .await
        .context("reading the campaigns live now")?;
    Ok(rows
        .iter()
        .map(|r| CampaignView {
            id: r.get(0),
            name: r.get(1),
            product_slug: r.get(2),
            starts_at_ms: r.get(3),
            ends_at_ms: r.get(4),
        })
        .collect())
}
