//! HTTP plumbing over `awc`: clients, one timed request, its answer or why it got none.

use std::{
    net::IpAddr,
    time::{Duration, Instant},
};

use actix_web::web::Bytes;
use awc::{
    error::{ConnectError, SendRequestError},
    http::header,
    ClientRequest, Connector,
};
use serde::Deserialize;

/// Largest response body read (a product list page is far below this).
pub const BODY_LIMIT: usize = 8 * 1024 * 1024;

/// How a client is built.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Whole-request timeout.
    pub timeout: Duration,
    /// Most simultaneous connections (0 = no limit).
    pub connections: usize,
    /// Source address for outgoing connections.
    pub source: Option<IpAddr>,
}

/// An `awc` client. It asks for identity encoding (so bodies are compared byte for
/// byte with the ceiling), follows no redirects, and pools keep-alive connections.
pub fn client(opts: &ClientOptions) -> awc::Client {
    client_keeping(opts, Duration::from_secs(30))
}

/// [`client`] with idle connections kept `keep_alive` only: for clients that pause
/// between requests, shorter than the server's own keep-alive (actix-web: 5 s), so a
/// request never goes out on a connection the server is closing.
pub fn client_keeping(opts: &ClientOptions, keep_alive: Duration) -> awc::Client {
    let mut connector = Connector::new()
        .limit(opts.connections)
        .timeout(opts.timeout.min(Duration::from_secs(10)))
        .conn_keep_alive(keep_alive);
    if let Some(ip) = opts.source {
        connector = connector.local_address(ip);
    }
    awc::Client::builder()
        .timeout(opts.timeout)
        .disable_redirects()
        .add_default_header((header::ACCEPT_ENCODING, "identity"))
        .connector(connector)
        .finish()
}

/// An answered request.
#[derive(Debug, Clone)]
pub struct Reply {
    /// HTTP status.
    pub status: u16,
    /// The whole body.
    pub body: Bytes,
    /// From sending until the last body byte arrived.
    pub latency: Duration,
    /// Every `Set-Cookie` header value.
    pub set_cookies: Vec<String>,
    /// `Idempotent-Replayed: true` was present.
    pub replayed: bool,
    /// The `Retry-After` header, in seconds, when present.
    pub retry_after: Option<Duration>,
}

/// The `{"error":{...}}` body Surge answers errors with.
#[derive(Debug, Deserialize)]
struct ErrorEnvelope {
    error: ErrorDetail,
}

/// Code and extras of an error answer.
#[derive(Debug, Deserialize, Clone, PartialEq, Eq)]
pub struct ErrorDetail {
    /// Machine-readable code, e.g. `insufficient_stock`.
    pub code: String,
    /// With `insufficient_stock`: the largest quantity the line could have.
    #[serde(default)]
    pub available: Option<i64>,
}

impl Reply {
    /// The error code and extras, when the body is Surge's error shape.
    pub fn error(&self) -> Option<ErrorDetail> {
        serde_json::from_slice::<ErrorEnvelope>(&self.body)
            .ok()
            .map(|e| e.error)
    }

    /// Whether this is a `409 insufficient_stock` with `available: 0`: sold out here.
    pub fn is_sold_out(&self) -> bool {
        self.status == 409
            && self
                .error()
                .is_some_and(|e| e.code == "insufficient_stock" && e.available == Some(0))
    }
}

/// A request that got no (complete) answer.
#[derive(Debug, Clone)]
pub struct Failure {
    /// Short kind for the report: `timeout`, `connect refused`, `no free local port`, ...
    pub kind: String,
    /// The full error text.
    pub detail: String,
}

fn io_kind(e: &std::io::Error) -> String {
    match e.raw_os_error() {
        Some(24) => "too many open files".into(),
        Some(99) => "no free local port".into(),
        Some(111) => "refused".into(),
        Some(104) => "reset".into(),
        Some(32) => "broken pipe".into(),
        _ => format!("{:?}", e.kind()).to_lowercase(),
    }
}

/// Short report kind of a send error.
pub fn send_error_kind(e: &SendRequestError) -> String {
    match e {
        SendRequestError::Timeout => "timeout".into(),
        SendRequestError::Connect(ConnectError::Timeout) => "connect timeout".into(),
        SendRequestError::Connect(ConnectError::Io(io)) => format!("connect {}", io_kind(io)),
        SendRequestError::Connect(_) => "connect".into(),
        SendRequestError::Send(io) => format!("send {}", io_kind(io)),
        SendRequestError::Response(_) => "bad response".into(),
        _ => "request".into(),
    }
}

/// Sends `req` (with `body`, if any) and reads the whole answer.
pub async fn send(req: ClientRequest, body: Option<Bytes>) -> Result<Reply, Failure> {
    let started = Instant::now();
    let sent = match body {
        Some(b) => req.send_body(b).await,
        None => req.send().await,
    };
    let mut resp = match sent {
        Ok(r) => r,
        Err(e) => {
            return Err(Failure {
                kind: send_error_kind(&e),
                detail: e.to_string(),
            })
        }
    };
    let status = resp.status().as_u16();
    let headers = resp.headers();
    let set_cookies = headers
        .get_all(header::SET_COOKIE)
        .filter_map(|v| v.to_str().ok())
        .map(str::to_owned)
        .collect();
    let replayed = headers
        .get("idempotent-replayed")
        .is_some_and(|v| v.as_bytes() == b"true");
    let retry_after = headers
        .get(header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    match resp.body().limit(BODY_LIMIT).await {
        Ok(body) => Ok(Reply {
            status,
            body,
            latency: started.elapsed(),
            set_cookies,
            replayed,
            retry_after,
        }),
        Err(e) => Err(Failure {
            kind: "body".into(),
            detail: e.to_string(),
        }),
    }
}

/// Sends a GET to `url` without a session.
pub async fn get(client: &awc::Client, url: &str) -> Result<Reply, Failure> {
    send(client.get(url), None).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(status: u16, body: &str) -> Reply {
        Reply {
            status,
            body: Bytes::copy_from_slice(body.as_bytes()),
            latency: Duration::ZERO,
            set_cookies: Vec::new(),
            replayed: false,
            retry_after: None,
        }
    }

    #[test]
    fn sold_out_is_409_with_zero() {
        let body =
            r#"{"error":{"code":"insufficient_stock","message":"only 0 available","available":0}}"#;
        assert!(reply(409, body).is_sold_out());
        let some = r#"{"error":{"code":"insufficient_stock","message":"x","available":2}}"#;
        assert!(!reply(409, some).is_sold_out());
        assert!(!reply(409, r#"{"error":{"code":"cart_empty","message":"x"}}"#).is_sold_out());
        assert!(!reply(200, "{}").is_sold_out());
    }
}
