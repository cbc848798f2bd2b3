//! One campaign buyer over HTTP and, for the socket sample, a WebSocket: join the
//! waiting room, wait for the turn (a `queue` push, or polling its place), then reserve
//! one unit and check out with the buyer's email. What it saw goes into a
//! [`Record`]; what it sent into a [`Recorder`].

use std::{
    rc::Rc,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use awc::{error::WsClientError, ws};
use futures_util::{SinkExt as _, StreamExt as _};
use serde::Deserialize;

use super::tally::{Outcome, Record};
use crate::{
    harness,
    http::{send_error_kind, Failure, Reply},
    report::Recorder,
    session::Session,
    util::Rng,
};

/// Label of joins.
pub const JOIN: &str = "POST /api/campaigns/{id}/queue";
/// Label of polls.
pub const POLL: &str = "GET /api/campaigns/{id}/queue";
/// Label of reservations.
pub const PUT: &str = "PUT /api/cart/items/{sku}";
/// Label of checkouts.
pub const CHECKOUT: &str = "POST /api/checkout";
/// Label of releases after a limit refusal.
pub const DELETE: &str = "DELETE /api/cart/items/{sku}";
/// Label of socket upgrades.
pub const WS: &str = "GET /ws (upgrade)";
/// Prefix of the counters of refusals by code.
pub const REFUSED: &str = "refused: ";

/// Most requests one buyer sends in each phase.
const MAX_ATTEMPTS: u32 = 2_000;
/// Most frames a buyer's socket reads.
const MAX_FRAMES: u32 = 100_000;
/// Shortest pause between two polls.
const POLL_MIN: Duration = Duration::from_millis(50);

/// Now, Unix milliseconds (fractional).
pub fn now_ms() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
}

/// What the buyers of one thread share.
pub struct Ctx {
    /// Node base URLs; buyer `i` uses `bases[i % len]`.
    pub bases: Vec<Rc<str>>,
    /// The campaign.
    pub campaign_id: String,
    /// Its only SKU.
    pub sku: String,
    /// Its start, Unix ms.
    pub starts_at_ms: i64,
    /// Its admission rate.
    pub rate: i64,
    /// Units on sale.
    pub units: u64,
    /// Buyers stop here, whatever they are doing.
    pub deadline: Instant,
    /// Longest pause between two polls.
    pub poll_max: Duration,
    /// How long past its due time a socket buyer waits for its push before polling.
    pub socket_grace: Duration,
    /// Timeout of one request or socket upgrade.
    pub timeout: Duration,
    /// Shared across threads.
    pub shared: Arc<Shared>,
}

/// Counters every thread's buyers update.
#[derive(Default)]
pub struct Shared {
    /// Orders answered `201`.
    pub orders: AtomicU64,
    /// When the order that sold the last unit was answered, Unix ms.
    pub sold_out_ms: Mutex<Option<f64>>,
}

/// The body of a queue answer.
#[derive(Debug, Deserialize)]
struct Place {
    position: i64,
    admitted: bool,
}

/// The fields of a `queue` push a buyer reads.
#[derive(Debug, Deserialize)]
struct Push {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    campaign_id: Option<String>,
    #[serde(default)]
    position: Option<i64>,
    #[serde(default)]
    admitted: Option<bool>,
}

#[derive(Debug, Deserialize)]
struct ErrorEnvelope {
    error: ErrorFields,
}

#[derive(Debug, Deserialize)]
struct ErrorFields {
    code: String,
    #[serde(default)]
    retry_after_ms: Option<i64>,
}

fn error_of(r: &Reply) -> Option<ErrorFields> {
    serde_json::from_slice::<ErrorEnvelope>(&r.body)
        .ok()
        .map(|e| e.error)
}

