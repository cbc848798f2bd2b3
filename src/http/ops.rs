//! Operations endpoints: liveness, readiness, Prometheus metrics and the API description.

use std::time::Duration;

use actix_web::{get, http::StatusCode, web, HttpRequest, HttpResponse};
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_actix_web::service_config::ServiceConfig;

use crate::{error::ErrorBody, openapi::ApiDocument, state::AppState, store::migrate};

/// Liveness, readiness, metrics and the API description; no session, no token.
pub fn routes(cfg: &mut ServiceConfig) {
    cfg.service(healthz)
        .service(readyz)
        .service(metrics)
        .service(openapi);
}

/// How long /readyz waits for the database before calling it unreachable.
const DB_PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Readiness report.
#[derive(Debug, Serialize, ToSchema)]
pub struct Readiness {
    /// Whether the node should receive traffic.
    pub ready: bool,
    /// Whether a graceful shutdown has begun.
    pub draining: bool,
    /// Whether PostgreSQL answered.
    pub database: bool,
    /// Whether every migration is applied.
    pub migrations: bool,
    /// Whether the catalog is in memory.
    pub catalog: bool,
}

/// The process is alive (it answers; nothing else is checked).
#[utoipa::path(tag = "ops", responses((status = 200, description = "Alive")))]
#[get("/healthz")]
pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; charset=utf-8")
        .body("ok")
}

/// The node can serve: database reachable, schema current, catalog loaded, not draining.
#[utoipa::path(
    tag = "ops",
    responses(
        (status = 200, description = "Ready", body = Readiness),
        (status = 503, description = "Not ready (or draining)", body = Readiness),
    )
)]
#[get("/readyz")]
pub async fn readyz(state: web::Data<AppState>) -> HttpResponse {
    let draining = state.health.is_draining();
    let database = !draining && probe_db(&state).await;
    let report = Readiness {
        draining,
        database,
        migrations: state.health.is_migrated(),
        catalog: state.health.is_catalog_loaded(),
        ready: false,
    };
    let ready = !draining && database && report.migrations && report.catalog;
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    HttpResponse::build(status).json(Readiness { ready, ..report })
}

async fn probe_db(state: &AppState) -> bool {
    let probe = async {
        let client = state.db.primary.get().await.ok()?;
        migrate::is_current(&client).await.ok()
    };
    matches!(
        tokio::time::timeout(DB_PROBE_TIMEOUT, probe).await,
        Ok(Some(true))
    )
}

/// Tells the public app of a node whose /metrics has a listener of its own
/// (`SURGE_METRICS_BIND`): the public route then answers 404, so that the numbers are
/// not public.
#[derive(Debug, Clone, Copy)]
pub struct MetricsPlacement {
    /// Whether /metrics has a listener of its own.
    pub elsewhere: bool,
}

/// Prometheus text exposition of every metric of this process.
#[utoipa::path(
    tag = "ops",
    responses(
        (status = 200, description = "Prometheus text format", content_type = "text/plain"),
        (status = 404, description = "Served on its own listener (`SURGE_METRICS_BIND`), not this one", body = ErrorBody),
    )
)]
#[get("/metrics")]
pub async fn metrics(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    if req
        .app_data::<MetricsPlacement>()
        .is_some_and(|m| m.elsewhere)
    {
        return crate::error::error_response(
            StatusCode::NOT_FOUND,
            "not_found",
            "/metrics is served on its own listener",
        );
    }
    render_metrics(state).await
}

/// The metrics text itself: the public route's answer, and the private listener's.
pub async fn render_metrics(state: web::Data<AppState>) -> HttpResponse {
    state.db.record_metrics();
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(state.metrics.render())
}

/// This API's OpenAPI 3 description, generated from the handlers.
#[utoipa::path(tag = "ops", responses((status = 200, description = "OpenAPI document")))]
#[get("/openapi.json")]
pub async fn openapi(doc: web::Data<ApiDocument>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(doc.json())
}
