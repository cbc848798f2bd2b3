//! One catalog on every node: a node cut off from Redis never charges an old price, and
//! catches up with changes it missed, from the resync or its bus reconnect.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::{
    common::{
        buckets, error_code, redis_url, shared_client, test_live, two_nodes_with, Buyer, Options,
        TestApp, ADMIN_TOKEN,
    },
    proxy::Proxy,
};

const SLUG: &str = "sync-tee";
const SKU: &str = "SYNC-TEE";

fn product(slug: &str, sku: &str, price_minor: i64) -> serde_json::Value {
    json!({
        "slug": slug,
        "name": "Sync Tee",
        "variants": [{"sku": sku, "price_minor": price_minor, "currency": "EUR", "stock": 20}]
    })
}

async fn upsert(app: &TestApp, body: &serde_json::Value) {
    let (status, resp) = app
        .admin_post("/api/admin/products", Some(ADMIN_TOKEN), body)
        .await;
    assert!(status == 200 || status == 201, "{status} {resp}");
}

/// Two nodes on one database and one Redis bus; node B reaches Redis only through the
/// returned proxy. `resync` is both nodes' resync period.
async fn two_nodes(resync: Duration) -> (TestApp, TestApp, Proxy) {
    let redis = redis_url();
    let target = redis
        .trim_start_matches("redis://")
        .rsplit('@')
        .next()
        .and_then(|hostport| hostport.split('/').next())
        .unwrap_or("127.0.0.1:6379")
        .to_owned();
    let proxy = Proxy::start(&target).await;
    let live = surge::config::LiveConfig {
        resync,
        ..test_live()
    };
    let (a, b) = two_nodes_with(live, format!("redis://{}", proxy.addr())).await;
    (a, b, proxy)
}

fn price_on(app: &TestApp, sku: &str) -> Option<i64> {
    app.state()
        .catalog
        .snapshot()
        .variant(sku)
        .map(|(_, v)| v.price_minor)
}

