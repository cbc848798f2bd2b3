//! The one error shape every endpoint answers with:
//! `{"error":{"code":"...","message":"..."}}` and the matching status. Failures of the
//! layers below convert with `?`: a database that is down or busy answers 503 with
//! `Retry-After`, anything else that is not the caller's fault 500.

use actix_web::{
    error::{JsonPayloadError, PathError, QueryPayloadError},
    http::{header, StatusCode},
    HttpRequest, HttpResponse, ResponseError,
};
use deadpool_postgres::PoolError;
use serde::Serialize;
use surge_actors::{
    campaign::Closed,
    order::{OrderStatus, UnknownStatus},
    validated::EmailError,
};
use utoipa::ToSchema;

use crate::store::{self, DbError};

/// Errors an HTTP handler can answer with; each maps to one status and code.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The request is malformed or a parameter is out of range.
    #[error("{message}")]
    BadRequest {
        /// Machine-readable code, e.g. `invalid_limit`.
        code: &'static str,
        /// Human-readable detail.
        message: String,
    },
    /// Credentials are missing.
    #[error("missing bearer token")]
    Unauthorized,
    /// Credentials are present but wrong.
    #[error("invalid bearer token")]
    Forbidden,
    /// The resource does not exist (or is not the caller's to see).
    #[error("{0}")]
    NotFound(String),
    /// The request conflicts with the current state.
    #[error("{message}")]
    Conflict {
        /// Machine-readable code, e.g. `sku_taken`.
        code: &'static str,
        /// Human-readable detail.
        message: String,
    },
    /// The request meets every constraint of the API description but contradicts
    /// itself or the rules no schema can state (two currencies in one product, a
    /// window that ends before it starts); nothing changed.
    #[error("{message}")]
    Unprocessable {
        /// Machine-readable code, e.g. `invalid_campaign`.
        code: &'static str,
        /// Human-readable detail.
        message: String,
    },
    /// The body is larger than the configured limit.
    #[error("request body is larger than {limit} bytes")]
    PayloadTooLarge {
        /// The configured limit in bytes.
        limit: usize,
    },
    /// Not enough stock for the requested quantity.
    #[error("only {available} available")]
    InsufficientStock {
        /// The largest quantity the line could have now.
        available: i64,
    },
    /// An order's lifecycle does not allow the move asked for; nothing changed.
    #[error("an order that is {from} cannot become {to}")]
    InvalidTransition {
        /// The order's status, unchanged.
        from: OrderStatus,
        /// The status asked for.
        to: OrderStatus,
    },
    /// The price the node offered is not the committed one (its catalog was behind);
    /// nothing changed, and the shopper may ask again at `price_minor`.
    #[error("the price of {sku} is now {price_minor} {currency}")]
    PriceChanged {
        /// The SKU.
        sku: String,
        /// The committed unit price, in minor units.
        price_minor: i64,
        /// The committed currency.
        currency: String,
    },
    /// The SKU is in a campaign that has not started or has ended; nothing changed.
    #[error("{sku}: {closed}")]
    CampaignClosed {
        /// The SKU.
        sku: String,
        /// Still to start (with when), or over.
        closed: Closed,
    },
    /// The customer (or the session's cart) would pass the campaign's per-customer
    /// limit; nothing changed.
    #[error(
        "over the per-customer limit of campaign {campaign_id}: {remaining} more units allowed"
    )]
    LimitExceeded {
        /// The campaign.
        campaign_id: uuid::Uuid,
        /// Units still allowed.
        remaining: i64,
    },
    /// Some reservations of the cart have expired.
    #[error("reservations expired for: {}", .lines.join(", "))]
    ReservationExpired {
        /// The SKUs whose reservation lapsed.
        lines: Vec<String>,
    },
    /// A dependency is down; nothing changed, retry later.
    #[error("service unavailable, retry later")]
    Unavailable,
    /// Enough units exist, but some are held by a node that stopped; the reaper
    /// returns them soon.
    #[error("stock is held by a node that stopped; retry in {retry_after_secs}s")]
    StockRecovering {
        /// Seconds until the reaper is expected to have returned them.
        retry_after_secs: u64,
    },
    /// Enough units exist, but live nodes holding them did not return them in time.
    #[error("stock is held by other nodes; retry in 1s")]
    StockContended,
    /// The server is overloaded; retry later.
    #[error("server is busy, retry in {retry_after_secs}s")]
    Busy {
        /// Seconds the client should wait.
        retry_after_secs: u64,
    },
    /// The session waits in the campaign's queue; nothing was done.
    #[error("waiting in the campaign's queue at position {position}; retry in {retry_after_ms}ms")]
    Queued {
        /// Earlier joiners still waiting.
        position: i64,
        /// Joiners of the campaign still waiting.
        waiting: i64,
        /// Milliseconds until the session's turn.
        retry_after_ms: i64,
    },
    /// The session's turn in the campaign's queue came and went unused; nothing was done.
    #[error("the session's turn in the campaign's queue lapsed")]
    QueueLapsed,
    /// The caller is over a rate limit; nothing was done.
    #[error("too many requests, retry in {retry_after_secs}s")]
    RateLimited {
        /// Seconds until the limit lets the caller through again.
        retry_after_secs: u64,
    },
    /// PostgreSQL failed in a way worth a retry (no connection in time, a lost
    /// connection, a conflict or a shutdown); details are logged, not shown.
    #[error("service unavailable, retry later")]
    Database(#[source] anyhow::Error),
    /// A dependency failed; details are logged, not shown.
    #[error("internal error")]
    Internal(anyhow::Error),
}

