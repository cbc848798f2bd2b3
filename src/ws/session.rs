//! The WebSocket transport (actix-web-actors): one `WsSession` actor per socket. It
//! turns frames into protocol messages and hub calls, and hub pushes into frames. This
//! is the only module that knows the WebSocket library.

use std::{
    collections::HashSet,
    sync::atomic::{AtomicU64, Ordering},
    time::Instant,
};

use actix::prelude::*;
use actix_web::{
    get,
    http::{header, StatusCode},
    web, HttpRequest, HttpResponse,
};
use actix_web_actors::ws;

use super::protocol::{self, ClientMessage, RateLimit, SocketSlot};
use crate::{
    error::{error_response, ApiError},
    live::{
        hub::{Kick, Push, SocketId},
        message::ServerMessage,
    },
    session::Session,
    state::AppState,
};

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// One socket.
pub struct WsSession {
    id: SocketId,
    session_id: String,
    state: web::Data<AppState>,
    subs: HashSet<String>,
    last_seen: Instant,
    rate: RateLimit,
    /// This socket's place in its client IP's count, given back when the actor goes.
    _slot: Option<SocketSlot>,
}

/// Seconds a client over its socket cap is asked to wait: sockets close on their own
/// schedule, so this is a pacing hint rather than a promise.
const SOCKET_CAP_RETRY_SECS: u32 = 5;

fn send(ctx: &mut ws::WebsocketContext<WsSession>, message: &ServerMessage) {
    if let Some(text) = message.encode() {
        ctx.text(text);
    }
}

fn close(ctx: &mut ws::WebsocketContext<WsSession>, code: ws::CloseCode, reason: &str) {
    ctx.close(Some(ws::CloseReason {
        code,
        description: Some(reason.to_owned()),
    }));
    ctx.stop();
}

impl WsSession {
    fn subscribe(&mut self, skus: Vec<String>, ctx: &mut ws::WebsocketContext<Self>) {
        let new: Vec<String> = skus
            .into_iter()
            .filter(|s| !self.subs.contains(s))
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        if self.subs.len() + new.len() > self.state.ws_limits.max_subscriptions {
            metrics::counter!("ws_closed_total", "reason" => "too_many_subscriptions").increment(1);
            return close(ctx, ws::CloseCode::Policy, "too many subscriptions");
        }
        let addr = ctx.address();
        self.state.live.hub().subscribe(
            self.id,
            &new,
            &addr.clone().recipient(),
            &addr.recipient(),
        );
        // The current value at once, so the client starts from the truth.
        for sku in &new {
            if let Some((available, seq)) = self.state.stock.get_with_seq(sku) {
                let stock = ServerMessage::Stock {
                    sku: sku.clone(),
                    available,
                    seq,
                };
                send(ctx, &stock);
            }
        }
        self.subs.extend(new);
    }
}

impl WsSession {
    /// Starts the campaign's reports on this socket once the token is the admin token;
    /// a socket monitors one campaign at a time (a new `monitor` replaces the last).
    fn monitor(&mut self, campaign: uuid::Uuid, token: &str, ctx: &mut ws::WebsocketContext<Self>) {
        let authorized = self
            .state
            .admin_token
            .as_ref()
            .is_some_and(|expected| expected.matches(token));
        if !authorized {
            return send(ctx, &protocol::unauthorized());
        }
        if self
            .state
            .catalog
            .snapshot()
            .campaigns()
            .get(campaign)
            .is_none()
        {
            return send(ctx, &protocol::unknown_campaign());
        }
        let reports = &self.state.reports;
        reports.unwatch(self.id);
        reports.watch(campaign, self.id, ctx.address().recipient());
    }
}

impl Actor for WsSession {
    type Context = ws::WebsocketContext<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        let limits = &self.state.ws_limits;
        ctx.set_mailbox_capacity(limits.mailbox);
        let addr = ctx.address();
        self.state.live.hub().join(
            self.id,
            &self.session_id,
            addr.clone().recipient(),
            addr.recipient(),
        );
        send(
            ctx,
            &protocol::welcome(limits, self.state.live.coalesce_ms()),
        );
        let (every, timeout) = (limits.ping_every, limits.timeout);
        ctx.run_interval(every, move |act, ctx| {
            if act.last_seen.elapsed() > timeout {
                metrics::counter!("ws_closed_total", "reason" => "timeout").increment(1);
                close(ctx, ws::CloseCode::Away, "ping timeout");
            } else {
                ctx.ping(b"");
            }
        });
        metrics::gauge!("ws_open_sockets").increment(1.0);
        self.state.reports.socket_opened();
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        self.state.live.hub().leave(self.id);
        self.state.reports.socket_closed(self.id);
        metrics::gauge!("ws_open_sockets").decrement(1.0);
    }
}

