//! The JSON shapes shoppers see, shared by the HTTP answers and the socket messages, so
//! that a cart or an order looks the same whichever way it reaches the browser.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use surge_actors::cart_actor::CartView;
use utoipa::ToSchema;

use surge_actors::campaign::Campaign;

use crate::catalog::{Catalog, StockLevels};

pub use surge_actors::ports::{OrderLine as OrderLineBody, OrderSummary as OrderBody};

/// A cart line with its product, as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct CartLineBody {
    /// The SKU.
    pub sku: String,
    /// The product's slug.
    pub product_slug: String,
    /// The product's name.
    pub product_name: String,
    /// Size, colour and the like.
    pub attributes: BTreeMap<String, String>,
    /// Units reserved.
    pub quantity: i64,
    /// Price of one unit.
    pub unit_price_minor: i64,
    /// `quantity * unit_price_minor`.
    pub line_total_minor: i64,
    /// Currency.
    pub currency: String,
    /// When the reservation lapses, Unix milliseconds.
    pub expires_at_ms: i64,
}

/// The cart.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct CartBody {
    /// Lines by SKU.
    pub lines: Vec<CartLineBody>,
    /// Sum of the lines.
    pub total_minor: i64,
    /// Currency of the total; null when empty.
    pub currency: Option<String>,
    /// Rises with every committed change.
    pub version: i64,
}

/// The API shape of a cart: the actor's lines, each with its product from `catalog`
/// (a SKU retired since it was reserved keeps its line, with empty product fields).
pub fn cart_body(catalog: &Catalog, view: CartView) -> CartBody {
    CartBody {
        lines: view
            .lines
            .into_iter()
            .map(|l| {
                let (slug, name, attributes) = catalog
                    .variant(&l.sku)
                    .map(|(p, v)| (p.slug.clone(), p.name.clone(), v.attributes.clone()))
                    .unwrap_or_default();
                CartLineBody {
                    product_slug: slug,
                    product_name: name,
                    attributes,
                    quantity: l.quantity,
                    unit_price_minor: l.unit_price.minor,
                    line_total_minor: l.unit_price.minor.saturating_mul(l.quantity),
                    currency: l.unit_price.currency.to_string(),
                    expires_at_ms: l.expires_at_ms,
                    sku: l.sku,
                }
            })
            .collect(),
        total_minor: view.total_minor,
        currency: view.currency,
        version: view.version,
    }
}

/// A campaign as `GET /api/campaigns/{id}` answers it and its `campaign` socket
/// message announces it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct CampaignView {
    /// Campaign id.
    pub id: uuid::Uuid,
    /// Display name.
    pub name: String,
    /// The product the campaign was made for, if any.
    pub product_slug: Option<String>,
    /// `scheduled`, `live` or `ended` at `server_time_ms`.
    pub state: CampaignState,
    /// Start, Unix milliseconds (the first instant it sells).
    pub starts_at_ms: i64,
    /// End, Unix milliseconds (the first instant it no longer sells).
    pub ends_at_ms: i64,
    /// This node's clock when the answer was made, so a client corrects its countdown.
    pub server_time_ms: i64,
    /// Units one customer may buy across the campaign's SKUs, if limited.
    pub per_customer_limit: Option<i64>,
    /// Seconds one hold lasts from its first reservation, if the campaign sets it
    /// (otherwise the reservation TTL); setting a line again never extends it.
    pub hold_secs: Option<i64>,
    /// The SKUs it sells.
    pub skus: Vec<CampaignSkuView>,
    /// The waiting room, if the campaign has one.
    pub queue: Option<CampaignQueueView>,
}

/// A campaign's state at a time.
pub use surge_actors::campaign::State as CampaignState;

/// One SKU of a campaign.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct CampaignSkuView {
    /// The SKU.
    pub sku: String,
    /// Its product's name, so a campaign of loose SKUs still reads as goods.
    pub name: String,
    /// ISO 4217 code of both prices.
    pub currency: String,
    /// The variant's own price, minor units.
    pub price_minor: i64,
    /// The price within the window, if the campaign sets one.
    pub sale_price_minor: Option<i64>,
    /// Sellable units now.
    pub available: i64,
}

