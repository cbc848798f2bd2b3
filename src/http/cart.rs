//! Cart, checkout and order endpoints. Each request that changes a cart goes to the
//! session's `CartActor`, which answers only after its change is committed in
//! PostgreSQL. A session costs nothing until it writes: a request that a cart with
//! nothing in it answers by itself (a read, removing a line that is not there, a
//! checkout of nothing) is answered from a plain value when the session has no live
//! actor, without starting one or writing a row. Every route here belongs to a
//! shopper's session.

use actix::{Addr, MailboxError};
use actix_web::{delete, get, middleware::from_fn, post, put, web, HttpRequest, HttpResponse};
use serde::Deserialize;
use surge_actors::{
    cart::{Cart, CartError},
    cart_actor::{
        now_ms, CartActor, CartFailure, CartView, Checkout, GetCart, SetQuantity, Unreachable,
    },
    money::{Currency, Money},
    ports::Rejection,
    shard::TakeError,
    validated::Sku,
};
use utoipa::ToSchema;
use utoipa_actix_web::{scope, service_config::ServiceConfig};

use super::{queue, rate_limit, refusals};
use crate::{
    error::{ApiError, ErrorBody},
    session::{Session, Sessions},
    state::AppState,
    store::{carts, orders},
    views::{cart_body, CartBody, OrderBody},
};

/// The cart, checkout and orders, each scope behind [`Sessions`]; cart and checkout
/// writes within the rate limits.
pub fn routes(cfg: &mut ServiceConfig) {
    cfg.service(
        scope("/api/cart")
            .wrap(from_fn(rate_limit::writes))
            .wrap(from_fn(refusals::count))
            .wrap(Sessions::api())
            .service(get_cart)
            .service(put_item)
            .service(delete_item),
    )
    .service(
        scope("/api/checkout")
            .wrap(from_fn(rate_limit::writes))
            .wrap(from_fn(refusals::count))
            .wrap(Sessions::api())
            .service(checkout),
    )
    .service(
        scope("/api/orders")
            .wrap(Sessions::api())
            .service(get_order),
    );
}

/// Retry-After of `stock_recovering`: the reaper takes a stopped node's leases within a
/// lease TTL plus a reaper period of its last heartbeat, and most of that has passed by
/// the time its heartbeat counts as lapsed.
const RECOVERING_RETRY_SECS: u64 = 2;

fn failure(f: CartFailure) -> ApiError {
    match f {
        CartFailure::Invalid(CartError::QuantityOutOfRange { max }) => ApiError::bad_request(
            "invalid_quantity",
            format!("quantity must be an integer from 1 to {max}"),
        ),
        CartFailure::Invalid(CartError::TooManyLines { max }) => ApiError::Conflict {
            code: "cart_full",
            message: format!("a cart holds at most {max} lines"),
        },
        CartFailure::Invalid(CartError::Empty) => ApiError::Conflict {
            code: "cart_empty",
            message: "the cart is empty".into(),
        },
        CartFailure::Invalid(CartError::Expired(lines)) => ApiError::ReservationExpired { lines },
        CartFailure::Invalid(CartError::Money(e)) => ApiError::Conflict {
            code: "invalid_total",
            message: e.to_string(),
        },
        CartFailure::InsufficientStock { available } => ApiError::InsufficientStock { available },
        CartFailure::Refused(Rejection::PriceChanged {
            sku,
            price_minor,
            currency,
        }) => ApiError::PriceChanged {
            sku,
            price_minor,
            currency: currency.to_string(),
        },
        CartFailure::Refused(Rejection::NotForSale { sku }) => {
            ApiError::NotFound(format!("{sku} is no longer sold"))
        }
        CartFailure::Refused(Rejection::CampaignClosed { sku, closed }) => {
            ApiError::CampaignClosed { sku, closed }
        }
        CartFailure::Refused(Rejection::LimitExceeded {
            campaign_id,
            remaining,
        }) => ApiError::LimitExceeded {
            campaign_id,
            remaining,
        },
        CartFailure::Busy => ApiError::Busy {
            retry_after_secs: 1,
        },
        CartFailure::Unavailable(Unreachable::Stock(TakeError::Recovering)) => {
            ApiError::StockRecovering {
                retry_after_secs: RECOVERING_RETRY_SECS,
            }
        }
        CartFailure::Unavailable(Unreachable::Stock(TakeError::Contended)) => {
            ApiError::StockContended
        }
        CartFailure::Stale | CartFailure::Unavailable(_) | CartFailure::Refused(_) => {
            tracing::warn!(error = %f, "cart operation not committed");
            ApiError::Unavailable
        }
    }
}

