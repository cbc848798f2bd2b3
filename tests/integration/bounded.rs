//! Bounded state: anonymous traffic creates no row and no actor, live carts are capped
//! (the least recently used passivated and brought back intact), the purge keeps
//! tables bounded, and sockets are capped per client IP and let go when they do not
//! read. The memory figures are those of a real `surge` process.

use std::time::{Duration, Instant};

use futures_util::future::join_all;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::{
    common::{
        db_with_sku, error_code, make_sku, test_commerce, ws_connect, ws_send, ws_wait, Buyer,
        Options, TestApp, TestDb, ADMIN_TOKEN,
    },
    nodes::Node,
};

/// Resident memory of a process, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

/// The value of an unlabelled metric in a node's /metrics; `None` when never set.
async fn metric(http: &awc::Client, base: &str, name: &str) -> Option<f64> {
    let mut resp = http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .expect("metrics");
    let body = resp.body().limit(1 << 22).await.expect("metrics body");
    let text = String::from_utf8_lossy(&body).into_owned();
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// Rows of the tables a shopper's writes fill: carts, reservations, idempotency keys,
/// orders.
async fn rows(db: &TestDb) -> [i64; 4] {
    let client = db.client().await;
    let mut out = [0; 4];
    for (i, table) in ["carts", "reservations", "idempotency_keys", "orders"]
        .iter()
        .enumerate()
    {
        out[i] = client
            .query_one(&format!("SELECT count(*) FROM {table}"), &[])
            .await
            .expect("count")
            .get(0);
    }
    out
}

/// An HTTP/1.1 connection driven by hand: a request is written as bytes and its answer
/// read by its Content-Length, so that the client costs little next to the server it
/// measures.
pub(crate) struct RawHttp {
    stream: tokio::net::TcpStream,
    buf: Vec<u8>,
}

impl RawHttp {
    pub(crate) async fn connect(port: u16) -> Self {
        let stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("connect");
        Self {
            stream,
            buf: Vec::new(),
        }
    }

    /// Sends `method path` with `headers` and `body`; returns the status and the body.
    pub(crate) async fn send(
        &mut self,
        method: &str,
        path: &str,
        headers: &str,
        body: &str,
    ) -> (u16, Vec<u8>) {
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{headers}Content-Length: {}\r\n\r\n{body}",
            body.len()
        );
        self.stream.write_all(req.as_bytes()).await.expect("send");
        let head_end = loop {
            if let Some(i) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            self.fill().await;
        };
        let head = String::from_utf8_lossy(&self.buf[..head_end]).to_ascii_lowercase();
        let status = head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .expect("status");
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        while self.buf.len() < head_end + length {
            self.fill().await;
        }
        let body = self.buf[head_end..head_end + length].to_vec();
        self.buf.drain(..head_end + length);
        (status, body)
    }

    async fn fill(&mut self) {
        let mut chunk = [0u8; 8192];
        let n = self.stream.read(&mut chunk).await.expect("read");
        assert!(n > 0, "the server closed the connection");
        self.buf.extend_from_slice(&chunk[..n]);
    }
}

