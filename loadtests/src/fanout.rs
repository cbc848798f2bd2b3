//! `fanout`: K WebSocket subscribers to one SKU, spread over the node URLs (and over
//! local source addresses, when ephemeral ports would run out), then N stock changes
//! from one driver session. For every (change, subscriber) pair: receive time minus the
//! time the change's HTTP answer arrived. Also the server's RSS per socket.

use std::{
    cell::{Cell, RefCell},
    net::IpAddr,
    rc::Rc,
    sync::{
        atomic::{AtomicU64, AtomicUsize, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::bail;
use awc::{error::WsClientError, ws};
use futures_util::{SinkExt as _, StreamExt as _};
use serde::Deserialize;
use serde_json::json;

use crate::{
    admin::{self, TestProduct},
    cli::FanoutArgs,
    harness,
    http::{self, send_error_kind, ClientOptions},
    report::{Hist, Recorder, Report, Section},
    session::Session,
    util::{loopback_sources, open_file_limits, rss_kib, thousands},
};

/// Histogram of delivery latencies.
pub const DELIVERY: &str = "stock delivery (receive - change ack)";
/// Histogram of connect + upgrade + first frame times.
pub const CONNECT: &str = "ws connect (TCP + upgrade)";
/// Label of the driver's changes.
pub const PUT: &str = "PUT /api/cart/items/{sku} (driver)";

/// Stock of the fan-out SKU: far more than the changes use.
const STOCK: i64 = 1_000_000;
/// Most frames one socket reads before it stops.
const MAX_FRAMES: u64 = 1_000_000;
/// File descriptors kept aside for everything but the sockets.
const FD_RESERVE: u64 = 200;

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
struct Progress {
    connected: AtomicUsize,
    failed: AtomicUsize,
    subscribed: AtomicUsize,
    closed: AtomicUsize,
    coalesce_ms: AtomicU64,
}

#[derive(Debug, Deserialize)]
struct ServerMsg {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    sku: Option<String>,
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

fn ws_url(base: &str) -> String {
    format!("{}/ws", base.replacen("http://", "ws://", 1))
}

/// One socket: connect, subscribe, record `stock` messages until told to stop.
#[allow(clippy::too_many_arguments)]
async fn subscriber(
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
    let hard = tokio::time::Instant::from_std(hard_deadline);
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
            _ = tokio::time::sleep_until(hard) => break,
            frame = framed.next() => frame,
        };
        match frame {
            Some(Ok(ws::Frame::Text(text))) => {
                let Ok(msg) = serde_json::from_slice::<ServerMsg>(&text) else {
                    continue;
                };
                match msg.kind.as_str() {
                    "stock" if msg.sku.as_deref() == Some(&*sku) => {
                        let (Some(seq), Some(available)) = (msg.seq, msg.available) else {
                            continue;
                        };
                        if rec.subscribed {
                            rec.deliveries.push(Delivery {
                                seq,
                                available,
                                at: Instant::now(),
                            });
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

/// A change the driver made.
#[derive(Debug, Clone, Copy)]
struct Change {
    expected: i64,
    ack: Instant,
    seq: Option<u64>,
}

/// The observer socket of the driver: learns each change's `seq` (and the starting
/// value), on the main runtime.
struct Observer {
    seen: Rc<RefCell<Vec<Delivery>>>,
    coalesce_ms: Rc<Cell<Option<u64>>>,
    stop: tokio::sync::watch::Sender<bool>,
}

impl Observer {
    async fn start(
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
                            } else if m.kind == "stock" && m.sku.as_deref() == Some(sku.as_str()) {
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

    /// Waits (up to `limit`) for a message matching `pred`.
    async fn wait_for(
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

/// The largest subscriber count the open-file and port limits allow, and why.
fn capacity(args: &FanoutArgs, urls: usize, sources: usize) -> anyhow::Result<(u64, Vec<String>)> {
    let mut why = Vec::new();
    let mut cap = u64::MAX;
    let (own, own_hard) = open_file_limits(None)?;
    let own_cap = own.saturating_sub(FD_RESERVE);
    why.push(format!(
        "load generator: open-file limit {} (hard {}) -> at most {} sockets",
        thousands(own),
        thousands(own_hard),
        thousands(own_cap)
    ));
    cap = cap.min(own_cap);
    if let Some(pid) = args.common.server_pid {
        let (srv, srv_hard) = open_file_limits(Some(pid))?;
        // The pid is one node; the sockets are spread evenly over the URLs.
        let srv_cap = srv.saturating_sub(FD_RESERVE).saturating_mul(urls as u64);
        why.push(format!(
            "server pid {pid}: open-file limit {} (hard {}) -> at most {} sockets over {urls} node(s)",
            thousands(srv),
            thousands(srv_hard),
            thousands(srv_cap)
        ));
        cap = cap.min(srv_cap);
    }
    if let Ok(range) = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range") {
        let v: Vec<u64> = range
            .split_whitespace()
            .filter_map(|x| x.parse().ok())
            .collect();
        if let [lo, hi] = v.as_slice() {
            let ports = hi.saturating_sub(*lo) + 1;
            // Bound sockets take a port per source address; unbound ones per destination.
            let port_cap = ports.saturating_mul(if sources > 0 { sources } else { urls } as u64);
            why.push(format!(
                "ephemeral ports {lo}-{hi} x {} {} -> at most {} sockets",
                if sources > 0 { sources } else { urls },
                if sources > 0 {
                    "source address(es)"
                } else {
                    "destination(s)"
                },
                thousands(port_cap)
            ));
            cap = cap.min(port_cap);
        }
    }
    Ok((cap, why))
}

/// Runs the fan-out measurement.
pub async fn run(args: FanoutArgs) -> anyhow::Result<Report> {
    let c = args.common.clone();
    let bases = c.base_strings()?;
    let sources: Vec<IpAddr> = loopback_sources(&args.source_ips.join(","))?;
    let started = Instant::now();
    let hard_deadline = started + c.duration + Duration::from_secs(10);
    let (cap, limits) = capacity(&args, bases.len(), sources.len())?;
    let mut report = Report::new(
        "fanout",
        json!({
            "common": c.json(),
            "subscribers_requested": args.subscribers,
            "changes": args.changes,
            "interval_ms": args.interval.as_millis() as u64,
            "source_ips": args.source_ips,
            "connect_rate": args.connect_rate,
            "connect_batch": args.connect_batch,
        }),
    );
    let mut k = args.subscribers;
    if k as u64 > cap {
        let msg = format!(
            "{} subscribers do not fit this machine's limits: {}",
            thousands(k as u64),
            limits.join("; ")
        );
        if !args.fit_fd_limit {
            bail!("{msg}. Raise them (ulimit -n, --source-ips) or pass --fit-fd-limit to run as many as fit.");
        }
        k = cap as usize;
        report.notes.push(format!(
            "{msg}; ran {} instead (--fit-fd-limit)",
            thousands(k as u64)
        ));
    }
    for l in &limits {
        println!("fanout: {l}");
    }

    let main_client = http::client(&ClientOptions {
        timeout: c.timeout,
        connections: 8,
        source: None,
    });
    let product = TestProduct::fresh("fanout");
    admin::create(&main_client, &bases[0], &args.admin_token, &product, STOCK).await?;
    admin::wait_visible(
        &main_client,
        &bases,
        &product,
        STOCK,
        Duration::from_secs(15),
    )
    .await?;
    let observer = Observer::start(&main_client, &bases[0], &product.sku, hard_deadline).await?;
    let first = observer
        .wait_for(Duration::from_secs(10), |_| true)
        .await
        .ok_or_else(|| {
            anyhow::anyhow!(
                "the observer socket got no stock message for {}",
                product.sku
            )
        })?;
    let a0 = first.available;
    println!(
        "fanout: {} subscribers to {} over {} ({} source address(es)), {} changes",
        thousands(k as u64),
        product.sku,
        bases.join(", "),
        sources.len().max(1),
        args.changes
    );

    let rss_before = c.server_pid.and_then(|p| rss_kib(p).ok());
    let own_rss_before = rss_kib(std::process::id()).ok();
    let progress = Arc::new(Progress::default());
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let threads = c.threads.max(1);
    let connect_rate = args.connect_rate.max(1);
    let batch = args.connect_batch.max(1);
    // Connecting stops in time to leave room for the changes and the grace period.
    let changes_budget =
        args.interval * (args.changes as u32 + 2) + args.grace + Duration::from_secs(15);
    let connect_deadline = (started + c.duration)
        .checked_sub(changes_budget)
        .unwrap_or(started)
        .max(started + Duration::from_secs(5));
    let connect_started = Instant::now();
    let set = {
        let (progress, bases, sku) = (progress.clone(), bases.clone(), product.sku.clone());
        let (sources, timeout) = (sources.clone(), c.timeout);
        harness::spawn(threads, move |t| {
            let (progress, bases, sku) = (progress.clone(), bases.clone(), sku.clone());
            let (sources, stop_rx) = (sources.clone(), stop_rx.clone());
            async move {
                let clients: Vec<awc::Client> = if sources.is_empty() {
                    vec![http::client(&ClientOptions {
                        timeout,
                        connections: 0,
                        source: None,
                    })]
                } else {
                    sources
                        .iter()
                        .map(|ip| {
                            http::client(&ClientOptions {
                                timeout,
                                connections: 0,
                                source: Some(*ip),
                            })
                        })
                        .collect()
                };
                let urls: Vec<Rc<str>> = bases.iter().map(|b| Rc::from(ws_url(b))).collect();
                let sku: Rc<str> = Rc::from(sku.as_str());
                let mine: Vec<usize> = (t..k).step_by(threads).collect();
                let per_thread_rate = (connect_rate as f64 / threads as f64).max(1.0);
                let per_batch = (batch / threads).max(1);
                let mut handles = Vec::with_capacity(mine.len());
                for chunk in mine.chunks(per_batch) {
                    if Instant::now() >= connect_deadline || *stop_rx.borrow() {
                        break;
                    }
                    let t0 = Instant::now();
                    let mut ready = Vec::with_capacity(chunk.len());
                    for &i in chunk {
                        let (tx, rx) = tokio::sync::oneshot::channel();
                        let client = clients[i % clients.len()].clone();
                        handles.push(actix_web::rt::spawn(subscriber(
                            client,
                            urls[i % urls.len()].clone(),
                            sku.clone(),
                            stop_rx.clone(),
                            progress.clone(),
                            Duration::from_secs(15),
                            hard_deadline,
                            tx,
                        )));
                        ready.push(rx);
                    }
                    futures_util::future::join_all(ready).await;
                    let least = Duration::from_secs_f64(chunk.len() as f64 / per_thread_rate);
                    if let Some(rest) = least.checked_sub(t0.elapsed()) {
                        tokio::time::sleep(rest).await;
                    }
                }
                let mut recs = Vec::with_capacity(handles.len());
                for h in handles {
                    if let Ok(r) = h.await {
                        recs.push(r);
                    }
                }
                recs
            }
        })?
    };

    // Progress until every socket connected or failed (or connecting ran out of time).
    let mut last_print = Instant::now();
    loop {
        let (conn, failed) = (
            progress.connected.load(Ordering::Relaxed),
            progress.failed.load(Ordering::Relaxed),
        );
        let done = conn + failed >= k;
        if done || last_print.elapsed() >= Duration::from_secs(1) {
            let secs = connect_started.elapsed().as_secs_f64();
            println!(
                "fanout: connected {}/{} (failed {}, subscribed {}) in {:.1} s, {:.0}/s",
                thousands(conn as u64),
                thousands(k as u64),
                thousands(failed as u64),
                thousands(progress.subscribed.load(Ordering::Relaxed) as u64),
                secs,
                conn as f64 / secs.max(0.001)
            );
            last_print = Instant::now();
        }
        if done || Instant::now() >= connect_deadline + Duration::from_secs(20) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let connect_time = connect_started.elapsed();
    // Every connected socket should get its current value promptly.
    let settle = Instant::now() + Duration::from_secs(15);
    while progress.subscribed.load(Ordering::Relaxed) + progress.closed.load(Ordering::Relaxed)
        < progress.connected.load(Ordering::Relaxed)
        && Instant::now() < settle
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Let the server settle its allocations before reading RSS.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_connected = c.server_pid.and_then(|p| rss_kib(p).ok());
    let own_rss_connected = rss_kib(std::process::id()).ok();
    let subscribed_before = progress.subscribed.load(Ordering::Relaxed);

    // The changes.
    let coalesce = observer
        .coalesce_ms
        .get()
        .or(Some(progress.coalesce_ms.load(Ordering::Relaxed)).filter(|m| *m > 0))
        .unwrap_or(100);
    let interval = args.interval.max(Duration::from_millis(coalesce + 50));
    let mut rec = Recorder::default();
    let mut driver = Session::new(main_client.clone(), Rc::from(bases[0].as_str()));
    let mut changes: Vec<Change> = Vec::new();
    let mut last_seq = first.seq;
    println!(
        "fanout: {} changes, one every {} ms (server coalescing {} ms)",
        args.changes,
        interval.as_millis(),
        coalesce
    );
    for n in 0..args.changes {
        if Instant::now() >= started + c.duration {
            report
                .notes
                .push(format!("the run's deadline stopped the changes after {n}"));
            break;
        }
        let q = if n % 2 == 0 { 1 } else { 2 };
        let reply = match driver.put_item(&product.sku, q).await {
            Ok(r) => r,
            Err(f) => {
                rec.failure(PUT, &f);
                continue;
            }
        };
        let ack = Instant::now();
        rec.reply(PUT, &reply, reply.status == 200);
        if reply.status != 200 {
            tokio::time::sleep(interval).await;
            continue;
        }
        let expected = a0 - q;
        let seen = observer
            .wait_for(interval.max(Duration::from_secs(2)), |d| {
                d.seq > last_seq && d.available == expected
            })
            .await;
        if let Some(d) = seen {
            last_seq = d.seq;
        }
        changes.push(Change {
            expected,
            ack,
            seq: seen.map(|d| d.seq),
        });
        if let Some(rest) = (ack + interval).checked_duration_since(Instant::now()) {
            tokio::time::sleep(rest).await;
        }
    }
    tokio::time::sleep(args.grace).await;
    let rss_after = c.server_pid.and_then(|p| rss_kib(p).ok());
    let _ = stop_tx.send(true);
    let _ = observer.stop.send(true);
    let subs: Vec<SubRecord> = set.join().await?.into_iter().flatten().collect();
    // Give the units back.
    if let Ok(r) = driver.delete_item(&product.sku).await {
        rec.reply("DELETE /api/cart/items/{sku} (driver)", &r, r.status == 200);
    }

    // Match deliveries to changes by seq.
    let known: Vec<(usize, u64)> = changes
        .iter()
        .enumerate()
        .filter_map(|(i, ch)| ch.seq.map(|s| (i, s)))
        .collect();
    let unobserved = changes.len() - known.len();
    let mut delivery = Hist::new();
    let (mut missing, mut early, mut wrong, mut delivered) = (0u64, 0u64, 0u64, 0u64);
    let mut connect_hist = Hist::new();
    let mut failures: std::collections::BTreeMap<String, u64> = Default::default();
    let mut closed_early: std::collections::BTreeMap<String, u64> = Default::default();
    let subscribed: Vec<&SubRecord> = subs.iter().filter(|s| s.subscribed).collect();
    for s in &subs {
        if let Some(d) = s.connect {
            connect_hist.record(d);
        }
        if let Some(f) = &s.failure {
            *failures.entry(f.clone()).or_default() += 1;
        }
        if let Some(f) = &s.closed_early {
            *closed_early.entry(f.clone()).or_default() += 1;
        }
    }
    for s in &subscribed {
        for (j, (ci, seq)) in known.iter().enumerate() {
            let upper = known.get(j + 1).map(|(_, s)| *s).unwrap_or(u64::MAX);
            let ch = &changes[*ci];
            match s.deliveries.iter().find(|d| d.seq >= *seq && d.seq < upper) {
                Some(d) => {
                    delivered += 1;
                    if d.at < ch.ack {
                        early += 1;
                    }
                    if d.available != ch.expected {
                        wrong += 1;
                    }
                    delivery.record(d.at.saturating_duration_since(ch.ack));
                }
                None => missing += 1,
            }
        }
        missing += unobserved as u64;
    }
    rec.hists.insert(DELIVERY.into(), delivery.clone());
    rec.hists.insert(CONNECT.into(), connect_hist);

    let connected = subs.iter().filter(|s| s.connect.is_some()).count() as u64;
    let expected_deliveries = subscribed.len() as u64 * changes.len() as u64;
    report.figure_int("subscribers requested", args.subscribers as u64);
    report.figure_int("subscribers attempted", k as u64);
    report.figure_int("sockets connected", connected);
    report.figure_int(
        "sockets subscribed (got the current value)",
        subscribed.len() as u64,
    );
    report.figure_int(
        "sockets subscribed before the changes",
        subscribed_before as u64,
    );
    report.figure_int("connect failures", failures.values().sum());
    for (kind, n) in &failures {
        report.figure_int(&format!("connect failure: {kind}"), *n);
    }
    for (kind, n) in &closed_early {
        report.figure_int(&format!("closed early: {kind}"), *n);
    }
    report.figure_f64("connect phase (s)", connect_time.as_secs_f64(), 2);
    report.figure_f64(
        "connect rate (sockets/s)",
        connected as f64 / connect_time.as_secs_f64().max(0.001),
        0,
    );
    report.figure_int("changes made", changes.len() as u64);
    report.figure_int("changes the observer did not see", unobserved as u64);
    report.figure_int("deliveries expected", expected_deliveries);
    report.figure_int("deliveries received", delivered);
    report.figure_int("deliveries missing", missing);
    report.figure_int("deliveries before the HTTP answer (counted as 0 ms)", early);
    report.figure_int("deliveries with an unexpected value", wrong);
    let sm = delivery.summary();
    report.figure(
        "delivery p50 / p90 / p99 / max (ms)",
        json!({ "p50": sm.p50, "p90": sm.p90, "p99": sm.p99, "max": sm.max }),
        format!(
            "{:.1} / {:.1} / {:.1} / {:.1}",
            sm.p50, sm.p90, sm.p99, sm.max
        ),
    );
    report.rss(rss_before, rss_after);
    if let Some(kib) = rss_connected {
        report.figure_int("server RSS with sockets open (KiB)", kib);
    }
    if let (Some(b), Some(a)) = (rss_before, rss_connected) {
        if connected > 0 {
            let per = (a.saturating_sub(b) as f64 * 1024.0) / connected as f64;
            report.figure(
                "server RSS per socket (bytes)",
                json!(per.round()),
                format!(
                    "{} ({:.1} KiB)",
                    thousands(per.round() as u64),
                    per / 1024.0
                ),
            );
        }
    }
    if let (Some(b), Some(a)) = (own_rss_before, own_rss_connected) {
        if connected > 0 {
            let per = (a.saturating_sub(b) as f64 * 1024.0) / connected as f64;
            report.figure(
                "load generator RSS per socket (bytes)",
                json!(per.round()),
                format!(
                    "{} ({:.1} KiB)",
                    thousands(per.round() as u64),
                    per / 1024.0
                ),
            );
        }
    }
    report.notes.push(format!(
        "latency = when a subscriber read the stock message minus when the driver's PUT answer arrived; subscribers share {threads} load thread(s), so reading {} sockets adds client-side queueing",
        thousands(subscribed.len() as u64)
    ));
    if c.strict {
        if missing > 0 {
            report
                .failures
                .push(format!("{missing} deliveries missing"));
        }
        if wrong > 0 {
            report
                .failures
                .push(format!("{wrong} deliveries with an unexpected value"));
        }
        if connected < k as u64 {
            report.failures.push(format!(
                "{} of {k} sockets did not connect",
                k as u64 - connected
            ));
        }
        if changes.len() < args.changes {
            report.failures.push(format!(
                "{} of {} changes were not made",
                args.changes - changes.len(),
                args.changes
            ));
        }
    }
    report.sections.push(Section {
        name: "surge".into(),
        elapsed: started.elapsed(),
        recorder: rec,
    });
    report.check_errors(c.strict);
    Ok(report)
}