impl From<crate::rate_limit::Refusal> for ApiError {
    fn from(r: crate::rate_limit::Refusal) -> Self {
        Self::RateLimited {
            retry_after_secs: r.retry_after_secs,
        }
    }
}

/// Whether the first database error in `err`'s chain is worth a retry; `None` when the
/// chain holds no database error.
fn transient_db_error(err: &anyhow::Error) -> Option<bool> {
    err.chain().find_map(|cause| {
        if let Some(e) = cause.downcast_ref::<DbError>() {
            Some(e.is_transient())
        } else if cause.is::<PoolError>() {
            Some(true)
        } else {
            cause
                .downcast_ref::<tokio_postgres::Error>()
                .map(store::is_transient)
        }
    })
}

impl From<anyhow::Error> for ApiError {
    fn from(err: anyhow::Error) -> Self {
        match transient_db_error(&err) {
            Some(true) => Self::Database(err),
            _ => Self::Internal(err),
        }
    }
}

impl From<DbError> for ApiError {
    fn from(err: DbError) -> Self {
        anyhow::Error::from(err).into()
    }
}

impl From<PoolError> for ApiError {
    fn from(err: PoolError) -> Self {
        DbError::from(err).into()
    }
}

impl From<tokio_postgres::Error> for ApiError {
    fn from(err: tokio_postgres::Error) -> Self {
        DbError::from(err).into()
    }
}

impl From<EmailError> for ApiError {
    fn from(err: EmailError) -> Self {
        Self::bad_request("invalid_email", err.to_string())
    }
}

impl From<UnknownStatus> for ApiError {
    fn from(err: UnknownStatus) -> Self {
        Self::bad_request("invalid_status", err.to_string())
    }
}

