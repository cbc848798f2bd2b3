//! Test harness: a fresh PostgreSQL database per test and an in-process server on a
//! random port. Nothing is mocked; the database is dropped when the test ends.

#![allow(dead_code)]

use std::{str::FromStr, time::Duration};

use surge::{
    config::{CommerceConfig, DatabaseConfig, LiveConfig, ServeConfig},
    rate_limit::RateLimitConfig,
    server::{Application, Drain},
};

/// Server URL of the PostgreSQL used by tests (no database name).
pub fn pg_server_url() -> String {
    std::env::var("SURGE_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into())
}

async fn admin_client() -> tokio_postgres::Client {
    let url = format!("{}/postgres", pg_server_url());
    let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL must be reachable at {url}: {e}"));
    tokio::spawn(conn);
    client
}

/// A database with a random name, dropped on drop (unless borrowed).
pub struct TestDb {
    /// Database name.
    pub name: String,
    /// Full URL of the database.
    pub url: String,
    owned: bool,
}

impl TestDb {
    /// Creates an empty database.
    pub async fn create() -> Self {
        let name = format!("surge_test_{}", uuid::Uuid::new_v4().simple());
        admin_client()
            .await
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .expect("create test database");
        let url = format!("{}/{name}", pg_server_url());
        Self {
            name,
            url,
            owned: true,
        }
    }

    /// A handle on another test's database, which this handle will not drop.
    pub fn borrow(url: &str) -> Self {
        let name = url.rsplit('/').next().unwrap_or_default().to_owned();
        Self {
            name,
            url: url.to_owned(),
            owned: false,
        }
    }

    /// A plain client on this database.
    pub async fn client(&self) -> tokio_postgres::Client {
        let (client, conn) = tokio_postgres::connect(&self.url, tokio_postgres::NoTls)
            .await
            .expect("connect to test database");
        tokio::spawn(conn);
        client
    }

    /// Pool settings for this database.
    pub fn config(&self) -> DatabaseConfig {
        DatabaseConfig {
            primary: tokio_postgres::Config::from_str(&self.url).expect("valid url"),
            replica: None,
            pool_size: 4,
            read_pool_size: 2,
            session: surge::config::defaults::<surge::config::DatabaseArgs>().session(),
            journal_via: None,
            // Clear text: the fault-injecting proxy (proxy.rs) reads the protocol.
            // TLS has its own servers in tls.rs.
            tls: surge::config::DatabaseTls::disabled(),
        }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if !self.owned {
            return;
        }
        let name = self.name.clone();
        // Drop may run outside any usable async context: use a private runtime.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async {
                admin_client()
                    .await
                    .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .await
                    .expect("drop test database");
            });
        })
        .join();
    }
}

/// The admin token of test servers.
pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789";

/// Two nodes on one database, both on the Redis bus; `b_redis` lets a test put node B
/// behind a proxy of its own.
pub async fn two_nodes_with(live: LiveConfig, b_redis: String) -> (TestApp, TestApp) {
    let a = TestApp::spawn(Options {
        seed_demo: false,
        live: live.clone(),
        redis_url: Some(redis_url()),
        ..Options::default()
    })
    .await;
    let b = TestApp::spawn(Options {
        seed_demo: false,
        database_url: Some(a.db.url.clone()),
        live,
        redis_url: Some(b_redis),
        ..Options::default()
    })
    .await;
    (a, b)
}

/// Two nodes on one database and one Redis bus.
pub async fn two_nodes() -> (TestApp, TestApp) {
    two_nodes_with(test_live(), redis_url()).await
}

/// Two nodes on one empty database (no bus between them), both knowing `skus` with
/// their stock, made through the first.
pub async fn two_nodes_selling(skus: &[(&str, i64)]) -> (TestApp, TestApp) {
    let a = TestApp::empty().await;
    for (sku, stock) in skus {
        make_sku(&a, sku, *stock).await;
    }
    let b = a.join().await;
    b.state()
        .reload_catalog(&b.state().db.primary)
        .await
        .expect("catalog");
    (a, b)
}

