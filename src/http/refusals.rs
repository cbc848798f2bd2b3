//! The one place refused campaign writes are counted: a middleware around the cart and
//! checkout scopes (outside their write limits, so `rate_limited` counts too) that
//! reads the error an answer carries and counts it against the campaign it concerns.

use actix_web::{
    body::{BoxBody, MessageBody},
    dev::{ServiceRequest, ServiceResponse},
    http::Method,
    middleware::Next,
    web,
};

use crate::{error::ApiError, state::AppState};

/// Counts the refusal of a `PUT /api/cart/items/{sku}` or a checkout: against the
/// campaign the error names, else the one of the SKU (or lapsed lines) it names, else
/// (a PUT) the one of the path's SKU. Other answers pass untouched.
pub async fn count(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let counted = matches!(*req.method(), Method::PUT | Method::POST);
    let state = req.app_data::<web::Data<AppState>>().cloned();
    let path_sku = (*req.method() == Method::PUT)
        .then(|| {
            req.path()
                .strip_prefix("/api/cart/items/")
                .map(str::to_owned)
        })
        .flatten();
    let res = next.call(req).await?;
    if let (true, Some(state)) = (counted, state) {
        if let Some(err) = res
            .response()
            .error()
            .and_then(|e| e.as_error::<ApiError>())
        {
            record(&state, err, path_sku.as_deref());
        }
    }
    Ok(res.map_into_boxed_body())
}

fn record(state: &AppState, err: &ApiError, path_sku: Option<&str>) {
    let Some(code) = err.refusal_code() else {
        return;
    };
    let reports = &state.reports;
    match err {
        ApiError::LimitExceeded { campaign_id, .. } => {
            reports.refused(*campaign_id, code);
        }
        ApiError::PriceChanged { sku, .. } | ApiError::CampaignClosed { sku, .. } => {
            reports.refused_sku(sku, code);
        }
        // A checkout with lapsed lines: once per campaign among them.
        ApiError::ReservationExpired { lines } if path_sku.is_none() => {
            reports.refused_skus(lines, code);
        }
        _ => {
            if let Some(sku) = path_sku {
                reports.refused_sku(sku, code);
            }
        }
    }
}
