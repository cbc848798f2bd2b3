//! HTTP routes. Handlers are thin: they validate input, call the catalog, the store or
//! the actors, and shape the JSON answer.
//!
//! Each module registers its own routes with their scopes and middleware (`routes`),
//! and the API description is collected from those same calls, so a route cannot be
//! served undocumented or documented at a path it is not served at.

pub mod admin;
pub mod campaigns;
pub mod cart;
pub mod compress;
pub mod contract;
pub mod middleware;
pub mod ops;
pub mod products;
pub mod queue;
pub mod rate_limit;
pub mod refusals;
pub mod request_span;
pub mod storefront;

use actix_web::{
    http::{header, StatusCode},
    web, HttpRequest, HttpResponse,
};
use utoipa_actix_web::{service_config::ServiceConfig, AppExt as _};

use crate::{
    config::CommerceConfig,
    error::{error_response, json_error, path_error, query_error},
    openapi::ApiDocument,
};

/// Registers every route and the extractor limits, with the API description built
/// for this node ([`api_document`]).
pub fn routes(cfg: &mut web::ServiceConfig, body_limit: usize, document: web::Data<ApiDocument>) {
    cfg.app_data(
        web::JsonConfig::default()
            .limit(body_limit)
            .error_handler(json_error),
    )
    .app_data(web::PayloadConfig::new(body_limit))
    .app_data(web::QueryConfig::default().error_handler(query_error))
    .app_data(web::PathConfig::default().error_handler(path_error))
    .app_data(document);
    register(&mut ServiceConfig::new(cfg));
}

/// Every module's routes, in matching order: the router tries them one by one. The
/// catalog comes first, as the most requested and the cheapest to answer, where each
/// route tried before it cost about a tenth of its answer; then the storefront's front
/// page, whose exact path costs the routes after it a string comparison. The cart's
/// scopes have static prefixes and come before the other routes with path parameters
/// (queue, campaigns), each of which costs a regex run to rule out; the catalog's
/// routes are matched by literal paths and prefixes, and rule a durable write out at
/// once.
fn register(cfg: &mut ServiceConfig) {
    cfg.configure(products::routes)
        .configure(storefront::front_page)
        .configure(ops::routes)
        .configure(cart::routes)
        .configure(queue::routes)
        .configure(campaigns::routes)
        .configure(admin::routes)
        .map(|c| c.service(crate::ws::session::ws_route))
        .configure(storefront::routes);
}

/// The API description, collected from the same registration the server uses, with
/// the limits this node enforces (`commerce`); built once per node.
pub fn api_document(commerce: &CommerceConfig) -> web::Data<ApiDocument> {
    let (_, paths) = actix_web::App::new()
        .into_utoipa_app()
        .configure(register)
        .split_for_parts();
    let constraints = contract::constraints(commerce.max_line_quantity);
    web::Data::new(ApiDocument::new(paths, &constraints))
}

/// Every path no route matches: `405` with `Allow` when the path is a documented one
/// and only the method is wrong (the methods come from the API description, so they
/// are the registered ones), a JSON `404` otherwise.
pub async fn not_found(req: HttpRequest) -> HttpResponse {
    let allowed = req
        .app_data::<web::Data<ApiDocument>>()
        .and_then(|doc| doc.allowed_methods(req.path()));
    match allowed {
        Some(allow) => {
            let mut resp = error_response(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                &format!(
                    "{} is not served at {}; use {allow}",
                    req.method(),
                    req.path()
                ),
            );
            if let Ok(value) = header::HeaderValue::from_str(&allow) {
                resp.headers_mut().insert(header::ALLOW, value);
            }
            resp
        }
        None => error_response(
            StatusCode::NOT_FOUND,
            "not_found",
            &format!("no route for {} {}", req.method(), req.path()),
        ),
    }
}

#[cfg(test)]
mod tests {
    use crate::config::{defaults, CommerceArgs};

    /// Guards against a constraint or link of the description silently dropped
    /// because the schema, parameter or operation it names was renamed.
    #[test]
    fn every_constraint_and_link_finds_its_place() {
        let doc = super::api_document(&defaults::<CommerceArgs>().validate());
        assert_eq!(doc.unapplied(), &[] as &[String]);
        assert_eq!(
            doc.allowed_methods("/api/cart/items/X-1").as_deref(),
            Some("PUT, DELETE")
        );
        assert_eq!(
            doc.allowed_methods("/api/cart").as_deref(),
            Some("GET, HEAD")
        );
        assert_eq!(
            doc.allowed_methods("/api/cart/items/"),
            None,
            "a parameter is never empty"
        );
        assert_eq!(doc.allowed_methods("/api/cart/nope"), None);
    }
}