/// Records an answer; an error answer is also counted by its status and code.
fn note(rec: &mut Recorder, label: &str, r: &Reply, expected: bool) -> Option<ErrorFields> {
    rec.reply(label, r, expected);
    let err = (r.status >= 400).then(|| error_of(r)).flatten();
    if r.status >= 400 {
        let code = err.as_ref().map_or("-", |e| e.code.as_str());
        rec.count(&format!("{REFUSED}{label} {} {code}", r.status), 1);
    }
    err
}

/// How long a 429/503 asks to wait: `retry_after_ms`, else `Retry-After`, else 1 s.
fn retry_wait(r: &Reply, err: Option<&ErrorFields>) -> Duration {
    err.and_then(|e| e.retry_after_ms)
        .map(|ms| Duration::from_millis(ms.clamp(1, 60_000) as u64))
        .or(r.retry_after)
        .unwrap_or(Duration::from_secs(1))
}

async fn pause(attempt: u32, rng: &mut Rng) {
    actix_web::rt::time::sleep(harness::backoff(
        attempt,
        Duration::from_millis(10),
        Duration::from_millis(500),
        rng,
    ))
    .await;
}

/// Sleeps `d`, or until the deadline; false when the deadline came.
async fn sleep_within(d: Duration, deadline: Instant) -> bool {
    let until = (Instant::now() + d).min(deadline);
    actix_web::rt::time::sleep_until(until.into()).await;
    Instant::now() < deadline
}

/// Joins the waiting room with a fresh session: its slot is the position answered
/// (every join precedes the start). A second join keeps the first place, so a retry
/// after a lost answer is safe for a session that has its cookie.
pub async fn join(
    i: usize,
    socket: bool,
    ctx: &Ctx,
    client: &awc::Client,
    rec: &mut Recorder,
    rng: &mut Rng,
) -> (Session, Record) {
    let base = ctx.bases[i % ctx.bases.len()].clone();
    let mut s = Session::new(client.clone(), base);
    let mut r = Record::new(i, socket);
    let path = format!("/api/campaigns/{}/queue", ctx.campaign_id);
    // An attempt whose answer was lost may have taken the place a retry reports: the
    // join happened somewhere from the first attempt to the last answer.
    let first_sent = now_ms();
    for attempt in 1..=MAX_ATTEMPTS {
        if Instant::now() >= ctx.deadline {
            break;
        }
        let reply = match s.post(&path).await {
            Ok(reply) => reply,
            Err(f) => {
                rec.failure(JOIN, &f);
                pause(attempt, rng).await;
                continue;
            }
        };
        match reply.status {
            200 => match serde_json::from_slice::<Place>(&reply.body) {
                Ok(place) => {
                    rec.reply(JOIN, &reply, true);
                    r.join_sent_ms = first_sent;
                    r.join_answered_ms = now_ms();
                    r.join_position = Some(place.position);
                    r.session = s.cookie().and_then(session_id);
                    if place.admitted {
                        rec.count("joins answered admitted (after the start)", 1);
                    }
                    r.outcome = Outcome::GaveUp;
                    return (s, r);
                }
                Err(_) => {
                    note(rec, JOIN, &reply, false);
                    break;
                }
            },
            // A node that has not loaded the campaign yet: it will within moments.
            404 => {
                note(rec, JOIN, &reply, true);
                pause(attempt, rng).await;
            }
            429 | 503 => {
                let err = note(rec, JOIN, &reply, true);
                sleep_within(retry_wait(&reply, err.as_ref()), ctx.deadline).await;
            }
            status if status >= 500 => {
                note(rec, JOIN, &reply, false);
                pause(attempt, rng).await;
            }
            _ => {
                note(rec, JOIN, &reply, false);
                break;
            }
        }
    }
    (s, r)
}

/// When the buyer's turn should come, as it can tell from its join: the start (or its
/// join, if later) plus its position at the admission rate.
fn estimated_due_ms(ctx: &Ctx, r: &Record) -> f64 {
    let from = (ctx.starts_at_ms as f64).max(r.join_answered_ms);
    from + r.join_position.unwrap_or_default() as f64 * 1000.0 / ctx.rate as f64
}

