//! The OpenAPI description, generated from the handlers' annotations.

use utoipa::{
    openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme},
    Modify, OpenApi,
};

use crate::{error, http};

/// The API document served at `/openapi.json`.
#[derive(OpenApi)]
#[openapi(
    info(title = "Surge", description = "Real-time commerce server: catalog, carts, checkout and live stock."),
    paths(
        http::products::list_products,
        http::products::get_product,
        http::cart::get_cart,
        http::cart::put_item,
        http::cart::delete_item,
        http::cart::checkout,
        http::cart::get_order,
        http::admin::upsert_product,
        http::admin::restock,
        http::admin::set_order_status,
        http::admin::create_campaign,
        http::ops::healthz,
        http::ops::readyz,
        http::ops::metrics,
        http::ops::openapi,
    ),
    components(schemas(error::ErrorBody, error::ErrorDetail)),
    modifiers(&AdminToken),
    tags(
        (name = "catalog", description = "Products and live availability"),
        (name = "cart", description = "Cart, checkout and orders (signed session cookie)"),
        (name = "admin", description = "Catalog and stock management (bearer token)"),
        (name = "ops", description = "Health, readiness, metrics"),
    )
)]
pub struct ApiDoc;

struct AdminToken;

impl Modify for AdminToken {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "admin_token",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}
