//! Admin endpoints, behind `Authorization: Bearer $SURGE_ADMIN_TOKEN`.

use std::{
    collections::{BTreeMap, HashSet},
    future::{ready, Ready},
};

use actix_web::{
    dev::Payload, get, http::header, post, web, FromRequest, HttpRequest, HttpResponse,
};
use serde::{Deserialize, Serialize};
use surge_actors::{
    campaign::{Invalid, Window},
    cart_actor::now_ms,
    order::OrderStatus,
    validated::{Sku, SkuError, Slug, SlugError},
};
use utoipa::ToSchema;
use utoipa_actix_web::{scope, service_config::ServiceConfig};

use super::{contract, products::ProductView};
use crate::{
    commerce::{
        orders::{self as order_status, StatusError},
        restock::{restock as add_stock, RestockError},
    },
    error::{ApiError, ErrorBody},
    state::AppState,
    store::{
        campaigns::{self, CampaignError, NewCampaign, Selection},
        catalog_repo::{self, ProductInput, UpsertError, Upserted, VariantInput},
    },
    views::{campaign_view, CampaignReport, CampaignView},
};

/// The admin API; each handler checks the token itself (see [`Admin`]).
pub fn routes(cfg: &mut ServiceConfig) {
    cfg.service(
        scope("/api/admin")
            .service(upsert_product)
            .service(restock)
            .service(set_order_status)
            .service(create_campaign)
            .service(campaign_report),
    );
}

/// Proof that the request carries the admin token.
///
/// Without a configured token the admin API does not exist (404), so it is never open.
pub struct Admin;

impl FromRequest for Admin {
    type Error = ApiError;
    type Future = Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        ready(authorize(req))
    }
}

fn authorize(req: &HttpRequest) -> Result<Admin, ApiError> {
    let expected = req
        .app_data::<web::Data<AppState>>()
        .and_then(|s| s.admin_token.clone())
        .ok_or_else(|| ApiError::NotFound("no such endpoint".into()))?;
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or(ApiError::Unauthorized)?;
    if expected.matches(presented) {
        Ok(Admin)
    } else {
        Err(ApiError::Forbidden)
    }
}

/// A product to create or update.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProductUpsert {
    /// URL key: lowercase letters, digits and dashes.
    pub slug: String,
    /// Display name, 1 to 200 characters.
    pub name: String,
    /// Display description, up to 5,000 characters.
    #[serde(default)]
    pub description: String,
    /// 1 to 100 variants, all in one currency.
    pub variants: Vec<VariantUpsert>,
}

/// A variant to create or update.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VariantUpsert {
    /// Stock-keeping unit: letters, digits, `.`, `-`, `_`; unique in the store.
    pub sku: String,
    /// Up to 10 string attributes, such as size and colour.
    #[serde(default)]
    pub attributes: BTreeMap<String, String>,
    /// Price in minor units.
    #[serde(deserialize_with = "contract::int")]
    pub price_minor: i64,
    /// ISO 4217 code, e.g. EUR.
    pub currency: String,
    /// Initial stock of a new SKU; ignored for an existing one (use restock).
    #[serde(default, deserialize_with = "contract::int")]
    pub stock: i64,
}

/// Most variants of one product.
pub const MAX_VARIANTS: usize = 100;
/// Most attributes of one variant.
pub const MAX_ATTRIBUTES: usize = 10;
/// Longest attribute name, in characters.
pub const MAX_ATTRIBUTE_NAME_CHARS: usize = 32;
/// Longest attribute value, in characters.
pub const MAX_ATTRIBUTE_VALUE_CHARS: usize = 64;
/// Longest product description, in characters.
pub const MAX_DESCRIPTION_CHARS: usize = 5000;
/// Highest price, minor units.
pub const MAX_PRICE_MINOR: i64 = 1_000_000_000_000;
/// Most initial stock of a new SKU.
pub const MAX_STOCK: i64 = 1_000_000_000;
/// Most units one restock adds.
pub const MAX_RESTOCK: i64 = 1_000_000;

fn invalid(message: impl Into<String>) -> ApiError {
    ApiError::bad_request("invalid_product", message)
}

