//! Campaign rows: scheduling one (its SKUs checked against every overlapping campaign
//! in the same transaction), and loading them all with the catalog.
//!
//! A campaign is part of the catalog: its insert raises `catalog_version`, so every node
//! reloads and gates and prices its SKUs from memory (see `docs/CATALOG.md`).

use std::collections::{BTreeMap, HashMap};

use anyhow::Context as _;
use deadpool_postgres::Pool;
use surge_actors::campaign::{Campaign, Invalid, Window};
use thiserror::Error;
use tokio_postgres::GenericClient;
use uuid::Uuid;

use super::DbError;

/// What a campaign sells: named SKUs, or every active variant of a product.
#[derive(Debug, Clone)]
pub enum Selection<'a> {
    /// These SKUs.
    Skus(&'a [String]),
    /// Every active variant of the product with this slug.
    Product(&'a str),
    /// Nothing: an announcement only.
    Nothing,
}

/// A campaign to schedule; its numbers are checked by [`Campaign::validate`].
#[derive(Debug, Clone)]
pub struct NewCampaign<'a> {
    /// Display name.
    pub name: &'a str,
    /// The SKUs it sells.
    pub selection: Selection<'a>,
    /// When it sells.
    pub window: Window,
    /// Sale price per SKU, minor units.
    pub sale_price_minor: &'a BTreeMap<String, i64>,
    /// Units per customer.
    pub per_customer_limit: Option<i64>,
    /// Seconds one hold lasts from its first reservation.
    pub hold_secs: Option<i64>,
    /// Waiting-room admissions per second, stored.
    pub admit_per_second: Option<i64>,
}

