//! The write limits of the cart and checkout scopes: every request that changes
//! something counts against its session and its client IP, and one over either limit
//! answers `429 rate_limited` with `Retry-After` before anything is done.

use actix_web::{
    body::{BoxBody, MessageBody},
    dev::{ServiceRequest, ServiceResponse},
    middleware::Next,
    web, HttpMessage as _,
};

use crate::{error::ApiError, session::Session, state::AppState};

/// Middleware of a scope inside [`crate::session::Sessions`]: reads (GET, HEAD) pass,
/// writes are counted.
pub async fn writes(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    if !req.method().is_safe() {
        if let Some(state) = req.app_data::<web::Data<AppState>>() {
            let limits = &state.rate_limits;
            let session = req.extensions().get::<Session>().map(|s| s.id.clone());
            let Some(session) = session else {
                return Err(
                    ApiError::Internal(anyhow::anyhow!("rate limit outside Sessions")).into(),
                );
            };
            let ip = limits.proxies().client_of(req.request());
            if let Err(refusal) = limits.write(session.as_str(), ip) {
                // The answer keeps its error, so the refusal count sees it.
                return Ok(req.error_response(ApiError::from(refusal)));
            }
        }
    }
    Ok(next.call(req).await?.map_into_boxed_body())
}
