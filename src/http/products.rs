//! Catalog endpoints, served from memory.

use std::{
    cell::RefCell,
    collections::{BTreeMap, HashMap},
    sync::Arc,
};

use actix_web::{
    dev::{AppService, HttpServiceFactory, ResourceDef},
    get, guard,
    http::{header::HeaderValue, Method},
    web,
    web::Bytes,
    HttpRequest, HttpResponse,
};
use serde::{Deserialize, Serialize};
use utoipa::{
    openapi::{path::Paths, RefOr, Schema},
    IntoParams, ToSchema,
};
use utoipa_actix_web::{service_config::ServiceConfig, OpenApiFactory};

use crate::{
    catalog::{Catalog, PageError, Product, StockLevels},
    error::{ApiError, ErrorBody},
    state::AppState,
};

/// The catalog, open to anyone.
pub fn routes(cfg: &mut ServiceConfig) {
    cfg.service(list_products).service(ProductRoute);
}

/// The catalog's content type, made once rather than copied from text per answer.
const JSON: HeaderValue = HeaderValue::from_static("application/json");

/// Longest accepted search query, in characters.
pub const MAX_QUERY_CHARS: usize = 100;
/// Page size when none is asked for.
pub const DEFAULT_LIMIT: usize = 24;
/// Largest page size.
pub const MAX_LIMIT: usize = 100;

/// A variant as shoppers see it; borrows from the catalog snapshot, so answering
/// copies nothing but the live stock numbers.
#[derive(Debug, Serialize, ToSchema)]
pub struct VariantView<'a> {
    /// Stock-keeping unit.
    pub sku: &'a str,
    /// Size, colour and the like.
    pub attributes: &'a BTreeMap<String, String>,
    /// Price in minor units.
    pub price_minor: i64,
    /// ISO 4217 code.
    pub currency: &'a str,
    /// Units a shopper can buy now.
    pub available: i64,
}

/// A product as shoppers see it, borrowed from the catalog snapshot.
#[derive(Debug, Serialize, ToSchema)]
pub struct ProductView<'a> {
    /// URL key.
    pub slug: &'a str,
    /// Display name.
    pub name: &'a str,
    /// Display description.
    pub description: &'a str,
    /// ISO 4217 code of every price.
    pub currency: &'a str,
    /// Lowest variant price.
    pub price_min_minor: i64,
    /// Highest variant price.
    pub price_max_minor: i64,
    /// Units available over all variants.
    pub available: i64,
    /// Variants in display order.
    pub variants: Vec<VariantView<'a>>,
}

impl<'a> ProductView<'a> {
    /// Joins a catalog product with the current stock levels.
    pub fn new(product: &'a Product, stock: &StockLevels) -> Self {
        let variants: Vec<VariantView<'a>> = product
            .variants
            .iter()
            .map(|v| VariantView {
                sku: &v.sku,
                attributes: &v.attributes,
                price_minor: v.price_minor,
                currency: &v.currency,
                available: stock.get(&v.sku),
            })
            .collect();
        let prices = variants.iter().map(|v| v.price_minor);
        Self {
            slug: &product.slug,
            name: &product.name,
            description: &product.description,
            currency: variants.first().map_or("", |v| v.currency),
            price_min_minor: prices.clone().min().unwrap_or(0),
            price_max_minor: prices.max().unwrap_or(0),
            available: variants.iter().map(|v| v.available).sum(),
            variants,
        }
    }
}

/// One page of products.
#[derive(Debug, Serialize, ToSchema)]
pub struct ProductPage<'a> {
    /// Products on this page.
    pub items: Vec<ProductView<'a>>,
    /// Pass as `cursor` for the next page; null on the last page.
    pub next_cursor: Option<String>,
}

/// Listing parameters.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Words that must all occur in the name (case-insensitive).
    pub q: Option<String>,
    /// Page size, 1 to 100 (default 24).
    pub limit: Option<String>,
    /// `next_cursor` of the previous page (the last slug it showed; empty for none).
    pub cursor: Option<String>,
}

fn parse_limit(raw: Option<&str>) -> Result<usize, ApiError> {
    let Some(raw) = raw else {
        return Ok(DEFAULT_LIMIT);
    };
    match raw.parse::<usize>() {
        Ok(n) if (1..=MAX_LIMIT).contains(&n) => Ok(n),
        _ => Err(ApiError::bad_request(
            "invalid_limit",
            format!("limit must be an integer from 1 to {MAX_LIMIT}"),
        )),
    }
}