/// Options of a test server.
pub struct Options {
    /// Admin token, or none to disable the admin API.
    pub admin_token: Option<String>,
    /// Request body limit.
    pub body_limit: usize,
    /// Load the demo store before starting.
    pub seed_demo: bool,
    /// Drain delay used by `shutdown`.
    pub drain_delay: Duration,
    /// Stock, cart and Journal settings.
    pub commerce: CommerceConfig,
    /// Node id (random when `None`).
    pub node_id: Option<String>,
    /// Reuse this database instead of creating one (for several nodes on one database).
    pub database_url: Option<String>,
    /// WebSocket, hub and bus settings.
    pub live: LiveConfig,
    /// Redis for the bus (None: in-process).
    pub redis_url: Option<String>,
    /// Where every pool of the node connects instead of the database URL (the same
    /// database through a proxy); the harness itself still connects directly.
    pub connect_via: Option<String>,
    /// Where the node's Journal alone connects (the same database through a proxy).
    pub journal_via: Option<String>,
    /// Rate limits: off, since tests drive many buyers from one IP (see `test_rate_limits`).
    pub rate_limits: RateLimitConfig,
    /// A private listener of its own for /metrics (`127.0.0.1:0` picks a port).
    pub metrics_bind: Option<std::net::SocketAddr>,
}