impl StreamHandler<Result<ws::Message, ws::ProtocolError>> for WsSession {
    fn handle(&mut self, msg: Result<ws::Message, ws::ProtocolError>, ctx: &mut Self::Context) {
        self.last_seen = Instant::now();
        let msg = match msg {
            Ok(m) => m,
            Err(ws::ProtocolError::Overflow) => {
                metrics::counter!("ws_closed_total", "reason" => "frame_too_big").increment(1);
                return close(ctx, ws::CloseCode::Size, "frame too big");
            }
            Err(e) => {
                tracing::debug!(error = %e, "websocket protocol error");
                return close(ctx, ws::CloseCode::Protocol, "protocol error");
            }
        };
        match msg {
            ws::Message::Text(text) => {
                if !self.rate.allow(Instant::now()) {
                    metrics::counter!("ws_closed_total", "reason" => "rate_limit").increment(1);
                    return close(ctx, ws::CloseCode::Policy, "rate limit");
                }
                match protocol::parse(&text) {
                    Ok(ClientMessage::Subscribe { skus }) => self.subscribe(skus, ctx),
                    Ok(ClientMessage::Unsubscribe { skus }) => {
                        self.state.live.hub().unsubscribe(self.id, &skus);
                        for s in &skus {
                            self.subs.remove(s);
                        }
                    }
                    Ok(ClientMessage::Monitor { campaign_id, token }) => {
                        self.monitor(campaign_id, &token, ctx);
                    }
                    Ok(ClientMessage::Unmonitor { .. }) => self.state.reports.unwatch(self.id),
                    Err(refusal) => send(ctx, &protocol::error_message(&refusal)),
                }
            }
            ws::Message::Ping(p) => ctx.pong(&p),
            ws::Message::Pong(_) | ws::Message::Nop => {}
            ws::Message::Binary(_) | ws::Message::Continuation(_) => {
                close(ctx, ws::CloseCode::Unsupported, "text frames only");
            }
            ws::Message::Close(reason) => {
                ctx.close(reason);
                ctx.stop();
            }
        }
    }
}

impl Handler<Push> for WsSession {
    type Result = ();

    fn handle(&mut self, msg: Push, ctx: &mut Self::Context) {
        // The hub's bytes, shared with every other recipient: nothing is copied here.
        ctx.text(msg.0);
    }
}

impl Handler<Kick> for WsSession {
    type Result = ();

    fn handle(&mut self, msg: Kick, ctx: &mut Self::Context) {
        close(ctx, ws::CloseCode::from(msg.code), msg.reason);
    }
}

/// Whether a handshake's `Origin` may open a socket. Without an allow-list, only the
/// page's own origin may: the origin's host and port are the `Host` the request was
/// sent to (a default port written or not). With one, exactly its origins may. A
/// request without `Origin` is not a browser's (a browser always sends one on a
/// WebSocket handshake), so the header cannot protect it and it is let through;
/// `Origin: null` never is.
fn origin_allowed(origin: Option<&str>, host: Option<&str>, allowed: &[String]) -> bool {
    let Some(origin) = origin else {
        return true;
    };
    let origin = origin.trim_end_matches('/');
    if !allowed.is_empty() {
        return allowed.iter().any(|a| a.eq_ignore_ascii_case(origin));
    }
    let Some((scheme, authority)) = origin.split_once("://") else {
        return false;
    };
    let default_port = match scheme.to_ascii_lowercase().as_str() {
        "http" => ":80",
        "https" => ":443",
        _ => return false,
    };
    let Some(host) = host else {
        return false;
    };
    let strip = |a: &str| {
        a.strip_suffix(default_port)
            .unwrap_or(a)
            .to_ascii_lowercase()
    };
    !authority.is_empty() && strip(authority) == strip(host.trim())
}