/// A write refused at a price this node's catalog does not show means the catalog is
/// behind: it reloads before the answer goes out, so the shopper's retry meets the new
/// price here.
async fn catch_up_on_refusal(state: &AppState, f: &CartFailure) {
    match f {
        CartFailure::Refused(Rejection::PriceChanged {
            sku,
            price_minor,
            currency,
        }) => {
            state
                .live
                .price_refused(sku, Some((*price_minor, *currency)))
                .await;
        }
        CartFailure::Refused(Rejection::NotForSale { sku }) => {
            state.live.price_refused(sku, None).await
        }
        _ => {}
    }
}

/// Sends to the session's cart actor; retries once on a fresh actor when the cart
/// changed elsewhere or the actor had just stopped.
async fn ask<M, R>(state: &AppState, session: &Session, make: impl Fn() -> M) -> Result<R, ApiError>
where
    M: actix::Message<Result = Result<R, CartFailure>> + Send + 'static,
    R: Send + 'static,
    CartActor: actix::Handler<M>,
{
    for attempt in 0..2 {
        // A retry must load from PostgreSQL: the first attempt may have found that
        // another node already made this session's cart.
        let addr: Addr<CartActor> = state
            .carts
            .get(session.id.as_str(), session.fresh && attempt == 0);
        match addr.send(make()).await {
            Ok(Ok(r)) => return Ok(r),
            Ok(Err(CartFailure::Stale)) | Err(MailboxError::Closed) if attempt == 0 => continue,
            Ok(Err(f)) => {
                catch_up_on_refusal(state, &f).await;
                return Err(failure(f));
            }
            Err(e) => {
                tracing::warn!(error = %e, "cart actor unavailable");
                return Err(ApiError::Unavailable);
            }
        }
    }
    Err(ApiError::Unavailable)
}

/// Where a session's cart is held now.
enum Held {
    /// An actor of this node has it: ask the actor.
    Live,
    /// No actor has it here: this is the cart as PostgreSQL holds it (empty when the
    /// session has no cart row, which a fresh session never has).
    AtRest(Cart),
}

async fn held(state: &AppState, session: &Session) -> Result<Held, ApiError> {
    if state.carts.live(session.id.as_str()).is_some() {
        return Ok(Held::Live);
    }
    let none = || Cart::new(uuid::Uuid::nil(), 0);
    if session.fresh {
        return Ok(Held::AtRest(none()));
    }
    let cart = carts::peek(&state.db.primary, session.id.as_str()).await?;
    Ok(Held::AtRest(cart.unwrap_or_else(none)))
}

fn cart_answer(state: &AppState, view: CartView) -> HttpResponse {
    HttpResponse::Ok().json(cart_body(&state.catalog.snapshot(), view))
}

/// The caller's cart.
#[utoipa::path(
    tag = "cart",
    responses(
        (status = 200, description = "The cart", body = CartBody),
        (status = 400, description = "`invalid_session`: the session cookie is not valid (it is cleared)", body = ErrorBody),
        (status = 429, description = "`rate_limited`: a new session over the client IP's limit; `busy`: shedding load; see Retry-After", body = ErrorBody),
        (status = 503, description = "The cart could not be loaded; see Retry-After", body = ErrorBody),
    )
)]
#[get("")]
pub async fn get_cart(
    state: web::Data<AppState>,
    session: Session,
) -> Result<HttpResponse, ApiError> {
    // An empty cart needs no actor; one with lines gets its actor, which claims the
    // cart for this node and expires its reservations on time.
    if let Held::AtRest(cart) = held(&state, &session).await? {
        if cart.lines.is_empty() {
            return Ok(cart_answer(&state, CartView::of(&cart)));
        }
    }
    let view = ask(&state, &session, || GetCart).await?;
    Ok(cart_answer(&state, view))
}

/// New quantity of a cart line.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct QuantityBody {
    /// 1 to the configured maximum (default 10).
    #[serde(deserialize_with = "super::contract::int")]
    pub quantity: i64,
}

/// The SKU of a path and its regular price; 404 for anything the catalog does not sell.
fn sold_sku(state: &AppState, raw: &str) -> Result<(Sku, Money), ApiError> {
    let not_found = || ApiError::NotFound(format!("no sku {raw:?}"));
    let sku = Sku::parse(raw).map_err(|_| not_found())?;
    let catalog = state.catalog.snapshot();
    let (_, variant) = catalog.variant(sku.as_str()).ok_or_else(not_found)?;
    let currency = Currency::parse(&variant.currency).map_err(|e| ApiError::Internal(e.into()))?;
    Ok((sku, Money::new(variant.price_minor, currency)))
}

