//! The OpenAPI description. Its paths are collected from the routes as they are
//! registered (see `http::routes`); this adds the title, the tags, the shared schemas
//! and the admin token scheme.

use actix_web::web::Bytes;
use utoipa::{
    openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme},
    Modify, OpenApi,
};

use crate::error;

/// What every document starts from.
#[derive(OpenApi)]
#[openapi(
    info(title = "Surge", description = "Real-time commerce server: catalog, carts, checkout and live stock."),
    components(schemas(error::ErrorBody, error::ErrorDetail)),
    modifiers(&AdminToken),
    tags(
        (name = "catalog", description = "Products and live availability"),
        (name = "cart", description = "Cart, checkout, orders and campaign queues (signed session cookie)"),
        (name = "admin", description = "Catalog and stock management (bearer token)"),
        (name = "ops", description = "Health, readiness, metrics"),
    )
)]
struct Base;

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

/// The document served at `/openapi.json`, encoded once.
pub struct ApiDocument {
    doc: utoipa::openapi::OpenApi,
    json: Bytes,
}

impl ApiDocument {
    /// The base document with the paths and schemas collected from the routes.
    pub fn new(collected: utoipa::openapi::OpenApi) -> Self {
        let mut doc = Base::openapi();
        doc.merge(collected);
        // A document of strings, numbers and maps always encodes.
        let json = serde_json::to_vec(&doc).unwrap_or_else(|_| b"{}".to_vec());
        Self {
            doc,
            json: json.into(),
        }
    }

    /// The document.
    pub fn doc(&self) -> &utoipa::openapi::OpenApi {
        &self.doc
    }

    /// The document as JSON (a cheap, shared copy).
    pub fn json(&self) -> Bytes {
        self.json.clone()
    }
}