impl ApiError {
    /// Shorthand for a 400 with a code.
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::BadRequest {
            code,
            message: message.into(),
        }
    }

    /// The code of a refused shopper write worth counting against a campaign (the
    /// shopper was turned away, not their request malformed); `None` otherwise.
    pub fn refusal_code(&self) -> Option<&'static str> {
        match self {
            Self::Queued { .. }
            | Self::QueueLapsed
            | Self::CampaignClosed { .. }
            | Self::LimitExceeded { .. }
            | Self::InsufficientStock { .. }
            | Self::StockContended
            | Self::StockRecovering { .. }
            | Self::PriceChanged { .. }
            | Self::RateLimited { .. }
            | Self::Busy { .. }
            | Self::ReservationExpired { .. } => Some(self.code()),
            _ => None,
        }
    }

    fn code(&self) -> &'static str {
        match self {
            Self::BadRequest { code, .. } => code,
            Self::Unauthorized => "unauthorized",
            Self::Forbidden => "forbidden",
            Self::NotFound(_) => "not_found",
            Self::Conflict { code, .. } => code,
            Self::Unprocessable { code, .. } => code,
            Self::PayloadTooLarge { .. } => "payload_too_large",
            Self::Busy { .. } => "busy",
            Self::RateLimited { .. } => "rate_limited",
            Self::Queued { .. } => "queued",
            Self::QueueLapsed => "queue_lapsed",
            Self::InsufficientStock { .. } => "insufficient_stock",
            Self::ReservationExpired { .. } => "reservation_expired",
            Self::InvalidTransition { .. } => "invalid_transition",
            Self::PriceChanged { .. } => "price_changed",
            Self::LimitExceeded { .. } => "limit_exceeded",
            Self::CampaignClosed {
                closed: Closed::NotStarted { .. },
                ..
            } => "campaign_not_started",
            Self::CampaignClosed {
                closed: Closed::Ended,
                ..
            } => "campaign_ended",
            Self::Unavailable | Self::Database(_) => "unavailable",
            Self::StockRecovering { .. } => "stock_recovering",
            Self::StockContended => "stock_contended",
            Self::Internal(_) => "internal",
        }
    }
}

/// The JSON body of every error response.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// The error itself.
    pub error: ErrorDetail,
}

/// Code and message of an error.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable machine-readable code, e.g. `not_found`, `invalid_limit`.
    pub code: String,
    /// Human-readable explanation.
    pub message: String,
    /// With `insufficient_stock`: the largest quantity the line could have now.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub available: Option<i64>,
    /// With `reservation_expired`: the SKUs whose reservation lapsed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lines: Option<Vec<String>>,
    /// With `invalid_transition`: the order's current status, unchanged.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<OrderStatus>,
    /// With `price_changed`: the SKU whose price moved.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sku: Option<String>,
    /// With `price_changed`: the committed unit price, in minor units.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub price_minor: Option<i64>,
    /// With `price_changed`: the committed currency.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub currency: Option<String>,
    /// With `campaign_not_started`: when the campaign starts, Unix milliseconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub starts_at_ms: Option<i64>,
    /// With `limit_exceeded`: units the customer may still have of the campaign.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remaining: Option<i64>,
    /// With `limit_exceeded`: the campaign whose limit it is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub campaign_id: Option<String>,
    /// With `queued`: earlier joiners of the campaign's queue still waiting.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub position: Option<i64>,
    /// With `queued`: joiners of the campaign's queue still waiting.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub waiting: Option<i64>,
    /// With `queued`: milliseconds until the session's turn.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<i64>,
}