/// The SKU of a path and its price now: within its campaign's window the sale price,
/// before or after it `409` (the Journal checks the same again at the commit's time).
fn priced_sku(state: &AppState, raw: &str) -> Result<(Sku, Money), ApiError> {
    let (sku, regular) = sold_sku(state, raw)?;
    let minor = state
        .catalog
        .snapshot()
        .campaigns()
        .price_at(sku.as_str(), regular.minor, now_ms())
        .map_err(|closed| ApiError::CampaignClosed {
            sku: sku.to_string(),
            closed,
        })?;
    Ok((sku, Money::new(minor, regular.currency)))
}

/// Sets a line's quantity, reserving or releasing the difference.
#[utoipa::path(
    tag = "cart",
    request_body = QuantityBody,
    params(("sku" = String, Path, description = "The SKU")),
    responses(
        (status = 200, description = "The cart after the change (committed)", body = CartBody),
        (status = 400, description = "Bad quantity, JSON or session", body = ErrorBody),
        (status = 404, description = "Unknown SKU", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 409, description = "insufficient_stock, with `available`: PostgreSQL and every node's lease together; price_changed, with the committed `price_minor` and `currency` of `sku`; campaign_not_started, with `starts_at_ms`, and campaign_ended: the SKU's campaign is not open, nothing reserved; limit_exceeded, with `remaining` and `campaign_id`: the cart would hold more of the campaign's SKUs than its per-customer limit. A campaign line's hold runs from its first reservation and is not extended by setting it again; queue_lapsed: the session's turn in the campaign's queue passed unused", body = ErrorBody),
        (status = 429, description = "`busy`: shedding load; `rate_limited`: over the session's or client IP's write limit, or a new session over the IP's; `queued`: waiting in the campaign's queue, with `position`, `waiting` and `retry_after_ms`; see Retry-After", body = ErrorBody),
        (status = 503, description = "Nothing committed; retry after `Retry-After` (`unavailable`, `stock_recovering`: a stopped node holds the units, `stock_contended`: live nodes hold them)", body = ErrorBody),
    )
)]
#[put("/items/{sku}")]
pub async fn put_item(
    state: web::Data<AppState>,
    session: Session,
    sku: web::Path<String>,
    body: web::Json<QuantityBody>,
) -> Result<HttpResponse, ApiError> {
    // The first PUT joins the SKU's queue even when the campaign has not started.
    let admission = queue::gate(&state, &session, &sku).await;
    let (sku, price) = priced_sku(&state, &sku)?;
    admission?;
    let max = state.limits.max_line_quantity;
    if !(1..=max).contains(&body.quantity) {
        return Err(ApiError::bad_request(
            "invalid_quantity",
            format!("quantity must be an integer from 1 to {max}"),
        ));
    }
    let campaign = state.catalog.snapshot().campaigns().line_rule(
        sku.as_str(),
        now_ms(),
        state.limits.reservation_ttl_ms,
    );
    let view = ask(&state, &session, || SetQuantity {
        sku: sku.to_string(),
        quantity: body.quantity,
        unit_price: price,
        campaign: campaign.clone(),
    })
    .await?;
    Ok(HttpResponse::Ok().json(cart_body(&state.catalog.snapshot(), view)))
}

/// Removes a line and releases its stock.
#[utoipa::path(
    tag = "cart",
    params(("sku" = String, Path, description = "The SKU")),
    responses(
        (status = 200, description = "The cart after the change", body = CartBody),
        (status = 400, description = "`invalid_session`: the session cookie is not valid (it is cleared)", body = ErrorBody),
        (status = 404, description = "Unknown SKU", body = ErrorBody),
        (status = 429, description = "`rate_limited`: over the session's or client IP's write limit; `busy`: shedding load; see Retry-After", body = ErrorBody),
        (status = 503, description = "Nothing committed; see Retry-After", body = ErrorBody),
    )
)]
#[delete("/items/{sku}")]
pub async fn delete_item(
    state: web::Data<AppState>,
    session: Session,
    sku: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    // A release is never priced nor gated: a shopper can always let go of a line.
    let (sku, price) = sold_sku(&state, &sku)?;
    // A line that is not there is already removed: nothing to write, no actor to start.
    if let Held::AtRest(cart) = held(&state, &session).await? {
        if cart.quantity_of(sku.as_str()) == 0 {
            return Ok(cart_answer(&state, CartView::of(&cart)));
        }
    }
    let view = ask(&state, &session, || SetQuantity {
        sku: sku.to_string(),
        quantity: 0,
        unit_price: price,
        campaign: None,
    })
    .await?;
    Ok(cart_answer(&state, view))
}