/// Why a campaign was not scheduled; nothing was stored.
#[derive(Debug, Error)]
pub enum CampaignError {
    /// The product does not exist.
    #[error("no product {0:?}")]
    UnknownProduct(String),
    /// A SKU is not sold.
    #[error("no sku {0:?}")]
    UnknownSku(String),
    /// A SKU is in another campaign whose window overlaps.
    #[error("{sku} is in campaign {other} at an overlapping time")]
    Overlap {
        /// The SKU.
        sku: String,
        /// The campaign that holds it.
        other: Uuid,
    },
    /// The campaign breaks a rule of its own.
    #[error(transparent)]
    Invalid(#[from] Invalid),
    /// The database failed.
    #[error(transparent)]
    Db(#[from] DbError),
}

impl From<tokio_postgres::Error> for CampaignError {
    fn from(e: tokio_postgres::Error) -> Self {
        Self::Db(e.into())
    }
}

/// `$n` milliseconds as a `timestamptz`, exactly (no float on the way).
macro_rules! ts {
    ($n:literal) => {
        concat!(
            "('epoch'::timestamptz + $",
            $n,
            "::bigint * interval '1 millisecond')"
        )
    };
}

/// A `timestamptz` column as Unix milliseconds, exactly.
macro_rules! ms {
    ($col:literal) => {
        concat!("(extract(epoch FROM ", $col, ") * 1000)::bigint")
    };
}

/// Stores a campaign and returns it with its new id, and the catalog version it made
/// (visible once it commits). The catalog version is raised
/// first (as every catalog write does, so campaign inserts queue there), then
/// `campaign_skus` is locked against inserts, so two overlapping campaigns for one SKU
/// cannot both pass the overlap check.
pub async fn insert(pool: &Pool, new: &NewCampaign<'_>) -> Result<(Campaign, i64), CampaignError> {
    let mut client = pool.get().await.map_err(DbError::from)?;
    let tx = client.transaction().await?;
    let version: i64 = tx
        .query_one(
            "UPDATE catalog_version SET version = version + 1 RETURNING version",
            &[],
        )
        .await?
        .get(0);
    tx.execute("LOCK TABLE campaign_skus IN SHARE ROW EXCLUSIVE MODE", &[])
        .await?;
    let (product_id, skus): (Option<i64>, Vec<String>) = match new.selection {
        Selection::Nothing => (None, Vec::new()),
        Selection::Product(slug) => {
            let product: i64 = tx
                .query_opt("SELECT id FROM products WHERE slug = $1", &[&slug])
                .await?
                .ok_or_else(|| CampaignError::UnknownProduct(slug.to_owned()))?
                .get(0);
            let rows = tx
                .query(
                    "SELECT sku FROM variants WHERE product_id = $1 AND active ORDER BY sku",
                    &[&product],
                )
                .await?;
            (Some(product), rows.iter().map(|r| r.get(0)).collect())
        }
        Selection::Skus(skus) => {
            let rows = tx
                .query(
                    "SELECT sku FROM variants WHERE sku = ANY($1) AND active",
                    &[&skus],
                )
                .await?;
            let known: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
            if let Some(missing) = skus.iter().find(|s| !known.contains(s)) {
                return Err(CampaignError::UnknownSku(missing.clone()));
            }
            let mut skus = skus.to_vec();
            skus.sort();
            skus.dedup();
            (None, skus)
        }
    };
    if let Some(other) = new.sale_price_minor.keys().find(|s| !skus.contains(s)) {
        return Err(Invalid::SalePriceForOtherSku(other.clone()).into());
    }
    let campaign = Campaign {
        id: Uuid::new_v4(),
        name: new.name.to_owned(),
        product_slug: match new.selection {
            Selection::Product(slug) => Some(slug.to_owned()),
            _ => None,
        },
        window: new.window,
        per_customer_limit: new.per_customer_limit,
        hold_secs: new.hold_secs,
        admit_per_second: new.admit_per_second,
        skus: skus
            .iter()
            .map(|s| (s.clone(), new.sale_price_minor.get(s).copied()))
            .collect(),
    };
    campaign.validate()?;
    if let Some(row) = tx
        .query_opt(
            concat!(
                "SELECT cs.sku, c.id FROM campaign_skus cs JOIN campaigns c ON c.id = cs.campaign_id
                  WHERE cs.sku = ANY($1) AND c.starts_at < ",
                ts!(3),
                " AND c.ends_at > ",
                ts!(2),
                " ORDER BY cs.sku LIMIT 1"
            ),
            &[&skus, &new.window.starts_at_ms, &new.window.ends_at_ms],
        )
        .await?
    {
        return Err(CampaignError::Overlap {
            sku: row.get(0),
            other: row.get(1),
        });
    }
    let limit = campaign.per_customer_limit.map(to_int).transpose()?;
    let rate = campaign.admit_per_second.map(to_int).transpose()?;
    let hold = campaign
        .hold_secs
        .map(|h| i32::try_from(h).map_err(|_| CampaignError::from(Invalid::Hold)))
        .transpose()?;
    tx.execute(
        concat!(
            "INSERT INTO campaigns (id, name, product_id, starts_at, ends_at, per_customer_limit, admit_per_second, hold_secs)
             VALUES ($1, $2, $3, ",
            ts!(4),
            ", ",
            ts!(5),
            ", $6, $7, $8)"
        ),
        &[
            &campaign.id,
            &campaign.name,
            &product_id,
            &campaign.window.starts_at_ms,
            &campaign.window.ends_at_ms,
            &limit,
            &rate,
            &hold,
        ],
    )
    .await?;
    let prices: Vec<Option<i64>> = campaign.skus.iter().map(|(_, p)| *p).collect();
    tx.execute(
        "INSERT INTO campaign_skus (campaign_id, sku, sale_price_minor)
         SELECT $1, s, p FROM UNNEST($2::text[], $3::bigint[]) AS t(s, p)",
        &[&campaign.id, &skus, &prices],
    )
    .await?;
    tx.commit().await?;
    Ok((campaign, version))
}

/// A limit or rate for an `INTEGER` column; [`Campaign::validate`] has made it positive.
fn to_int(n: i64) -> Result<i32, CampaignError> {
    i32::try_from(n).map_err(|_| Invalid::Limit.into())
}

/// Every campaign with its SKUs, for the catalog snapshot.
pub async fn load_all(client: &impl GenericClient) -> anyhow::Result<Vec<Campaign>> {
    let rows = client
        .query(
            concat!(
                "SELECT c.id, c.name, p.slug, ",
                ms!("c.starts_at"),
                ", ",
                ms!("c.ends_at"),
                ", c.per_customer_limit, c.admit_per_second, c.hold_secs
                   FROM campaigns c LEFT JOIN products p ON p.id = c.product_id
                  ORDER BY c.starts_at, c.id"
            ),
            &[],
        )
        .await
        .context("loading the campaigns")?;
    let sku_rows = client
        .query(
            "SELECT campaign_id, sku, sale_price_minor FROM campaign_skus ORDER BY campaign_id, sku",
            &[],
        )
        .await
        .context("loading the campaigns' skus")?;
    let mut skus: HashMap<Uuid, Vec<(String, Option<i64>)>> = HashMap::new();
    for r in &sku_rows {
        skus.entry(r.get(0)).or_default().push((r.get(1), r.get(2)));
    }
    Ok(rows
        .iter()
        .map(|r| {
            let id: Uuid = r.get(0);
            Campaign {
                id,
                name: r.get(1),
                product_slug: r.get(2),
                window: Window {
                    starts_at_ms: r.get(3),
                    ends_at_ms: r.get(4),
                },
                per_customer_limit: r.get::<_, Option<i32>>(5).map(i64::from),
                admit_per_second: r.get::<_, Option<i32>>(6).map(i64::from),
                hold_secs: r.get::<_, Option<i32>>(7).map(i64::from),
                skus: skus.remove(&id).unwrap_or_default(),
            }
        })
        .collect())
}

/// The SQL fragment of the Journal's price read: each campaign window a priced SKU is
/// in, with its sale price, beside the variant's own price.
pub const PRICE_READ: &str = concat!(
    "SELECT v.sku, v.price_minor, v.currency, ",
    ms!("now()"),
    ", ",
    ms!("c.starts_at"),
    ", ",
    ms!("c.ends_at"),
    ", cs.sale_price_minor
       FROM variants v
       LEFT JOIN campaign_skus cs ON cs.sku = v.sku
       LEFT JOIN campaigns c ON c.id = cs.campaign_id
      WHERE v.sku = ANY($1) AND v.active ORDER BY v.sku FOR SHARE OF v"
);

/// The SQL of the Journal's limit read: for each ordered SKU, the campaign live at the
/// commit's `now()` that limits units per customer, and its limit.
pub const LIMIT_READ: &str = "SELECT cs.sku, c.id, c.per_customer_limit
       FROM campaign_skus cs JOIN campaigns c ON c.id = cs.campaign_id
      WHERE cs.sku = ANY($1) AND c.per_customer_limit IS NOT NULL
        AND c.starts_at <= now() AND c.ends_at > now()";
