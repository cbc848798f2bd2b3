//! Campaign waiting rooms: joining, standing, and the gate every campaign-SKU write
//! passes. The order and the schedule are in `docs/QUEUE.md`.

use actix_web::{get, middleware::from_fn, post, web, HttpResponse};
use serde::Serialize;
use surge_actors::{campaign::Campaign, cart_actor::now_ms};
use utoipa::ToSchema;
use utoipa_actix_web::{scope, service_config::ServiceConfig};

use super::rate_limit;
use crate::{
    error::{ApiError, ErrorBody},
    live::queue::Ticket,
    session::{Session, Sessions},
    state::AppState,
};

/// The queue routes, behind [`Sessions`] and the write limits.
pub fn routes(cfg: &mut ServiceConfig) {
    cfg.service(
        scope("/api/campaigns/{id}/queue")
            .wrap(from_fn(rate_limit::writes))
            .wrap(Sessions::api())
            .service(join_queue)
            .service(get_queue),
    );
}

/// A session's place in a campaign's waiting room.
#[derive(Debug, Serialize, ToSchema)]
pub struct QueueBody {
    /// Earlier joiners still waiting; 0 once admitted.
    pub position: i64,
    /// Whether the session may reserve the campaign's SKUs (until `expires_at_ms`).
    pub admitted: bool,
    /// When the session's turn lapses, Unix milliseconds; before admission, when it
    /// would lapse if it came at its scheduled time.
    pub expires_at_ms: i64,
    /// Joiners of the campaign still waiting.
    pub waiting: i64,
}

impl From<Ticket> for QueueBody {
    fn from(t: Ticket) -> Self {
        Self {
            position: t.standing.position,
            admitted: t.standing.admitted,
            expires_at_ms: t.standing.expires_at_ms,
            waiting: t.waiting,
        }
    }
}

/// The campaign of a path, with a waiting room; 404 otherwise.
fn queued_campaign(state: &AppState, raw: &str) -> Result<Campaign, ApiError> {
    let not_found = || ApiError::NotFound("no such campaign with a queue".into());
    let id = uuid::Uuid::parse_str(raw).map_err(|_| not_found())?;
    state
        .catalog
        .snapshot()
        .campaigns()
        .get(id)
        .filter(|c| c.admit_per_second.is_some())
        .cloned()
        .ok_or_else(not_found)
}

/// Joins the campaign's queue; a second join keeps the first place.
#[utoipa::path(
    tag = "cart",
    params(("id" = String, Path, description = "Campaign id")),
    responses(
        (status = 200, description = "The session's place", body = QueueBody),
        (status = 400, description = "`invalid_session`: the session cookie is not valid (it is cleared)", body = ErrorBody),
        (status = 404, description = "No such campaign, or it has no queue", body = ErrorBody),
        (status = 429, description = "`rate_limited`: over the session's or client IP's write limit; see Retry-After", body = ErrorBody),
        (status = 503, description = "The queue's store is unavailable; see Retry-After", body = ErrorBody),
    )
)]
#[post("")]
pub async fn join_queue(
    state: web::Data<AppState>,
    session: Session,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let campaign = queued_campaign(&state, &id)?;
    let ticket = state
        .queue
        .join(&campaign, session.id.as_str())
        .await?
        .ok_or_else(|| ApiError::Internal(anyhow::anyhow!("queued campaign without a queue")))?;
    Ok(HttpResponse::Ok().json(QueueBody::from(ticket)))
}

/// The session's place in the campaign's queue.
#[utoipa::path(
    tag = "cart",
    params(("id" = String, Path, description = "Campaign id")),
    responses(
        (status = 200, description = "The session's place", body = QueueBody),
        (status = 400, description = "`invalid_session`: the session cookie is not valid (it is cleared)", body = ErrorBody),
        (status = 404, description = "No such campaign, it has no queue, or the session has not joined", body = ErrorBody),
        (status = 429, description = "`rate_limited`: a new session over the client IP's limit; see Retry-After", body = ErrorBody),
        (status = 503, description = "The queue's store is unavailable; see Retry-After", body = ErrorBody),
    )
)]
#[get("")]
pub async fn get_queue(
    state: web::Data<AppState>,
    session: Session,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let campaign = queued_campaign(&state, &id)?;
    let ticket = state
        .queue
        .standing(&campaign, session.id.as_str())
        .await?
        .ok_or_else(|| ApiError::NotFound("the session has not joined this queue".into()))?;
    Ok(HttpResponse::Ok().json(QueueBody::from(ticket)))
}

/// The waiting room's gate on a write of `sku`: joins the session to the queue of the
/// SKU's current or next campaign (a first PUT is a join), and refuses a session whose
/// turn has not come (`429 queued`) or has lapsed. `Ok` when the SKU has no queue or
/// the session may reserve; the campaign window itself is checked by the caller.
pub async fn gate(state: &AppState, session: &Session, sku: &str) -> Result<(), ApiError> {
    let now = now_ms();
    let Some(campaign) = state
        .catalog
        .snapshot()
        .campaigns()
        .queued_for(sku, now)
        .cloned()
    else {
        return Ok(());
    };
    let Some(standing) = state
        .queue
        .admission(&campaign, session.id.as_str())
        .await?
    else {
        return Ok(());
    };
    let now = now_ms();
    if standing.may_reserve(now) {
        Ok(())
    } else if standing.lapsed(now) {
        Err(ApiError::QueueLapsed)
    } else {
        let (waiting, _) = state.queue.counts(&campaign).await?.unwrap_or_default();
        Err(ApiError::Queued {
            position: standing.position,
            waiting,
            retry_after_ms: (standing.admitted_at_ms - now).max(1),
        })
    }
}