/// Checkout request.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CheckoutBody {
    /// Where the confirmation goes: visible ASCII, `name@domain.tld`; spaces around it are dropped.
    pub email: String,
}

fn idempotency_key(req: &HttpRequest) -> Result<String, ApiError> {
    let key = req
        .headers()
        .get("idempotency-key")
        .ok_or_else(|| {
            ApiError::bad_request(
                "missing_idempotency_key",
                "the Idempotency-Key header is required",
            )
        })?
        .to_str()
        .ok()
        .map(str::trim)
        .filter(|k| (1..=255).contains(&k.len()) && k.bytes().all(|b| b.is_ascii_graphic()))
        .ok_or_else(|| {
            ApiError::bad_request(
                "invalid_idempotency_key",
                "Idempotency-Key must be 1-255 visible ASCII characters",
            )
        })?;
    Ok(key.to_owned())
}

/// Turns the cart's reservations into an order, atomically and once per key.
#[utoipa::path(
    tag = "cart",
    request_body = CheckoutBody,
    params(("Idempotency-Key" = String, Header, description = "Client-chosen key, 1-255 visible ASCII characters; a repeat returns the same order")),
    responses(
        (status = 201, description = "The order (committed); a replay carries `Idempotent-Replayed: true`", body = OrderBody),
        (status = 400, description = "Missing key, bad email, bad JSON or session", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 409, description = "reservation_expired (with `lines`), cart_empty, limit_exceeded (with `remaining` and `campaign_id`: the customer, by normalized email, would pass the campaign's per-customer limit counting every earlier order; the reservation stays), or price_changed (with the committed `price_minor` and `currency` of `sku`: set the line again at that price)", body = ErrorBody),
        (status = 429, description = "`busy`: shedding load; `rate_limited`: over the session's or client IP's write limit, or a new session over the IP's; see Retry-After", body = ErrorBody),
        (status = 503, description = "Nothing committed; retry with the same key", body = ErrorBody),
    )
)]
#[post("")]
pub async fn checkout(
    req: HttpRequest,
    state: web::Data<AppState>,
    session: Session,
    body: web::Json<CheckoutBody>,
) -> Result<HttpResponse, ApiError> {
    let key = idempotency_key(&req)?;
    let email = super::contract::checkout_email(&body.email)?;
    // Nothing to order: a repeat of a key already used replays its order (a fresh
    // session has used none), anything else is refused, and no actor starts for it.
    if let Held::AtRest(cart) = held(&state, &session).await? {
        if cart.lines.is_empty() {
            let earlier = if session.fresh {
                None
            } else {
                carts::order_for_session_key(&state.db.primary, session.id.as_str(), &key).await?
            };
            return match earlier {
                Some(order) => Ok(HttpResponse::Created()
                    .insert_header(("Idempotent-Replayed", "true"))
                    .json(order)),
                None => Err(failure(CartFailure::Invalid(CartError::Empty))),
            };
        }
    }
    let (order, replayed) = ask(&state, &session, || Checkout {
        key: key.clone(),
        email: email.to_string(),
        customer: email.customer(),
    })
    .await?;
    let mut resp = HttpResponse::Created();
    if replayed {
        resp.insert_header(("Idempotent-Replayed", "true"));
    }
    Ok(resp.json(order))
}

/// An order; 404 for every session but the one that placed it.
#[utoipa::path(
    tag = "cart",
    params(("id" = String, Path, description = "Order id")),
    responses(
        (status = 200, description = "The order", body = OrderBody),
        (status = 400, description = "`invalid_session`: the session cookie is not valid (it is cleared)", body = ErrorBody),
        (status = 404, description = "No such order for this session", body = ErrorBody),
        (status = 429, description = "`rate_limited`: a new session over the client IP's limit; see Retry-After", body = ErrorBody),
        (status = 503, description = "Database unavailable; see Retry-After", body = ErrorBody),
    )
)]
#[get("/{id}")]
pub async fn get_order(
    state: web::Data<AppState>,
    session: Session,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let not_found = || ApiError::NotFound("no such order".into());
    let id = uuid::Uuid::parse_str(&id).map_err(|_| not_found())?;
    let order = orders::find_for_session(&state.db.primary, id, session.id.as_str())
        .await?
        .ok_or_else(not_found)?;
    Ok(HttpResponse::Ok().json(order))
}