/// Redis of the tests.
pub fn redis_url() -> String {
    std::env::var("SURGE_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// Live settings with a private bus prefix, so tests never hear each other.
pub fn test_live() -> LiveConfig {
    let defaults = surge::config::defaults::<surge::config::LiveArgs>()
        .validate()
        .expect("the documented defaults are valid");
    LiveConfig {
        hub_shards: 2,
        resync: Duration::from_secs(60),
        bus_prefix: format!("t{}", uuid::Uuid::new_v4().simple()),
        ..defaults
    }
}

/// The documented rate-limit defaults, switched off unless `enabled`.
pub fn test_rate_limits(enabled: bool) -> RateLimitConfig {
    RateLimitConfig {
        enabled,
        ..surge::config::defaults::<surge::config::RateLimitArgs>()
            .validate()
            .expect("the documented defaults are valid")
    }
}

/// Stock settings scaled down so that expiry and reaping happen within a test.
pub fn test_commerce() -> CommerceConfig {
    CommerceConfig {
        reservation_ttl: Duration::from_secs(900),
        max_line_quantity: 10,
        shards: 2,
        shard_queue: 100_000,
        lease_max_chunk: 64,
        lease_ttl: Duration::from_secs(3),
        lease_idle: Duration::from_secs(1),
        lease_recall: Duration::from_millis(300),
        reaper_period: Duration::from_secs(1),
        cart_idle: Duration::from_secs(60),
        max_cart_actors: 10_000,
        cart_retention: Duration::from_secs(86_400),
        journal_max_batch: 512,
        journal_max_wait: Duration::from_millis(2),
        journal_pool_size: 2,
        journal_commit_timeout: Duration::from_secs(5),
        queue_window: Duration::from_secs(120),
    }
}

impl Default for Options {
    fn default() -> Self {
        Self {
            admin_token: Some(ADMIN_TOKEN.into()),
            body_limit: 16 * 1024,
            seed_demo: true,
            drain_delay: Duration::from_millis(200),
            commerce: test_commerce(),
            node_id: None,
            database_url: None,
            live: test_live(),
            redis_url: None,
            connect_via: None,
            journal_via: None,
            rate_limits: test_rate_limits(false),
            metrics_bind: None,
        }
    }
}

/// A running in-process node with its own database.
pub struct TestApp {
    /// The node (taken by `stop` or a test that shuts it down itself).
    pub server: Option<Application>,
    /// `http://127.0.0.1:port`.
    pub base: String,
    /// HTTP client.
    pub http: awc::Client,
    /// The database; dropped after the server (None when borrowed from another app).
    pub db: TestDb,
}

impl TestApp {
    /// Starts a node.
    pub async fn spawn(opts: Options) -> Self {
        if std::env::var_os("SURGE_TEST_LOG").is_some() {
            surge::telemetry::init_tracing(surge::config::LogFormat::Human);
        }
        let db = match &opts.database_url {
            Some(url) => TestDb::borrow(url),
            None => TestDb::create().await,
        };
        if opts.seed_demo {
            let mut client = db.client().await;
            surge::store::seed::seed_demo(&mut client)
                .await
                .expect("seed demo");
        }
        let mut db_cfg = db.config();
        if let Some(url) = &opts.connect_via {
            db_cfg.primary = tokio_postgres::Config::from_str(url).expect("valid url");
        }
        db_cfg.journal_via = opts
            .journal_via
            .as_deref()
            .map(|url| tokio_postgres::Config::from_str(url).expect("valid url"));
        let cfg = ServeConfig {
            db: db_cfg,
            bind: "127.0.0.1:0".parse().expect("addr"),
            metrics_bind: opts.metrics_bind,
            redis_url: opts.redis_url.clone().map(Into::into),
            redis_ca: None,
            node_id: opts
                .node_id
                .clone()
                .unwrap_or_else(|| format!("test-{}", uuid::Uuid::new_v4().simple())),
            admin_token: opts.admin_token.map(Into::into),
            // One key for every test node, so a shopper can move between nodes.
            session_key: Some("test-session-key-shared-by-every-node".into()),
            cookie_secure: false,
            workers: 2,
            body_limit: opts.body_limit,
            drain_delay: opts.drain_delay,
            shutdown_grace: Duration::from_secs(5),
            keep_alive: Some(Duration::from_secs(surge::config::DEFAULT_KEEP_ALIVE_SECS)),
            static_dir: None,
            commerce: opts.commerce,
            live: opts.live,
            rate_limits: opts.rate_limits,
        };
        let server = Application::build(cfg).await.expect("server starts");
        let base = format!("http://{}", server.addr());
        let http = awc::Client::builder()
            .timeout(Duration::from_secs(30))
            .finish();
        Self {
            server: Some(server),
            base,
            http,
            db,
        }
    }

    /// A node on an empty (migrated) database.
    pub async fn empty() -> Self {
        Self::spawn(Options {
            seed_demo: false,
            ..Options::default()
        })
        .await
    }

    /// A second node on this node's database.
    pub async fn join(&self) -> Self {
        Self::spawn(Options {
            seed_demo: false,
            database_url: Some(self.db.url.clone()),
            ..Options::default()
        })
        .await
    }

    /// The node's shared state.
    pub fn state(&self) -> &surge::state::AppState {
        self.server.as_ref().expect("running").state()
    }

    /// The node's port, for clients that speak raw TCP.
    pub fn port(&self) -> u16 {
        self.base
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .expect("the base URL ends in a port")
    }

    /// Absolute URL of a path.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// GET returning status and JSON body (Null when the body is not JSON).
    pub async fn get_json(&self, path: &str) -> (u16, serde_json::Value) {
        self.send("GET", path, &[], Vec::new()).await
    }

    /// Sends a raw body with headers; returns status and JSON body.
    pub async fn send(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: impl Into<Vec<u8>>,
    ) -> (u16, serde_json::Value) {
        let method = awc::http::Method::from_bytes(method.as_bytes()).expect("method");
        let mut req = self.http.request(method, self.url(path));
        for (k, v) in headers {
            req = req.insert_header((*k, *v));
        }
        let mut resp = req.send_body(body.into()).await.expect("request");
        let status = resp.status().as_u16();
        let body = resp.body().limit(16 * 1024 * 1024).await.expect("body");
        (
            status,
            serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null),
        )
    }

    /// POSTs JSON with the admin token (or `token` when given).
    pub async fn admin_post(
        &self,
        path: &str,
        token: Option<&str>,
        body: &serde_json::Value,
    ) -> (u16, serde_json::Value) {
        let auth = token.map(|t| format!("Bearer {t}"));
        let mut headers = vec![("content-type", "application/json")];
        if let Some(a) = auth.as_deref() {
            headers.push(("authorization", a));
        }
        self.send("POST", path, &headers, body.to_string()).await
    }

    /// Stops the node without draining.
    pub async fn stop(mut self) {
        if let Some(server) = self.server.take() {
            server.shutdown(Drain::Immediate).await;
        }
    }
}

/// Asserts the standard error shape and returns its code.
pub fn error_code(body: &serde_json::Value) -> String {
    let code = body["error"]["code"]
        .as_str()
        .unwrap_or_else(|| panic!("not an error body: {body}"));
    assert!(
        body["error"]["message"].is_string(),
        "error without message: {body}"
    );
    code.to_owned()
}

/// One shopper: an HTTP client that keeps its session cookie.
pub struct Buyer {
    /// Base URL of the node this buyer talks to.
    pub base: String,
    /// `surge_session=...`, once the server set it.
    pub cookie: Option<String>,
    http: awc::Client,
}

/// Status and JSON body of a response.
pub type Reply = (u16, serde_json::Value);

impl Buyer {
    /// A buyer with no session yet.
    pub fn new(base: &str, http: awc::Client) -> Self {
        Self {
            base: base.to_owned(),
            cookie: None,
            http,
        }
    }

    /// Sends a request with the session cookie and keeps any new one.
    pub async fn send(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> Reply {
        let method = awc::http::Method::from_bytes(method.as_bytes()).expect("method");
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(c) = &self.cookie {
            req = req.insert_header(("cookie", c.as_str()));
        }
        for (k, v) in headers {
            req = req.insert_header((*k, *v));
        }
        let mut resp = match req.send_body(body.to_owned()).await {
            Ok(r) => r,
            Err(e) => return (0, serde_json::json!({ "transport_error": e.to_string() })),
        };
        if let Some(set) = resp
            .headers()
            .get("set-cookie")
            .and_then(|v| v.to_str().ok())
        {
            if let Some(pair) = set.split(';').next() {
                if pair.starts_with("surge_session=") && pair.len() > "surge_session=".len() {
                    self.cookie = Some(pair.to_owned());
                }
            }
        }
        let status = resp.status().as_u16();
        let bytes = resp.body().limit(1 << 20).await.unwrap_or_default();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null),
        )
    }

    /// PUT a cart line.
    pub async fn set(&mut self, sku: &str, quantity: i64) -> Reply {
        let body = format!("{{\"quantity\":{quantity}}}");
        self.send(
            "PUT",
            &format!("/api/cart/items/{sku}"),
            &[("content-type", "application/json")],
            &body,
        )
        .await
    }

    /// POST a checkout.
    pub async fn checkout(&mut self, key: &str) -> Reply {
        self.checkout_as(key, "buyer@example.com").await
    }

    /// POST a checkout with this email.
    pub async fn checkout_as(&mut self, key: &str, email: &str) -> Reply {
        let body = serde_json::json!({ "email": email }).to_string();
        self.send(
            "POST",
            "/api/checkout",
            &[
                ("content-type", "application/json"),
                ("idempotency-key", key),
            ],
            &body,
        )
        .await
    }

    /// GET the cart.
    pub async fn cart(&mut self) -> Reply {
        self.send("GET", "/api/cart", &[], "").await
    }
}