/// Lists products, optionally filtered by a search query.
#[utoipa::path(
    tag = "catalog",
    params(ListQuery),
    responses(
        (status = 200, description = "A page of products", body = ProductPage),
        (status = 400, description = "Bad limit, cursor or query", body = ErrorBody),
    )
)]
#[get("/api/products")]
pub async fn list_products(
    state: web::Data<AppState>,
    query: web::Query<ListQuery>,
) -> Result<HttpResponse, ApiError> {
    let limit = parse_limit(query.limit.as_deref())?;
    let q = query.q.as_deref().unwrap_or("");
    // Counted as sent, as the description states it.
    if q.chars().count() > MAX_QUERY_CHARS {
        return Err(ApiError::bad_request(
            "invalid_query",
            format!("q must be at most {MAX_QUERY_CHARS} characters"),
        ));
    }
    let catalog = state.catalog.snapshot();
    let cursor = query.cursor.as_deref().filter(|c| !c.is_empty());
    let body = cached_list(&catalog, &state.stock, q.trim(), cursor, limit).map_err(
        |PageError::InvalidCursor| ApiError::bad_request("invalid_cursor", "cursor is not valid"),
    )?;
    Ok(HttpResponse::Ok().content_type(JSON).body(body))
}

/// The `ProductPage` document, from each product's pre-encoded JSON.
fn list_body(
    catalog: &Catalog,
    stock: &StockLevels,
    q: &str,
    cursor: Option<&str>,
    limit: usize,
) -> Result<Bytes, PageError> {
    let page = catalog.page(q, cursor, limit)?;
    let mut body = String::with_capacity(1024 * page.items.len() + 64);
    body.push_str("{\"items\":[");
    for (i, product) in page.items.iter().enumerate() {
        if i > 0 {
            body.push(',');
        }
        product.write_json(&mut body, &stock.for_variants(&product.variants));
    }
    body.push_str("],\"next_cursor\":");
    body.push_str(&serde_json::to_string(&page.next_cursor).unwrap_or_else(|_| "null".into()));
    body.push('}');
    Ok(Bytes::from(body))
}

/// What a cached answer was built from: a catalog snapshot (held, so its address stays
/// unique) and the stock change count read before the levels. The answer is current
/// while both are the ones a request reads.
#[derive(Clone)]
struct BuiltFrom {
    catalog: Arc<Catalog>,
    stock_changes: u64,
}

impl BuiltFrom {
    fn new(catalog: &Arc<Catalog>, stock_changes: u64) -> Self {
        Self {
            catalog: Arc::clone(catalog),
            stock_changes,
        }
    }

    fn is(&self, catalog: &Arc<Catalog>, stock_changes: u64) -> bool {
        Arc::ptr_eq(&self.catalog, catalog) && self.stock_changes == stock_changes
    }
}

/// A list page built by this worker thread, and what it was built from.
struct CachedList {
    from: BuiltFrom,
    limit: usize,
    cursor: Option<Box<str>>,
    q: Box<str>,
    body: Bytes,
}

/// List pages a worker keeps; all of them from the current catalog and stock levels.
const CACHED_LISTS: usize = 16;

thread_local! {
    static LISTS: RefCell<Vec<CachedList>> = const { RefCell::new(Vec::new()) };
}

/// [`list_body`], reused while the catalog snapshot and the stock levels are the ones
/// it was built from: a shop's pages are read far more often than stock changes, and
/// building one costs more than the bare HTTP answer of its 23 KB.
///
/// The change counter is read before the levels are, so a page is never kept under a
/// newer count than its levels; the held `Arc` keeps the snapshot's address unique.
fn cached_list(
    catalog: &Arc<Catalog>,
    stock: &StockLevels,
    q: &str,
    cursor: Option<&str>,
    limit: usize,
) -> Result<Bytes, PageError> {
    let stock_changes = stock.changes();
    let current = |c: &CachedList| c.from.is(catalog, stock_changes);
    let hit = LISTS.with_borrow(|lists| {
        lists
            .iter()
            .find(|c| current(c) && c.limit == limit && c.cursor.as_deref() == cursor && &*c.q == q)
            .map(|c| c.body.clone())
    });
    if let Some(body) = hit {
        return Ok(body);
    }
    let body = list_body(catalog, stock, q, cursor, limit)?;
    LISTS.with_borrow_mut(|lists| {
        lists.retain(current);
        if lists.len() >= CACHED_LISTS {
            lists.remove(0);
        }
        lists.push(CachedList {
            from: BuiltFrom::new(catalog, stock_changes),
            limit,
            cursor: cursor.map(Into::into),
            q: q.into(),
            body: body.clone(),
        });
    });
    Ok(body)
}