impl ProductUpsert {
    /// Checks every field, so that nothing invalid reaches the database.
    fn validate(self) -> Result<ProductInput, ApiError> {
        if Slug::parse(&self.slug).is_err() {
            return Err(invalid(
                "slug must be 1-128 lowercase letters, digits or dashes",
            ));
        }
        if !contract::is_name(&self.name) {
            return Err(invalid(
                "name must be 1-200 characters, not only spaces, without control characters",
            ));
        }
        let name = self.name.trim().to_owned();
        if self.description.chars().count() > MAX_DESCRIPTION_CHARS
            || !contract::is_text(&self.description)
        {
            return Err(invalid(format!(
                "description must be at most {MAX_DESCRIPTION_CHARS} characters, without NUL"
            )));
        }
        if self.variants.is_empty() || self.variants.len() > MAX_VARIANTS {
            return Err(invalid(format!(
                "a product needs 1-{MAX_VARIANTS} variants"
            )));
        }
        let mut seen = HashSet::new();
        let currency = self.variants[0].currency.clone();
        let mut variants = Vec::with_capacity(self.variants.len());
        for v in self.variants {
            if Sku::parse(&v.sku).is_err() {
                return Err(invalid(format!("sku {:?} is not valid", v.sku)));
            }
            if v.currency.len() != 3 || !v.currency.bytes().all(|b| b.is_ascii_uppercase()) {
                return Err(invalid("currency must be a 3-letter ISO code such as EUR"));
            }
            if !(0..=MAX_PRICE_MINOR).contains(&v.price_minor) {
                return Err(invalid(format!(
                    "price_minor must be an integer from 0 to {MAX_PRICE_MINOR}"
                )));
            }
            if !(0..=MAX_STOCK).contains(&v.stock) {
                return Err(invalid(format!("stock must be 0-{MAX_STOCK}")));
            }
            if v.attributes.len() > MAX_ATTRIBUTES
                || v.attributes.iter().any(|(k, val)| {
                    k.is_empty()
                        || k.chars().count() > MAX_ATTRIBUTE_NAME_CHARS
                        || val.chars().count() > MAX_ATTRIBUTE_VALUE_CHARS
                        || !contract::is_text(k)
                        || !contract::is_text(val)
                })
            {
                return Err(invalid(format!(
                    "at most {MAX_ATTRIBUTES} attributes, names 1-{MAX_ATTRIBUTE_NAME_CHARS} and values up to {MAX_ATTRIBUTE_VALUE_CHARS} characters, without NUL"
                )));
            }
            // Each field is valid: what is left is the product contradicting itself.
            if !seen.insert(v.sku.clone()) {
                return Err(ApiError::Unprocessable {
                    code: "invalid_product",
                    message: format!("sku {} appears twice", v.sku),
                });
            }
            if v.currency != currency {
                return Err(ApiError::Unprocessable {
                    code: "invalid_product",
                    message: "all variants of a product share one currency".into(),
                });
            }
            variants.push(VariantInput {
                sku: v.sku,
                attributes: v.attributes,
                price_minor: v.price_minor,
                currency: v.currency,
                stock: v.stock,
            });
        }
        Ok(ProductInput {
            slug: self.slug,
            name,
            description: self.description,
            variants,
        })
    }
}

/// Creates a product, or updates it when the slug exists.
#[utoipa::path(
    tag = "admin",
    request_body = ProductUpsert,
    security(("admin_token" = [])),
    responses(
        (status = 201, description = "Created", body = ProductView),
        (status = 200, description = "Updated", body = ProductView),
        (status = 400, description = "`invalid_product`: a field breaks its schema; bad JSON", body = ErrorBody),
        (status = 401, description = "No token", body = ErrorBody),
        (status = 403, description = "Wrong token", body = ErrorBody),
        (status = 404, description = "Admin API disabled", body = ErrorBody),
        (status = 409, description = "`sku_taken`: a SKU belongs to another product", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 422, description = "`invalid_product`: a SKU appears twice, or the variants' currencies differ", body = ErrorBody),
        (status = 503, description = "Database unavailable; nothing changed, see Retry-After", body = ErrorBody),
    )
)]
#[post("/products")]
pub async fn upsert_product(
    _admin: Admin,
    state: web::Data<AppState>,
    body: web::Json<ProductUpsert>,
) -> Result<HttpResponse, ApiError> {
    let input = body.into_inner().validate()?;
    let saved = catalog_repo::save_product(&state.db.primary, &input).await?;
    // Told first: the write is committed even if this node's own reload fails.
    state.live.catalog_changed(saved.version);
    state.reload_catalog(&state.db.primary).await?;
    tracing::info!(slug = %input.slug, outcome = ?saved.upserted, version = saved.version, "product upserted");
    let catalog = state.catalog.snapshot();
    let view = catalog
        .get(&input.slug)
        .map(|p| ProductView::new(p, &state.stock))
        .ok_or_else(|| anyhow::anyhow!("product {} missing after upsert", input.slug))?;
    Ok(match saved.upserted {
        Upserted::Created => HttpResponse::Created().json(view),
        Upserted::Updated => HttpResponse::Ok().json(view),
    })
}

