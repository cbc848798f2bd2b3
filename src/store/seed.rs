//! The demo fashion store loaded by `surge seed --demo`: about 200 products and 1,000
//! SKUs, generated deterministically so that reseeding changes nothing.

use std::collections::BTreeMap;

use anyhow::Context as _;
use tokio_postgres::Client;

use super::catalog_repo::{upsert_product, ProductInput, VariantInput};

struct Kind {
    name: &'static str,
    code: &'static str,
    base_price_minor: i64,
    sizes: &'static [&'static str],
}

const CLOTHING: &[&str] = &["XS", "S", "M", "L", "XL"];
const SHOES: &[&str] = &["38", "40", "42", "44"];
const ONE_SIZE: &[&str] = &["One size"];

const KINDS: &[Kind] = &[
    Kind {
        name: "Shirt",
        code: "SHT",
        base_price_minor: 4900,
        sizes: CLOTHING,
    },
    Kind {
        name: "T-Shirt",
        code: "TEE",
        base_price_minor: 1900,
        sizes: CLOTHING,
    },
    Kind {
        name: "Jeans",
        code: "JNS",
        base_price_minor: 7900,
        sizes: CLOTHING,
    },
    Kind {
        name: "Chinos",
        code: "CHN",
        base_price_minor: 5900,
        sizes: CLOTHING,
    },
    Kind {
        name: "Dress",
        code: "DRS",
        base_price_minor: 8900,
        sizes: CLOTHING,
    },
    Kind {
        name: "Skirt",
        code: "SKT",
        base_price_minor: 4500,
        sizes: CLOTHING,
    },
    Kind {
        name: "Jacket",
        code: "JKT",
        base_price_minor: 14900,
        sizes: CLOTHING,
    },
    Kind {
        name: "Coat",
        code: "COT",
        base_price_minor: 19900,
        sizes: CLOTHING,
    },
    Kind {
        name: "Sweater",
        code: "SWT",
        base_price_minor: 6900,
        sizes: CLOTHING,
    },
    Kind {
        name: "Hoodie",
        code: "HOD",
        base_price_minor: 5500,
        sizes: CLOTHING,
    },
    Kind {
        name: "Sneakers",
        code: "SNK",
        base_price_minor: 8900,
        sizes: SHOES,
    },
    Kind {
        name: "Boots",
        code: "BOT",
        base_price_minor: 15900,
        sizes: SHOES,
    },
    Kind {
        name: "Scarf",
        code: "SCF",
        base_price_minor: 2900,
        sizes: ONE_SIZE,
    },
    Kind {
        name: "Cap",
        code: "CAP",
        base_price_minor: 2200,
        sizes: ONE_SIZE,
    },
    Kind {
        name: "Tote Bag",
        code: "BAG",
        base_price_minor: 3900,
        sizes: ONE_SIZE,
    },
];

const MATERIALS: &[&str] = &[
    "Linen",
    "Cotton",
    "Denim",
    "Wool",
    "Cashmere",
    "Corduroy",
    "Silk",
    "Twill",
    "Jersey",
    "Canvas",
    "Merino",
    "Flannel",
    "Organic Cotton",
    "Recycled",
];

const STYLES: &[&str] = &[
    "Classic", "Relaxed", "Slim", "Vintage", "Everyday", "Studio", "Coastal",
];

const COLOURS: &[(&str, &str)] = &[
    ("Black", "BLK"),
    ("White", "WHT"),
    ("Navy", "NVY"),
    ("Olive", "OLV"),
    ("Sand", "SND"),
    ("Burgundy", "BRG"),
    ("Grey", "GRY"),
];