/// One product with its variants and live availability ([`ProductRoute`]).
#[utoipa::path(
    get,
    path = "/api/products/{slug}",
    tag = "catalog",
    params(("slug" = String, Path, description = "Product slug")),
    responses(
        (status = 200, description = "The product", body = ProductView),
        (status = 404, description = "No such product", body = ErrorBody),
    )
)]
pub async fn get_product(
    state: web::Data<AppState>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let Some(slug) = slug_of(req.match_info().unprocessed()) else {
        return Ok(super::not_found(req).await);
    };
    let catalog = state.catalog.snapshot();
    let body = cached_product(&catalog, &state.stock, slug)
        .ok_or_else(|| ApiError::NotFound(format!("no product with slug {slug:?}")))?;
    Ok(HttpResponse::Ok().content_type(JSON).body(body))
}

/// Where the product route begins; the slug is the one path segment after it.
const PRODUCTS_PREFIX: &str = "/api/products";

/// The product route's documented pattern: its name, and its metrics' `route` label.
const PRODUCT_ROUTE: &str = "/api/products/{slug}";

/// The slug in what follows [`PRODUCTS_PREFIX`]: one non-empty segment, as the router
/// captures `{slug}`, or `None` for a path the route does not serve.
fn slug_of(rest: &str) -> Option<&str> {
    let slug = rest.strip_prefix('/')?;
    (!slug.is_empty() && !slug.contains('/')).then_some(slug)
}

/// [`get_product`], matched by its literal prefix ([`PRODUCTS_PREFIX`]) rather than the
/// router's regex for `{slug}`.
///
/// It is the most requested route, and the regex with its captures and the method
/// guard cost a tenth of its answer (about 3,000 of 32,000 instructions). A path under
/// the prefix that is not one segment gets the answer of an unmatched path
/// ([`super::not_found`]), as it did from the router. The route is named after its
/// documented pattern, which the request metrics take as its `route` label
/// (`middleware::record`), and is described by `get_product`'s own `utoipa::path`.
pub struct ProductRoute;

impl HttpServiceFactory for ProductRoute {
    fn register(self, config: &mut AppService) {
        let mut rdef = ResourceDef::prefix(PRODUCTS_PREFIX);
        rdef.set_name(PRODUCT_ROUTE);
        // A plain comparison: `guard::Get` also records the method for a 405 it
        // would build, and `not_found` builds ours from the API description.
        let get = guard::fn_guard(|ctx| ctx.head().method == Method::GET);
        config.register_service(rdef, Some(vec![Box::new(get)]), web::to(get_product), None);
    }
}

impl OpenApiFactory for ProductRoute {
    fn paths(&self) -> Paths {
        __path_get_product.paths()
    }

    fn schemas(&self, schemas: &mut Vec<(String, RefOr<Schema>)>) {
        __path_get_product.schemas(schemas);
    }
}

/// One product's document, from its pre-encoded JSON and the live stock levels.
fn product_body(catalog: &Catalog, stock: &StockLevels, slug: &str) -> Option<Bytes> {
    let product = catalog.get(slug)?;
    let mut body = String::with_capacity(1024);
    product.write_json(&mut body, &stock.for_variants(&product.variants));
    Some(Bytes::from(body))
}

/// Product documents a worker thread built from one catalog snapshot and one count of
/// stock changes.
#[derive(Default)]
struct CachedProducts {
    from: Option<BuiltFrom>,
    bodies: HashMap<Box<str>, Bytes>,
}

impl CachedProducts {
    fn built_from(&self, catalog: &Arc<Catalog>, stock_changes: u64) -> bool {
        self.from
            .as_ref()
            .is_some_and(|f| f.is(catalog, stock_changes))
    }
}

