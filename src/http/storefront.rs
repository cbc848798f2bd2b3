//! Serves the storefront's pages and assets from memory, with ETags and cache headers.

use actix_web::{
    get,
    http::header::{self, HeaderValue},
    web, HttpRequest, HttpResponse,
};

use utoipa_actix_web::service_config::ServiceConfig;

use crate::{assets::Asset, error::ApiError, state::AppState};

/// The storefront's pages and assets; not part of the API description.
pub fn routes(cfg: &mut ServiceConfig) {
    cfg.map(|c| {
        c.service(product)
            .service(cart)
            .service(campaign)
            .service(campaign_monitor)
            .service(static_asset)
    });
}

/// The front page (`/`), registered apart from the other pages: its exact path is
/// cheap for the routes after it to rule out, and it is the page revalidated most.
pub fn front_page(cfg: &mut ServiceConfig) {
    cfg.map(|c| c.service(index));
}

const IMMUTABLE: &str = "public, max-age=31536000, immutable";
const REVALIDATE: &str = "no-cache";

fn serve(req: &HttpRequest, asset: &Asset) -> HttpResponse {
    let cache = if asset.immutable {
        IMMUTABLE
    } else {
        REVALIDATE
    };
    let not_modified = req
        .headers()
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|tags| {
            tags.split(',').any(|t| {
                t.trim().trim_start_matches("W/").as_bytes() == asset.etag.as_bytes()
                    || t.trim() == "*"
            })
        });
    let mut resp = if not_modified {
        HttpResponse::NotModified()
    } else {
        HttpResponse::Ok()
    };
    // Header values made once, not copied from text on every answer.
    resp.insert_header((header::CACHE_CONTROL, HeaderValue::from_static(cache)))
        .insert_header((header::ETAG, asset.etag.clone()))
        .insert_header((header::VARY, HeaderValue::from_static("Accept-Encoding")));
    if not_modified {
        resp.finish()
    } else {
        resp.content_type(asset.content_type)
            .body(asset.body.clone())
    }
}

fn page(req: &HttpRequest, state: &AppState, name: &str) -> Result<HttpResponse, ApiError> {
    state
        .assets
        .page(name)
        .map(|a| serve(req, a))
        .ok_or_else(|| ApiError::NotFound(format!("page {name} is missing")))
}

/// The product list.
#[get("/")]
pub async fn index(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    page(&req, &state, "index.html")
}

/// A product page; the script reads the slug from the URL.
#[get("/products/{slug}")]
pub async fn product(
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    page(&req, &state, "product.html")
}

/// The cart page.
#[get("/cart")]
pub async fn cart(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    page(&req, &state, "cart.html")
}

/// A campaign page: countdown, sale prices, waiting room and buy buttons; the script
/// reads the campaign id from the URL.
#[get("/campaigns/{id}")]
pub async fn campaign(
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    page(&req, &state, "campaign.html")
}

/// The merchant's live monitor of a campaign; the page asks for the admin token, so it
/// holds nothing secret itself.
#[get("/admin/campaigns/{id}/monitor")]
pub async fn campaign_monitor(
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    page(&req, &state, "monitor.html")
}

/// A static asset by hashed (immutable) or plain (revalidated) name.
#[get("/static/{path:.*}")]
pub async fn static_asset(
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    state
        .assets
        .get(req.path())
        .map(|a| serve(&req, a))
        .ok_or_else(|| ApiError::NotFound(format!("no asset at {}", req.path())))
}
