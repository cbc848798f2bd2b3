//! HTTP routes. Handlers are thin: they validate input, call the catalog, the store or
//! the actors, and shape the JSON answer.
//!
//! Each module registers its own routes with their scopes and middleware (`routes`),
//! and the API description is collected from those same calls, so a route cannot be
//! served undocumented or documented at a path it is not served at.

pub mod admin;
pub mod campaigns;
pub mod cart;
pub mod middleware;
pub mod ops;
pub mod products;
pub mod queue;
pub mod rate_limit;
pub mod refusals;
pub mod request_span;
pub mod storefront;

use std::sync::OnceLock;

use actix_web::{http::StatusCode, web, HttpRequest, HttpResponse};
use utoipa_actix_web::{service_config::ServiceConfig, AppExt as _};

use crate::{
    error::{error_response, json_error, path_error, query_error},
    openapi::ApiDocument,
};

/// Registers every route and the extractor limits.
pub fn routes(cfg: &mut web::ServiceConfig, body_limit: usize) {
    cfg.app_data(
        web::JsonConfig::default()
            .limit(body_limit)
            .error_handler(json_error),
    )
    .app_data(web::PayloadConfig::new(body_limit))
    .app_data(web::QueryConfig::default().error_handler(query_error))
    .app_data(web::PathConfig::default().error_handler(path_error))
    .app_data(api_document());
    register(&mut ServiceConfig::new(cfg));
}

/// Every module's routes, in matching order.
fn register(cfg: &mut ServiceConfig) {
    cfg.configure(ops::routes)
        .configure(products::routes)
        .configure(queue::routes)
        .configure(campaigns::routes)
        .configure(cart::routes)
        .configure(admin::routes)
        .map(|c| c.service(crate::ws::session::ws_route))
        .configure(storefront::routes);
}

/// The API description, collected once from the same registration the server uses.
pub fn api_document() -> web::Data<ApiDocument> {
    static DOCUMENT: OnceLock<web::Data<ApiDocument>> = OnceLock::new();
    DOCUMENT
        .get_or_init(|| {
            let (_, paths) = actix_web::App::new()
                .into_utoipa_app()
                .configure(register)
                .split_for_parts();
            web::Data::new(ApiDocument::new(paths))
        })
        .clone()
}

/// JSON 404 for every path no route matches.
pub async fn not_found(req: HttpRequest) -> HttpResponse {
    error_response(
        StatusCode::NOT_FOUND,
        "not_found",
        &format!("no route for {} {}", req.method(), req.path()),
    )
}
