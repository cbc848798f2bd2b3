//! Catalog queries: the full catalog load, the admin upsert and the catalog's version.
//! Stock changes live in [`super::inventory`].
//!
//! Every catalog write raises `catalog_version` in its own transaction, so that a node
//! can tell from one cheap read whether its snapshot is behind.

use std::collections::BTreeMap;

use anyhow::Context as _;
use surge_actors::{campaign::Campaigns, ports::StockLevel};
use tokio_postgres::{GenericClient, Transaction};

use crate::catalog::{Catalog, Product, Variant};

/// A product as the admin API and the demo seed describe it.
#[derive(Debug, Clone)]
pub struct ProductInput {
    /// URL key.
    pub slug: String,
    /// Display name.
    pub name: String,
    /// Display description.
    pub description: String,
    /// Variants in display order.
    pub variants: Vec<VariantInput>,
}

/// A variant as the admin API and the demo seed describe it.
#[derive(Debug, Clone)]
pub struct VariantInput {
    /// Stock-keeping unit.
    pub sku: String,
    /// Size, colour and the like.
    pub attributes: BTreeMap<String, String>,
    /// Price in minor units.
    pub price_minor: i64,
    /// ISO 4217 code.
    pub currency: String,
    /// Initial stock of a new SKU; an existing SKU keeps its stock (use restock).
    pub stock: i64,
}

/// What an upsert did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Upserted {
    /// The slug was new.
    Created,
    /// The slug existed and was updated.
    Updated,
}

/// Why an upsert was refused.
#[derive(Debug, thiserror::Error)]
pub enum UpsertError {
    /// A SKU already belongs to another product.
    #[error("sku {0} belongs to another product")]
    SkuTaken(String),
    /// The database failed.
    #[error(transparent)]
    Db(#[from] anyhow::Error),
}

/// What a catalog write did, and the catalog version it made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Saved {
    /// Whether the product was new.
    pub upserted: Upserted,
    /// `catalog_version` after the write (visible once it commits).
    pub version: i64,
}

/// The committed catalog version: one row read, cheap enough for every resync.
pub async fn version(client: &impl GenericClient) -> anyhow::Result<i64> {
    let row = client
        .query_one("SELECT version FROM catalog_version", &[])
        .await
        .context("reading the catalog version")?;
    Ok(row.get(0))
}

/// Loads every product with active variants, every campaign, and every SKU's sellable stock. The
/// version is read first, so the snapshot is at least as new as the version it carries
/// (a write committing in between only causes one more reload later).
pub async fn load(client: &impl GenericClient) -> anyhow::Result<(Catalog, Vec<StockLevel>)> {
    let version = version(client).await?;
    let rows = client
        .query(
            "SELECT p.slug, p.name, p.description, v.sku, v.attributes, v.price_minor, v.currency,
                    COALESCE(i.available + i.leased, 0), COALESCE(i.stock_seq, 0)
               FROM products p
               JOIN variants v ON v.product_id = p.id AND v.active
               LEFT JOIN inventory i ON i.sku = v.sku
              ORDER BY p.slug, v.position, v.sku",
            &[],
        )
        .await
        .context("loading the catalog")?;
    let mut products: Vec<Product> = Vec::new();
    let mut current: Option<(String, String, String, Vec<Variant>)> = None;
    let mut stock = Vec::with_capacity(rows.len());
    for row in rows {
        let slug: String = row.get(0);
        if current.as_ref().is_some_and(|c| c.0 != slug) {
            if let Some((s, n, d, v)) = current.take() {
                products.push(Product::new(s, n, d, v));
            }
        }
        let entry = current.get_or_insert_with(|| (slug, row.get(1), row.get(2), Vec::new()));
        let sku: String = row.get(3);
        let attributes: serde_json::Value = row.get(4);
        stock.push(StockLevel {
            sku: sku.clone(),
            available: row.get(7),
            seq: row.get(8),
        });
        entry.3.push(Variant {
            sku,
            attributes: attributes_from_json(&attributes),
            price_minor: row.get(5),
            currency: row.get::<_, String>(6).trim().to_owned(),
        });
    }
    if let Some((s, n, d, v)) = current.take() {
        products.push(Product::new(s, n, d, v));
    }
    let campaigns = Campaigns::new(super::campaigns::load_all(client).await?);
    Ok((
        Catalog::new(products)
            .at_version(version)
            .with_campaigns(campaigns),
        stock,
    ))
}

