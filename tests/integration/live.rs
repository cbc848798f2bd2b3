//! `/ws`: limits, live stock, session events, and two nodes over Redis.

use std::time::{Duration, Instant};

use crate::common::{
    assert_stock_sound, make_sku, redis_url, shared_client, test_commerce, test_live, ws_closed,
    ws_connect, ws_next, ws_send, ws_wait, Buyer, Options, TestApp, WsEvent,
};

const SECOND: Duration = Duration::from_secs(1);

fn is_stock(sku: &'static str, available: i64) -> impl Fn(&serde_json::Value) -> bool {
    move |v| v["type"] == "stock" && v["sku"] == sku && v["available"] == available
}

#[actix_web::test]
async fn limits_close_with_the_stated_codes_and_the_server_stays_healthy() {
    let mut live = test_live();
    live.limits.max_subscriptions = 5;
    live.limits.max_frame = 1024;
    live.limits.rate = 5;
    live.limits.burst = 10;
    let app = TestApp::spawn(Options {
        seed_demo: false,
        live,
        ..Options::default()
    })
    .await;

    // A bad message is refused, and the socket keeps working.
    let mut ws = ws_connect(&app.base, None).await;
    let welcome = ws_wait(&mut ws, SECOND, |v| v["type"] == "welcome")
        .await
        .expect("welcome");
    assert_eq!(welcome["max_subscriptions"], 5);
    ws_send(&mut ws, "{not json").await;
    let err = ws_wait(&mut ws, SECOND, |v| v["type"] == "error")
        .await
        .expect("error message");
    assert_eq!(err["code"], "invalid_message");
    ws_send(&mut ws, r#"{"op":"subscribe","skus":["A-1"]}"#).await;
    assert!(
        ws_next(&mut ws, Duration::from_millis(300)).await.is_none(),
        "still open, nothing to say"
    );

    // Too many subscriptions.
    ws_send(
        &mut ws,
        r#"{"op":"subscribe","skus":["A-2","A-3","A-4","A-5","A-6"]}"#,
    )
    .await;
    assert_eq!(
        ws_closed(&mut ws, SECOND).await,
        (Some(1008), "too many subscriptions".to_owned())
    );

    // An oversized frame.
    let mut ws = ws_connect(&app.base, None).await;
    let big = format!(r#"{{"op":"subscribe","skus":["{}"]}}"#, "x".repeat(2000));
    ws_send(&mut ws, &big).await;
    assert_eq!(ws_closed(&mut ws, SECOND).await.0, Some(1009));

    // Flooding.
    let mut ws = ws_connect(&app.base, None).await;
    for _ in 0..50 {
        ws_send(&mut ws, r#"{"op":"unsubscribe","skus":[]}"#).await;
    }
    assert_eq!(
        ws_closed(&mut ws, SECOND).await,
        (Some(1008), "rate limit".to_owned())
    );

    // Binary frames.
    let mut ws = ws_connect(&app.base, None).await;
    {
        use futures_util::SinkExt as _;
        let _ = ws
            .send(awc::ws::Message::Binary(vec![1u8, 2, 3].into()))
            .await;
    }
    assert_eq!(ws_closed(&mut ws, SECOND).await.0, Some(1003));

    // A stale or forged cookie does not lock a socket out: it gets a fresh session.
    let mut ws = ws_connect(
        &app.base,
        Some("surge_session=0123456789abcdef0123456789abcdef.AAAA"),
    )
    .await;
    assert!(ws_wait(&mut ws, SECOND, |v| v["type"] == "welcome")
        .await
        .is_some());

    let (status, _) = app.get_json("/healthz").await;
    assert_eq!(status, 200);
    let (status, _) = app.get_json("/readyz").await;
    assert_eq!(status, 200);
    let (_, _) = app.get_json("/api/products").await;
    app.stop().await;
}

#[actix_web::test]
async fn a_purchase_reaches_subscribers_with_the_right_number() {
    let app = TestApp::empty().await;
    make_sku(&app, "LIVE-1", 5).await;
    let mut ws = ws_connect(&app.base, None).await;
    ws_send(&mut ws, r#"{"op":"subscribe","skus":["LIVE-1"]}"#).await;
    let first = ws_wait(&mut ws, SECOND, |v| v["type"] == "stock")
        .await
        .expect("current value on subscribe");
    assert_eq!(first["available"], 5);
    let seq0 = first["seq"].as_i64().expect("seq");

    let mut buyer = Buyer::new(&app.base, shared_client());
    let started = Instant::now();
    assert_eq!(buyer.set("LIVE-1", 2).await.0, 200);
    let msg = ws_wait(&mut ws, SECOND, is_stock("LIVE-1", 3))
        .await
        .expect("3 left within 1 s");
    assert!(msg["seq"].as_i64().expect("seq") > seq0, "seq rises");
    assert!(started.elapsed() < SECOND);

    // Coalescing: many changes inside one interval arrive as few messages, ending on the truth.
    for q in [1, 2, 1, 2, 1] {
        assert_eq!(buyer.set("LIVE-1", q).await.0, 200);
    }
    let last = ws_wait(&mut ws, SECOND, is_stock("LIVE-1", 4))
        .await
        .expect("ends on 4 left");
    assert!(last["seq"].as_i64() > msg["seq"].as_i64());
    let (_, product) = app.get_json("/api/products/live-1").await;
    assert_eq!(
        product["variants"][0]["available"], 4,
        "the API shows the same number"
    );
    assert_stock_sound(&app.db).await;
    app.stop().await;
}

/// Guards the dispatcher changes in vendor/actix-http: an idle socket frees its read and
/// write buffers, and reading and writing afterwards allocate them again, in both
/// directions, as often as the socket falls idle; the read buffer comes back small, and
/// a frame larger than it (3 KiB) is still read whole.
#[actix_web::test]
async fn an_idle_socket_reads_and_writes_after_giving_its_buffers_back() {
    let app = TestApp::empty().await;
    make_sku(&app, "IDLE-1", 5).await;
    let mut ws = ws_connect(&app.base, None).await;
    ws_wait(&mut ws, SECOND, |v| v["type"] == "welcome")
        .await
        .expect("welcome");
    let idle = Duration::from_millis(300);
    actix_web::rt::time::sleep(idle).await;
    ws_send(&mut ws, r#"{"op":"subscribe","skus":["IDLE-1"]}"#).await;
    ws_wait(&mut ws, SECOND, is_stock("IDLE-1", 5))
        .await
        .expect("the current value after an idle spell");
    let mut buyer = Buyer::new(&app.base, shared_client());
    for (round, left) in [(1, 4), (2, 3), (1, 4)] {
        actix_web::rt::time::sleep(idle).await;
        assert_eq!(buyer.set("IDLE-1", round).await.0, 200);
        ws_wait(&mut ws, SECOND, is_stock("IDLE-1", left))
            .await
            .expect("a push after an idle spell");
        let frame = if round == 2 {
            "not json ".repeat(340)
        } else {
            "not json".to_owned()
        };
        ws_send(&mut ws, &frame).await;
        ws_wait(&mut ws, SECOND, |v| v["type"] == "error")
            .await
            .expect("an answer to a frame read after an idle spell");
    }
    ws_send(&mut ws, "{").await;
    ws_wait(&mut ws, SECOND, |v| v["type"] == "error")
        .await
        .expect("the socket still reads after the large frame");
    app.stop().await;
}

#[actix_web::test]
async fn expiry_and_orders_reach_the_owners_sockets() {
    let mut commerce = test_commerce();
    commerce.reservation_ttl = Duration::from_secs(2);
    let app = TestApp::spawn(Options {
        seed_demo: false,
        commerce,
        ..Options::default()
    })
    .await;
    make_sku(&app, "EV-1", 5).await;
    let mut buyer = Buyer::new(&app.base, shared_client());
    assert_eq!(buyer.cart().await.0, 200);
    let cookie = buyer.cookie.clone().expect("session");
    let mut tab1 = ws_connect(&app.base, Some(&cookie)).await;
    let mut tab2 = ws_connect(&app.base, Some(&cookie)).await;
    let mut stranger = ws_connect(&app.base, None).await;
    actix_web::rt::time::sleep(Duration::from_millis(100)).await;

    assert_eq!(buyer.set("EV-1", 2).await.0, 200);
    for tab in [&mut tab1, &mut tab2] {
        let cart = ws_wait(tab, SECOND, |v| v["type"] == "cart")
            .await
            .expect("cart message in every tab");
        assert_eq!(cart["cart"]["lines"][0]["quantity"], 2);
    }
    let expired = ws_wait(&mut tab1, Duration::from_secs(4), |v| {
        v["type"] == "reservation_expired"
    })
    .await
    .expect("expiry message");
    assert_eq!(
        (expired["sku"].as_str(), expired["quantity"].as_i64()),
        (Some("EV-1"), Some(2))
    );

    assert_eq!(buyer.set("EV-1", 1).await.0, 200);
    let (status, order) = buyer.checkout("ev-key").await;
    assert_eq!(status, 201);
    let msg = ws_wait(&mut tab2, SECOND, |v| v["type"] == "order")
        .await
        .expect("order message");
    assert_eq!(msg["order"]["id"], order["id"]);
    assert_eq!(msg["order"]["status"], "placed");

    let (status, _) = app
        .admin_post(
            &format!(
                "/api/admin/orders/{}/status",
                order["id"].as_str().expect("id")
            ),
            Some(crate::common::ADMIN_TOKEN),
            &serde_json::json!({"status": "paid"}),
        )
        .await;
    assert_eq!(status, 200);
    let msg = ws_wait(&mut tab1, SECOND, |v| {
        v["type"] == "order" && v["order"]["status"] == "paid"
    })
    .await
    .expect("status change message");
    assert_eq!(msg["order"]["id"], order["id"]);

    // Nothing of this session leaked to another one.
    loop {
        match ws_next(&mut stranger, Duration::from_millis(200)).await {
            Some(WsEvent::Json(v)) => assert!(v["type"] == "welcome", "leaked: {v}"),
            None => break,
            Some(other) => panic!("{other:?}"),
        }
    }

    // A campaign that starts reaches every socket, the stranger's too.
    let now = i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_millis(),
    )
    .expect("ms");
    let (status, _) = app
        .admin_post(
            "/api/admin/campaigns",
            Some(crate::common::ADMIN_TOKEN),
            &serde_json::json!({"name": "Midnight sale", "product_slug": "ev-1", "starts_at_ms": now - 1000, "ends_at_ms": now + 60_000}),
        )
        .await;
    assert_eq!(status, 201);
    for ws in [&mut stranger, &mut tab1] {
        let msg = ws_wait(ws, Duration::from_secs(3), |v| v["type"] == "campaign")
            .await
            .expect("campaign message");
        assert_eq!(msg["campaign"]["name"], "Midnight sale");
        assert_eq!(msg["campaign"]["product_slug"], "ev-1");
    }
    assert_stock_sound(&app.db).await;
    app.stop().await;
}

#[actix_web::test]
async fn two_nodes_converge_over_redis_and_after_a_bus_outage() {
    let mut live = test_live();
    live.bus_reconnect = Duration::from_millis(1500);
    let redis = Some(redis_url());
    let a = TestApp::spawn(Options {
        seed_demo: false,
        live: live.clone(),
        redis_url: redis.clone(),
        node_id: Some("bus-a".into()),
        ..Options::default()
    })
    .await;
    make_sku(&a, "BUS-1", 10).await;
    let b = TestApp::spawn(Options {
        seed_demo: false,
        live,
        redis_url: redis.clone(),
        node_id: Some(format!("bus-b-{}", uuid::Uuid::new_v4().simple())),
        database_url: Some(a.db.url.clone()),
        ..Options::default()
    })
    .await;
    let mut ws = ws_connect(&b.base, None).await;
    ws_send(&mut ws, r#"{"op":"subscribe","skus":["BUS-1"]}"#).await;
    assert!(ws_wait(&mut ws, SECOND, is_stock("BUS-1", 10))
        .await
        .is_some());

    // Both nodes on the bus before the clock starts (at startup a node repairs
    // whatever it missed with a resync as soon as it has subscribed).
    let bus_b = b.server.as_ref().expect("b").bus().clone();
    let bus_a = a.server.as_ref().expect("a").bus().clone();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !(bus_a.is_connected() && bus_b.is_connected()) {
        assert!(Instant::now() < deadline, "nodes never joined the bus");
        actix_web::rt::time::sleep(Duration::from_millis(20)).await;
    }
    let mut buyer = Buyer::new(&a.base, shared_client());
    assert_eq!(buyer.set("BUS-1", 1).await.0, 200);
    let answered = Instant::now();
    ws_wait(&mut ws, SECOND, is_stock("BUS-1", 9))
        .await
        .expect("node B's socket sees node A's sale within 1 s");
    eprintln!(
        "cross-node delivery {:?} after node A's answer",
        answered.elapsed()
    );

    // Cut node B off the bus, change stock on A while B is away, and check B repairs it.
    let bus_b = b.server.as_ref().expect("b").bus().clone();
    let killed = kill_client(&bus_b.subscriber_name()).await;
    assert!(killed >= 1, "killed the subscriber connections");
    actix_web::rt::time::sleep(Duration::from_millis(200)).await;
    assert!(!bus_b.is_connected(), "node B is off the bus");
    assert_eq!(
        buyer.set("BUS-1", 3).await.0,
        200,
        "selling goes on without the bus"
    );
    ws_wait(&mut ws, Duration::from_secs(5), is_stock("BUS-1", 7))
        .await
        .expect("node B corrects the value after it reconnects");
    assert!(bus_b.is_connected());
    assert_stock_sound(&a.db).await;
    b.stop().await;
    a.stop().await;
}

/// Kills the Redis connections named `name`; returns how many.
async fn kill_client(name: &str) -> usize {
    use fred::prelude::*;
    let client = Builder::from_config(Config::from_url(&redis_url()).expect("redis url"))
        .build()
        .expect("client");
    client.init().await.expect("redis is up");
    let list: String = client
        .custom(fred::cmd!("CLIENT"), vec!["LIST"])
        .await
        .expect("CLIENT LIST");
    let ids: Vec<String> = list
        .lines()
        .filter(|l| l.split(' ').any(|f| f == format!("name={name}")))
        .filter_map(|l| {
            l.split(' ')
                .find_map(|f| f.strip_prefix("id="))
                .map(str::to_owned)
        })
        .collect();
    for id in &ids {
        let _: i64 = client
            .custom(fred::cmd!("CLIENT"), vec!["KILL", "ID", id.as_str()])
            .await
            .unwrap_or(0);
    }
    let _ = client.quit().await;
    ids.len()
}