/// Opens a live socket for the caller's session.
#[get("/ws", wrap = "crate::session::Sessions::socket()")]
pub async fn ws_route(
    req: HttpRequest,
    stream: web::Payload,
    state: web::Data<AppState>,
    session: Session,
) -> Result<HttpResponse, actix_web::Error> {
    let origin = req
        .headers()
        .get(header::ORIGIN)
        .map(|v| v.to_str().unwrap_or(""));
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok());
    if !origin_allowed(origin, host, &state.ws_limits.allowed_origins) {
        metrics::counter!("ws_refused_total", "reason" => "origin").increment(1);
        return Err(ApiError::Forbidden.into());
    }
    let limits = &state.ws_limits;
    // Counted before anything else is done for the socket; a peer without an address
    // (not TCP) has nothing to count against.
    let slot = match state.rate_limits.proxies().client_of(&req) {
        Some(ip) => match state.ws_sockets.acquire(ip, limits.max_per_ip) {
            Some(slot) => Some(slot),
            None => {
                metrics::counter!("ws_refused_total", "reason" => "per_ip_cap").increment(1);
                let mut resp = error_response(
                    StatusCode::TOO_MANY_REQUESTS,
                    "too_many_sockets",
                    &format!(
                        "this address holds {} open sockets, the most allowed; close one first",
                        limits.max_per_ip
                    ),
                );
                resp.headers_mut()
                    .insert(header::RETRY_AFTER, SOCKET_CAP_RETRY_SECS.into());
                return Ok(resp);
            }
        },
        None => None,
    };
    if !session.fresh {
        // A failure costs only the queue pushes; the socket still opens.
        if let Err(err) = state.queue.follow(session.id.as_str()).await {
            tracing::warn!(error = %err, "queue positions not followed for a socket");
        }
    }
    let actor = WsSession {
        id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
        session_id: session.id.into(),
        rate: RateLimit::new(limits.rate, limits.burst, Instant::now()),
        state: state.clone(),
        subs: HashSet::new(),
        last_seen: Instant::now(),
        _slot: slot,
    };
    ws::WsResponseBuilder::new(actor, &req, stream)
        .frame_size(limits.max_frame)
        .start()
}

#[cfg(test)]
mod tests {
    use super::origin_allowed;

    /// Guards against a page on another site opening a socket with the shopper's
    /// cookie (cross-site WebSocket hijacking), and against refusing the store's own
    /// pages or non-browser clients.
    #[test]
    fn the_default_origin_policy_is_the_pages_own_origin() {
        let none: &[String] = &[];
        let host = Some("shop.example.com:8080");
        assert!(origin_allowed(
            Some("http://shop.example.com:8080"),
            host,
            none
        ));
        assert!(origin_allowed(
            Some("HTTP://Shop.Example.com:8080/"),
            host,
            none
        ));
        assert!(!origin_allowed(
            Some("http://evil.example:8080"),
            host,
            none
        ));
        assert!(!origin_allowed(
            Some("http://shop.example.com:8081"),
            host,
            none
        ));
        assert!(!origin_allowed(Some("null"), host, none));
        assert!(!origin_allowed(Some(""), host, none));
        assert!(!origin_allowed(
            Some("http://shop.example.com:8080"),
            None,
            none
        ));
        assert!(origin_allowed(None, host, none), "no Origin: not a browser");
        // A default port may or may not be written on either side.
        assert!(origin_allowed(
            Some("https://shop.example.com"),
            Some("shop.example.com:443"),
            none
        ));
        assert!(origin_allowed(
            Some("https://shop.example.com:443"),
            Some("shop.example.com"),
            none
        ));
        assert!(!origin_allowed(
            Some("http://shop.example.com"),
            Some("shop.example.com:443"),
            none
        ));
    }

    /// Guards against an allow-list that lets the request's own Host stand in for it.
    #[test]
    fn an_allow_list_replaces_the_default() {
        let allowed = vec!["https://shop.example.com".to_owned()];
        let host = Some("node-1:8080");
        assert!(origin_allowed(
            Some("https://shop.example.com"),
            host,
            &allowed
        ));
        assert!(!origin_allowed(Some("http://node-1:8080"), host, &allowed));
        assert!(origin_allowed(None, host, &allowed));
    }
}