/// Units to add to a SKU.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Restock {
    /// 1 to 1,000,000.
    #[serde(deserialize_with = "contract::int")]
    pub quantity: i64,
}

/// Stock of a SKU after a restock.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct StockView {
    /// The SKU.
    pub sku: String,
    /// Units ever stocked.
    pub total: i64,
    /// Units a shopper can buy now.
    pub available: i64,
}

/// Adds units to a SKU's total and available stock.
#[utoipa::path(
    tag = "admin",
    request_body = Restock,
    params(("sku" = String, Path, description = "The SKU")),
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "Restocked", body = StockView),
        (status = 400, description = "Bad quantity or JSON", body = ErrorBody),
        (status = 401, description = "No token", body = ErrorBody),
        (status = 403, description = "Wrong token", body = ErrorBody),
        (status = 404, description = "Unknown SKU, or admin API disabled", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 503, description = "Database unavailable; nothing changed, see Retry-After", body = ErrorBody),
    )
)]
#[post("/inventory/{sku}/restock")]
pub async fn restock(
    _admin: Admin,
    state: web::Data<AppState>,
    sku: web::Path<String>,
    body: web::Json<Restock>,
) -> Result<HttpResponse, ApiError> {
    if !(1..=MAX_RESTOCK).contains(&body.quantity) {
        return Err(ApiError::bad_request(
            "invalid_quantity",
            format!("quantity must be an integer from 1 to {MAX_RESTOCK}"),
        ));
    }
    let sku = Sku::parse(&sku).map_err(|_| RestockError::UnknownSku(sku.into_inner()))?;
    let restocked = add_stock(
        &state.db.primary,
        &state.live,
        &state.shards,
        &sku,
        body.quantity,
    )
    .await?;
    Ok(HttpResponse::Ok().json(StockView {
        sku: sku.into_string(),
        total: restocked.total,
        available: restocked.sellable,
    }))
}

/// A new order status.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StatusChange {
    /// `placed`, `paid`, `shipped`, `delivered` or `cancelled`.
    pub status: String,
}

/// Moves an order along its lifecycle (placed → paid → shipped → delivered, or
/// cancelled before it ships) and tells the shopper's sockets; a cancellation puts the
/// order's units back on sale in the same commit.
#[utoipa::path(
    tag = "admin",
    request_body = StatusChange,
    params(("id" = String, Path, description = "Order id")),
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "The order", body = crate::views::OrderBody),
        (status = 400, description = "Unknown status, or bad JSON", body = ErrorBody),
        (status = 401, description = "No token", body = ErrorBody),
        (status = 403, description = "Wrong token", body = ErrorBody),
        (status = 404, description = "No such order, or admin API disabled", body = ErrorBody),
        (status = 409, description = "`invalid_transition`: the order's lifecycle does not allow the move; `status` is its current status, unchanged", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 503, description = "Database unavailable; nothing changed, see Retry-After", body = ErrorBody),
    )
)]
#[post("/orders/{id}/status")]
pub async fn set_order_status(
    _admin: Admin,
    state: web::Data<AppState>,
    id: web::Path<String>,
    body: web::Json<StatusChange>,
) -> Result<HttpResponse, ApiError> {
    let status = OrderStatus::parse(&body.status)?;
    let not_found = || ApiError::NotFound("no such order".into());
    let id = uuid::Uuid::parse_str(&id).map_err(|_| not_found())?;
    let order = order_status::set_status(&state.db.primary, &state.live, &state.shards, id, status)
        .await
        .map_err(|e| match e {
            StatusError::NotFound => not_found(),
            StatusError::InvalidTransition { from, to } => ApiError::InvalidTransition { from, to },
            StatusError::Db(e) => e.into(),
        })?;
    Ok(HttpResponse::Ok().json(order))
}

