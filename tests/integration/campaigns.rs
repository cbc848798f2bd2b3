//! Campaigns that gate and price: refused before the start and after the end on every
//! node, open at the same instant everywhere, charged at the sale price, and a bad
//! campaign refused with nothing stored.

use std::time::Duration;

use serde_json::json;
use surge_actors::cart_actor::now_ms;

use crate::common::{
    buckets, error_code, make_sku, shared_client, two_nodes, ws_connect, ws_wait, Buyer, Options,
    TestApp, ADMIN_TOKEN,
};

pub(crate) async fn schedule(app: &TestApp, body: &serde_json::Value) -> (u16, serde_json::Value) {
    app.admin_post("/api/admin/campaigns", Some(ADMIN_TOKEN), body)
        .await
}

pub(crate) async fn sleep_until_ms(t: i64) {
    let wait = t - now_ms();
    if wait > 0 {
        tokio::time::sleep(Duration::from_millis(wait.unsigned_abs())).await;
    }
}

/// Guards against a campaign SKU being bought before its start or after its end on any
/// node, against nodes opening it at different instants (each by its own memory), and
/// against the line or the order being charged anything but the sale price.
#[actix_web::test]
async fn a_campaign_opens_at_its_start_on_every_node_prices_at_the_sale_price_and_closes_at_its_end(
) {
    const SKU: &str = "FLASH-1";
    let (a, b) = two_nodes().await;
    make_sku(&a, SKU, 500).await;
    let starts = now_ms() + 2_500;
    let ends = starts + 5_000;
    let (status, created) = schedule(
        &a,
        &json!({"name": "Flash", "skus": [SKU], "starts_at_ms": starts, "ends_at_ms": ends,
                "sale_price_minor": {SKU: 700}, "per_customer_limit": 2,
                "queue": {"admit_per_second": 50}}),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["state"], "scheduled");
    assert_eq!(created["per_customer_limit"], 2);
    assert_eq!(created["queue"]["admit_per_second"], 50);
    assert_eq!(created["skus"][0]["sale_price_minor"], 700);
    // A campaign of loose SKUs still names its goods and their currency.
    assert_eq!(created["skus"][0]["currency"], "EUR");
    assert!(created["skus"][0]["name"]
        .as_str()
        .is_some_and(|n| !n.is_empty()));
    let id = created["id"].as_str().expect("id").to_owned();
    let mut sockets = [
        ws_connect(&a.base, None).await,
        ws_connect(&b.base, None).await,
    ];

    // Before the start: refused on both nodes, nothing reserved.
    let http = shared_client();
    let mut buyers = [
        Buyer::new(&a.base, http.clone()),
        Buyer::new(&b.base, http.clone()),
    ];
    for buyer in &mut buyers {
        let (status, body) = buyer.set(SKU, 1).await;
        assert_eq!(status, 409, "{body}");
        assert_eq!(error_code(&body), "campaign_not_started");
        assert_eq!(body["error"]["starts_at_ms"], starts);
    }
    assert_eq!(
        buckets(&a.db, SKU).await.3,
        0,
        "nothing reserved before the start"
    );
    for node in [&a, &b] {
        let (status, view) = node.get_json(&format!("/api/campaigns/{id}")).await;
        assert_eq!(status, 200, "{view}");
        assert_eq!(view["state"], "scheduled");
        assert!(view["server_time_ms"].as_i64().is_some_and(|t| t < starts));
        assert_eq!(view["skus"][0]["price_minor"], 1000);
        assert_eq!(view["skus"][0]["available"], 500);
    }

    // From just before the start, each node is tried every ~10 ms. A success is timed
    // by when its request left (the node was open by then) and must arrive after the
    // start.
    sleep_until_ms(starts - 150).await;
    let opened = futures_util::future::join_all(buyers.iter_mut().map(|buyer| async move {
        loop {
            let sent = now_ms();
            let (status, body) = buyer.set(SKU, 1).await;
            let at = now_ms();
            match status {
                200 => return (sent, at, body),
                // The campaign's queue admits the second buyer 20 ms after the first.
                409 if error_code(&body) == "campaign_not_started" => {
                    assert!(
                        sent < starts + 100,
                        "still refused {}ms after the start",
                        sent - starts
                    );
                }
                429 if error_code(&body) == "queued" => {
                    assert!(
                        sent < starts + 100,
                        "still refused {}ms after the start",
                        sent - starts
                    );
                }
                _ => panic!("{status} {body}"),
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }))
    .await;
    for (sent, at, _) in &opened {
        assert!(*at >= starts, "opened {}ms before the start", starts - at);
        assert!(
            sent - starts < 100,
            "opened {}ms after the start",
            sent - starts
        );
    }
    let sent: Vec<i64> = opened.iter().map(|(s, _, _)| *s).collect();
    let spread = sent.iter().max().unwrap_or(&0) - sent.iter().min().unwrap_or(&0);
    assert!(spread < 100, "nodes opened {spread}ms apart");
    eprintln!(
        "campaign start: first successful PUT per node sent at +{:?} ms, answered at +{:?} ms",
        sent.iter().map(|t| t - starts).collect::<Vec<_>>(),
        opened
            .iter()
            .map(|(_, a, _)| a - starts)
            .collect::<Vec<_>>()
    );
    for (_, _, cart) in &opened {
        assert_eq!(cart["lines"][0]["unit_price_minor"], 700, "{cart}");
    }

    // The start reached every socket.
    for ws in &mut sockets {
        let msg = ws_wait(ws, Duration::from_secs(2), |v| v["type"] == "campaign")
            .await
            .expect("campaign message");
        assert_eq!(msg["campaign"]["id"], id.as_str());
        assert_eq!(msg["campaign"]["state"], "live");
    }

    // The order charges the sale price.
    let (status, order) = buyers[1].checkout("flash-1").await;
    assert_eq!(status, 201, "{order}");
    assert_eq!(order["total_minor"], 700);
    assert_eq!(order["lines"][0]["unit_price_minor"], 700);

    // After the end: refused on both nodes.
    sleep_until_ms(ends + 20).await;
    for node in [&a, &b] {
        let mut late = Buyer::new(&node.base, http.clone());
        let (status, body) = late.set(SKU, 1).await;
        assert_eq!(status, 409, "{body}");
        assert_eq!(error_code(&body), "campaign_ended");
        let (_, view) = node.get_json(&format!("/api/campaigns/{id}")).await;
        assert_eq!(view["state"], "ended");
    }
    let (_, _, _, reserved, sold) = buckets(&a.db, SKU).await;
    assert_eq!((reserved, sold), (1, 1), "one line held, one sold");
    b.stop().await;
    a.stop().await;
}

/// Guards against a node that has not heard of a campaign selling its SKU early: the
/// commit itself refuses a reserve outside the window, at the database's clock.
#[actix_web::test]
async fn the_commit_refuses_a_reserve_before_the_start_on_a_node_that_never_heard_of_the_campaign()
{
    const SKU: &str = "QUIET-1";
    let app = TestApp::spawn(Options {
        seed_demo: false,
        ..Options::default()
    })
    .await;
    make_sku(&app, SKU, 5).await;
    let starts = now_ms() + 60_000;
    let client = app.db.client().await;
    // Written behind the node's back: no catalog version raised, no reload.
    client
        .execute(
            "INSERT INTO campaigns (id, name, starts_at, ends_at)
             VALUES ($1, 'Quiet', 'epoch'::timestamptz + $2::bigint * interval '1 millisecond',
                     'epoch'::timestamptz + $3::bigint * interval '1 millisecond')",
            &[&uuid::Uuid::new_v4(), &starts, &(starts + 1000)],
        )
        .await
        .expect("campaign");
    client
        .execute(
            "INSERT INTO campaign_skus (campaign_id, sku) SELECT id, $1 FROM campaigns",
            &[&SKU],
        )
        .await
        .expect("campaign sku");
    assert!(app.state().catalog.snapshot().campaigns().all().is_empty());
    let mut buyer = Buyer::new(&app.base, app.http.clone());
    let (status, body) = buyer.set(SKU, 1).await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(error_code(&body), "campaign_not_started");
    assert_eq!(body["error"]["starts_at_ms"], starts);
    assert_eq!(buckets(&app.db, SKU).await.3, 0, "nothing reserved");
    app.stop().await;
}

/// Guards against bad campaigns reaching the database (a 500, or a stored half) and
/// against two campaigns claiming one SKU at the same time.
#[actix_web::test]
async fn bad_campaigns_are_refused_and_nothing_is_stored() {
    let app = TestApp::spawn(Options {
        seed_demo: false,
        ..Options::default()
    })
    .await;
    make_sku(&app, "BAD-1", 5).await;
    make_sku(&app, "BAD-2", 5).await;
    let ok = json!({"name": "First", "skus": ["BAD-1"], "starts_at_ms": 1_000_000, "ends_at_ms": 2_000_000});
    let (status, body) = schedule(&app, &ok).await;
    assert_eq!(status, 201, "{body}");
    let refused = [
        (
            json!({"name": "X", "skus": ["BAD-2"], "starts_at_ms": 0, "ends_at_ms": 1_000_000_000_000_000_000_i64}),
            400,
            "invalid_campaign",
        ),
        (
            json!({"name": "X", "skus": ["BAD-2"], "starts_at_ms": 1e18, "ends_at_ms": 2e18}),
            400,
            "",
        ),
        (
            json!({"name": "X", "skus": ["BAD-2"], "starts_at_ms": -5, "ends_at_ms": 10}),
            400,
            "invalid_campaign",
        ),
        (
            // Each field is valid; the window contradicts itself.
            json!({"name": "X", "skus": ["BAD-2"], "starts_at_ms": 10, "ends_at_ms": 10}),
            422,
            "invalid_campaign",
        ),
        (
            json!({"name": "X", "skus": ["BAD-2"], "starts_at_ms": 0, "ends_at_ms": 10, "sale_price_minor": {"BAD-2": 0}}),
            400,
            "invalid_campaign",
        ),
        (
            json!({"name": "X", "skus": ["BAD-2"], "starts_at_ms": 0, "ends_at_ms": 10, "sale_price_minor": {"BAD-1": 5}}),
            422,
            "invalid_campaign",
        ),
        (
            json!({"name": "X", "skus": ["BAD-2"], "starts_at_ms": 0, "ends_at_ms": 10, "per_customer_limit": 0}),
            400,
            "invalid_campaign",
        ),
        (
            json!({"name": "X", "skus": ["BAD-2"], "starts_at_ms": 0, "ends_at_ms": 10, "per_customer_limit": 9_999_999_999_i64}),
            400,
            "invalid_campaign",
        ),
        (
            json!({"name": "X", "skus": ["BAD-2"], "product_slug": "bad-2", "starts_at_ms": 0, "ends_at_ms": 10}),
            422,
            "invalid_campaign",
        ),
        (
            // No SKU or slug holds a NUL byte, and PostgreSQL refuses one outright: a
            // 400 before any lookup, never the 500 its error would make.
            json!({"name": "X", "skus": ["BAD-2", "O\u{0}"], "starts_at_ms": 0, "ends_at_ms": 10}),
            400,
            "invalid_campaign",
        ),
        (
            json!({"name": "X", "skus": ["BAD-2"], "starts_at_ms": 0, "ends_at_ms": 10, "sale_price_minor": {"B\u{0}": 5}}),
            400,
            "invalid_campaign",
        ),
        (
            json!({"name": "X", "product_slug": "bad\u{0}", "starts_at_ms": 0, "ends_at_ms": 10}),
            400,
            "invalid_campaign",
        ),
        (
            json!({"name": "X", "skus": ["BAD-2", "NOPE"], "starts_at_ms": 0, "ends_at_ms": 10}),
            404,
            "not_found",
        ),
        (
            // Breaks the SKU pattern /openapi.json states: a 400, as every field that
            // breaks its schema is, not a lookup's 404.
            json!({"name": "X", "skus": ["bad sku/.."], "starts_at_ms": 0, "ends_at_ms": 10}),
            400,
            "invalid_campaign",
        ),
        (
            json!({"name": "X", "product_slug": "nope", "starts_at_ms": 0, "ends_at_ms": 10}),
            404,
            "not_found",
        ),
        (
            json!({"name": "X", "skus": ["BAD-2", "BAD-1"], "starts_at_ms": 1_999_999, "ends_at_ms": 3_000_000}),
            409,
            "campaign_overlap",
        ),
        (
            json!({"name": "X", "product_slug": "bad-1", "starts_at_ms": 0, "ends_at_ms": 1_000_001}),
            409,
            "campaign_overlap",
        ),
    ];
    for (body, want, code) in refused {
        let (status, resp) = schedule(&app, &body).await;
        assert_eq!(status, want, "{body} -> {resp}");
        if !code.is_empty() {
            assert_eq!(error_code(&resp), code, "{body} -> {resp}");
        }
    }
    let client = app.db.client().await;
    let stored: i64 = client
        .query_one("SELECT count(*) FROM campaigns", &[])
        .await
        .expect("count")
        .get(0);
    let skus: i64 = client
        .query_one("SELECT count(*) FROM campaign_skus", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!((stored, skus), (1, 1), "only the first campaign is stored");

    // Windows that touch do not overlap; the old body (a product) still works.
    let (status, body) = schedule(
        &app,
        &json!({"name": "Second", "product_slug": "bad-1", "starts_at_ms": 2_000_000, "ends_at_ms": 3_000_000}),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["skus"][0]["sku"], "BAD-1");
    assert_eq!(body["product_slug"], "bad-1");
    let (status, _) = app
        .get_json("/api/campaigns/00000000-0000-4000-8000-000000000000")
        .await;
    assert_eq!(status, 404);
    let (status, _) = app.get_json("/api/campaigns/not-a-uuid").await;
    assert_eq!(status, 404);
    app.stop().await;
}

/// Guards against the overlap check racing: campaigns for one SKU scheduled at once, on
/// two nodes, with overlapping windows, store exactly one.
#[actix_web::test]
async fn concurrent_overlapping_campaigns_store_exactly_one() {
    let (a, b) = two_nodes().await;
    make_sku(&a, "RACE-1", 5).await;
    let replies = futures_util::future::join_all((0..8).map(|i| {
        let node = if i % 2 == 0 { &a } else { &b };
        let body = json!({"name": format!("Race {i}"), "skus": ["RACE-1"],
                          "starts_at_ms": 1_000_000 + i, "ends_at_ms": 2_000_000 + i});
        async move { schedule(node, &body).await }
    }))
    .await;
    let created = replies.iter().filter(|(s, _)| *s == 201).count();
    let overlaps = replies
        .iter()
        .filter(|(s, body)| *s == 409 && error_code(body) == "campaign_overlap")
        .count();
    assert_eq!((created, overlaps), (1, 7), "{replies:?}");
    let stored: i64 =
        a.db.client()
            .await
            .query_one(
                "SELECT count(*) FROM campaign_skus WHERE sku = 'RACE-1'",
                &[],
            )
            .await
            .expect("count")
            .get(0);
    assert_eq!(stored, 1);
    b.stop().await;
    a.stop().await;
}

/// Guards against the start being announced up to a poll period late: the `campaign`
/// message leaves at the start instant, on every node.
#[actix_web::test]
async fn the_start_is_pushed_to_every_node_at_the_start_instant() {
    let (a, b) = two_nodes().await;
    make_sku(&a, "PUSH-1", 5).await;
    let mut sockets = [
        ws_connect(&a.base, None).await,
        ws_connect(&b.base, None).await,
    ];
    let starts = now_ms() + 1_700;
    let (status, created) = schedule(
        &a,
        &json!({"name": "Push", "skus": ["PUSH-1"], "starts_at_ms": starts, "ends_at_ms": starts + 60_000}),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    let arrivals = futures_util::future::join_all(sockets.iter_mut().map(|ws| async move {
        let msg = ws_wait(ws, Duration::from_secs(4), |v| v["type"] == "campaign")
            .await
            .expect("campaign message");
        (now_ms(), msg)
    }))
    .await;
    for (at, msg) in &arrivals {
        assert_eq!(msg["campaign"]["id"], created["id"]);
        assert_eq!(msg["campaign"]["state"], "live");
        assert!(
            *at >= starts,
            "announced {}ms before the start",
            starts - at
        );
        assert!(
            at - starts < 100,
            "announced {}ms after the start",
            at - starts
        );
    }
    eprintln!(
        "campaign push: arrived at +{:?} ms",
        arrivals
            .iter()
            .map(|(at, _)| at - starts)
            .collect::<Vec<_>>()
    );
    b.stop().await;
    a.stop().await;
}