/// One cookieless request of the kinds anonymous traffic sends, by `i`: a read of the
/// cart, a DELETE of a line that is not there, a checkout of nothing, an order lookup,
/// a refused PUT. `Err` says what was unexpected.
async fn anonymous(conn: &mut RawHttp, sku: &str, i: usize) -> Result<(), String> {
    let json = "Content-Type: application/json\r\n";
    let key = format!("{json}Idempotency-Key: k-{i}\r\n");
    let order = format!("/api/orders/{}", uuid::Uuid::new_v4());
    let line = format!("/api/cart/items/{sku}");
    let (expected, method, path, headers, body) = match i % 5 {
        0 => (200, "GET", "/api/cart", "", ""),
        1 => (200, "DELETE", line.as_str(), "", ""),
        2 => (
            409,
            "POST",
            "/api/checkout",
            key.as_str(),
            r#"{"email":"anon@example.com"}"#,
        ),
        3 => (404, "GET", order.as_str(), "", ""),
        _ => (400, "PUT", line.as_str(), json, r#"{"quantity":0}"#),
    };
    let (status, _) = conn.send(method, path, headers, body).await;
    if status == expected {
        Ok(())
    } else {
        Err(format!("{method} {path}: {status}, expected {expected}"))
    }
}

/// `total` anonymous requests, `concurrency` at a time over kept-alive connections.
async fn flood_anonymous(port: u16, sku: &str, total: usize, concurrency: usize) {
    let per = total / concurrency;
    let wrong: Vec<String> = join_all((0..concurrency).map(|w| async move {
        let mut conn = RawHttp::connect(port).await;
        let mut wrong = Vec::new();
        for j in 0..per {
            if let Err(e) = anonymous(&mut conn, sku, w * per + j).await {
                wrong.push(e);
            }
        }
        wrong
    }))
    .await
    .into_iter()
    .flatten()
    .collect();
    assert!(
        wrong.is_empty(),
        "{} unexpected answers, e.g. {:?}",
        wrong.len(),
        wrong.first()
    );
}

/// Guards against anonymous traffic growing state: cookieless reads of the cart,
/// DELETEs of a line that is not there, checkouts of nothing, order lookups and
/// refused PUTs once made a `carts` row and a live actor each. 24,000 of them must add
/// no row to any table a shopper's write fills, start no cart actor, and grow the
/// process's memory by less than 32 MiB after a warm-up.
#[actix_web::test]
async fn anonymous_traffic_adds_no_rows_no_actors_and_little_memory() {
    let db = db_with_sku("ANON-1", 100).await;
    let port = crate::nodes::free_port();
    let node = Node::start_on(port, &db.url, "anon-node", &[]).await;
    let metrics_http = awc::Client::default();

    flood_anonymous(port, "ANON-1", 2_000, 64).await;
    let before = rows(&db).await;
    assert_eq!(before, [0; 4], "the warm-up wrote nothing either");
    let rss_before = rss_kib(node.pid());

    let started = Instant::now();
    flood_anonymous(port, "ANON-1", 24_000, 64).await;
    let took = started.elapsed();

    let rss_after = rss_kib(node.pid());
    let after = rows(&db).await;
    let actors = metric(&metrics_http, &node.base, "carts_active")
        .await
        .unwrap_or(0.0);
    eprintln!(
        "24,000 anonymous requests in {took:?}: RSS {rss_before} -> {rss_after} KiB, rows {after:?}, live carts {actors}"
    );
    assert_eq!(
        after, before,
        "carts, reservations, keys, orders: no new row"
    );
    assert_eq!(actors, 0.0, "no cart actor started");
    assert!(
        rss_after.saturating_sub(rss_before) < 32 * 1024,
        "RSS grew by {} KiB",
        rss_after.saturating_sub(rss_before)
    );
}

/// Guards against a session that holds a cookie but never reserved costing a row or
/// an actor (a claim used to insert the cart row): its reads, removals, empty
/// checkouts and order lookups write nothing, and its first reservation makes the row.
#[actix_web::test]
async fn a_returning_session_costs_nothing_until_it_reserves() {
    let app = TestApp::spawn(Options {
        seed_demo: false,
        ..Options::default()
    })
    .await;
    make_sku(&app, "RET-1", 10).await;
    let mut buyer = Buyer::new(&app.base, app.http.clone());
    assert_eq!(buyer.cart().await.0, 200);
    assert!(
        buyer.cookie.is_some(),
        "a fresh session still gets its cookie"
    );
    for _ in 0..3 {
        let (status, body) = buyer.cart().await;
        assert_eq!(
            (status, body["lines"].as_array().map(Vec::len)),
            (200, Some(0))
        );
        let (status, _) = buyer.send("DELETE", "/api/cart/items/RET-1", &[], "").await;
        assert_eq!(status, 200);
        let (status, body) = buyer.checkout("same-key").await;
        assert_eq!((status, error_code(&body).as_str()), (409, "cart_empty"));
        let path = format!("/api/orders/{}", uuid::Uuid::new_v4());
        assert_eq!(buyer.send("GET", &path, &[], "").await.0, 404);
    }
    assert_eq!(rows(&app.db).await, [0; 4]);
    assert_eq!(app.state().carts.live_count(), 0, "no actor started");

    let (status, body) = buyer.set("RET-1", 2).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        rows(&app.db).await[..2],
        [1, 1],
        "the first line makes the row"
    );
    let (status, body) = buyer.checkout("k-1").await;
    assert_eq!(status, 201, "{body}");
    // With the actor gone, a repeat of the key still replays the order.
    let (status, again) = buyer.checkout("k-1").await;
    assert_eq!((status, &again["id"]), (201, &body["id"]));
}