/// A campaign to schedule: its SKUs sell only within `[starts_at_ms, ends_at_ms)`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CampaignBody {
    /// Display name, 1 to 200 characters.
    pub name: String,
    /// The SKUs it sells (or give `product_slug`).
    #[serde(default)]
    pub skus: Option<Vec<String>>,
    /// Sell every active variant of this product (instead of `skus`).
    #[serde(default)]
    pub product_slug: Option<String>,
    /// Start, Unix milliseconds (0 to 253402300799999).
    #[serde(deserialize_with = "contract::int")]
    pub starts_at_ms: i64,
    /// End, Unix milliseconds (after the start).
    #[serde(deserialize_with = "contract::int")]
    pub ends_at_ms: i64,
    /// Price within the window per SKU, minor units (positive).
    #[serde(default, deserialize_with = "contract::int_map")]
    pub sale_price_minor: BTreeMap<String, i64>,
    /// Units one customer may buy across the campaign's SKUs.
    #[serde(default, deserialize_with = "contract::int_opt")]
    pub per_customer_limit: Option<i64>,
    /// How long one hold of the campaign's SKUs lasts from the line's first
    /// reservation, seconds (positive); setting the line again never extends it.
    /// Default: the reservation TTL.
    #[serde(default, deserialize_with = "contract::int_opt")]
    pub hold_secs: Option<i64>,
    /// A waiting room admitting this many sessions per second.
    #[serde(default)]
    pub queue: Option<QueueBody>,
}

/// A campaign's waiting room.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = CampaignQueueBody)]
pub struct QueueBody {
    /// Sessions admitted per second (positive).
    #[serde(deserialize_with = "contract::int")]
    pub admit_per_second: i64,
}

/// Schedules a campaign. Its SKUs are refused before the start and after the end on
/// every node, and priced at their sale price within the window; every socket gets a
/// `campaign` message at the start.
#[utoipa::path(
    tag = "admin",
    request_body = CampaignBody,
    security(("admin_token" = [])),
    responses(
        (status = 201, description = "Scheduled", body = CampaignView),
        (status = 400, description = "`invalid_campaign`: a field breaks its schema (a timestamp out of range; a price, limit, hold or rate that is not positive or too large; an empty `skus`; a SKU or slug that breaks its pattern); bad JSON", body = ErrorBody),
        (status = 401, description = "No token", body = ErrorBody),
        (status = 403, description = "Wrong token", body = ErrorBody),
        (status = 404, description = "Unknown SKU or product, or admin API disabled", body = ErrorBody),
        (status = 409, description = "`campaign_overlap`: a SKU is in another campaign whose window overlaps", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 422, description = "`invalid_campaign`: the window ends before it starts (or when it starts); a sale price for a SKU not in the campaign; both or neither of `skus` and `product_slug`; a product without active variants", body = ErrorBody),
        (status = 503, description = "Database unavailable; nothing changed, see Retry-After", body = ErrorBody),
    )
)]
#[post("/campaigns")]
pub async fn create_campaign(
    _admin: Admin,
    state: web::Data<AppState>,
    body: web::Json<CampaignBody>,
) -> Result<HttpResponse, ApiError> {
    let invalid = |message: String| ApiError::bad_request("invalid_campaign", message);
    let contradicts = |message: String| ApiError::Unprocessable {
        code: "invalid_campaign",
        message,
    };
    if !contract::is_name(&body.name) {
        return Err(invalid(
            "name must be 1-200 characters, not only spaces, without control characters".into(),
        ));
    }
    let name = body.name.trim();
    if body.skus.as_ref().is_some_and(Vec::is_empty) {
        return Err(invalid("skus names at least one sku".into()));
    }
    // Checked before any lookup: a string no SKU or slug can be (a NUL byte, say) must
    // not reach PostgreSQL, which refuses it with an error rather than an empty match.
    let skus = body.skus.iter().flatten();
    if let Some(bad) = skus
        .chain(body.sale_price_minor.keys())
        .find(|s| Sku::parse(s).is_err())
    {
        return Err(invalid(format!("{bad:?} is not a sku: {}", SkuError)));
    }
    if let Some(bad) = body
        .product_slug
        .as_ref()
        .filter(|s| Slug::parse(s).is_err())
    {
        return Err(invalid(format!("{bad:?} is not a slug: {}", SlugError)));
    }
    let window = Window::new(body.starts_at_ms, body.ends_at_ms).map_err(ApiError::from_invalid)?;
    let selection = match (&body.skus, &body.product_slug) {
        (Some(_), Some(_)) => {
            return Err(contradicts("give skus or product_slug, not both".into()))
        }
        (Some(skus), None) => Selection::Skus(skus),
        (None, Some(slug)) => Selection::Product(slug),
        (None, None) => return Err(contradicts("give skus or product_slug".into())),
    };
    let (campaign, version) = campaigns::insert(
        &state.db.primary,
        &NewCampaign {
            name,
            selection,
            window,
            sale_price_minor: &body.sale_price_minor,
            per_customer_limit: body.per_customer_limit,
            hold_secs: body.hold_secs,
            admit_per_second: body.queue.as_ref().map(|q| q.admit_per_second),
        },
    )
    .await?;
    // Told first: the campaign is committed even if this node's own reload fails.
    state.live.catalog_changed(version);
    state.reload_catalog(&state.db.primary).await?;
    tracing::info!(id = %campaign.id, version, "campaign scheduled");
    let view = campaign_view(&state.catalog.snapshot(), &state.stock, &campaign, now_ms());
    Ok(HttpResponse::Created().json(view))
}

