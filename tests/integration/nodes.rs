//! Whole `surge` processes: a node killed with SIGKILL while holding a lease, and the
//! durability of acknowledged writes across a SIGKILL.

use std::{
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use crate::common::{
    assert_stock_sound, buckets, db_with_sku, make_sku, shared_client, test_commerce, Buyer,
    Options, TestApp,
};

const SESSION_KEY: &str = "test-session-key-0123456789-0123456789";

/// A `surge serve` child process; killed with SIGKILL when dropped.
pub(crate) struct Node {
    child: Child,
    pub(crate) base: String,
}

/// A loopback port that was free a moment ago.
pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

impl Node {
    pub(crate) async fn start(db_url: &str, node_id: &str, extra: &[(&str, &str)]) -> Self {
        Self::start_on(free_port(), db_url, node_id, extra).await
    }

    /// Starts a node on `port` and waits until it is ready.
    pub(crate) async fn start_on(
        port: u16,
        db_url: &str,
        node_id: &str,
        extra: &[(&str, &str)],
    ) -> Self {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_surge"));
        cmd.arg("serve")
            .env("DATABASE_URL", db_url)
            .env("SURGE_BIND", format!("127.0.0.1:{port}"))
            .env("SURGE_NODE_ID", node_id)
            .env("SURGE_SESSION_KEY", SESSION_KEY)
            .env("SURGE_WORKERS", "2")
            .env("SURGE_SHARDS", "2")
            // Tests drive many buyers from one IP; a test of the limits turns them on.
            .env("SURGE_RATE_LIMITS", "off")
            .env_remove("SURGE_ADMIN_TOKEN")
            .env_remove("REDIS_URL")
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        for (k, v) in extra {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("start surge");
        let node = Self {
            child,
            base: format!("http://127.0.0.1:{port}"),
        };
        let http = awc::Client::default();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(resp) = http.get(format!("{}/readyz", node.base)).send().await {
                if resp.status().as_u16() == 200 {
                    return node;
                }
            }
            assert!(
                Instant::now() < deadline,
                "node {node_id} never became ready"
            );
            actix_web::rt::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The process id, to read the process's own figures (`/proc/<pid>/status`).
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `signal` (`STOP`, `CONT`, ...) to the process.
    pub(crate) fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{signal} failed");
    }

    pub(crate) fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, as an autoscaler or a rolling deploy stops a pod; waits for the exit.
    pub(crate) async fn terminate(&mut self) {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            actix_web::rt::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("node did not stop within 30 s of SIGTERM");
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// An in-process node B (reaper every second, leases of `b_lease_ttl`) and a child
/// process A (`node_id`, leases of `a_ttl_secs`, never idle) that has sold one of 20
/// units of `sku`, so that it holds the rest as its lease.
async fn holder_and_seller(
    sku: &str,
    node_id: &str,
    a_ttl_secs: &str,
    b_lease_ttl: Duration,
) -> (TestApp, Node) {
    let mut commerce = test_commerce();
    commerce.lease_ttl = b_lease_ttl;
    commerce.reaper_period = Duration::from_secs(1);
    let b = TestApp::spawn(Options {
        seed_demo: false,
        commerce,
        ..Options::default()
    })
    .await;
    make_sku(&b, sku, 20).await;
    let a = Node::start(
        &b.db.url,
        node_id,
        &[
            ("SURGE_LEASE_TTL_SECS", a_ttl_secs),
            ("SURGE_LEASE_IDLE_SECS", "3600"),
        ],
    )
    .await;
    let mut buyer = Buyer::new(&a.base, shared_client());
    assert_eq!(buyer.set(sku, 1).await.0, 200);
    (b, a)
}

#[actix_web::test]
async fn a_killed_nodes_lease_returns_and_sells_elsewhere() {
    let (b, mut a) = holder_and_seller("DEAD-1", "node-a", "2", test_commerce().lease_ttl).await;
    let lease: i64 =
        b.db.client()
            .await
            .query_one(
                "SELECT quantity FROM stock_leases WHERE node_id = 'node-a' AND sku = 'DEAD-1'",
                &[],
            )
            .await
            .expect("node-a holds a lease")
            .get(0);
    assert_eq!(lease, 19, "node-a leased the rest");

    a.kill9();
    let killed = Instant::now();
    let bound = Duration::from_secs(2 + 1 + 2); // lease TTL + reaper period + slack
    loop {
        let (_, available, leased, reserved, _) = buckets(&b.db, "DEAD-1").await;
        if leased == 0 {
            assert_eq!(
                (available, reserved),
                (19, 1),
                "the lease went back; the reservation stays"
            );
            break;
        }
        assert!(
            killed.elapsed() < bound,
            "lease not reaped within {bound:?}"
        );
        actix_web::rt::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "lease of the killed node reaped after {:?}",
        killed.elapsed()
    );

    // Node B sells the returned units (its refusal cache rechecks PostgreSQL).
    let mut other = Buyer::new(&b.base, shared_client());
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (status, body) = other.set("DEAD-1", 10).await;
        if status == 200 {
            break;
        }
        assert!(
            status == 409 && Instant::now() < deadline,
            "{status} {body}"
        );
        actix_web::rt::time::sleep(Duration::from_millis(200)).await;
    }
    let mut third = Buyer::new(&b.base, shared_client());
    assert_eq!(third.set("DEAD-1", 9).await.0, 200);
    let (status, _) = Buyer::new(&b.base, shared_client()).set("DEAD-1", 1).await;
    assert_eq!(status, 409, "all 20 are now taken");
    assert_stock_sound(&b.db).await;
    b.stop().await;
}

/// Guards against stock lost after a restart under the same node id: the restarted
/// process heartbeats under the id that owns the shopper's cart, so a reaper that
/// spared the carts of live owners, and a startup that recovered leases only, left the
/// last unit reserved forever. Within the reservation TTL plus a reaper period (and a
/// margin) another shopper, on either node, must get it.
#[actix_web::test]
async fn a_reservation_of_a_restarted_node_goes_back_on_sale() {
    const TTL: Duration = Duration::from_secs(3);
    const PERIOD: Duration = Duration::from_secs(1);
    const MARGIN: Duration = Duration::from_secs(3);
    let mut commerce = test_commerce();
    commerce.reaper_period = PERIOD;
    let b = TestApp::spawn(Options {
        seed_demo: false,
        commerce,
        ..Options::default()
    })
    .await;
    make_sku(&b, "RST-1", 1).await;
    let env = [
        ("SURGE_RESERVATION_TTL_SECS", "3"),
        ("SURGE_REAPER_PERIOD_SECS", "1"),
        ("SURGE_LEASE_TTL_SECS", "2"),
    ];
    let mut a = Node::start(&b.db.url, "node-r", &env).await;
    let mut first = Buyer::new(&a.base, shared_client());
    let reserved_at = Instant::now();
    let (status, cart) = first.set("RST-1", 1).await;
    assert_eq!(status, 200, "{cart}");

    a.kill9();
    let a = Node::start(&b.db.url, "node-r", &env).await;
    let bound = TTL + PERIOD + MARGIN;
    let mut on_a = Buyer::new(&a.base, shared_client());
    let mut on_b = Buyer::new(&b.base, shared_client());
    let mut attempt = 0;
    loop {
        let buyer = if attempt % 2 == 0 {
            &mut on_a
        } else {
            &mut on_b
        };
        attempt += 1;
        let (status, body) = buyer.set("RST-1", 1).await;
        if status == 200 {
            break;
        }
        assert!(
            status == 409 && reserved_at.elapsed() < bound,
            "the unit is not back on sale {:?} after it was reserved (bound {bound:?}): {status} {body}",
            reserved_at.elapsed()
        );
        actix_web::rt::time::sleep(PERIOD).await;
    }
    eprintln!(
        "the restarted node's reservation was back on sale {:?} after it was made",
        reserved_at.elapsed()
    );
    assert_eq!(buckets(&b.db, "RST-1").await, (1, 0, 0, 1, 0));
    // The first shopper's cart resumes on the restarted node, empty.
    first.base = a.base.clone();
    let (status, cart) = first.cart().await;
    assert_eq!(status, 200, "{cart}");
    assert_eq!(cart["lines"], serde_json::json!([]), "{cart}");
    assert_stock_sound(&b.db).await;
    drop(a);
    b.stop().await;
}

/// Guards against the reaper and a live cart actor both returning the same units: the
/// reaper takes a lapsed reservation back while the actor still holds the line (its
/// own timer has not fired), tells the shopper's socket, and the actor's next write is
/// stale, so it reloads without putting units into its shard. The shopper's next
/// request succeeds, and every unit sells exactly once afterwards.
#[actix_web::test]
async fn the_reaper_beats_a_live_cart_without_returning_units_twice() {
    let app = TestApp::spawn(Options {
        seed_demo: false,
        ..Options::default()
    })
    .await;
    make_sku(&app, "LIVE-1", 4).await;
    let mut shopper = Buyer::new(&app.base, shared_client());
    let (status, cart) = shopper.set("LIVE-1", 1).await;
    assert_eq!(status, 200, "{cart}");
    let cookie = shopper.cookie.clone().expect("session");
    let mut tab = crate::common::ws_connect(&app.base, Some(&cookie)).await;
    actix_web::rt::time::sleep(Duration::from_millis(100)).await;

    // The row lapsed long ago; the actor's timer is still 15 minutes away.
    app.db
        .client()
        .await
        .execute(
            "UPDATE reservations SET expires_at = now() - interval '1 minute' WHERE sku = 'LIVE-1'",
            &[],
        )
        .await
        .expect("lapse the reservation");
    let msg = crate::common::ws_wait(&mut tab, Duration::from_secs(5), |v| {
        v["type"] == "reservation_expired"
    })
    .await
    .expect("the reaper tells the shopper's socket");
    assert_eq!(
        (msg["sku"].as_str(), msg["quantity"].as_i64()),
        (Some("LIVE-1"), Some(1))
    );
    assert_eq!(
        buckets(&app.db, "LIVE-1").await.3,
        0,
        "nothing reserved now"
    );

    let (status, cart) = shopper.set("LIVE-1", 2).await;
    assert_eq!(
        status, 200,
        "the next request succeeds on a reloaded cart: {cart}"
    );
    assert_eq!(cart["lines"][0]["quantity"], 2, "{cart}");
    let (status, cart) = Buyer::new(&app.base, shared_client())
        .set("LIVE-1", 2)
        .await;
    assert_eq!(status, 200, "the other two sell: {cart}");
    let (status, body) = Buyer::new(&app.base, shared_client())
        .set("LIVE-1", 1)
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (409, Some("insufficient_stock")),
        "no phantom unit in the shard: {body}"
    );
    assert_eq!(buckets(&app.db, "LIVE-1").await.3, 4);
    assert_stock_sound(&app.db).await;
    app.stop().await;
}

/// Guards against "sold out" while a dead node's lease still holds the units: until
/// the reaper returns them the answer is 503 `stock_recovering` with Retry-After,
/// never 409, and afterwards the buyer is served.
#[actix_web::test]
async fn units_of_a_killed_node_are_recovering_not_sold_out() {
    let (b, mut a) =
        holder_and_seller("RECOVER-1", "node-recovering", "6", Duration::from_secs(6)).await;
    a.kill9();
    let killed = Instant::now();

    let http = shared_client();
    let mut recovering = 0;
    loop {
        let mut resp = http
            .put(format!("{}/api/cart/items/RECOVER-1", b.base))
            .insert_header(("content-type", "application/json"))
            .send_body("{\"quantity\":5}")
            .await
            .expect("node b answers");
        let status = resp.status().as_u16();
        let retry_after = resp.headers().contains_key("retry-after");
        let body: serde_json::Value = resp.json().await.unwrap_or_default();
        let code = body["error"]["code"].as_str().unwrap_or("").to_owned();
        match (status, code.as_str()) {
            (200, _) => break,
            (503, "stock_recovering") => {
                assert!(retry_after, "stock_recovering carries Retry-After");
                recovering += 1;
            }
            // Until A's heartbeat counts as lapsed, A looks alive and silent.
            (503, "stock_contended") => assert_eq!(recovering, 0, "{body}"),
            _ => panic!("{status} {body}: the units exist, they are not sold out"),
        }
        assert!(
            killed.elapsed() < Duration::from_secs(6 + 1 + 3),
            "the buyer was not served after the reaper"
        );
        actix_web::rt::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        recovering > 0,
        "the dead node's units were answered as recovering"
    );
    assert_stock_sound(&b.db).await;
    b.stop().await;
}

#[actix_web::test]
async fn acknowledged_writes_survive_sigkill() {
    let db = db_with_sku("DUR-1", 10).await;

    let mut first = Node::start(&db.url, "node-1", &[]).await;
    let mut buyer = Buyer::new(&first.base, shared_client());
    let (status, cart) = buyer.set("DUR-1", 2).await;
    assert_eq!(status, 200, "{cart}");
    first.kill9();
    let client = db.client().await;
    let reserved: i64 = client
        .query_one("SELECT quantity FROM reservations WHERE sku = 'DUR-1'", &[])
        .await
        .expect("the acknowledged reservation is in PostgreSQL")
        .get(0);
    assert_eq!(reserved, 2);

    // The cart resumes on another node, and an order acknowledged there survives too.
    let mut second = Node::start(&db.url, "node-2", &[]).await;
    buyer.base = second.base.clone();
    let (status, cart) = buyer.cart().await;
    assert_eq!(status, 200);
    assert_eq!(cart["lines"][0]["quantity"], 2, "the cart resumed: {cart}");
    let (status, order) = buyer.checkout("durable-key").await;
    assert_eq!(status, 201, "{order}");
    second.kill9();
    let id = uuid::Uuid::parse_str(order["id"].as_str().expect("id")).expect("uuid");
    let row = client
        .query_one("SELECT total_minor FROM orders WHERE id = $1", &[&id])
        .await
        .expect("the acknowledged order is in PostgreSQL");
    assert_eq!(row.get::<_, i64>(0), 2000);
    let lines: i64 = client
        .query_one(
            "SELECT sum(quantity)::bigint FROM order_lines WHERE order_id = $1",
            &[&id],
        )
        .await
        .expect("lines")
        .get(0);
    assert_eq!(lines, 2);
    assert_stock_sound(&db).await;
}

/// `n` reaper passes at once, each on its own connection.
async fn race_reapers(
    db: &crate::common::TestDb,
    n: usize,
    scope: surge::store::leases::Scope<'static>,
) -> Vec<surge::store::leases::Reaped> {
    let reapers = (0..n).map(|_| {
        let url = db.url.clone();
        async move {
            let (mut c, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                .await
                .expect("connect");
            actix_web::rt::spawn(conn);
            surge::store::leases::reap(&mut c, scope)
                .await
                .expect("reap")
        }
    });
    futures_util::future::join_all(reapers).await
}

#[actix_web::test]
async fn racing_reapers_return_each_unit_once() {
    use surge::store::leases::Scope;
    let db = db_with_sku("REAP-1", 100).await;
    // Ten dead nodes, each holding an expired lease of 7 units.
    let client = db.client().await;
    client
        .batch_execute(
            "UPDATE inventory SET available = available - 70, leased = leased + 70 WHERE sku = 'REAP-1';
             INSERT INTO stock_leases (node_id, sku, quantity, expires_at)
             SELECT 'dead-' || g, 'REAP-1', 7, now() - interval '1 minute' FROM generate_series(1, 10) g;",
        )
        .await
        .expect("dead leases");
    let scope = Scope::Dead {
        grace: Duration::from_secs(1),
    };
    let passes = race_reapers(&db, 4, scope).await;
    let returned: i64 = passes.iter().map(|r| r.lease_units).sum();
    assert_eq!(returned, 70, "every unit returned exactly once: {passes:?}");
    assert_eq!(buckets(&db, "REAP-1").await, (100, 100, 0, 0, 0));
    assert_stock_sound(&db).await;
}

#[actix_web::test]
async fn racing_reapers_return_orphaned_reservations_once() {
    use surge::store::leases::Scope;
    let db = db_with_sku("ORPH-1", 10).await;
    let client = db.client().await;
    // A dead node holds an expired lease of 2 and owns a cart with an expired
    // reservation of 4 and a fresh one of 1; a live node owns a cart whose
    // reservation of 2 has expired too, long past the grace: it goes back as well,
    // whoever owns it.
    client
        .batch_execute(
            "UPDATE inventory SET available = 1, leased = 2, reserved = 7 WHERE sku = 'ORPH-1';
             INSERT INTO nodes (node_id, heartbeat_at) VALUES
                 ('dead-a', now() - interval '1 minute'), ('live-b', now());
             INSERT INTO stock_leases (node_id, sku, quantity, expires_at)
                 VALUES ('dead-a', 'ORPH-1', 2, now() - interval '1 minute');
             INSERT INTO carts (id, session_id, owner_node, version) VALUES
                 ('00000000-0000-0000-0000-00000000000a', 's-dead', 'dead-a', 3),
                 ('00000000-0000-0000-0000-00000000000b', 's-live', 'live-b', 5),
                 ('00000000-0000-0000-0000-00000000000c', 's-fresh', 'dead-a', 1);
             INSERT INTO reservations (cart_id, sku, quantity, node_id, expires_at, unit_price_minor, currency)
             VALUES ('00000000-0000-0000-0000-00000000000a', 'ORPH-1', 4, 'dead-a', now() - interval '1 minute', 100, 'EUR'),
                    ('00000000-0000-0000-0000-00000000000b', 'ORPH-1', 2, 'live-b', now() - interval '1 minute', 100, 'EUR'),
                    ('00000000-0000-0000-0000-00000000000c', 'ORPH-1', 1, 'dead-a', now() + interval '1 hour', 100, 'EUR');",
        )
        .await
        .expect("orphans");
    assert_stock_sound(&db).await;
    let scope = Scope::Dead {
        grace: Duration::from_secs(1),
    };
    let passes = race_reapers(&db, 3, scope).await;
    let leases: i64 = passes.iter().map(|r| r.lease_units).sum();
    let reservations: i64 = passes.iter().map(|r| r.reservation_units).sum();
    assert_eq!((leases, reservations), (2, 6), "each unit once: {passes:?}");
    let levels: Vec<_> = passes.iter().flat_map(|r| r.levels.iter()).collect();
    assert_eq!(
        levels.len(),
        1,
        "one pass changed the sellable count: {levels:?}"
    );
    assert_eq!((levels[0].sku.as_str(), levels[0].available), ("ORPH-1", 9));
    assert_eq!(buckets(&db, "ORPH-1").await, (10, 9, 0, 1, 0));
    let lapsed: Vec<&str> = passes
        .iter()
        .flat_map(|r| r.lapsed.iter().map(|l| l.session_id.as_str()))
        .collect();
    assert_eq!(lapsed.len(), 2, "each session told once: {lapsed:?}");
    assert!(lapsed.contains(&"s-dead") && lapsed.contains(&"s-live"));
    let versions: Vec<(String, i64)> = client
        .query(
            "SELECT session_id, version FROM carts ORDER BY session_id",
            &[],
        )
        .await
        .expect("carts")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(
        versions,
        [
            ("s-dead".to_owned(), 4),
            ("s-fresh".to_owned(), 1),
            ("s-live".to_owned(), 6)
        ],
        "only the reaped carts move on"
    );
    assert_stock_sound(&db).await;
}

#[actix_web::test]
async fn surge_check_reports_violations_and_exits_non_zero() {
    let db = db_with_sku("CHK-1", 10).await;
    let check = || {
        Command::new(env!("CARGO_BIN_EXE_surge"))
            .arg("check")
            .env("DATABASE_URL", &db.url)
            .output()
            .expect("run surge check")
    };
    let clean = check();
    assert!(
        clean.status.success(),
        "{}",
        String::from_utf8_lossy(&clean.stdout)
    );
    assert!(String::from_utf8_lossy(&clean.stdout).contains("0 violations"));
    // A lease row that the inventory counter does not account for.
    db.client()
        .await
        .batch_execute(
            "INSERT INTO stock_leases (node_id, sku, quantity, expires_at) VALUES ('ghost', 'CHK-1', 3, now())",
        )
        .await
        .expect("ghost lease");
    let broken = check();
    let out = String::from_utf8_lossy(&broken.stdout);
    assert_eq!(broken.status.code(), Some(1), "{out}");
    assert!(out.contains("VIOLATION CHK-1"), "{out}");
}

/// Guards against a restarted process believing it still holds its predecessor's
/// carts: startup recovery under an id returns that id's leases and clears the id's
/// ownership of its carts, and of no one else's.
#[actix_web::test]
async fn startup_recovery_lets_go_of_the_ids_carts() {
    use surge::store::leases::Scope;
    let db = db_with_sku("OWN-1", 10).await;
    let client = db.client().await;
    client
        .batch_execute(
            "UPDATE inventory SET available = 7, leased = 3 WHERE sku = 'OWN-1';
             INSERT INTO stock_leases (node_id, sku, quantity, expires_at)
                 VALUES ('node-x', 'OWN-1', 3, now() + interval '1 hour');
             INSERT INTO carts (id, session_id, owner_node, version) VALUES
                 ('00000000-0000-0000-0000-0000000000a1', 's-x1', 'node-x', 2),
                 ('00000000-0000-0000-0000-0000000000a2', 's-x2', 'node-x', 2),
                 ('00000000-0000-0000-0000-0000000000b1', 's-y', 'node-y', 2);",
        )
        .await
        .expect("rows of an earlier process");
    let passes = race_reapers(&db, 1, Scope::Own("node-x")).await;
    assert_eq!((passes[0].lease_units, passes[0].disowned_carts), (3, 2));
    let owners: Vec<(String, Option<String>)> = client
        .query(
            "SELECT session_id, owner_node FROM carts ORDER BY session_id",
            &[],
        )
        .await
        .expect("carts")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(
        owners,
        [
            ("s-x1".to_owned(), None),
            ("s-x2".to_owned(), None),
            ("s-y".to_owned(), Some("node-y".to_owned())),
        ]
    );
    assert_eq!(buckets(&db, "OWN-1").await, (10, 10, 0, 0, 0));
    assert_stock_sound(&db).await;
}