/// Polls `GET /api/products/{slug}` on `app` until its first variant costs `price`.
async fn shows_price_within(app: &TestApp, slug: &str, price: i64, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    loop {
        let (status, body) = app.get_json(&format!("/api/products/{slug}")).await;
        if status == 200 && body["variants"][0]["price_minor"] == price {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        actix_web::rt::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Guards against a node that missed a price change (its Redis link cut, so the bus
/// event never arrives) reserving or selling at the old price, and against it never
/// catching up once the link returns.
#[actix_web::test]
async fn a_price_change_missed_by_a_cut_node_is_never_charged_there() {
    // A long resync: only the refusal and the bus reconnect may bring B up to date.
    let (a, b, proxy) = two_nodes(Duration::from_secs(600)).await;
    upsert(&a, &product(SLUG, SKU, 1_000)).await;
    assert!(
        shows_price_within(&b, SLUG, 1_000, Duration::from_secs(15)).await,
        "B never saw the product over the bus"
    );

    proxy.cut();
    upsert(&a, &product(SLUG, SKU, 1_200)).await;
    assert_eq!(price_on(&b, SKU), Some(1_000), "B cannot have heard");

    // B offers the old price; the Journal refuses it with the committed one.
    let http = shared_client();
    let mut shopper = Buyer::new(&b.base, http.clone());
    let (status, body) = shopper.set(SKU, 2).await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(error_code(&body), "price_changed");
    assert_eq!(body["error"]["sku"], SKU);
    assert_eq!(body["error"]["price_minor"], 1_200);
    assert_eq!(body["error"]["currency"], "EUR");
    assert_eq!(buckets(&a.db, SKU).await.3, 0, "nothing was reserved");
    // ...and B reloaded before answering, so the retry is at the new price.
    assert_eq!(price_on(&b, SKU), Some(1_200));
    let (status, cart) = shopper.set(SKU, 2).await;
    assert_eq!(status, 200, "{cart}");
    assert_eq!(cart["lines"][0]["unit_price_minor"], 1_200);

    // A second change while still cut, then the link returns: B catches up from its
    // bus reconnect, not from a request.
    upsert(&a, &product(SLUG, SKU, 1_500)).await;
    proxy.restore();
    let restored = Instant::now();
    assert!(
        shows_price_within(&b, SLUG, 1_500, Duration::from_secs(15)).await,
        "B still shows an old price 15 s after its Redis link returned"
    );
    eprintln!(
        "B caught up {:?} after its Redis link returned",
        restored.elapsed()
    );

    // The cart still holds the line at 1,200: the checkout is refused, not charged.
    let (status, body) = shopper.checkout("sync-1").await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(error_code(&body), "price_changed");
    assert_eq!(body["error"]["price_minor"], 1_500);
    assert_eq!(buckets(&a.db, SKU).await.4, 0, "nothing was sold");
    // The shopper sets the line again and B charges the new price.
    let (status, cart) = shopper.set(SKU, 2).await;
    assert_eq!(status, 200, "{cart}");
    assert_eq!(cart["lines"][0]["unit_price_minor"], 1_500);
    let (status, order) = shopper.checkout("sync-2").await;
    assert_eq!(status, 201, "{order}");
    assert_eq!(order["lines"][0]["unit_price_minor"], 1_500);
    assert_eq!(order["total_minor"], 3_000);

    b.stop().await;
    a.stop().await;
}

/// Guards against a node that missed the bus event for a new product answering 404 for
/// it until it restarts: the periodic resync reads the catalog version and reloads.
#[actix_web::test]
async fn a_product_created_while_a_node_missed_the_event_appears_within_the_resync_period() {
    let resync = Duration::from_secs(2);
    let (a, b, proxy) = two_nodes(resync).await;
    proxy.cut();
    let created = Instant::now();
    upsert(&a, &product("sync-new", "SYNC-NEW", 700)).await;
    let deadline = created + resync + Duration::from_secs(2);
    loop {
        let (status, body) = b.get_json("/api/products/sync-new").await;
        if status == 200 {
            assert_eq!(body["variants"][0]["price_minor"], 700);
            break;
        }
        assert_eq!(status, 404, "{body}");
        assert!(
            Instant::now() < deadline,
            "B still answers 404 {:?} after the product was created",
            created.elapsed()
        );
        actix_web::rt::time::sleep(Duration::from_millis(100)).await;
    }
    // B sells it at the committed price, its link to Redis still cut.
    let mut shopper = Buyer::new(&b.base, shared_client());
    let (status, cart) = shopper.set("SYNC-NEW", 1).await;
    assert_eq!(status, 200, "{cart}");
    assert_eq!(cart["lines"][0]["unit_price_minor"], 700);
    b.stop().await;
    a.stop().await;
}

/// Guards against a reload that failed being forgotten (the node then serving the old
/// catalog until it restarts): node B hears of a new product while its PostgreSQL link
/// is cut, its reload fails, and the next resync after the link returns loads it.
#[actix_web::test]
async fn a_reload_that_failed_while_postgresql_was_cut_is_retried_by_the_resync() {
    let resync = Duration::from_secs(2);
    let live = surge::config::LiveConfig {
        resync,
        ..test_live()
    };
    let a = TestApp::spawn(Options {
        seed_demo: false,
        live: live.clone(),
        redis_url: Some(redis_url()),
        ..Options::default()
    })
    .await;
    let cfg: tokio_postgres::Config = a.db.url.parse().expect("url");
    let host = match cfg.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
        _ => "127.0.0.1".to_owned(),
    };
    let port = cfg.get_ports().first().copied().unwrap_or(5432);
    let pg = Proxy::start(&format!("{host}:{port}")).await;
    let b = TestApp::spawn(Options {
        seed_demo: false,
        database_url: Some(format!(
            "postgres://{}@127.0.0.1:{}/{}",
            cfg.get_user().unwrap_or("postgres"),
            pg.addr().port(),
            a.db.name
        )),
        live,
        redis_url: Some(redis_url()),
        ..Options::default()
    })
    .await;

    pg.cut();
    upsert(&a, &product("sync-late", "SYNC-LATE", 900)).await;
    let version = a.state().catalog.version();
    // B hears of the change over the bus, and cannot load it.
    let deadline = Instant::now() + Duration::from_secs(10);
    while b.state().catalog.heard() < version {
        assert!(Instant::now() < deadline, "B never heard of the change");
        actix_web::rt::time::sleep(Duration::from_millis(50)).await;
    }
    actix_web::rt::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(b.get_json("/api/products/sync-late").await.0, 404);
    assert!(b.state().catalog.is_behind());

    pg.restore();
    let restored = Instant::now();
    assert!(
        shows_price_within(&b, "sync-late", 900, resync + Duration::from_secs(3)).await,
        "B did not retry its failed reload within the resync period"
    );
    eprintln!(
        "B loaded the missed product {:?} after PostgreSQL returned",
        restored.elapsed()
    );
    assert!(!b.state().catalog.is_behind());
    b.stop().await;
    a.stop().await;
}