/// A campaign's numbers for its merchant: sales in its window, what is left, refusals
/// by code across every node, sockets, and its waiting room's statistics.
#[utoipa::path(
    tag = "admin",
    params(("id" = String, Path, description = "Campaign id")),
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "The report (see docs/PROTOCOL.md, Campaign reports)", body = CampaignReport),
        (status = 401, description = "No token", body = ErrorBody),
        (status = 403, description = "Wrong token", body = ErrorBody),
        (status = 404, description = "No such campaign, or admin API disabled", body = ErrorBody),
        (status = 503, description = "Database unavailable, see Retry-After", body = ErrorBody),
    )
)]
#[get("/campaigns/{id}/report")]
pub async fn campaign_report(
    _admin: Admin,
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let not_found = || ApiError::NotFound("no such campaign".into());
    let id = uuid::Uuid::parse_str(&id).map_err(|_| not_found())?;
    let campaign = state
        .catalog
        .snapshot()
        .campaigns()
        .get(id)
        .cloned()
        .ok_or_else(not_found)?;
    let report = state.reports.report(&campaign).await?;
    Ok(HttpResponse::Ok().json(report))
}

impl ApiError {
    /// A campaign's own rule broken: `400` for what its schema states (ranges, signs),
    /// `422` for what no schema can (one field against another, or against the store).
    fn from_invalid(e: Invalid) -> Self {
        let message = e.to_string();
        match e {
            Invalid::EmptyWindow | Invalid::SalePriceForOtherSku(_) | Invalid::NoSkus => {
                ApiError::Unprocessable {
                    code: "invalid_campaign",
                    message,
                }
            }
            Invalid::TimestampOutOfRange
            | Invalid::SalePrice(_)
            | Invalid::Limit
            | Invalid::Hold
            | Invalid::AdmitRate => ApiError::bad_request("invalid_campaign", message),
        }
    }
}

impl From<UpsertError> for ApiError {
    fn from(err: UpsertError) -> Self {
        match err {
            UpsertError::SkuTaken(sku) => ApiError::Conflict {
                code: "sku_taken",
                message: format!("sku {sku} belongs to another product"),
            },
            UpsertError::Db(e) => e.into(),
        }
    }
}

impl From<RestockError> for ApiError {
    fn from(err: RestockError) -> Self {
        match err {
            RestockError::UnknownSku(sku) => ApiError::NotFound(format!("no sku {sku:?}")),
            RestockError::Db(e) => e.into(),
            RestockError::Write(e) => e.into(),
        }
    }
}

impl From<CampaignError> for ApiError {
    fn from(err: CampaignError) -> Self {
        match err {
            CampaignError::UnknownProduct(slug) => {
                ApiError::NotFound(format!("no product {slug:?}"))
            }
            CampaignError::UnknownSku(sku) => ApiError::NotFound(format!("no sku {sku:?}")),
            CampaignError::Overlap { sku, other } => ApiError::Conflict {
                code: "campaign_overlap",
                message: format!("{sku} is in campaign {other} at an overlapping time"),
            },
            CampaignError::Invalid(e) => ApiError::from_invalid(e),
            CampaignError::Db(e) => e.into(),
        }
    }
}
