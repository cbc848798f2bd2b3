//! The admin API calls the scenarios need: a fresh product with one SKU, a campaign.

use std::time::{Duration, Instant};

use actix_web::web::Bytes;
use anyhow::bail;
use awc::http::header;
use serde::Deserialize;
use serde_json::json;

use crate::http;

/// A product made for one run.
#[derive(Debug, Clone)]
pub struct TestProduct {
    /// Its slug.
    pub slug: String,
    /// Its only SKU.
    pub sku: String,
}

impl TestProduct {
    /// Names unique to this run, e.g. `lt-flash-1a2b3c4d` / `LT-FLASH-1A2B3C4D`.
    pub fn fresh(kind: &str) -> Self {
        let id = uuid::Uuid::new_v4().simple().to_string();
        let short = &id[..10];
        Self {
            slug: format!("lt-{kind}-{short}"),
            sku: format!("LT-{}-{}", kind.to_uppercase(), short.to_uppercase()),
        }
    }
}

#[derive(Debug, Deserialize)]
struct ProductView {
    variants: Vec<VariantView>,
}

#[derive(Debug, Deserialize)]
struct VariantView {
    sku: String,
    available: i64,
}

/// A product of one SKU with `stock` units, made on the first base URL and shown by
/// every one of them (other nodes learn of it through the bus) before the load starts.
pub async fn fresh_visible(
    client: &awc::Client,
    bases: &[String],
    token: &str,
    kind: &str,
    stock: i64,
) -> anyhow::Result<TestProduct> {
    let product = TestProduct::fresh(kind);
    create(client, &bases[0], token, &product, stock).await?;
    wait_visible(client, bases, &product, stock, Duration::from_secs(15)).await?;
    Ok(product)
}

/// Creates `product` with `stock` units through `POST /api/admin/products` on `base`.
async fn create(
    client: &awc::Client,
    base: &str,
    token: &str,
    product: &TestProduct,
    stock: i64,
) -> anyhow::Result<()> {
    let body = json!({
        "slug": product.slug,
        "name": format!("Load test {}", product.sku),
        "description": "Made by surge-loadtest for one run.",
        "variants": [{
            "sku": product.sku,
            "attributes": {"size": "one"},
            "price_minor": 1999,
            "currency": "EUR",
            "stock": stock,
        }],
    });
    let req = client
        .post(format!("{base}/api/admin/products"))
        .insert_header((header::AUTHORIZATION, format!("Bearer {token}")))
        .insert_header((header::CONTENT_TYPE, "application/json"));
    let reply = http::send(req, Some(Bytes::from(body.to_string())))
        .await
        .map_err(|f| anyhow::anyhow!("POST {base}/api/admin/products: {}", f.detail))?;
    match reply.status {
        200 | 201 => Ok(()),
        401 | 403 => bail!(
            "POST {base}/api/admin/products: {} (check --admin-token / SURGE_ADMIN_TOKEN)",
            reply.status
        ),
        404 => {
            bail!("POST {base}/api/admin/products: 404, the node runs without SURGE_ADMIN_TOKEN")
        }
        s => bail!(
            "POST {base}/api/admin/products: {s}: {}",
            String::from_utf8_lossy(&reply.body)
        ),
    }
}

/// Waits until every base URL shows the product with `stock` units (other nodes learn
/// of it through the bus). Gives up after `limit`.
async fn wait_visible(
    client: &awc::Client,
    bases: &[String],
    product: &TestProduct,
    stock: i64,
    limit: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    for base in bases {
        let url = format!("{base}/api/products/{}", product.slug);
        loop {
            let last = match http::get(client, &url).await {
                Ok(r) if r.status == 200 => {
                    let seen = serde_json::from_slice::<ProductView>(&r.body)
                        .ok()
                        .and_then(|p| p.variants.into_iter().find(|v| v.sku == product.sku))
                        .map(|v| v.available);
                    if seen == Some(stock) {
                        break;
                    }
                    format!("available {seen:?}")
                }
                Ok(r) => format!("status {}", r.status),
                Err(f) => f.detail,
            };
            if Instant::now() >= deadline {
                bail!(
                    "{url} does not show {} with {stock} units ({last})",
                    product.sku
                );
            }
            actix_web::rt::time::sleep(Duration::from_millis(50)).await;
        }
    }
    Ok(())
}

/// A campaign made for one run.
#[derive(Debug, Clone)]
pub struct TestCampaign {
    /// Its id.
    pub id: String,
    /// Its start, Unix ms, as the server stored it.
    pub starts_at_ms: i64,
}

#[derive(Debug, Deserialize)]
struct CampaignView {
    id: String,
    starts_at_ms: i64,
}

/// Schedules a campaign (`POST /api/admin/campaigns` on the first base URL, `body` as
/// the contract takes it) and waits until every base URL serves it: a node learns of
/// it through the bus, and a join on a node that has not would be refused.
pub async fn campaign_visible(
    client: &awc::Client,
    bases: &[String],
    token: &str,
    body: &serde_json::Value,
) -> anyhow::Result<TestCampaign> {
    let base = &bases[0];
    let req = client
        .post(format!("{base}/api/admin/campaigns"))
        .insert_header((header::AUTHORIZATION, format!("Bearer {token}")))
        .insert_header((header::CONTENT_TYPE, "application/json"));
    let reply = http::send(req, Some(Bytes::from(body.to_string())))
        .await
        .map_err(|f| anyhow::anyhow!("POST {base}/api/admin/campaigns: {}", f.detail))?;
    if reply.status != 201 {
        bail!(
            "POST {base}/api/admin/campaigns: {}: {}",
            reply.status,
            String::from_utf8_lossy(&reply.body)
        );
    }
    let view: CampaignView = serde_json::from_slice(&reply.body)
        .map_err(|e| anyhow::anyhow!("POST {base}/api/admin/campaigns: unreadable answer: {e}"))?;
    let deadline = Instant::now() + Duration::from_secs(15);
    for base in bases {
        let url = format!("{base}/api/campaigns/{}", view.id);
        loop {
            let last = match http::get(client, &url).await {
                Ok(r) if r.status == 200 => break,
                Ok(r) => format!("status {}", r.status),
                Err(f) => f.detail,
            };
            if Instant::now() >= deadline {
                bail!("{url} does not show the new campaign ({last})");
            }
            actix_web::rt::time::sleep(Duration::from_millis(50)).await;
        }
    }
    Ok(TestCampaign {
        id: view.id,
        starts_at_ms: view.starts_at_ms,
    })
}
