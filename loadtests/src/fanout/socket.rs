//! The load generator's WebSockets: subscribers that record every `stock` message of
//! one SKU, and the driver's observer that learns each change's `seq`.

use std::{
    cell::{Cell, RefCell},
    rc::Rc,
    sync::{
        atomic::{AtomicU64, AtomicUsize, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use awc::{error::WsClientError, ws};
use futures_util::{SinkExt as _, StreamExt as _};
use serde::Deserialize;
use serde_json::json;

use crate::http::send_error_kind;

/// Most frames one socket reads before it stops.
const MAX_FRAMES: u64 = 1_000_000;

/// A `stock` message as a client receives it.
#[derive(Debug, Clone, Copy)]
pub struct Delivery {
    /// `seq` of the message.
    pub seq: u64,
    /// `available` of the message.
    pub available: i64,
    /// When it was read.
    pub at: Instant,
}

/// What one subscriber saw.
#[derive(Debug, Default)]
pub struct SubRecord {
    /// Connect + upgrade time, when it connected.
    pub connect: Option<Duration>,
    /// Why it did not connect.
    pub failure: Option<String>,
    /// The current value arrived after subscribing.
    pub subscribed: bool,
    /// Stock messages after the first one.
    pub deliveries: Vec<Delivery>,
    /// Why the socket ended before the run did.
    pub closed_early: Option<String>,
}

/// Counters the main thread prints while sockets connect.
#[derive(Debug, Default)]
pub struct Progress {
    /// Sockets upgraded and subscribed.
    pub connected: AtomicUsize,
    /// Sockets that did not connect.
    pub failed: AtomicUsize,
    /// Sockets that got the current value.
    pub subscribed: AtomicUsize,
    /// Sockets the server closed early.
    pub closed: AtomicUsize,
    /// The coalescing interval a `welcome` message announced.
    pub coalesce_ms: AtomicU64,
}

/// The fields of a server message the fan-out reads, borrowed from the frame: reading
/// thousands of sockets on few threads, the generator allocates nothing per message.
#[derive(Debug, Deserialize)]
struct ServerMsg<'a> {
    #[serde(rename = "type", borrow)]
    kind: &'a str,
    #[serde(default, borrow)]
    sku: Option<&'a str>,
    #[serde(default)]
    available: Option<i64>,
    #[serde(default)]
    seq: Option<u64>,
    #[serde(default)]
    coalesce_ms: Option<u64>,
}

fn ws_error_kind(e: &WsClientError) -> String {
    match e {
        WsClientError::SendRequest(e) => send_error_kind(e),
        WsClientError::InvalidResponseStatus(s) => format!("upgrade status {}", s.as_u16()),
        _ => "handshake".into(),
    }
}

pub fn ws_url(base: &str) -> String {
    format!("{}/ws", base.replacen("http://", "ws://", 1))
}

/// One socket: connect, subscribe, record `stock` messages until told to stop.
#[allow(clippy::too_many_arguments)]
pub async fn subscriber(
    client: awc::Client,
    url: Rc<str>,
    sku: Rc<str>,
    mut stop: tokio::sync::watch::Receiver<bool>,
    progress: Arc<Progress>,
    connect_timeout: Duration,
    hard_deadline: Instant,
    ready: tokio::sync::oneshot::Sender<()>,
) -> SubRecord {
    let mut rec = SubRecord::default();
    let t0 = Instant::now();
    let connected = tokio::time::timeout(
        connect_timeout,
        client.ws(&*url).max_frame_size(64 * 1024).connect(),
    )
    .await;
    let mut framed = match connected {
        Ok(Ok((_resp, framed))) => framed,
        Ok(Err(e)) => {
            rec.failure = Some(ws_error_kind(&e));
            progress.failed.fetch_add(1, Ordering::Relaxed);
            let _ = ready.send(());
            return rec;
        }
        Err(_) => {
            rec.failure = Some("connect timeout".into());
            progress.failed.fetch_add(1, Ordering::Relaxed);
            let _ = ready.send(());
            return rec;
        }
    };
    let subscribe = json!({ "op": "subscribe", "skus": [&*sku] }).to_string();
    if let Err(e) = framed.send(ws::Message::Text(subscribe.into())).await {
        rec.failure = Some(format!("subscribe: {e}"));
        progress.failed.fetch_add(1, Ordering::Relaxed);
        let _ = ready.send(());
        return rec;
    }
    rec.connect = Some(t0.elapsed());
    progress.connected.fetch_add(1, Ordering::Relaxed);
    let _ = ready.send(());
    // One timer for the socket's life, not one per frame.
    let hard = tokio::time::sleep_until(tokio::time::Instant::from_std(hard_deadline));
    tokio::pin!(hard);
    for _ in 0..MAX_FRAMES {
        if *stop.borrow() {
            break;
        }
        let frame = tokio::select! {
            biased;
            changed = stop.changed() => {
                if changed.is_err() || *stop.borrow() {
                    break;
                }
                continue;
            }
            () = &mut hard => break,
            frame = framed.next() => frame,
        };
        // Receipt is when the frame was read, before it is parsed.
        let at = Instant::now();
        match frame {
            Some(Ok(ws::Frame::Text(text))) => {
                let Ok(msg) = serde_json::from_slice::<ServerMsg>(&text) else {
                    continue;
                };
                match msg.kind {
                    "stock" if msg.sku == Some(&*sku) => {
                        let (Some(seq), Some(available)) = (msg.seq, msg.available) else {
                            continue;
                        };
                        if rec.subscribed {
                            rec.deliveries.push(Delivery { seq, available, at });
                        } else {
                            rec.subscribed = true;
                            progress.subscribed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    "welcome" => {
                        if let Some(ms) = msg.coalesce_ms {
                            progress.coalesce_ms.store(ms, Ordering::Relaxed);
                        }
                    }
                    _ => {}
                }
            }
            Some(Ok(ws::Frame::Ping(p))) => {
                if framed.send(ws::Message::Pong(p)).await.is_err() {
                    rec.closed_early = Some("pong failed".into());
                    break;
                }
            }
            Some(Ok(ws::Frame::Close(reason))) => {
                rec.closed_early = Some(format!(
                    "closed by the server: {:?}",
                    reason.map(|r| r.code)
                ));
                break;
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => {
                rec.closed_early = Some(format!("protocol error: {e}"));
                break;
            }
            None => {
                rec.closed_early = Some("connection ended".into());
                break;
            }
        }
    }
    if rec.closed_early.is_some() {
        progress.closed.fetch_add(1, Ordering::Relaxed);
    } else {
        let _ = tokio::time::timeout(
            Duration::from_millis(500),
            framed.send(ws::Message::Close(None)),
        )
        .await;
    }
    rec
}

/// The observer socket of the driver: learns each change's `seq` (and the starting
/// value), on the main runtime.
pub struct Observer {
    seen: Rc<RefCell<Vec<Delivery>>>,
    coalesce_ms: Rc<Cell<Option<u64>>>,
    stop: tokio::sync::watch::Sender<bool>,
}

impl Observer {
    /// Connects and subscribes to `sku` on `base`; reads until stopped or `hard`.
    pub async fn start(
        client: &awc::Client,
        base: &str,
        sku: &str,
        hard: Instant,
    ) -> anyhow::Result<Self> {
        let (_resp, mut framed) =
            tokio::time::timeout(Duration::from_secs(10), client.ws(ws_url(base)).connect())
                .await
                .map_err(|_| anyhow::anyhow!("observer socket: connect timeout"))?
                .map_err(|e| anyhow::anyhow!("observer socket: {e}"))?;
        framed
            .send(ws::Message::Text(
                json!({ "op": "subscribe", "skus": [sku] })
                    .to_string()
                    .into(),
            ))
            .await
            .map_err(|e| anyhow::anyhow!("observer subscribe: {e}"))?;
        let seen = Rc::new(RefCell::new(Vec::new()));
        let coalesce_ms = Rc::new(Cell::new(None));
        let (stop, mut stop_rx) = tokio::sync::watch::channel(false);
        let (seen2, coalesce2, sku) = (seen.clone(), coalesce_ms.clone(), sku.to_owned());
        actix_web::rt::spawn(async move {
            let hard = tokio::time::Instant::from_std(hard);
            for _ in 0..MAX_FRAMES {
                let frame = tokio::select! {
                    _ = stop_rx.changed() => break,
                    _ = tokio::time::sleep_until(hard) => break,
                    f = framed.next() => f,
                };
                match frame {
                    Some(Ok(ws::Frame::Text(text))) => {
                        if let Ok(m) = serde_json::from_slice::<ServerMsg>(&text) {
                            if m.kind == "welcome" {
                                coalesce2.set(m.coalesce_ms);
                            } else if m.kind == "stock" && m.sku == Some(sku.as_str()) {
                                if let (Some(seq), Some(available)) = (m.seq, m.available) {
                                    seen2.borrow_mut().push(Delivery {
                                        seq,
                                        available,
                                        at: Instant::now(),
                                    });
                                }
                            }
                        }
                    }
                    Some(Ok(ws::Frame::Ping(p))) => {
                        let _ = framed.send(ws::Message::Pong(p)).await;
                    }
                    Some(Ok(_)) => {}
                    _ => break,
                }
            }
            let _ = framed.send(ws::Message::Close(None)).await;
        });
        Ok(Self {
            seen,
            coalesce_ms,
            stop,
        })
    }

    /// The coalescing interval the server announced, once its `welcome` arrived.
    pub fn coalesce_ms(&self) -> Option<u64> {
        self.coalesce_ms.get()
    }

    /// Closes the socket.
    pub fn stop(&self) {
        let _ = self.stop.send(true);
    }

    /// Waits (up to `limit`) for a message matching `pred`.
    pub async fn wait_for(
        &self,
        limit: Duration,
        pred: impl Fn(&Delivery) -> bool,
    ) -> Option<Delivery> {
        let until = Instant::now() + limit;
        loop {
            if let Some(d) = self.seen.borrow().iter().find(|d| pred(d)) {
                return Some(*d);
            }
            if Instant::now() >= until {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
}