/// Builds an error response with the standard body.
pub fn error_response(status: StatusCode, code: &str, message: &str) -> HttpResponse {
    HttpResponse::build(status).json(ErrorBody {
        error: ErrorDetail {
            code: code.to_owned(),
            message: message.to_owned(),
            available: None,
            lines: None,
            status: None,
            sku: None,
            price_minor: None,
            currency: None,
            starts_at_ms: None,
            remaining: None,
            campaign_id: None,
            position: None,
            waiting: None,
            retry_after_ms: None,
        },
    })
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            Self::BadRequest { .. } => StatusCode::BAD_REQUEST,
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::Forbidden => StatusCode::FORBIDDEN,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::Conflict { .. } => StatusCode::CONFLICT,
            Self::Unprocessable { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            Self::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Busy { .. } | Self::RateLimited { .. } | Self::Queued { .. } => {
                StatusCode::TOO_MANY_REQUESTS
            }
            Self::InsufficientStock { .. }
            | Self::ReservationExpired { .. }
            | Self::InvalidTransition { .. }
            | Self::PriceChanged { .. }
            | Self::CampaignClosed { .. }
            | Self::LimitExceeded { .. }
            | Self::QueueLapsed => StatusCode::CONFLICT,
            Self::Unavailable
            | Self::Database(_)
            | Self::StockRecovering { .. }
            | Self::StockContended => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        match self {
            Self::Internal(err) => tracing::error!(error = format!("{err:#}"), "request failed"),
            Self::Unavailable => tracing::warn!("answered 503: nothing was committed"),
            Self::Database(err) => {
                tracing::warn!(
                    error = format!("{err:#}"),
                    "answered 503: database unavailable"
                );
            }
            _ => {}
        }
        let mut resp = HttpResponse::build(self.status_code()).json(ErrorBody {
            error: ErrorDetail {
                code: self.code().to_owned(),
                message: self.to_string(),
                available: match self {
                    Self::InsufficientStock { available } => Some(*available),
                    _ => None,
                },
                lines: match self {
                    Self::ReservationExpired { lines } => Some(lines.clone()),
                    _ => None,
                },
                status: match self {
                    Self::InvalidTransition { from, .. } => Some(*from),
                    _ => None,
                },
                sku: match self {
                    Self::PriceChanged { sku, .. } | Self::CampaignClosed { sku, .. } => {
                        Some(sku.clone())
                    }
                    _ => None,
                },
                price_minor: match self {
                    Self::PriceChanged { price_minor, .. } => Some(*price_minor),
                    _ => None,
                },
                currency: match self {
                    Self::PriceChanged { currency, .. } => Some(currency.clone()),
                    _ => None,
                },
                starts_at_ms: match self {
                    Self::CampaignClosed {
                        closed: Closed::NotStarted { starts_at_ms },
                        ..
                    } => Some(*starts_at_ms),
                    _ => None,
                },
                remaining: match self {
                    Self::LimitExceeded { remaining, .. } => Some(*remaining),
                    _ => None,
                },
                campaign_id: match self {
                    Self::LimitExceeded { campaign_id, .. } => Some(campaign_id.to_string()),
                    _ => None,
                },
                position: match self {
                    Self::Queued { position, .. } => Some(*position),
                    _ => None,
                },
                waiting: match self {
                    Self::Queued { waiting, .. } => Some(*waiting),
                    _ => None,
                },
                retry_after_ms: match self {
                    Self::Queued { retry_after_ms, .. } => Some(*retry_after_ms),
                    _ => None,
                },
            },
        });
        match self {
            Self::Unauthorized => {
                resp.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    header::HeaderValue::from_static("Bearer"),
                );
            }
            Self::Busy { retry_after_secs }
            | Self::RateLimited { retry_after_secs }
            | Self::StockRecovering { retry_after_secs } => {
                resp.headers_mut()
                    .insert(header::RETRY_AFTER, (*retry_after_secs).into());
            }
            Self::Queued { retry_after_ms, .. } => {
                // Whole seconds, rounded up: the header never invites an early retry.
                let secs = u64::try_from(*retry_after_ms.max(&1)).map_or(1, |ms| ms.div_ceil(1000));
                resp.headers_mut().insert(header::RETRY_AFTER, secs.into());
            }
            Self::Unavailable | Self::Database(_) | Self::StockContended => {
                resp.headers_mut().insert(header::RETRY_AFTER, 1u64.into());
            }
            _ => {}
        }
        resp
    }
}

/// Turns body-parsing failures into 400 (malformed) or 413 (too large).
pub fn json_error(err: JsonPayloadError, _req: &HttpRequest) -> actix_web::Error {
    let api = match &err {
        JsonPayloadError::OverflowKnownLength { limit, .. }
        | JsonPayloadError::Overflow { limit } => ApiError::PayloadTooLarge { limit: *limit },
        JsonPayloadError::ContentType => ApiError::bad_request(
            "unsupported_content_type",
            "expected Content-Type: application/json",
        ),
        JsonPayloadError::Deserialize(e) => ApiError::bad_request("invalid_json", e.to_string()),
        other => ApiError::bad_request("invalid_body", other.to_string()),
    };
    api.into()
}