fn attributes_from_json(value: &serde_json::Value) -> BTreeMap<String, String> {
    value
        .as_object()
        .map(|o| {
            o.iter()
                .map(|(k, v)| {
                    let text = v.as_str().map_or_else(|| v.to_string(), str::to_owned);
                    (k.clone(), text)
                })
                .collect()
        })
        .unwrap_or_default()
}

/// [`upsert_product`] in a transaction of its own on `pool`.
pub async fn save_product(
    pool: &deadpool_postgres::Pool,
    input: &ProductInput,
) -> Result<Saved, UpsertError> {
    let mut client = pool.get().await.context("connecting")?;
    let tx = client.transaction().await.context("beginning")?;
    let outcome = upsert_product(&tx, input).await?;
    tx.commit().await.context("committing the product")?;
    Ok(outcome)
}

/// Creates or updates a product with its variants, in the caller's transaction, and
/// raises the catalog version.
///
/// Variants left out of `input` are retired (hidden), not deleted: orders refer to them.
pub async fn upsert_product(
    tx: &Transaction<'_>,
    input: &ProductInput,
) -> Result<Saved, UpsertError> {
    // First, so that concurrent catalog writes queue here before touching any variant,
    // and a Journal batch holding a variant's price never waits on a half-done write.
    let version: i64 = tx
        .query_one(
            "UPDATE catalog_version SET version = version + 1 RETURNING version",
            &[],
        )
        .await
        .context("raising the catalog version")?
        .get(0);
    let row = tx
        .query_one(
            "INSERT INTO products (slug, name, description) VALUES ($1, $2, $3)
             ON CONFLICT (slug) DO UPDATE
                SET name = EXCLUDED.name, description = EXCLUDED.description, updated_at = now()
             RETURNING id, (xmax = 0) AS inserted",
            &[&input.slug, &input.name, &input.description],
        )
        .await
        .context("upserting the product")?;
    let product_id: i64 = row.get(0);
    let inserted: bool = row.get(1);

    let skus: Vec<&str> = input.variants.iter().map(|v| v.sku.as_str()).collect();
    if let Some(taken) = tx
        .query_opt(
            "SELECT sku FROM variants WHERE sku = ANY($1) AND product_id <> $2 LIMIT 1",
            &[&skus, &product_id],
        )
        .await
        .context("checking SKU ownership")?
    {
        return Err(UpsertError::SkuTaken(taken.get(0)));
    }

    let attributes: Vec<serde_json::Value> = input
        .variants
        .iter()
        .map(|v| serde_json::to_value(&v.attributes).unwrap_or_default())
        .collect();
    let prices: Vec<i64> = input.variants.iter().map(|v| v.price_minor).collect();
    let currencies: Vec<&str> = input.variants.iter().map(|v| v.currency.as_str()).collect();
    let positions: Vec<i32> = (0..input.variants.len())
        .map(|i| i32::try_from(i).unwrap_or(i32::MAX))
        .collect();
    let stock: Vec<i64> = input.variants.iter().map(|v| v.stock).collect();

    tx.execute(
        "INSERT INTO variants (sku, product_id, attributes, price_minor, currency, position, active)
         SELECT sku, $2, attrs, price, cur, pos, true
           FROM UNNEST($1::text[], $3::jsonb[], $4::bigint[], $5::text[], $6::int[])
                AS t(sku, attrs, price, cur, pos)
         ON CONFLICT (sku) DO UPDATE
            SET attributes = EXCLUDED.attributes, price_minor = EXCLUDED.price_minor,
                currency = EXCLUDED.currency, position = EXCLUDED.position, active = true",
        &[&skus, &product_id, &attributes, &prices, &currencies, &positions],
    )
    .await
    .context("upserting variants")?;
    tx.execute(
        "UPDATE variants SET active = false WHERE product_id = $1 AND active AND sku <> ALL($2)",
        &[&product_id, &skus],
    )
    .await
    .context("retiring dropped variants")?;
    tx.execute(
        "INSERT INTO inventory (sku, total, available)
         SELECT sku, n, n FROM UNNEST($1::text[], $2::bigint[]) AS t(sku, n)
         ON CONFLICT (sku) DO NOTHING",
        &[&skus, &stock],
    )
    .await
    .context("creating inventory rows")?;
    let upserted = if inserted {
        Upserted::Created
    } else {
        Upserted::Updated
    };
    Ok(Saved { upserted, version })
}