/// Guards against the cap on live carts losing state: with a cap of 4, 7 sessions that
/// each reserve leave at most 4 actors, and every cart, passivated or not, reads back
/// with exactly the lines, expiries and version its reservation answered.
#[actix_web::test]
async fn past_the_cap_carts_are_passivated_and_come_back_exactly() {
    const CAP: usize = 4;
    let mut commerce = test_commerce();
    commerce.max_cart_actors = CAP;
    let app = TestApp::spawn(Options {
        seed_demo: false,
        commerce,
        ..Options::default()
    })
    .await;
    make_sku(&app, "CAP-1", 100).await;
    make_sku(&app, "CAP-2", 100).await;
    let mut buyers = Vec::new();
    let mut answers = Vec::new();
    for i in 0..CAP + 3 {
        let mut buyer = Buyer::new(&app.base, app.http.clone());
        let (status, _) = buyer.set("CAP-1", 1 + (i as i64 % 3)).await;
        assert_eq!(status, 200);
        let (status, body) = buyer.set("CAP-2", 1).await;
        assert_eq!(status, 200, "{body}");
        answers.push(body);
        buyers.push(buyer);
    }
    // A passivated actor stops as soon as it handles the request to; give it a moment.
    let deadline = Instant::now() + Duration::from_secs(5);
    while app.state().carts.live_count() > CAP && Instant::now() < deadline {
        actix_web::rt::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        app.state().carts.live_count() <= CAP,
        "{} live carts over a cap of {CAP}",
        app.state().carts.live_count()
    );
    for (buyer, answered) in buyers.iter_mut().zip(&answers) {
        let (status, now) = buyer.cart().await;
        assert_eq!(status, 200);
        assert_eq!(&now, answered, "the cart came back exactly");
    }
    assert!(app.state().carts.live_count() <= CAP + 1);
    let (_, _, _, reserved, _) = crate::common::buckets(&app.db, "CAP-1").await;
    assert_eq!(
        reserved,
        (0..CAP as i64 + 3).map(|i| 1 + i % 3).sum::<i64>()
    );
}

