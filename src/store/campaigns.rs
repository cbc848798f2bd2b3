//! Campaign rows: scheduling one, and the ones live now.

use anyhow::Context as _;
use deadpool_postgres::Pool;
use thiserror::Error;
use tokio_postgres::GenericClient;
use uuid::Uuid;

use super::DbError;
use crate::views::CampaignView;

/// A campaign to schedule, already validated.
#[derive(Debug, Clone)]
pub struct NewCampaign<'a> {
    /// Display name.
    pub name: &'a str,
    /// The featured product, if any.
    pub product_slug: Option<&'a str>,
    /// Start, Unix milliseconds.
    pub starts_at_ms: i64,
    /// End, Unix milliseconds.
    pub ends_at_ms: i64,
}

/// Why a campaign was not scheduled.
#[derive(Debug, Error)]
pub enum CampaignError {
    /// The featured product does not exist.
    #[error("no product {0:?}")]
    UnknownProduct(String),
    /// The database failed.
    #[error(transparent)]
    Db(#[from] DbError),
}

impl From<tokio_postgres::Error> for CampaignError {
    fn from(e: tokio_postgres::Error) -> Self {
        Self::Db(e.into())
    }
}

/// Stores a campaign and returns its new id.
pub async fn insert(pool: &Pool, campaign: &NewCampaign<'_>) -> Result<Uuid, CampaignError> {
    let client = pool.get().await.map_err(DbError::from)?;
    let product_id: Option<i64> = match campaign.product_slug {
        None => None,
        Some(slug) => Some(
            client
                .query_opt("SELECT id FROM products WHERE slug = $1", &[&slug])
                .await?
                .ok_or_else(|| CampaignError::UnknownProduct(slug.to_owned()))?
                .get(0),
        ),
    };
    let id = Uuid::new_v4();
    client
        .execute(
            "INSERT INTO campaigns (id, name, product_id, starts_at, ends_at)
             VALUES ($1, $2, $3, to_timestamp($4::bigint / 1000.0), to_timestamp($5::bigint / 1000.0))",
            &[
                &id,
                &campaign.name,
                &product_id,
                &campaign.starts_at_ms,
                &campaign.ends_at_ms,
            ],
        )
        .await?;
    Ok(id)
}

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
