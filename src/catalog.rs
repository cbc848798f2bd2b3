//! The in-memory catalog: products and variants loaded from PostgreSQL at startup and
//! swapped whole when an admin changes them, so that reads never touch the database.
//!
//! Stock levels are kept apart from the catalog ([`StockLevels`]): they change on every
//! sale, while products change rarely, and a sale must not rebuild the catalog.
//!
//! Each snapshot carries the `catalog_version` it was loaded at, and the store
//! remembers the newest version this node has heard of, so that a node knows when it is
//! behind and catches up (docs/CATALOG.md).

use std::{
    collections::{BTreeMap, HashMap},
    sync::{
        atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering},
        Arc, RwLock,
    },
};

use surge_actors::{campaign::Campaigns, ports::StockLevel, validated::Slug};
use thiserror::Error;

/// One sellable variant of a product.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Variant {
    /// Stock-keeping unit, unique across the store.
    pub sku: String,
    /// Free-form attributes such as size and colour.
    pub attributes: BTreeMap<String, String>,
    /// Price in minor units of `currency`.
    pub price_minor: i64,
    /// ISO 4217 code.
    pub currency: String,
}

/// A product and its active variants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Product {
    /// URL key, unique.
    pub slug: String,
    /// Display name.
    pub name: String,
    /// Display description.
    pub description: String,
    /// Active variants in display order; never empty.
    pub variants: Vec<Variant>,
    search_key: String,
    /// The product's JSON up to its live numbers, encoded once per catalog load.
    json_head: String,
    /// Each variant's JSON up to its live `available`.
    json_variants: Vec<String>,
}

impl Product {
    /// Builds a product, precomputing its search key.
    pub fn new(slug: String, name: String, description: String, variants: Vec<Variant>) -> Self {
        let search_key = format!("{} {}", name.to_lowercase(), slug);
        // Strings and string maps always encode.
        fn js<T: serde::Serialize + ?Sized>(v: &T) -> String {
            serde_json::to_string(v).unwrap_or_else(|_| "null".to_owned())
        }
        let currency = variants.first().map_or("", |v| v.currency.as_str());
        let prices = variants.iter().map(|v| v.price_minor);
        let json_head = format!(
            "{{\"slug\":{},\"name\":{},\"description\":{},\"currency\":{},\"price_min_minor\":{},\"price_max_minor\":{},",
            js(slug.as_str()),
            js(name.as_str()),
            js(description.as_str()),
            js(currency),
            prices.clone().min().unwrap_or(0),
            prices.max().unwrap_or(0),
        );
        let json_variants = variants
            .iter()
            .map(|v| {
                format!(
                    "{{\"sku\":{},\"attributes\":{},\"price_minor\":{},\"currency\":{},\"available\":",
                    js(v.sku.as_str()),
                    js(&v.attributes),
                    v.price_minor,
                    js(v.currency.as_str()),
                )
            })
            .collect();
        Self {
            slug,
            name,
            description,
            variants,
            search_key,
            json_head,
            json_variants,
        }
    }

    /// Appends this product's JSON with the live `available` of each variant (and
    /// their sum): the same document as `ProductView`, without encoding it per request.
    pub fn write_json(&self, out: &mut String, available: &[i64]) {
        use std::fmt::Write as _;
        out.push_str(&self.json_head);
        let total: i64 = available.iter().sum();
        let _ = write!(out, "\"available\":{total},\"variants\":[");
        for (i, (prefix, a)) in self.json_variants.iter().zip(available).enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(prefix);
            let _ = write!(out, "{a}}}");
        }
        out.push_str("]}");
    }

    /// Whether every whitespace-separated term of `terms` occurs in the name or slug.
    fn matches(&self, terms: &[String]) -> bool {
        terms.iter().all(|t| self.search_key.contains(t.as_str()))
    }
}

/// An immutable snapshot of the catalog, sorted by slug for stable cursors.
#[derive(Debug, Default)]
pub struct Catalog {
    /// `catalog_version` read before the products were, so the products are at least
    /// this new.
    version: i64,
    products: Vec<Product>,
    by_slug: HashMap<String, usize>,
    by_sku: HashMap<String, (usize, usize)>,
    /// Every campaign: loaded with the products, so a node gates and prices campaign
    /// SKUs from the same snapshot it sells them from.
    campaigns: Campaigns,
}

/// Why a listing request cannot be served.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum PageError {
    /// The cursor is not one this server issued.
    #[error("cursor is not valid")]
    InvalidCursor,
}

/// One page of a listing.
#[derive(Debug)]
pub struct Page<'a> {
    /// The products on this page.
    pub items: Vec<&'a Product>,
    /// Cursor of the next page, when there is one.
    pub next_cursor: Option<String>,
}