/// Guards against the purge deleting what it must keep, and against it keeping what
/// it must not: only empty carts past the age go (a cart with a line stays however
/// old), only keys past 24 hours, only nodes long silent that hold no lease; batches
/// are bounded; and a session whose empty cart was purged under its live actor
/// reserves again.
#[actix_web::test]
async fn the_purge_deletes_old_empty_carts_old_keys_and_gone_nodes_only() {
    use surge::store::purge;
    let app = TestApp::spawn(Options {
        seed_demo: false,
        ..Options::default()
    })
    .await;
    make_sku(&app, "PURGE-1", 10).await;
    let mut holding = Buyer::new(&app.base, app.http.clone());
    let mut emptied = Buyer::new(&app.base, app.http.clone());
    let mut recent = Buyer::new(&app.base, app.http.clone());
    for b in [&mut holding, &mut emptied, &mut recent] {
        assert_eq!(b.set("PURGE-1", 1).await.0, 200);
    }
    for b in [&mut emptied, &mut recent] {
        assert_eq!(
            b.send("DELETE", "/api/cart/items/PURGE-1", &[], "").await.0,
            200
        );
    }
    let client = app.db.client().await;
    // Age every cart but the recent one by two days.
    client
        .execute(
            "UPDATE carts SET updated_at = now() - interval '2 days'
              WHERE id NOT IN (SELECT id FROM carts ORDER BY created_at DESC LIMIT 1)",
            &[],
        )
        .await
        .expect("age carts");
    let day = Duration::from_secs(86_400);
    assert_eq!(
        purge::empty_carts(&client, day, 1000).await.expect("purge"),
        1,
        "only the old empty cart"
    );
    let left: i64 = client
        .query_one("SELECT count(*) FROM carts", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(left, 2, "the cart with a line and the recent one stay");
    let (status, body) = emptied.set("PURGE-1", 2).await;
    assert_eq!(
        status, 200,
        "a purged cart's session reserves again: {body}"
    );
    assert_eq!(body["lines"][0]["quantity"], 2);

    client
        .batch_execute(
            "INSERT INTO idempotency_keys (session_id, key, order_id, created_at)
             SELECT 's-old', 'k' || g, gen_random_uuid(), now() - interval '25 hours'
               FROM generate_series(1, 3) g;
             INSERT INTO idempotency_keys (session_id, key, order_id, created_at)
             VALUES ('s-new', 'k', gen_random_uuid(), now() - interval '23 hours');",
        )
        .await
        .expect("keys");
    assert_eq!(
        purge::idempotency_keys(&client, 2).await.expect("purge"),
        2,
        "one batch"
    );
    assert_eq!(purge::idempotency_keys(&client, 2).await.expect("purge"), 1);
    let keys: Vec<String> = client
        .query("SELECT session_id FROM idempotency_keys", &[])
        .await
        .expect("keys")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(keys, ["s-new"]);

    client
        .batch_execute(
            "INSERT INTO nodes (node_id, heartbeat_at) VALUES
                 ('gone-free', now() - interval '2 hours'),
                 ('gone-holding', now() - interval '2 hours'),
                 ('silent-briefly', now() - interval '10 minutes');
             INSERT INTO stock_leases (node_id, sku, quantity, expires_at)
             VALUES ('gone-holding', 'PURGE-1', 0, now() + interval '1 hour');",
        )
        .await
        .expect("nodes");
    let hour = Duration::from_secs(3600);
    assert_eq!(
        purge::gone_nodes(&client, hour, 1000).await.expect("purge"),
        1
    );
    let nodes: Vec<String> = client
        .query("SELECT node_id FROM nodes ORDER BY node_id", &[])
        .await
        .expect("nodes")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(!nodes.iter().any(|n| n == "gone-free"), "{nodes:?}");
    assert!(
        nodes.iter().any(|n| n == "gone-holding"),
        "its lease is held"
    );
    assert!(nodes.iter().any(|n| n == "silent-briefly"), "not gone long");
    crate::common::assert_stock_sound(&app.db).await;
}

/// A WebSocket upgrade request made by hand; returns the status and, unless the
/// upgrade was accepted, the JSON body.
async fn upgrade_status(port: u16) -> (u16, serde_json::Value) {
    let mut conn = RawHttp::connect(port).await;
    let req =
        "GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
               Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";
    conn.stream.write_all(req.as_bytes()).await.expect("send");
    let head_end = loop {
        if let Some(i) = conn.buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        conn.fill().await;
    };
    let head = String::from_utf8_lossy(&conn.buf[..head_end]).to_ascii_lowercase();
    let status: u16 = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status");
    if status == 101 {
        return (status, serde_json::Value::Null);
    }
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    while conn.buf.len() < head_end + length {
        conn.fill().await;
    }
    let body = serde_json::from_slice(&conn.buf[head_end..head_end + length])
        .unwrap_or(serde_json::Value::Null);
    (status, body)
}

/// Guards against one client IP holding sockets without bound: past the cap its
/// upgrade is refused with 429 and a body that says why, and a closed socket frees
/// its place.
#[actix_web::test]
async fn sockets_past_the_per_ip_cap_are_refused_with_429() {
    let mut live = crate::common::test_live();
    live.limits.max_per_ip = 2;
    let app = TestApp::spawn(Options {
        seed_demo: false,
        live,
        ..Options::default()
    })
    .await;
    let port = app.port();
    let first = ws_connect(&app.base, None).await;
    let _second = ws_connect(&app.base, None).await;
    let (status, body) = upgrade_status(port).await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(error_code(&body), "too_many_sockets");
    drop(first);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (status, _) = upgrade_status(port).await;
        if status == 101 {
            break;
        }
        assert!(
            status == 429 && Instant::now() < deadline,
            "a closed socket's place was not given back ({status})"
        );
        actix_web::rt::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A WebSocket client made by hand on a socket with a tiny receive buffer, so that a
/// client that does not read fills it at once.
async fn raw_socket(port: u16, subscribe: &str) -> tokio::net::TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(1024).expect("SO_RCVBUF");
    let mut stream = socket
        .connect(([127, 0, 0, 1], port).into())
        .await
        .expect("connect");
    let handshake = format!(
        "GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    stream
        .write_all(handshake.as_bytes())
        .await
        .expect("send handshake");
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        stream
            .read_exact(&mut byte)
            .await
            .expect("handshake answer");
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    // One masked text frame (a client must mask; the mask is arbitrary).
    let payload = subscribe.as_bytes();
    let mask = [0x11u8, 0x22, 0x33, 0x44];
    let mut frame = vec![0x81u8];
    if payload.len() < 126 {
        frame.push(0x80 | payload.len() as u8);
    } else {
        frame.push(0x80 | 126);
        frame.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    }
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    stream.write_all(&frame).await.expect("send subscribe");
    stream
}

/// Guards against a client that never reads holding the server's memory and its
/// socket: it subscribes to many SKUs with a tiny receive buffer and reads nothing
/// while their stock changes thousands of times. The server must let it go during the
/// flood, keep its own memory bounded, and keep serving a socket that does read.
#[actix_web::test]
async fn a_socket_that_never_reads_is_let_go_while_others_keep_receiving() {
    const SKUS: usize = 64;
    let db = TestDb::create().await;
    let port = crate::nodes::free_port();
    let node = Node::start_on(
        port,
        &db.url,
        "slow-reader-node",
        &[
            ("SURGE_ADMIN_TOKEN", ADMIN_TOKEN),
            ("SURGE_COALESCE_MS", "10"),
            ("SURGE_SEND_TIMEOUT_SECS", "2"),
        ],
    )
    .await;
    let http = crate::common::shared_client();
    let names: Vec<String> = (0..SKUS)
        .map(|i| format!("SLOW-READER-{i:03}-PADDED-TO-MAKE-EVERY-STOCK-MESSAGE-LONGER"))
        .collect();
    for name in &names {
        let body = serde_json::json!({
            "slug": name.to_lowercase(),
            "name": name,
            "variants": [{"sku": name, "price_minor": 100, "currency": "EUR", "stock": 1}]
        });
        let mut resp = http
            .post(format!("{}/api/admin/products", node.base))
            .insert_header(("authorization", format!("Bearer {ADMIN_TOKEN}")))
            .send_json(&body)
            .await
            .expect("create product");
        assert_eq!(resp.status().as_u16(), 201, "{:?}", resp.body().await);
    }
    let subscribe = serde_json::json!({"op": "subscribe", "skus": names}).to_string();
    let mut stuck = raw_socket(port, &subscribe).await;
    let mut reader = ws_connect(&node.base, None).await;
    ws_send(
        &mut reader,
        &serde_json::json!({"op": "subscribe", "skus": [names[0]]}).to_string(),
    )
    .await;
    assert!(
        ws_wait(&mut reader, Duration::from_secs(5), |m| m["type"]
            == "stock")
        .await
        .is_some(),
        "the reading socket starts from the current stock"
    );
    // The reading socket reads all along, answering pings (as a browser does) and
    // noting the latest stock of its SKU.
    let heard = std::rc::Rc::new(std::cell::Cell::new((0u64, 0i64)));
    let listening = actix_web::rt::spawn({
        let heard = std::rc::Rc::clone(&heard);
        async move {
            use futures_util::{SinkExt as _, StreamExt as _};
            while let Some(Ok(frame)) = reader.next().await {
                match frame {
                    awc::ws::Frame::Text(bytes) => {
                        let m: serde_json::Value =
                            serde_json::from_slice(&bytes).unwrap_or_default();
                        if m["type"] == "stock" {
                            let (n, _) = heard.get();
                            heard.set((n + 1, m["available"].as_i64().unwrap_or(-1)));
                        }
                    }
                    awc::ws::Frame::Ping(p) => {
                        let _ = reader.send(awc::ws::Message::Pong(p)).await;
                    }
                    awc::ws::Frame::Close(reason) => return Some(format!("{reason:?}")),
                    _ => {}
                }
            }
            None
        }
    });
    let metrics_http = awc::Client::default();
    assert_eq!(
        metric(&metrics_http, &node.base, "ws_open_sockets").await,
        Some(2.0)
    );
    let rss_before = rss_kib(node.pid());

    // Restock every SKU at once, round after round: thousands of stock changes.
    const ROUNDS: usize = 40;
    let started = Instant::now();
    let mut let_go_after = None;
    let mut rss_peak = rss_before;
    let mut round = 0;
    while round < ROUNDS && started.elapsed() < Duration::from_secs(60) {
        round += 1;
        join_all(names.iter().map(|name| {
            let http = http.clone();
            let url = format!("{}/api/admin/inventory/{name}/restock", node.base);
            async move {
                let resp = http
                    .post(url)
                    .insert_header(("authorization", format!("Bearer {ADMIN_TOKEN}")))
                    .send_json(&serde_json::json!({"quantity": 1}))
                    .await
                    .expect("restock");
                assert_eq!(resp.status().as_u16(), 200);
            }
        }))
        .await;
        rss_peak = rss_peak.max(rss_kib(node.pid()));
        if let_go_after.is_none()
            && metric(&metrics_http, &node.base, "ws_open_sockets").await == Some(1.0)
        {
            let_go_after = Some((round, started.elapsed()));
        }
    }
    let slow_closed = metric(&metrics_http, &node.base, "ws_slow_closed_total").await;
    eprintln!(
        "stuck socket let go after {let_go_after:?} ({} stock changes/round, {SKUS} SKUs); \
         RSS {rss_before} -> peak {rss_peak} KiB; slow kicks {slow_closed:?}",
        SKUS
    );
    assert_eq!(round, ROUNDS, "the flood ran its course");
    assert!(
        let_go_after.is_some(),
        "the socket that never reads was never let go"
    );
    // Its connection is gone too, not only its actor: reading what the kernel had
    // buffered for it ends in an error or the end of the stream.
    let mut sink = vec![0u8; 64 * 1024];
    let ended = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match stuck.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the stuck connection is still open");
    // The reading socket hears the latest value of its SKU: 1 + one unit per round.
    let latest = 1 + ROUNDS as i64;
    let deadline = Instant::now() + Duration::from_secs(5);
    while heard.get().1 != latest && Instant::now() < deadline {
        actix_web::rt::time::sleep(Duration::from_millis(20)).await;
    }
    let (messages, last) = heard.get();
    assert_eq!(
        last, latest,
        "the reading socket kept receiving ({messages} messages)"
    );
    assert!(!listening.is_finished(), "the reading socket is still open");
    listening.abort();
    assert!(
        rss_peak.saturating_sub(rss_before) < 32 * 1024,
        "RSS grew by {} KiB",
        rss_peak.saturating_sub(rss_before)
    );
}