/// The session id inside a `surge_session=<id>.<signature>` cookie pair.
fn session_id(cookie: &str) -> Option<String> {
    let value = cookie.split_once('=')?.1;
    Some(value.split_once('.')?.0.to_owned())
}

/// The ws:// URL of a base.
fn ws_url(base: &str) -> String {
    format!("{}/ws", base.replacen("http://", "ws://", 1))
}

/// Opens the buyer's socket with its session cookie (after the join, so the node
/// reads its slot) and reads it until the `admitted: true` push for the campaign, the
/// slot's due time plus the grace, or the deadline; records every position push.
async fn await_push(
    s: &Session,
    ws_client: &awc::Client,
    ctx: &Ctx,
    r: &mut Record,
    rec: &mut Recorder,
) {
    let mut req = ws_client.ws(ws_url(s.base())).max_frame_size(64 * 1024);
    if let Some(c) = s.cookie() {
        req = req.set_header(awc::http::header::COOKIE, c);
    }
    let started = Instant::now();
    let mut framed = match tokio::time::timeout(ctx.timeout, req.connect()).await {
        Ok(Ok((_resp, framed))) => {
            rec.sample(WS, started.elapsed());
            rec.count("sockets opened", 1);
            r.socket_opened_ms = Some(now_ms());
            if now_ms() >= ctx.starts_at_ms as f64 {
                rec.count("sockets opened after the start", 1);
            }
            framed
        }
        Ok(Err(e)) => {
            let kind = match e {
                WsClientError::InvalidResponseStatus(st) => {
                    format!("ws upgrade status {}", st.as_u16())
                }
                WsClientError::SendRequest(e) => format!("ws {}", send_error_kind(&e)),
                _ => "ws handshake".into(),
            };
            rec.failure(
                WS,
                &Failure {
                    kind,
                    detail: String::new(),
                },
            );
            return;
        }
        Err(_) => {
            rec.failure(
                WS,
                &Failure {
                    kind: "ws connect timeout".into(),
                    detail: String::new(),
                },
            );
            return;
        }
    };
    let wait_ms =
        (estimated_due_ms(ctx, r) - now_ms()).max(0.0) as u64 + ctx.socket_grace.as_millis() as u64;
    let give_up = (Instant::now() + Duration::from_millis(wait_ms)).min(ctx.deadline);
    let give_up = tokio::time::Instant::from_std(give_up);
    for _ in 0..MAX_FRAMES {
        let frame = tokio::select! {
            _ = tokio::time::sleep_until(give_up) => break,
            f = framed.next() => f,
        };
        match frame {
            Some(Ok(ws::Frame::Text(text))) => {
                let at = now_ms();
                let Ok(push) = serde_json::from_slice::<Push>(&text) else {
                    continue;
                };
                if push.kind != "queue" || push.campaign_id.as_deref() != Some(&ctx.campaign_id) {
                    continue;
                }
                match (push.admitted, push.position) {
                    (Some(true), _) => {
                        r.admitted_push_ms = Some(at);
                        r.admitted(at);
                        break;
                    }
                    (_, Some(pos)) => r.position_pushes.push((pos, at)),
                    _ => {}
                }
            }
            Some(Ok(ws::Frame::Ping(p))) => {
                if framed.send(ws::Message::Pong(p)).await.is_err() {
                    rec.count("sockets lost before admission", 1);
                    return;
                }
            }
            Some(Ok(ws::Frame::Close(_))) | None | Some(Err(_)) => {
                rec.count("sockets lost before admission", 1);
                return;
            }
            Some(Ok(_)) => {}
        }
    }
    if r.admitted_push_ms.is_none() {
        rec.count("socket buyers polling after no push", 1);
    }
    let _ = tokio::time::timeout(
        Duration::from_millis(500),
        framed.send(ws::Message::Close(None)),
    )
    .await;
}

