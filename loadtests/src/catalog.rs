//! What the generators pick from: slugs, list cursors, search words and SKUs with
//! stock, read once from a node's public catalog API before the load starts.

use std::{collections::BTreeSet, time::Duration};

use anyhow::{bail, Context as _};
use serde::Deserialize;

use crate::http;

/// Most list pages read while collecting (the demo store has 9 pages of 24).
const MAX_PAGES: usize = 1000;

#[derive(Debug, Deserialize)]
struct Page {
    items: Vec<Product>,
    next_cursor: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Product {
    slug: String,
    name: String,
    variants: Vec<Variant>,
}

#[derive(Debug, Deserialize)]
struct Variant {
    sku: String,
    available: i64,
}

/// The catalog as the generators see it.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    /// Every product slug.
    pub slugs: Vec<String>,
    /// `next_cursor` values of `limit=24` pages, to ask for random pages.
    pub cursors: Vec<String>,
    /// Words from product names, for searches.
    pub words: Vec<String>,
    /// SKUs with at least `min_stock` units available when read, and their stock.
    pub skus: Vec<(String, i64)>,
    /// Mean body size of up to 20 product pages (`GET /api/products/{slug}`).
    pub product_page_bytes: usize,
    /// Body size of the first list page (`GET /api/products?limit=24`).
    pub list_page_bytes: usize,
}

/// Reads the catalog from `base` with a small client of its own, before the load
/// starts; with a positive `min_stock`, fails unless some SKU has that much stock.
pub async fn read(base: &str, timeout: Duration, min_stock: i64) -> anyhow::Result<Catalog> {
    let probe = http::client(&http::ClientOptions {
        timeout,
        connections: 4,
        source: None,
    });
    let cat = fetch(&probe, base, min_stock).await?;
    anyhow::ensure!(
        min_stock <= 0 || !cat.skus.is_empty(),
        "no SKU with {min_stock}+ units in stock at {base}"
    );
    Ok(cat)
}

/// Reads the catalog from `base`; keeps SKUs with at least `min_stock` units.
async fn fetch(client: &awc::Client, base: &str, min_stock: i64) -> anyhow::Result<Catalog> {
    let mut cat = Catalog::default();
    let mut words = BTreeSet::new();
    let mut cursor: Option<String> = None;
    for page_no in 0..MAX_PAGES {
        let url = match &cursor {
            Some(c) => format!("{base}/api/products?limit=24&cursor={}", encode(c)),
            None => format!("{base}/api/products?limit=24"),
        };
        let reply = http::get(client, &url)
            .await
            .map_err(|f| anyhow::anyhow!("GET {url}: {}", f.detail))?;
        if reply.status != 200 {
            bail!("GET {url}: status {}", reply.status);
        }
        if page_no == 0 {
            cat.list_page_bytes = reply.body.len();
        }
        let page: Page =
            serde_json::from_slice(&reply.body).with_context(|| format!("GET {url}: body"))?;
        for p in page.items {
            for w in p.name.split(|c: char| !c.is_alphanumeric()) {
                if w.chars().count() >= 3 {
                    words.insert(w.to_lowercase());
                }
            }
            for v in p.variants {
                if v.available >= min_stock {
                    cat.skus.push((v.sku, v.available));
                }
            }
            cat.slugs.push(p.slug);
        }
        match page.next_cursor {
            Some(c) if !c.is_empty() => {
                cat.cursors.push(c.clone());
                cursor = Some(c);
            }
            _ => break,
        }
    }
    cat.words = words.into_iter().take(500).collect();
    anyhow::ensure!(
        !cat.slugs.is_empty(),
        "{base} has no products (seed the demo store first)"
    );
    // The mean size of up to 20 product pages spread over the catalog.
    let step = (cat.slugs.len() / 20).max(1);
    let (mut bytes, mut pages) = (0usize, 0usize);
    for slug in cat.slugs.iter().step_by(step).take(20) {
        let url = format!("{base}/api/products/{slug}");
        let reply = http::get(client, &url)
            .await
            .map_err(|f| anyhow::anyhow!("GET {url}: {}", f.detail))?;
        if reply.status != 200 {
            bail!("GET {url}: status {}", reply.status);
        }
        bytes += reply.body.len();
        pages += 1;
    }
    cat.product_page_bytes = bytes / pages.max(1);
    Ok(cat)
}

/// Percent-encodes everything but unreserved characters (for query values).
pub fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::encode;

    #[test]
    fn encodes_reserved() {
        assert_eq!(encode("abc-1_2.3~"), "abc-1_2.3~");
        assert_eq!(encode("a b+c/="), "a%20b%2Bc%2F%3D");
    }
}
