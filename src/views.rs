//! The JSON shapes shoppers see, shared by the HTTP answers and the socket messages, so
//! that a cart or an order looks the same whichever way it reaches the browser.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use surge_actors::cart_actor::CartView;
use utoipa::ToSchema;

use crate::catalog::Catalog;

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

/// A campaign as its `campaign` socket message announces it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CampaignView {
    /// Campaign id.
    pub id: uuid::Uuid,
    /// Display name.
    pub name: String,
    /// The featured product, if any.
    pub product_slug: Option<String>,
    /// Start, Unix milliseconds.
    pub starts_at_ms: i64,
    /// End, Unix milliseconds.
    pub ends_at_ms: i64,
}