/// Polls the buyer's place until admitted: it sleeps until the start, then about as
/// long as its position needs at the admission rate (never less than [`POLL_MIN`],
/// never more than the poll cap), and as long as a 429/503 asks. False when the
/// deadline came first.
async fn poll(
    s: &mut Session,
    ctx: &Ctx,
    r: &mut Record,
    rec: &mut Recorder,
    rng: &mut Rng,
) -> bool {
    let path = format!("/api/campaigns/{}/queue", ctx.campaign_id);
    let mut position = r.join_position.unwrap_or_default();
    for attempt in 1..=MAX_ATTEMPTS {
        // Nothing moves before the start, so nobody looks before it; after it, a look
        // at least every poll cap, to follow the position.
        let to_start = (ctx.starts_at_ms as f64 - now_ms()).max(0.0);
        let turn = position as f64 * 1000.0 / ctx.rate as f64 + rng.below(5) as f64;
        let turn = Duration::from_micros((turn * 1000.0) as u64).clamp(POLL_MIN, ctx.poll_max);
        let wait = Duration::from_micros((to_start * 1000.0) as u64) + turn;
        if !sleep_within(wait, ctx.deadline).await {
            return false;
        }
        let sent = now_ms();
        let reply = match s.get(&path).await {
            Ok(reply) => reply,
            Err(f) => {
                rec.failure(POLL, &f);
                pause(attempt, rng).await;
                continue;
            }
        };
        match reply.status {
            200 => match serde_json::from_slice::<Place>(&reply.body) {
                Ok(place) => {
                    rec.reply(POLL, &reply, true);
                    if place.admitted {
                        r.admitted(now_ms());
                        return true;
                    }
                    r.waited(sent);
                    position = place.position;
                }
                Err(_) => {
                    note(rec, POLL, &reply, false);
                    return false;
                }
            },
            429 | 503 => {
                let err = note(rec, POLL, &reply, true);
                sleep_within(retry_wait(&reply, err.as_ref()), ctx.deadline).await;
            }
            status if status >= 500 => {
                note(rec, POLL, &reply, false);
                pause(attempt, rng).await;
            }
            _ => {
                note(rec, POLL, &reply, false);
                return false;
            }
        }
    }
    false
}

/// Waits for the turn (push or polls), then buys one unit. Returns the record.
pub async fn wait_and_buy(
    mut s: Session,
    ws_client: Option<awc::Client>,
    mut r: Record,
    email: String,
    ctx: Rc<Ctx>,
    mut rec: Recorder,
    mut rng: Rng,
) -> (Record, Recorder) {
    if let Some(ws_client) = ws_client {
        await_push(&s, &ws_client, &ctx, &mut r, &mut rec).await;
    }
    if r.admitted_seen_ms.is_none() && !poll(&mut s, &ctx, &mut r, &mut rec, &mut rng).await {
        if r.outcome == Outcome::GaveUp && Instant::now() < ctx.deadline {
            r.outcome = Outcome::Failed;
        }
        return (r, rec);
    }
    r.outcome = buy(&mut s, &ctx, &mut r, &email, &mut rec, &mut rng).await;
    (r, rec)
}