impl Catalog {
    /// Builds a snapshot; later duplicates of a slug are dropped.
    pub fn new(mut products: Vec<Product>) -> Self {
        products.sort_by(|a, b| a.slug.cmp(&b.slug));
        products.dedup_by(|a, b| a.slug == b.slug);
        let by_slug = products
            .iter()
            .enumerate()
            .map(|(i, p)| (p.slug.clone(), i))
            .collect();
        let by_sku = products
            .iter()
            .enumerate()
            .flat_map(|(i, p)| {
                p.variants
                    .iter()
                    .enumerate()
                    .map(move |(j, v)| (v.sku.clone(), (i, j)))
            })
            .collect();
        Self {
            version: 0,
            products,
            by_slug,
            by_sku,
            campaigns: Campaigns::default(),
        }
    }

    /// The same snapshot with its campaigns.
    pub fn with_campaigns(mut self, campaigns: Campaigns) -> Self {
        self.campaigns = campaigns;
        self
    }

    /// Every campaign of this snapshot.
    pub fn campaigns(&self) -> &Campaigns {
        &self.campaigns
    }

    /// The same snapshot, labelled with the `catalog_version` it was loaded at.
    pub fn at_version(mut self, version: i64) -> Self {
        self.version = version;
        self
    }

    /// The `catalog_version` this snapshot is at least as new as.
    pub fn version(&self) -> i64 {
        self.version
    }

    /// Number of products.
    pub fn len(&self) -> usize {
        self.products.len()
    }

    /// Whether the catalog has no products.
    pub fn is_empty(&self) -> bool {
        self.products.is_empty()
    }

    /// Looks a product up by slug.
    pub fn get(&self, slug: &str) -> Option<&Product> {
        self.by_slug.get(slug).map(|&i| &self.products[i])
    }

    /// Looks a variant up by SKU, with its product.
    pub fn variant(&self, sku: &str) -> Option<(&Product, &Variant)> {
        self.by_sku
            .get(sku)
            .map(|&(i, j)| (&self.products[i], &self.products[i].variants[j]))
    }

    /// Lists products matching `query`, after `cursor`, at most `limit` of them.
    pub fn page(
        &self,
        query: &str,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<Page<'_>, PageError> {
        let after = cursor.map(decode_cursor).transpose()?;
        let terms: Vec<String> = query.split_whitespace().map(str::to_lowercase).collect();
        let start = match &after {
            Some(slug) => self
                .products
                .partition_point(|p| p.slug.as_str() <= slug.as_str()),
            None => 0,
        };
        let mut matching = self.products[start..].iter().filter(|p| p.matches(&terms));
        let items: Vec<&Product> = matching.by_ref().take(limit).collect();
        let next_cursor = match (items.last(), matching.next()) {
            (Some(last), Some(_)) => Some(encode_cursor(&last.slug)),
            _ => None,
        };
        Ok(Page { items, next_cursor })
    }
}

/// A cursor is the last slug of the previous page: any slug is a place in the sorted
/// catalog, so every well-formed cursor is valid (the API states its pattern).
fn encode_cursor(slug: &str) -> String {
    slug.to_owned()
}

fn decode_cursor(cursor: &str) -> Result<Slug, PageError> {
    Slug::parse(cursor).map_err(|_| PageError::InvalidCursor)
}

/// Holds the current catalog snapshot; readers clone an `Arc` and never block a reload.
///
/// It also keeps what the reload path needs to know without IO: the newest version
/// heard of (from the bus or this node's own writes), whether a reload is owed
/// (a refused price, a failed reload), and a gate so that concurrent reloads coalesce.
#[derive(Debug, Default)]
pub struct CatalogStore {
    current: RwLock<Arc<Catalog>>,
    heard: AtomicI64,
    owed: AtomicBool,
    reloading: tokio::sync::Mutex<()>,
}