/// Turns query-string failures into 400.
pub fn query_error(err: QueryPayloadError, _req: &HttpRequest) -> actix_web::Error {
    ApiError::bad_request("invalid_query", err.to_string()).into()
}

/// Turns path-parameter failures into 400.
pub fn path_error(err: PathError, _req: &HttpRequest) -> actix_web::Error {
    ApiError::bad_request("invalid_path", err.to_string()).into()
}

#[cfg(test)]
mod tests {
    use actix_web::body::MessageBody as _;
    use deadpool_postgres::TimeoutType;

    use super::*;

    fn answer(err: ApiError) -> (u16, Option<String>, serde_json::Value) {
        let resp = err.error_response();
        let retry = resp
            .headers()
            .get(header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let status = resp.status().as_u16();
        let body = resp.into_body().try_into_bytes().unwrap_or_default();
        let body = serde_json::from_slice(&body).unwrap_or_default();
        (status, retry, body)
    }

    #[test]
    fn a_pool_timeout_is_503_with_retry_after() {
        let timeout = PoolError::Timeout(TimeoutType::Wait);
        for err in [
            ApiError::from(PoolError::Timeout(TimeoutType::Wait)),
            ApiError::from(DbError::from(PoolError::Closed)),
            ApiError::from(anyhow::Error::from(timeout).context("restocking")),
        ] {
            let (status, retry, body) = answer(err);
            assert_eq!(status, 503);
            assert_eq!(retry.as_deref(), Some("1"));
            assert_eq!(body["error"]["code"], "unavailable");
            assert_eq!(body["error"]["message"], "service unavailable, retry later");
        }
    }

    /// Guards against a queued shopper told to retry before its turn, or without its
    /// place in the queue.
    #[test]
    fn queued_is_429_with_its_place_and_a_retry_after_rounded_up() {
        let (status, retry, body) = answer(ApiError::Queued {
            position: 7,
            waiting: 30,
            retry_after_ms: 1_001,
        });
        assert_eq!((status, retry.as_deref()), (429, Some("2")));
        assert_eq!(body["error"]["code"], "queued");
        assert_eq!(body["error"]["position"], 7);
        assert_eq!(body["error"]["waiting"], 30);
        assert_eq!(body["error"]["retry_after_ms"], 1_001);
        let (status, _, body) = answer(ApiError::QueueLapsed);
        assert_eq!(status, 409);
        assert_eq!(body["error"]["code"], "queue_lapsed");
    }

    /// Guards against a refused stale price reaching the shopper without the price to
    /// retry at.
    #[test]
    fn a_changed_price_is_409_with_the_new_price() {
        let (status, retry, body) = answer(ApiError::PriceChanged {
            sku: "TEE-M".into(),
            price_minor: 2_500,
            currency: "EUR".into(),
        });
        assert_eq!((status, retry), (409, None));
        assert_eq!(body["error"]["code"], "price_changed");
        assert_eq!(body["error"]["sku"], "TEE-M");
        assert_eq!(body["error"]["price_minor"], 2_500);
        assert_eq!(body["error"]["currency"], "EUR");
    }

    /// Guards against a rate-limit refusal that a client cannot tell from load shedding
    /// or that does not say when to come back.
    #[test]
    fn a_rate_limit_refusal_is_429_rate_limited_with_retry_after() {
        let refusal = crate::rate_limit::Refusal {
            limit: crate::rate_limit::Limit::IpWrites,
            retry_after_secs: 3,
        };
        let (status, retry, body) = answer(ApiError::from(refusal));
        assert_eq!((status, retry.as_deref()), (429, Some("3")));
        assert_eq!(body["error"]["code"], "rate_limited");
    }

    #[test]
    fn other_failures_stay_500() {
        let corrupt = DbError::Corrupt("order x has status \"lost\"".into());
        for err in [
            ApiError::from(corrupt),
            ApiError::from(anyhow::anyhow!("no database involved")),
        ] {
            let (status, retry, body) = answer(err);
            assert_eq!((status, retry), (500, None));
            assert_eq!(body["error"]["code"], "internal");
        }
    }
}