/// Reserves one unit and checks out; `Outcome` says how it ended.
async fn buy(
    s: &mut Session,
    ctx: &Ctx,
    r: &mut Record,
    email: &str,
    rec: &mut Recorder,
    rng: &mut Rng,
) -> Outcome {
    let key = uuid::Uuid::from_u64_pair(rng.next_u64(), rng.next_u64()).to_string();
    let mut attempt = 0u32;
    'reserve: loop {
        attempt += 1;
        if attempt > MAX_ATTEMPTS || Instant::now() >= ctx.deadline {
            return Outcome::GaveUp;
        }
        let sent = now_ms();
        let reply = match s.put_item(&ctx.sku, 1).await {
            Ok(reply) => reply,
            Err(f) => {
                rec.failure(PUT, &f);
                pause(attempt, rng).await;
                continue;
            }
        };
        match reply.status {
            200 => {
                rec.reply(PUT, &reply, true);
            }
            409 => {
                let code = note(rec, PUT, &reply, true)
                    .map(|e| e.code)
                    .unwrap_or_default();
                match code.as_str() {
                    "insufficient_stock" => return Outcome::SoldOut,
                    "limit_exceeded" => return Outcome::OverLimit,
                    "queue_lapsed" => return Outcome::Lapsed,
                    // A node a moment behind the start, or a price it just reloaded.
                    "campaign_not_started" | "price_changed" => {
                        pause(attempt, rng).await;
                        continue;
                    }
                    _ => {
                        rec.endpoints.entry(PUT.into()).or_default().unexpected += 1;
                        return Outcome::Failed;
                    }
                }
            }
            429 | 503 => {
                let err = note(rec, PUT, &reply, true);
                if err.as_ref().is_some_and(|e| e.code == "queued") {
                    // Told "not yet" after a sign of admission: the fairness audit sees it.
                    r.waited(sent);
                }
                sleep_within(retry_wait(&reply, err.as_ref()), ctx.deadline).await;
                continue;
            }
            status if status >= 500 => {
                note(rec, PUT, &reply, false);
                pause(attempt, rng).await;
                continue;
            }
            _ => {
                note(rec, PUT, &reply, false);
                return Outcome::Failed;
            }
        }
        for c_attempt in 1..=MAX_ATTEMPTS {
            if Instant::now() >= ctx.deadline {
                return Outcome::GaveUp;
            }
            let reply = match s.checkout(&key, email).await {
                Ok(reply) => reply,
                Err(f) => {
                    // Unknown whether it committed: the same key makes a retry safe.
                    rec.failure(CHECKOUT, &f);
                    pause(c_attempt, rng).await;
                    continue;
                }
            };
            match reply.status {
                201 => {
                    rec.reply(CHECKOUT, &reply, true);
                    let at = now_ms();
                    r.ordered_ms = Some(at);
                    let n = ctx.shared.orders.fetch_add(1, Ordering::SeqCst) + 1;
                    if n == ctx.units {
                        if let Ok(mut sold_out) = ctx.shared.sold_out_ms.lock() {
                            sold_out.get_or_insert(at);
                        }
                    }
                    return Outcome::Ordered;
                }
                409 => {
                    let code = note(rec, CHECKOUT, &reply, true)
                        .map(|e| e.code)
                        .unwrap_or_default();
                    if code == "limit_exceeded" {
                        // The reservation stays on a limit refusal: give the unit back.
                        release(s, ctx, rec).await;
                        return Outcome::OverLimit;
                    }
                    // reservation_expired, cart_empty or price_changed: reserve again.
                    continue 'reserve;
                }
                429 | 503 => {
                    let err = note(rec, CHECKOUT, &reply, true);
                    sleep_within(retry_wait(&reply, err.as_ref()), ctx.deadline).await;
                }
                status if status >= 500 => {
                    note(rec, CHECKOUT, &reply, false);
                    pause(c_attempt, rng).await;
                }
                _ => {
                    note(rec, CHECKOUT, &reply, false);
                    return Outcome::Failed;
                }
            }
        }
        return Outcome::GaveUp;
    }
}

/// Removes the line, so a unit the buyer may not buy goes back on sale at once.
async fn release(s: &mut Session, ctx: &Ctx, rec: &mut Recorder) {
    for _ in 0..3 {
        match s.delete_item(&ctx.sku).await {
            Ok(reply) => {
                let ok = reply.status == 200;
                note(rec, DELETE, &reply, ok);
                if ok {
                    return;
                }
            }
            Err(f) => rec.failure(DELETE, &f),
        }
    }
}
