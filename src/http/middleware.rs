//! The one middleware around every request ([`Observe`]): its id (the `x-request-id`
//! header and the root span), its metrics, the default security headers, and `HEAD` of
//! every `GET`.
//!
//! One hand-written layer rather than four (a tracing logger, a `from_fn`, default
//! headers): it boxes nothing per request, draws the id without a system call, and
//! finds the metric handles in a cache of the worker thread, without a lock.

use std::{
    cell::RefCell,
    future::{ready, Future, Ready},
    pin::Pin,
    task::{ready as ready_poll, Context, Poll},
    time::{Duration, Instant},
};

use actix_web::{
    body::{BodySize, MessageBody},
    dev::{Service, ServiceRequest, ServiceResponse, Transform},
    http::{
        header::{self, HeaderName, HeaderValue},
        Method,
    },
    web::Bytes,
    Error, HttpRequest,
};
use metrics::{Counter, Histogram};
use tracing::Span;

use super::request_span::{self, RequestId};

static REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Headers every answer carries unless its handler set them.
const DEFAULT_HEADERS: [(HeaderName, &str); 2] = [
    (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
    (header::REFERRER_POLICY, "strict-origin-when-cross-origin"),
];

/// Counts requests and records their latency by route pattern (not raw path, so that
/// label cardinality stays bounded), method and status; gives each request an id, in
/// its root span and in the `x-request-id` header; adds [`DEFAULT_HEADERS`].
///
/// It also gives every `GET` route its `HEAD`: the request is routed as the `GET` it
/// mirrors (and counted and logged as the `HEAD` it is), so the answer has the same
/// status and headers, and the HTTP layer sends no body for a `HEAD`. A `HEAD` of a
/// path without `GET` meets the same `405` as any other method the path does not serve
/// (see [`crate::http::not_found`]).
pub struct Observe;

impl<S, B> Transform<S, ServiceRequest> for Observe
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = Error>,
    B: MessageBody,
{
    type Response = ServiceResponse<SpanBody<B>>;
    type Error = Error;
    type Transform = ObserveService<S>;
    type InitError = ();
    type Future = Ready<Result<Self::Transform, Self::InitError>>;

    fn new_transform(&self, service: S) -> Self::Future {
        ready(Ok(ObserveService { service }))
    }
}

/// [`Observe`] around a service.
pub struct ObserveService<S> {
    service: S,
}

impl<S, B> Service<ServiceRequest> for ObserveService<S>
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = Error>,
    B: MessageBody,
{
    type Response = ServiceResponse<SpanBody<B>>;
    type Error = Error;
    type Future = ObserveFuture<S::Future>;

    actix_web::dev::forward_ready!(service);

    fn call(&self, mut req: ServiceRequest) -> Self::Future {
        let start = Instant::now();
        let id = RequestId::generate();
        let span = request_span::start(&req, &id);
        let method = req.method().clone();
        if method == Method::HEAD {
            req.head_mut().method = Method::GET;
        }
        let fut = {
            let _entered = span.enter();
            self.service.call(req)
        };
        ObserveFuture {
            fut,
            span,
            start,
            method,
            id,
        }
    }
}

pin_project_lite::pin_project! {
    /// The routed request, in its span; then the metrics and headers of its answer.
    pub struct ObserveFuture<F> {
        #[pin]
        fut: F,
        span: Span,
        start: Instant,
        method: Method,
        id: RequestId,
    }
}

impl<F, B> Future for ObserveFuture<F>
where
    F: Future<Output = Result<ServiceResponse<B>, Error>>,
    B: MessageBody,
{
    type Output = Result<ServiceResponse<SpanBody<B>>, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let outcome = {
            let _entered = this.span.enter();
            ready_poll!(this.fut.poll(cx))
        };
        let mut res = match outcome {
            Ok(res) => res,
            Err(err) => {
                request_span::end(this.span, err.as_response_error().status_code(), false);
                return Poll::Ready(Err(err));
            }
        };
        let status = res.status();
        let streamed = matches!(res.response().body().size(), BodySize::Stream);
        request_span::end(this.span, status, streamed);
        record(
            res.request(),
            this.method,
            status.as_u16(),
            this.start.elapsed(),
        );
        let headers = res.headers_mut();
        if let Some(value) = this.id.header_value() {
            headers.insert(REQUEST_ID.clone(), value);
        }
        for (name, value) in &DEFAULT_HEADERS {
            if !headers.contains_key(name) {
                headers.insert(name.clone(), HeaderValue::from_static(value));
            }
        }
        // A streamed body (a socket's actor runs as one) logs in the request's span too;
        // any other has no span left (see `request_span::end`).
        let span = std::mem::replace(this.span, Span::none());
        Poll::Ready(Ok(res.map_body(|_, body| SpanBody { body, span })))
    }
}

