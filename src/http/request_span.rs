//! The root span of each request: a request id, the method, the path and, at the end,
//! the status. Lean on purpose: it is built for every request, and a flash sale makes
//! tens of thousands of them a second, most of them expected `409`s that need no log
//! line. Server errors are logged where they happen (`ApiError`).

use actix_web::{
    body::MessageBody,
    dev::{ServiceRequest, ServiceResponse},
    Error, HttpMessage as _,
};
use tracing::Span;
use tracing_actix_web::{RequestId, RootSpanBuilder};

/// [`RootSpanBuilder`] for [`tracing_actix_web::TracingLogger`].
pub struct LeanSpan;

impl RootSpanBuilder for LeanSpan {
    fn on_request_start(request: &ServiceRequest) -> Span {
        let id = request
            .extensions()
            .get::<RequestId>()
            .map(ToString::to_string)
            .unwrap_or_default();
        tracing::info_span!(
            "request",
            request_id = %id,
            method = %request.method(),
            path = %request.path(),
            status = tracing::field::Empty,
        )
    }

    fn on_request_end<B: MessageBody>(span: Span, outcome: &Result<ServiceResponse<B>, Error>) {
        let status = match outcome {
            Ok(response) => response.status(),
            Err(error) => error.as_response_error().status_code(),
        };
        span.record("status", status.as_u16());
    }
}