/// Product documents a worker keeps; past this many it starts afresh.
const CACHED_PRODUCTS: usize = 1024;

thread_local! {
    static PRODUCTS: RefCell<CachedProducts> = RefCell::default();
}

/// [`product_body`], reused while the catalog snapshot and the stock levels are the
/// ones it was built from, as [`cached_list`] does for pages: a product is read far more
/// often than its stock changes. Only products of the snapshot are kept, at most
/// [`CACHED_PRODUCTS`] of them.
fn cached_product(catalog: &Arc<Catalog>, stock: &StockLevels, slug: &str) -> Option<Bytes> {
    let stock_changes = stock.changes();
    let hit = PRODUCTS.with_borrow_mut(|cache| {
        if !cache.built_from(catalog, stock_changes) {
            cache.from = Some(BuiltFrom::new(catalog, stock_changes));
            cache.bodies.clear();
        }
        cache.bodies.get(slug).cloned()
    });
    if hit.is_some() {
        return hit;
    }
    let body = product_body(catalog, stock, slug)?;
    PRODUCTS.with_borrow_mut(|cache| {
        // Kept only under the snapshot and count it was built from.
        if cache.built_from(catalog, stock_changes) {
            if cache.bodies.len() >= CACHED_PRODUCTS {
                cache.bodies.clear();
            }
            cache.bodies.insert(slug.into(), body.clone());
        }
    });
    Some(body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::{StockLevels, Variant};
    use surge_actors::ports::StockLevel;

    #[test]
    fn pre_encoded_json_is_the_product_view() {
        let mut attributes = BTreeMap::new();
        attributes.insert("size".to_owned(), "M \"tall\"".to_owned());
        attributes.insert("colour".to_owned(), "Grün / ✓".to_owned());
        let variants = vec![
            Variant {
                sku: "A-1".into(),
                attributes: attributes.clone(),
                price_minor: 1999,
                currency: "EUR".into(),
            },
            Variant {
                sku: "A-2".into(),
                attributes: BTreeMap::new(),
                price_minor: 2499,
                currency: "EUR".into(),
            },
        ];
        let product = Product::new(
            "a".into(),
            "Quote \" and \\ slash".into(),
            "line\nbreak <b>".into(),
            variants,
        );
        let stock = StockLevels::default();
        stock.merge([StockLevel {
            sku: "A-1".into(),
            available: 3,
            seq: 1,
        }]);
        let mut fast = String::new();
        product.write_json(&mut fast, &stock.for_variants(&product.variants));
        let fast: serde_json::Value = serde_json::from_str(&fast).expect("valid JSON");
        let slow = serde_json::to_value(ProductView::new(&product, &stock)).expect("serialises");
        assert_eq!(fast, slow);
        assert_eq!(fast["available"], 3);
    }

    /// Guards the product route's own matching against drifting from the router's
    /// `{slug}`: the same paths are served, with the same slug.
    #[test]
    fn slug_of_is_the_routers_slug() {
        let def = actix_web::dev::ResourceDef::new("/api/products/{slug}");
        let prefix = actix_web::dev::ResourceDef::prefix(PRODUCTS_PREFIX);
        for (path, slug) in [
            ("/api/products/tee", Some("tee")),
            ("/api/products/t%C3%BC-1", Some("t%C3%BC-1")),
            ("/api/products/tü", Some("tü")),
            ("/api/products/a/b", None),
            ("/api/products/a/", None),
            ("/api/products//", None),
            ("/api/products/", None),
            ("/api/products", None),
            ("/api/productsx", None),
        ] {
            let mut p = actix_web::dev::Path::new(path);
            let matched = def.capture_match_info(&mut p);
            assert_eq!(matched.then(|| p.get("slug")).flatten(), slug, "{path}");
            let mut p = actix_web::dev::Path::new(path);
            let ours = prefix
                .capture_match_info(&mut p)
                .then(|| slug_of(p.unprocessed()))
                .flatten();
            assert_eq!(ours, slug, "{path}");
        }
    }

    /// A cached product document is the one built afresh, until the stock or the
    /// catalog changes; then it is the new one.
    #[test]
    fn cached_product_is_the_fresh_product() {
        let catalog = Arc::new(Catalog::new(vec![
            crate::catalog::test_product("p1", "Shirt p1"),
            crate::catalog::test_product("p2", "Shirt p2"),
        ]));
        let stock = StockLevels::default();
        let level = |available, seq| StockLevel {
            sku: "p1-1".into(),
            available,
            seq,
        };
        stock.merge([level(5, 1)]);
        for _ in 0..2 {
            for slug in ["p1", "p2"] {
                assert_eq!(
                    cached_product(&catalog, &stock, slug),
                    product_body(&catalog, &stock, slug),
                    "{slug}"
                );
            }
        }
        assert_eq!(cached_product(&catalog, &stock, "nope"), None);
        let before = cached_product(&catalog, &stock, "p1").expect("a body");
        stock.merge([level(2, 2)]);
        let after = cached_product(&catalog, &stock, "p1").expect("a body");
        assert_ne!(after, before, "a stock change is never served stale");
        let v: serde_json::Value = serde_json::from_slice(&after).expect("JSON");
        assert_eq!(v["variants"][0]["available"], 2);
        let reloaded = Arc::new(Catalog::new(vec![crate::catalog::test_product(
            "p1", "Renamed",
        )]));
        let renamed = cached_product(&reloaded, &stock, "p1").expect("a body");
        let v: serde_json::Value = serde_json::from_slice(&renamed).expect("JSON");
        assert_eq!(v["name"], "Renamed", "a new snapshot is never served stale");
        assert_eq!(cached_product(&reloaded, &stock, "p2"), None);
    }

    /// A cached list page is the page built afresh, until the stock or the catalog
    /// changes; then it is the new one.
    #[test]
    fn cached_list_is_the_fresh_list() {
        let product = |slug: &str| crate::catalog::test_product(slug, &format!("Shirt {slug}"));
        let catalog = Arc::new(Catalog::new(
            (0..30).map(|i| product(&format!("p{i:02}"))).collect(),
        ));
        let stock = StockLevels::default();
        let level = |sku: &str, available, seq| StockLevel {
            sku: sku.into(),
            available,
            seq,
        };
        stock.merge([level("p00-1", 5, 1)]);
        let cases = [
            ("", None, 24),
            ("", Some("p23"), 24),
            ("shirt p1", None, 5),
            ("", None, 3),
        ];
        for _ in 0..2 {
            for (q, cursor, limit) in cases {
                let fresh = list_body(&catalog, &stock, q, cursor, limit).expect("page");
                let cached = cached_list(&catalog, &stock, q, cursor, limit).expect("page");
                assert_eq!(cached, fresh, "{q:?} {cursor:?} {limit}");
            }
        }
        let before = cached_list(&catalog, &stock, "", None, 24).expect("page");
        stock.merge([level("p00-1", 2, 1)]); // not newer: nothing changes
        assert_eq!(
            cached_list(&catalog, &stock, "", None, 24).expect("page"),
            before
        );
        stock.merge([level("p00-1", 2, 2)]);
        let after = cached_list(&catalog, &stock, "", None, 24).expect("page");
        assert_ne!(after, before);
        assert_eq!(
            after,
            list_body(&catalog, &stock, "", None, 24).expect("page")
        );
        let v: serde_json::Value = serde_json::from_slice(&after).expect("JSON");
        assert_eq!(v["items"][0]["available"], 2);
        let reloaded = Arc::new(Catalog::new(
            (0..3).map(|i| product(&format!("q{i}"))).collect(),
        ));
        let page = cached_list(&reloaded, &stock, "", None, 24).expect("page");
        assert_eq!(
            page,
            list_body(&reloaded, &stock, "", None, 24).expect("page")
        );
        assert!(cached_list(&catalog, &stock, "", Some("not a slug!"), 24).is_err());
    }

    #[test]
    fn limit_bounds() {
        assert_eq!(parse_limit(None).ok(), Some(DEFAULT_LIMIT));
        assert_eq!(parse_limit(Some("1")).ok(), Some(1));
        assert_eq!(parse_limit(Some("100")).ok(), Some(100));
        for bad in ["0", "101", "-1", "abc", "1.5", ""] {
            assert!(parse_limit(Some(bad)).is_err(), "{bad}");
        }
    }
}