/// An HTTP client for many concurrent buyers.
pub fn shared_client() -> awc::Client {
    awc::Client::builder()
        .timeout(Duration::from_secs(60))
        .connector(awc::Connector::new().limit(256))
        .finish()
}

/// Has every new connection to `db` plan joins as hash joins, which visit an `UPDATE`'s
/// target rows in the table's order, as a loaded node's statistics may: a test of lock
/// order then shows whether a writer's order depends on the plan.
pub async fn plan_joins_in_table_order(db: &TestDb) {
    db.client()
        .await
        .batch_execute(&format!(
            "ALTER DATABASE {name} SET enable_nestloop = off;
             ALTER DATABASE {name} SET enable_mergejoin = off",
            name = db.name
        ))
        .await
        .expect("plan settings");
}

/// Waits, up to 20 s, until a session of `db` waits for a row lock; `what` names the
/// waiter in the failure.
pub async fn wait_for_a_lock_wait(db: &TestDb, what: &str) {
    let client = db.client().await;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let waiting: i64 = client
            .query_one(
                "SELECT count(*) FROM pg_stat_activity
                  WHERE datname = current_database() AND wait_event_type = 'Lock'",
                &[],
            )
            .await
            .expect("activity")
            .get(0);
        if waiting > 0 {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "{what} never waited");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Creates a one-SKU product with `stock` units through the admin API.
pub async fn make_sku(app: &TestApp, sku: &str, stock: i64) {
    let body = serde_json::json!({
        "slug": sku.to_lowercase(),
        "name": format!("Product {sku}"),
        "variants": [{"sku": sku, "price_minor": 1000, "currency": "EUR", "stock": stock}]
    });
    let (status, resp) = app
        .admin_post("/api/admin/products", Some(ADMIN_TOKEN), &body)
        .await;
    assert_eq!(status, 201, "{resp}");
}

/// A fresh database holding one SKU with `stock` units, for nodes started afterwards.
pub async fn db_with_sku(sku: &str, stock: i64) -> TestDb {
    db_with_skus(&[(sku, stock)]).await
}

/// A fresh database holding each `(sku, stock)`, made in the order given.
pub async fn db_with_skus(skus: &[(&str, i64)]) -> TestDb {
    let db = TestDb::create().await;
    let seeder = TestApp::spawn(Options {
        seed_demo: false,
        database_url: Some(db.url.clone()),
        ..Options::default()
    })
    .await;
    for (sku, stock) in skus {
        make_sku(&seeder, sku, *stock).await;
    }
    seeder.stop().await;
    db
}

/// Asserts the stock invariant for every SKU (what `surge check` runs).
pub async fn assert_stock_sound(db: &TestDb) {
    let client = db.client().await;
    let violations = surge::store::check::violations(&client)
        .await
        .expect("check runs");
    assert!(
        violations.is_empty(),
        "stock invariant broken: {violations:?}"
    );
}

/// One SKU's buckets: (total, available, leased, reserved, sold).
pub async fn buckets(db: &TestDb, sku: &str) -> (i64, i64, i64, i64, i64) {
    let row = db
        .client()
        .await
        .query_one(
            "SELECT total, available, leased, reserved, sold FROM inventory WHERE sku = $1",
            &[&sku],
        )
        .await
        .expect("inventory row");
    (row.get(0), row.get(1), row.get(2), row.get(3), row.get(4))
}

/// A client WebSocket.
pub type WsConn = actix_codec::Framed<awc::BoxedSocket, awc::ws::Codec>;

/// What a client socket received.
#[derive(Debug, Clone, PartialEq)]
pub enum WsEvent {
    /// A JSON text message.
    Json(serde_json::Value),
    /// A close frame: code and reason.
    Close(Option<u16>, String),
    /// The connection ended without a close frame.
    Ended,
}

/// Opens `/ws` on a node, with a session cookie when given.
pub async fn ws_connect(base: &str, cookie: Option<&str>) -> WsConn {
    let url = format!("{}/ws", base.replacen("http://", "ws://", 1));
    let mut req = awc::Client::new().ws(url).max_frame_size(1 << 20);
    if let Some(c) = cookie {
        req = req.header("cookie", c);
    }
    let (_, conn) = req.connect().await.expect("websocket upgrade");
    conn
}

/// Sends a text frame.
pub async fn ws_send(conn: &mut WsConn, text: &str) {
    use futures_util::SinkExt as _;
    let _ = conn
        .send(awc::ws::Message::Text(text.to_owned().into()))
        .await;
}

/// The next message, or `None` after `timeout`.
pub async fn ws_next(conn: &mut WsConn, timeout: Duration) -> Option<WsEvent> {
    use futures_util::StreamExt as _;
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let frame = match tokio::time::timeout_at(deadline, conn.next()).await {
            Err(_) => return None,
            Ok(None) | Ok(Some(Err(_))) => return Some(WsEvent::Ended),
            Ok(Some(Ok(frame))) => frame,
        };
        match frame {
            awc::ws::Frame::Text(bytes) => {
                return Some(WsEvent::Json(
                    serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null),
                ))
            }
            awc::ws::Frame::Close(reason) => {
                return Some(WsEvent::Close(
                    reason.as_ref().map(|r| u16::from(r.code)),
                    reason.and_then(|r| r.description).unwrap_or_default(),
                ))
            }
            _ => continue,
        }
    }
}

/// Waits for a JSON message matching `pred`, skipping others; `None` after `timeout`.
pub async fn ws_wait(
    conn: &mut WsConn,
    timeout: Duration,
    pred: impl Fn(&serde_json::Value) -> bool,
) -> Option<serde_json::Value> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match ws_next(conn, left).await? {
            WsEvent::Json(v) if pred(&v) => return Some(v),
            WsEvent::Json(_) => continue,
            other => panic!("socket ended while waiting: {other:?}"),
        }
    }
}

/// Waits for the socket to close; returns code and reason.
pub async fn ws_closed(conn: &mut WsConn, timeout: Duration) -> (Option<u16>, String) {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match ws_next(conn, left).await {
            Some(WsEvent::Close(code, reason)) => return (code, reason),
            Some(WsEvent::Ended) => return (None, String::new()),
            Some(WsEvent::Json(_)) => continue,
            None => panic!("the socket did not close within {timeout:?}"),
        }
    }
}