/// A campaign's waiting room.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct CampaignQueueView {
    /// Sessions admitted per second.
    pub admit_per_second: i64,
    /// Joiners still waiting; shown by `GET /api/campaigns/{id}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting: Option<i64>,
    /// Joiners admitted so far (lapsed ones included); shown by `GET /api/campaigns/{id}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admitted: Option<i64>,
}

/// The view of `campaign` at `now_ms`, its SKUs priced from `catalog` with `stock`.
pub fn campaign_view(
    catalog: &Catalog,
    stock: &StockLevels,
    campaign: &Campaign,
    now_ms: i64,
) -> CampaignView {
    CampaignView {
        id: campaign.id,
        name: campaign.name.clone(),
        product_slug: campaign.product_slug.clone(),
        state: campaign.state_at(now_ms),
        starts_at_ms: campaign.window.starts_at_ms,
        ends_at_ms: campaign.window.ends_at_ms,
        server_time_ms: now_ms,
        per_customer_limit: campaign.per_customer_limit,
        hold_secs: campaign.hold_secs,
        skus: campaign
            .skus
            .iter()
            .map(|(sku, sale_price_minor)| {
                let variant = catalog.variant(sku);
                CampaignSkuView {
                    sku: sku.clone(),
                    name: variant.map_or_else(|| sku.clone(), |(p, _)| p.name.clone()),
                    currency: variant.map(|(_, v)| v.currency.clone()).unwrap_or_default(),
                    price_minor: variant.map_or(0, |(_, v)| v.price_minor),
                    sale_price_minor: *sale_price_minor,
                    available: stock.get(sku),
                }
            })
            .collect(),
        queue: campaign
            .admit_per_second
            .map(|admit_per_second| CampaignQueueView {
                admit_per_second,
                waiting: None,
                admitted: None,
            }),
    }
}

/// A campaign's numbers for its merchant: `GET /api/admin/campaigns/{id}/report` and
/// the `campaign_report` socket message carry the same body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct CampaignReport {
    /// Campaign id.
    pub campaign_id: uuid::Uuid,
    /// Display name.
    pub name: String,
    /// `scheduled`, `live` or `ended` at `server_time_ms`.
    pub state: CampaignState,
    /// Start, Unix milliseconds.
    pub starts_at_ms: i64,
    /// End, Unix milliseconds.
    pub ends_at_ms: i64,
    /// The answering node's clock.
    pub server_time_ms: i64,
    /// Units of the campaign's SKUs in orders created within its window (cancelled
    /// orders aside).
    pub units_sold: i64,
    /// Units a shopper can buy now, as `GET /api/campaigns/{id}` counts them.
    pub units_left: i64,
    /// Orders with at least one of those lines.
    pub orders: i64,
    /// Value of those lines, minor units of `currency`.
    pub revenue_minor: i64,
    /// The currency of the campaign's SKUs.
    pub currency: String,
    /// With nothing left, when the last campaign order line was created, Unix
    /// milliseconds; `null` while units are left.
    pub sold_out_at_ms: Option<i64>,
    /// Refused shopper writes of the campaign's SKUs by error code, summed over every
    /// node (each node adds its counts about once a second).
    pub refusals: BTreeMap<String, i64>,
    /// Open sockets of every live node, as of each node's last heartbeat; never fewer
    /// than the answering node's own current count.
    pub sockets: i64,
    /// The waiting room's numbers, if the campaign has one.
    pub queue: Option<QueueReport>,
}

/// A waiting room's numbers in a [`CampaignReport`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct QueueReport {
    /// Sessions that joined.
    pub joined: i64,
    /// Joiners whose turn has come (lapsed ones included).
    pub admitted: i64,
    /// Joiners still waiting.
    pub waiting: i64,
    /// Admitted joiners whose turn lapsed with no order of the campaign's SKUs.
    pub abandoned: i64,
    /// Median wait from joining to admission, milliseconds; `null` before anyone is in.
    pub wait_p50_ms: Option<i64>,
    /// 99th percentile of that wait, milliseconds.
    pub wait_p99_ms: Option<i64>,
}