pin_project_lite::pin_project! {
    /// A response body polled in its request's span.
    pub struct SpanBody<B> {
        #[pin]
        body: B,
        span: Span,
    }
}

impl<B: MessageBody> MessageBody for SpanBody<B> {
    type Error = B::Error;

    fn size(&self) -> BodySize {
        self.body.size()
    }

    fn poll_next(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Bytes, Self::Error>>> {
        let this = self.project();
        let _entered = this.span.enter();
        this.body.poll_next(cx)
    }
}

/// The metric handles of one route, method and status.
struct Handles {
    name: Box<str>,
    method: Method,
    status: u16,
    counter: Counter,
    histogram: Histogram,
}

impl Handles {
    fn new(pattern: &str, name: &str, method: &Method, status: u16) -> Self {
        let labels = [
            ("method", method.to_string()),
            ("route", pattern.to_owned()),
            ("status", status.to_string()),
        ];
        Self {
            name: name.into(),
            method: method.clone(),
            status,
            counter: metrics::counter!("http_requests_total", &labels),
            histogram: metrics::histogram!("http_request_duration_seconds", &labels),
        }
    }

    fn record(&self, elapsed: Duration) {
        self.counter.increment(1);
        self.histogram.record(elapsed.as_secs_f64());
    }
}

/// Most handles a worker keeps: routes times methods times statuses stays far below,
/// unless clients invent methods; those are then counted the slow way.
const MAX_CACHED: usize = 512;

thread_local! {
    static HANDLES: RefCell<Vec<Handles>> = const { RefCell::new(Vec::new()) };
}

/// Counts the request under its route (by resource name: every route here is named
/// after its handler, or after its pattern where the router matches only a literal
/// prefix of it, as `products::ProductRoute`), `method` and `status`.
fn record(req: &HttpRequest, method: &Method, status: u16, elapsed: Duration) {
    let name = req.match_name();
    let pattern = || match name {
        Some(name) if name.starts_with('/') => name.to_owned(),
        _ => req
            .match_pattern()
            .unwrap_or_else(|| "unmatched".to_owned()),
    };
    let Some(name) = name else {
        // Unnamed or unmatched: rare, so the slow path is fine.
        Handles::new(&pattern(), "", method, status).record(elapsed);
        return;
    };
    HANDLES.with_borrow_mut(|cache| {
        let hit = cache
            .iter()
            .find(|h| h.status == status && h.method == *method && &*h.name == name);
        if let Some(h) = hit {
            return h.record(elapsed);
        }
        let h = Handles::new(&pattern(), name, method, status);
        h.record(elapsed);
        if cache.len() < MAX_CACHED {
            cache.push(h);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::{test, web, App, HttpResponse};

    async fn ok() -> HttpResponse {
        HttpResponse::Ok().body("ok")
    }

    /// The cached handles count exactly what a fresh handle per request would: same
    /// names, labels and totals (the route is this test's own, so the process-wide
    /// recorder holds nothing else under it).
    #[actix_web::test]
    async fn cached_handles_count_like_fresh_ones() {
        let handle = crate::telemetry::metrics_handle();
        let srv = test::init_service(
            App::new()
                .service(web::resource("/items/{id}").name("item").get(ok))
                .wrap(Observe),
        )
        .await;
        let mut expected = 0;
        for (method, uri) in [
            (Method::GET, "/items/1"),
            (Method::GET, "/items/2"),
            (Method::HEAD, "/items/3"),
            (Method::GET, "/items/4"),
        ] {
            let req = test::TestRequest::default()
                .method(method.clone())
                .uri(uri)
                .to_request();
            let res = srv.call(req).await.expect("answered");
            assert_eq!(res.status(), 200);
            let id = res.headers().get("x-request-id").expect("request id");
            assert!(uuid::Uuid::parse_str(id.to_str().expect("ascii")).is_ok());
            assert_eq!(
                res.headers()
                    .get("x-content-type-options")
                    .map(|v| v.as_bytes()),
                Some(&b"nosniff"[..])
            );
            assert!(res.headers().contains_key("referrer-policy"));
            if method == Method::GET {
                expected += 1;
            }
        }
        let text = handle.render();
        let line = |m: &str| {
            text.lines()
                .find(|l| {
                    l.starts_with("http_requests_total{")
                        && l.contains(&format!("method=\"{m}\""))
                        && l.contains("route=\"/items/{id}\"")
                        && l.contains("status=\"200\"")
                })
                .map(|l| l.rsplit(' ').next().unwrap_or_default().to_owned())
        };
        assert_eq!(line("GET"), Some(expected.to_string()), "{text}");
        assert_eq!(line("HEAD"), Some("1".to_owned()), "{text}");
        assert!(text.contains("http_request_duration_seconds"), "{text}");
    }
}
