//! Campaign endpoints for shoppers, served from the node's catalog snapshot.

use actix_web::{get, web, HttpResponse};
use surge_actors::cart_actor::now_ms;
use utoipa_actix_web::service_config::ServiceConfig;

use crate::{
    error::{ApiError, ErrorBody},
    state::AppState,
    views::{campaign_view, CampaignView},
};

/// Campaigns, open to anyone.
pub fn routes(cfg: &mut ServiceConfig) {
    cfg.service(get_campaign);
}

/// A campaign: its state and SKUs now, and the node's clock so a client corrects its
/// countdown.
#[utoipa::path(
    tag = "catalog",
    params(("id" = String, Path, description = "Campaign id")),
    responses(
        (status = 200, description = "The campaign", body = CampaignView),
        (status = 404, description = "No such campaign", body = ErrorBody),
        (status = 503, description = "The queue's numbers are unavailable; see Retry-After", body = ErrorBody),
    )
)]
#[get("/api/campaigns/{id}")]
pub async fn get_campaign(
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let not_found = || ApiError::NotFound("no such campaign".into());
    let id = uuid::Uuid::parse_str(&id).map_err(|_| not_found())?;
    let catalog = state.catalog.snapshot();
    let campaign = catalog.campaigns().get(id).ok_or_else(not_found)?;
    let mut view = campaign_view(&catalog, &state.stock, campaign, now_ms());
    if let (Some(queue), Some((waiting, admitted))) =
        (view.queue.as_mut(), state.queue.counts(campaign).await?)
    {
        queue.waiting = Some(waiting);
        queue.admitted = Some(admitted);
    }
    Ok(HttpResponse::Ok().json(view))
}