impl CatalogStore {
    /// The current snapshot.
    pub fn snapshot(&self) -> Arc<Catalog> {
        match self.current.read() {
            Ok(guard) => Arc::clone(&guard),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    /// Replaces the snapshot, unless it is older than the one held (a slow load from
    /// a lagging replica must not undo a newer one); returns whether it did.
    pub fn replace(&self, catalog: Catalog) -> bool {
        let apply = |current: &mut Arc<Catalog>| {
            if catalog.version < current.version {
                return false;
            }
            *current = Arc::new(catalog);
            true
        };
        let replaced = match self.current.write() {
            Ok(mut guard) => apply(&mut guard),
            Err(poisoned) => apply(&mut poisoned.into_inner()),
        };
        if replaced {
            metrics::gauge!("catalog_version").set(self.version() as f64);
        }
        replaced
    }

    /// The version of the current snapshot.
    pub fn version(&self) -> i64 {
        self.snapshot().version
    }

    /// Records that `version` exists (a bus event, this node's own write); returns
    /// whether the snapshot is older, i.e. a reload is due.
    pub fn hear(&self, version: i64) -> bool {
        self.heard.fetch_max(version, Ordering::SeqCst);
        version > self.version()
    }

    /// The newest version heard of (0 when none).
    pub fn heard(&self) -> i64 {
        self.heard.load(Ordering::SeqCst)
    }

    /// Marks a reload as owed whatever the versions say: a reload failed, or a write
    /// met a price this snapshot does not have. The next resync pays it.
    pub fn owe_reload(&self) {
        self.owed.store(true, Ordering::SeqCst);
    }

    /// Whether the node knows its snapshot is behind: a newer version was heard of, or
    /// a reload is owed.
    pub fn is_behind(&self) -> bool {
        self.owed.load(Ordering::SeqCst) || self.heard() > self.version()
    }

    /// Clears the owed reload once one succeeded.
    pub fn paid(&self) {
        self.owed.store(false, Ordering::SeqCst);
    }

    /// Whether the snapshot sells `sku` at `price` (`None`: does not sell it), at its
    /// own price or at a sale price of one of its campaigns: a refused write whose
    /// answer this snapshot already shows needs no reload (at the edge of a campaign
    /// window, a node whose clock differs from the database's meets the other price).
    pub fn shows(&self, sku: &str, price: Option<(i64, &str)>) -> bool {
        let snapshot = self.snapshot();
        let Some((_, v)) = snapshot.variant(sku) else {
            return price.is_none();
        };
        let Some((minor, currency)) = price else {
            return false;
        };
        currency == v.currency
            && (minor == v.price_minor
                || snapshot
                    .campaigns()
                    .slots(sku)
                    .iter()
                    .any(|s| s.sale_price_minor == Some(minor)))
    }

    /// Held while a reload runs, so that a burst of triggers costs one load.
    pub async fn reload_gate(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.reloading.lock().await
    }
}

/// Units a shopper can still buy, per SKU, as this node knows them, with the row's
/// change counter: a value only ever replaces an older one, whichever path it came by
/// (this node's commits, the bus, or a resync).
#[derive(Debug, Default)]
pub struct StockLevels {
    levels: RwLock<HashMap<String, (i64, i64)>>,
    /// Rises after every merge that changed a level, so that an answer built from the
    /// levels can be reused while it stays put.
    changes: AtomicU64,
}

impl StockLevels {
    /// A counter that rises after any level changes: read it before the levels, and
    /// what was built from them is current while it reads the same.
    pub fn changes(&self) -> u64 {
        self.changes.load(Ordering::Acquire)
    }

    /// Units available for `sku` (0 when unknown).
    pub fn get(&self, sku: &str) -> i64 {
        self.get_with_seq(sku).map_or(0, |(a, _)| a)
    }

    /// Units and change counter of `sku`.
    pub fn get_with_seq(&self, sku: &str) -> Option<(i64, i64)> {
        let read = |m: &HashMap<String, (i64, i64)>| m.get(sku).copied();
        match self.levels.read() {
            Ok(guard) => read(&guard),
            Err(poisoned) => read(&poisoned.into_inner()),
        }
    }

    /// Units available for each SKU of a product, under one lock.
    pub fn for_variants(&self, variants: &[Variant]) -> Vec<i64> {
        let read = |m: &HashMap<String, (i64, i64)>| {
            variants
                .iter()
                .map(|v| m.get(&v.sku).map_or(0, |&(a, _)| a))
                .collect()
        };
        match self.levels.read() {
            Ok(guard) => read(&guard),
            Err(poisoned) => read(&poisoned.into_inner()),
        }
    }

    /// Applies values newer than what is known; returns the ones that changed.
    pub fn merge(&self, values: impl IntoIterator<Item = StockLevel>) -> Vec<StockLevel> {
        let mut changed = Vec::new();
        let apply = |m: &mut HashMap<String, (i64, i64)>| {
            for v in values {
                let newer = m.get(&v.sku).is_none_or(|&(_, seq)| v.seq > seq);
                if newer {
                    m.insert(v.sku.clone(), (v.available.max(0), v.seq));
                    changed.push(v);
                }
            }
        };
        match self.levels.write() {
            Ok(mut guard) => apply(&mut guard),
            Err(poisoned) => apply(&mut poisoned.into_inner()),
        }
        if !changed.is_empty() {
            // After the levels: a reader that sees the new count sees the new levels.
            self.changes.fetch_add(1, Ordering::AcqRel);
        }
        changed
    }
}

/// A one-variant product (`{slug}-1`, 1.00 EUR), for tests of the catalog and its views.
#[cfg(test)]
pub(crate) fn test_product(slug: &str, name: &str) -> Product {
    Product::new(
        slug.into(),
        name.into(),
        String::new(),
        vec![Variant {
            sku: format!("{slug}-1"),
            attributes: BTreeMap::new(),
            price_minor: 100,
            currency: "EUR".into(),
        }],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn product(slug: &str, name: &str) -> Product {
        test_product(slug, name)
    }

    fn catalog(n: usize) -> Catalog {
        Catalog::new(
            (0..n)
                .map(|i| {
                    product(
                        &format!("p{i:03}"),
                        &format!(
                            "Item {i} {}",
                            if i % 2 == 0 {
                                "Red Shirt"
                            } else {
                                "Blue Jeans"
                            }
                        ),
                    )
                })
                .collect(),
        )
    }

    #[test]
    fn pages_walk_every_product_once_in_order() {
        let cat = catalog(25);
        let mut seen = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let page = cat.page("", cursor.as_deref(), 10).expect("valid cursor");
            seen.extend(page.items.iter().map(|p| p.slug.clone()));
            match page.next_cursor {
                Some(c) => cursor = Some(c),
                None => break,
            }
        }
        let expected: Vec<String> = (0..25).map(|i| format!("p{i:03}")).collect();
        assert_eq!(seen, expected);
    }

    #[test]
    fn exact_fit_has_no_next_cursor() {
        let cat = catalog(10);
        let page = cat.page("", None, 10).expect("page");
        assert_eq!(page.items.len(), 10);
        assert!(page.next_cursor.is_none());
    }

    #[test]
    fn search_is_case_insensitive_and_needs_every_term() {
        let cat = catalog(10);
        let page = cat.page("red SHIRT", None, 100).expect("page");
        assert_eq!(page.items.len(), 5);
        assert!(page.items.iter().all(|p| p.name.contains("Red Shirt")));
        assert!(cat
            .page("red jeans", None, 100)
            .expect("page")
            .items
            .is_empty());
    }

    #[test]
    fn search_pagination_continues_within_matches() {
        let cat = catalog(20);
        let first = cat.page("blue", None, 3).expect("page");
        let cursor = first.next_cursor.expect("more");
        let second = cat.page("blue", Some(&cursor), 3).expect("page");
        assert_eq!(second.items[0].slug, "p007");
    }

    #[test]
    fn foreign_cursors_are_refused() {
        use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine as _};
        let cat = catalog(3);
        for bad in [
            "%%%",
            "____",
            &URL_SAFE_NO_PAD.encode("UPPER"),
            &URL_SAFE_NO_PAD.encode([0xff, 0xfe]),
        ] {
            assert_eq!(
                cat.page("", Some(bad), 10).err(),
                Some(PageError::InvalidCursor),
                "{bad}"
            );
        }
    }

    /// Guards against a slow reload from a lagging replica replacing a newer snapshot,
    /// and against a node that heard of a newer version believing it is current.
    #[test]
    fn the_store_keeps_the_newest_snapshot_and_knows_when_it_is_behind() {
        let store = CatalogStore::default();
        assert!(store.replace(catalog(2).at_version(3)));
        assert!(!store.replace(catalog(1).at_version(2)), "older is refused");
        assert_eq!((store.version(), store.snapshot().len()), (3, 2));
        assert!(
            store.replace(catalog(1).at_version(3)),
            "same version reloads"
        );
        assert!(!store.is_behind());
        assert!(!store.hear(3), "nothing newer");
        assert!(store.hear(5));
        assert!(store.is_behind());
        assert!(store.hear(4), "still newer than the snapshot");
        assert_eq!(store.heard(), 5, "the newest heard stays");
        store.replace(catalog(1).at_version(5));
        assert!(!store.is_behind());
        store.owe_reload();
        assert!(store.is_behind(), "a failed reload is owed");
        store.paid();
        assert!(!store.is_behind());
        assert!(store.shows("p000-1", Some((100, "EUR"))));
        assert!(!store.shows("p000-1", Some((120, "EUR"))));
        assert!(store.shows("gone", None));
    }

    #[test]
    fn stock_levels_keep_the_newest_value() {
        let levels = StockLevels::default();
        let lv = |available, seq| StockLevel {
            sku: "A".into(),
            available,
            seq,
        };
        assert_eq!(levels.merge([lv(5, 2)]).len(), 1);
        assert!(
            levels.merge([lv(9, 1)]).is_empty(),
            "an older value is dropped"
        );
        assert!(
            levels.merge([lv(9, 2)]).is_empty(),
            "the same seq changes nothing"
        );
        assert_eq!(levels.merge([lv(4, 3)]).len(), 1);
        assert_eq!(levels.get_with_seq("A"), Some((4, 3)));
        assert_eq!(levels.get("B"), 0);
    }
}
