//! HTTP routes. Handlers are thin: they validate input, call the catalog, the store or
//! the actors, and shape the JSON answer.

pub mod admin;
pub mod cart;
pub mod middleware;
pub mod ops;
pub mod products;
pub mod request_span;
pub mod storefront;

use actix_web::{http::StatusCode, web, HttpRequest, HttpResponse};

use crate::error::{error_response, json_error, path_error, query_error};

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
    .service(ops::healthz)
    .service(ops::readyz)
    .service(ops::metrics)
    .service(ops::openapi)
    .service(products::list_products)
    .service(products::get_product)
    .service(cart::get_cart)
    .service(cart::put_item)
    .service(cart::delete_item)
    .service(cart::checkout)
    .service(cart::get_order)
    .service(admin::upsert_product)
    .service(admin::restock)
    .service(admin::set_order_status)
    .service(admin::create_campaign)
    .service(crate::ws::session::ws_route)
    .service(storefront::index)
    .service(storefront::product)
    .service(storefront::cart)
    .service(storefront::static_asset);
}

/// JSON 404 for every path no route matches.
pub async fn not_found(req: HttpRequest) -> HttpResponse {
    error_response(
        StatusCode::NOT_FOUND,
        "not_found",
        &format!("no route for {} {}", req.method(), req.path()),
    )
}