/// A small deterministic generator (SplitMix64): the demo must be the same on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// The demo products: one per material and kind, 210 in all.
pub fn demo_products() -> Vec<ProductInput> {
    let mut rng = Rng(0x5EED_5EED);
    let mut products = Vec::new();
    for (m, material) in MATERIALS.iter().enumerate() {
        for (k, kind) in KINDS.iter().enumerate() {
            let style = STYLES[(m + k) % STYLES.len()];
            let name = format!("{style} {material} {}", kind.name);
            let slug = slugify(&name);
            let n = products.len();
            let colour_count = 1 + usize::try_from(rng.below(2)).unwrap_or(0);
            let first_colour = usize::try_from(rng.below(COLOURS.len() as u64)).unwrap_or(0);
            let price = kind.base_price_minor + i64::try_from(rng.below(6)).unwrap_or(0) * 500;
            let mut variants = Vec::new();
            for c in 0..colour_count {
                let (colour, code) = COLOURS[(first_colour + c * 3) % COLOURS.len()];
                for size in kind.sizes {
                    let stock = match rng.below(20) {
                        0 => 0,
                        1..=3 => 1 + i64::try_from(rng.below(5)).unwrap_or(0),
                        _ => 10 + i64::try_from(rng.below(90)).unwrap_or(0),
                    };
                    let size_code: String =
                        size.chars().filter(|c| c.is_ascii_alphanumeric()).collect();
                    let mut attributes = BTreeMap::new();
                    attributes.insert("colour".to_owned(), colour.to_owned());
                    attributes.insert("size".to_owned(), (*size).to_owned());
                    variants.push(VariantInput {
                        sku: format!("{}-{n:04}-{code}-{}", kind.code, size_code.to_uppercase()),
                        attributes,
                        price_minor: price,
                        currency: "EUR".to_owned(),
                        stock,
                    });
                }
            }
            products.push(ProductInput {
                slug,
                description: format!(
                    "A {} {} in {}, cut for everyday wear. Care: gentle wash, dry flat.",
                    style.to_lowercase(),
                    kind.name.to_lowercase(),
                    material.to_lowercase()
                ),
                name,
                variants,
            });
        }
    }
    products
}

fn slugify(name: &str) -> String {
    let mut slug = String::with_capacity(name.len());
    for ch in name.chars() {
        if ch.is_ascii_alphanumeric() {
            slug.push(ch.to_ascii_lowercase());
        } else if !slug.ends_with('-') {
            slug.push('-');
        }
    }
    slug.trim_matches('-').to_owned()
}

/// Migrates, then loads the demo store in one transaction; existing stock is left as it is.
pub async fn seed_demo(client: &mut Client) -> anyhow::Result<(usize, usize)> {
    super::migrate::run(client).await?;
    let products = demo_products();
    let tx = client.transaction().await.context("starting the seed")?;
    for p in &products {
        upsert_product(&tx, p)
            .await
            .with_context(|| format!("seeding {}", p.slug))?;
    }
    tx.commit().await.context("committing the seed")?;
    let skus = products.iter().map(|p| p.variants.len()).sum();
    Ok((products.len(), skus))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;
    use surge_actors::validated::{Sku, Slug};

    #[test]
    fn demo_store_is_big_unique_and_valid() {
        let products = demo_products();
        assert!(products.len() >= 200, "{} products", products.len());
        let skus: Vec<&str> = products
            .iter()
            .flat_map(|p| p.variants.iter().map(|v| v.sku.as_str()))
            .collect();
        assert!((900..=1300).contains(&skus.len()), "{} skus", skus.len());
        assert_eq!(
            skus.iter().collect::<HashSet<_>>().len(),
            skus.len(),
            "SKUs unique"
        );
        let slugs: HashSet<&str> = products.iter().map(|p| p.slug.as_str()).collect();
        assert_eq!(slugs.len(), products.len(), "slugs unique");
        assert!(products.iter().all(|p| Slug::parse(&p.slug).is_ok()));
        assert!(skus.iter().all(|s| Sku::parse(s).is_ok()));
    }

    #[test]
    fn demo_store_is_deterministic() {
        let a: Vec<String> = demo_products().iter().map(|p| format!("{p:?}")).collect();
        let b: Vec<String> = demo_products().iter().map(|p| format!("{p:?}")).collect();
        assert_eq!(a, b);
    }
}
