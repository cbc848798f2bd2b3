//! Request metrics, the request-id response header, and `HEAD` of every `GET`.

use std::{
    collections::HashMap,
    sync::{Arc, OnceLock, RwLock},
    time::Instant,
};

use actix_web::{
    body::MessageBody,
    dev::{ServiceRequest, ServiceResponse},
    http::{
        header::{HeaderName, HeaderValue},
        Method,
    },
    middleware::Next,
    HttpMessage as _, HttpRequest,
};
use metrics::{Counter, Histogram};
use tracing_actix_web::RequestId;

static REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Metric handles of one route, by method and status, made once: a request then
/// costs two atomic updates instead of building and hashing label strings.
struct RouteMetrics {
    pattern: String,
    handles: RwLock<HashMap<(Method, u16), (Counter, Histogram)>>,
}

impl RouteMetrics {
    fn handles(&self, method: &Method, status: u16) -> (Counter, Histogram) {
        let key = (method.clone(), status);
        if let Some(h) = self.handles.read().ok().and_then(|m| m.get(&key).cloned()) {
            return h;
        }
        let labels = [
            ("method", method.to_string()),
            ("route", self.pattern.clone()),
            ("status", status.to_string()),
        ];
        let h = (
            metrics::counter!("http_requests_total", &labels),
            metrics::histogram!("http_request_duration_seconds", &labels),
        );
        if let Ok(mut m) = self.handles.write() {
            m.insert(key, h.clone());
        }
        h
    }
}

/// Routes by resource name (every route here is named after its handler).
fn route(req: &HttpRequest) -> Arc<RouteMetrics> {
    static ROUTES: OnceLock<RwLock<HashMap<String, Arc<RouteMetrics>>>> = OnceLock::new();
    let make = || {
        Arc::new(RouteMetrics {
            pattern: req
                .match_pattern()
                .unwrap_or_else(|| "unmatched".to_owned()),
            handles: RwLock::default(),
        })
    };
    let Some(name) = req.match_name() else {
        // Unnamed or unmatched: rare, so the slow path is fine.
        return make();
    };
    let routes = ROUTES.get_or_init(RwLock::default);
    if let Some(r) = routes.read().ok().and_then(|m| m.get(name).cloned()) {
        return r;
    }
    let r = make();
    if let Ok(mut m) = routes.write() {
        m.insert(name.to_owned(), Arc::clone(&r));
    }
    r
}

/// Counts requests and records their latency by route pattern (not raw path, so that
/// label cardinality stays bounded), method and status; echoes the request id.
///
/// It also gives every `GET` route its `HEAD`: the request is routed as the `GET` it
/// mirrors (and counted as the `HEAD` it is), so the answer has the same status and
/// headers, and the HTTP layer sends no body for a `HEAD`. A `HEAD` of a path without
/// `GET` meets the same `405` as any other method the path does not serve (see
/// [`crate::http::not_found`]).
pub async fn observe(
    mut req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let start = Instant::now();
    let method = req.method().clone();
    if method == Method::HEAD {
        req.head_mut().method = Method::GET;
    }
    let request_id = req.extensions().get::<RequestId>().copied();
    let mut res = next.call(req).await?;
    let (counter, histogram) = route(res.request()).handles(&method, res.status().as_u16());
    counter.increment(1);
    histogram.record(start.elapsed().as_secs_f64());
    if let Some(id) = request_id {
        if let Ok(value) = HeaderValue::from_str(&id.to_string()) {
            res.headers_mut().insert(REQUEST_ID.clone(), value);
        }
    }
    Ok(res)
}
