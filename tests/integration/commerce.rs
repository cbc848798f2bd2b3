//! The no-oversell core through the HTTP API: flash sale, idempotency, bad input,
//! expiry, and two nodes selling one SKU. Child-process tests (node death, durability)
//! are in `nodes.rs`.

use std::{
    collections::HashSet,
    time::{Duration, Instant},
};

use futures_util::future::join_all;

use crate::common::{
    assert_stock_sound, buckets, error_code, make_sku, shared_client, test_commerce,
    two_nodes_selling, Buyer, Options, TestApp,
};

#[actix_web::test]
async fn flash_sale_sells_exactly_the_stock() {
    let app = TestApp::empty().await;
    make_sku(&app, "FLASH-1", 100).await;
    let http = shared_client();
    let buyers = (0..1000).map(|i| {
        let mut buyer = Buyer::new(&app.base, http.clone());
        async move {
            let (status, body) = buyer.set("FLASH-1", 1).await;
            if status != 200 {
                return (status, body);
            }
            buyer.checkout(&format!("order-{i}")).await
        }
    });
    let results = join_all(buyers).await;
    let orders = results.iter().filter(|(s, _)| *s == 201).count();
    let refused: Vec<_> = results.iter().filter(|(s, _)| *s == 409).collect();
    let other: Vec<_> = results
        .iter()
        .filter(|(s, _)| *s != 201 && *s != 409)
        .collect();
    assert!(
        other.is_empty(),
        "no 5xx or other answers: {:?}",
        &other[..other.len().min(5)]
    );
    assert_eq!(orders, 100, "exactly the stock is sold");
    assert_eq!(refused.len(), 900);
    for (_, body) in &refused {
        assert_eq!(error_code(body), "insufficient_stock");
        assert_eq!(body["error"]["available"], 0);
    }
    let ids: HashSet<_> = results
        .iter()
        .filter(|(s, _)| *s == 201)
        .map(|(_, b)| b["id"].to_string())
        .collect();
    assert_eq!(ids.len(), 100, "one order per buyer");
    let (total, available, leased, reserved, sold) = buckets(&app.db, "FLASH-1").await;
    assert_eq!(
        (total, available, leased, reserved, sold),
        (100, 0, 0, 0, 100)
    );
    let rows: i64 = app
        .db
        .client()
        .await
        .query_one("SELECT count(*) FROM orders", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(rows, 100, "every acknowledged order is in PostgreSQL");
    assert_stock_sound(&app.db).await;
    app.stop().await;
}

#[actix_web::test]
async fn concurrent_checkouts_with_one_key_make_one_order() {
    let app = TestApp::empty().await;
    make_sku(&app, "IDEM-1", 10).await;
    let mut buyer = Buyer::new(&app.base, shared_client());
    assert_eq!(buyer.set("IDEM-1", 2).await.0, 200);
    let cookie = buyer.cookie.clone();
    let attempts = (0..50).map(|_| {
        let mut b = Buyer::new(&app.base, shared_client());
        b.cookie = cookie.clone();
        async move { b.checkout("same-key").await }
    });
    let results = join_all(attempts).await;
    assert!(
        results.iter().all(|(s, _)| *s == 201),
        "{:?}",
        results.iter().map(|r| r.0).collect::<Vec<_>>()
    );
    let ids: HashSet<String> = results.iter().map(|(_, b)| b["id"].to_string()).collect();
    assert_eq!(ids.len(), 1, "the same order every time");
    let client = app.db.client().await;
    let orders: i64 = client
        .query_one("SELECT count(*) FROM orders", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(orders, 1);
    assert_eq!(buckets(&app.db, "IDEM-1").await.4, 2, "sold once");

    // The owner can read it; another session cannot tell it exists.
    let id = results[0].1["id"].as_str().expect("id").to_owned();
    let (status, order) = buyer
        .send("GET", &format!("/api/orders/{id}"), &[], "")
        .await;
    assert_eq!(status, 200);
    assert_eq!(order["lines"][0]["quantity"], 2);
    let mut stranger = Buyer::new(&app.base, shared_client());
    let (status, body) = stranger
        .send("GET", &format!("/api/orders/{id}"), &[], "")
        .await;
    assert_eq!((status, error_code(&body).as_str()), (404, "not_found"));
    let (status, _) = stranger
        .send("GET", "/api/orders/not-a-uuid", &[], "")
        .await;
    assert_eq!(status, 404);
    // A new key on the now empty cart is refused.
    let (status, body) = buyer.checkout("another-key").await;
    assert_eq!((status, error_code(&body).as_str()), (409, "cart_empty"));
    assert_stock_sound(&app.db).await;
    app.stop().await;
}

#[actix_web::test]
async fn bad_input_is_4xx_and_changes_nothing() {
    let app = TestApp::empty().await;
    make_sku(&app, "BAD-1", 20).await;
    let mut buyer = Buyer::new(&app.base, shared_client());
    assert_eq!(buyer.set("BAD-1", 3).await.0, 200);
    let (_, cart_before) = buyer.cart().await;
    let stock_before = buckets(&app.db, "BAD-1").await;
    let json = [("content-type", "application/json")];

    let mut cases: Vec<(u16, String, Buyer)> = Vec::new();
    let clone = |b: &Buyer| {
        let mut c = Buyer::new(&app.base, shared_client());
        c.cookie = b.cookie.clone();
        c
    };
    for (path, body, code) in [
        ("/api/cart/items/NOPE-9", "{\"quantity\":1}", "not_found"),
        (
            "/api/cart/items/BAD-1",
            "{\"quantity\":0}",
            "invalid_quantity",
        ),
        (
            "/api/cart/items/BAD-1",
            "{\"quantity\":-2}",
            "invalid_quantity",
        ),
        (
            "/api/cart/items/BAD-1",
            "{\"quantity\":11}",
            "invalid_quantity",
        ),
        (
            "/api/cart/items/BAD-1",
            "{\"quantity\":1.5}",
            "invalid_json",
        ),
        (
            "/api/cart/items/BAD-1",
            "{\"quantity\":\"2\"}",
            "invalid_json",
        ),
        ("/api/cart/items/BAD-1", "{\"quantity\":", "invalid_json"),
        (
            "/api/cart/items/BAD-1",
            "{\"quantity\":1,\"x\":1}",
            "invalid_json",
        ),
    ] {
        let mut b = clone(&buyer);
        let (status, resp) = b.send("PUT", path, &json, body).await;
        assert!(
            (400..500).contains(&status),
            "{path} {body}: {status} {resp}"
        );
        assert_eq!(error_code(&resp), code, "{path} {body}");
        cases.push((status, body.to_owned(), b));
    }
    let mut b = clone(&buyer);
    let (status, resp) = b
        .send(
            "POST",
            "/api/checkout",
            &json,
            "{\"email\":\"buyer@example.com\"}",
        )
        .await;
    assert_eq!(
        (status, error_code(&resp).as_str()),
        (400, "missing_idempotency_key")
    );
    for email in ["not-an-email", "a@b", "", "a b@c.de"] {
        let body = serde_json::json!({ "email": email }).to_string();
        let (status, resp) = b
            .send(
                "POST",
                "/api/checkout",
                &[
                    ("content-type", "application/json"),
                    ("idempotency-key", "k"),
                ],
                &body,
            )
            .await;
        assert_eq!(
            (status, error_code(&resp).as_str()),
            (400, "invalid_email"),
            "{email:?}"
        );
    }
    // Forged and altered cookies are refused and cleared.
    let valid = buyer.cookie.clone().expect("cookie");
    // Change the first character of the session id (right after `surge_session=`).
    let swapped = if &valid[14..15] == "a" { "b" } else { "a" };
    let altered = format!("{}{swapped}{}", &valid[..14], &valid[15..]);
    for cookie in [
        "surge_session=0123456789abcdef0123456789abcdef.AAAA".to_owned(),
        "surge_session=garbage".to_owned(),
        altered,
    ] {
        let mut forger = Buyer::new(&app.base, shared_client());
        forger.cookie = Some(cookie.clone());
        let (status, resp) = forger.set("BAD-1", 5).await;
        assert_eq!(
            (status, error_code(&resp).as_str()),
            (400, "invalid_session"),
            "{cookie}"
        );
    }
    let (_, cart_after) = buyer.cart().await;
    assert_eq!(cart_after["lines"], cart_before["lines"], "cart unchanged");
    assert_eq!(cart_after["version"], cart_before["version"]);
    assert_eq!(
        buckets(&app.db, "BAD-1").await,
        stock_before,
        "stock unchanged"
    );
    let carts: i64 = app
        .db
        .client()
        .await
        .query_one("SELECT count(*) FROM carts", &[])
        .await
        .expect("n")
        .get(0);
    assert_eq!(carts, 1, "refused requests created no cart");
    assert_stock_sound(&app.db).await;
    app.stop().await;
}

#[actix_web::test]
async fn expired_reservations_return_their_units_and_refuse_checkout() {
    let mut commerce = test_commerce();
    commerce.reservation_ttl = Duration::from_secs(3);
    let app = TestApp::spawn(Options {
        seed_demo: false,
        commerce,
        ..Options::default()
    })
    .await;
    make_sku(&app, "EXP-1", 5).await;
    let mut buyer = Buyer::new(&app.base, shared_client());
    let (status, cart) = buyer.set("EXP-1", 2).await;
    assert_eq!(status, 200);
    let expires = cart["lines"][0]["expires_at_ms"].as_i64().expect("expiry");
    assert_eq!(buckets(&app.db, "EXP-1").await.3, 2, "reserved");

    // Within the safety margin before expiry, checkout is refused, naming the line.
    let now_ms = || {
        i64::try_from(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .expect("clock")
                .as_millis(),
        )
        .expect("ms")
    };
    let wait = u64::try_from(expires - 150 - now_ms()).unwrap_or(0);
    actix_web::rt::time::sleep(Duration::from_millis(wait)).await;
    let (status, body) = buyer.checkout("late").await;
    assert_eq!(
        (status, error_code(&body).as_str()),
        (409, "reservation_expired"),
        "{body}"
    );
    assert_eq!(body["error"]["lines"][0], "EXP-1");

    // On time, the units leave the reservation and the cart shows it.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (_, cart) = buyer.cart().await;
        if cart["lines"].as_array().is_some_and(Vec::is_empty) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the cart still shows an expired line: {cart}"
        );
        actix_web::rt::time::sleep(Duration::from_millis(100)).await;
    }
    let (total, available, leased, reserved, sold) = buckets(&app.db, "EXP-1").await;
    assert_eq!((total, reserved, sold), (5, 0, 0));
    assert_eq!(available + leased, 5, "every unit is sellable again");
    assert!(now_ms() - expires < 2000, "expired within 2 s of its time");
    let (status, body) = buyer.checkout("later").await;
    assert_eq!((status, error_code(&body).as_str()), (409, "cart_empty"));
    // Another shopper can have all five.
    let mut other = Buyer::new(&app.base, shared_client());
    assert_eq!(other.set("EXP-1", 5).await.0, 200);
    assert_stock_sound(&app.db).await;
    app.stop().await;
}

/// Guards against oversell and against false sold-outs across two nodes: 400 buyers for
/// 150 units, each trying once (a `503` asks it to come back, a `409` is final), so
/// exactly 150 buy and 250 are told the truth, and nothing stays leased or reserved.
#[actix_web::test]
async fn two_nodes_sell_exactly_the_total() {
    let a = TestApp::empty().await;
    make_sku(&a, "TWO-1", 150).await;
    let b = a.join().await;
    let http = shared_client();
    let deadline = Instant::now() + Duration::from_secs(30);
    let buyers = (0..400).map(|i| {
        let base = if i % 2 == 0 {
            a.base.clone()
        } else {
            b.base.clone()
        };
        let mut buyer = Buyer::new(&base, http.clone());
        async move {
            loop {
                let (status, body) = buyer.set("TWO-1", 1).await;
                match status {
                    200 => return buyer.checkout(&format!("k{i}")).await.0,
                    // Sold out, said once: a false one shows as fewer than 150 orders.
                    409 => return 409,
                    // Units held by the other node, on their way back: come back, as
                    // the answer asks (never a sold-out).
                    503 if Instant::now() < deadline => {
                        assert!(
                            matches!(
                                error_code(&body).as_str(),
                                "stock_contended" | "stock_recovering"
                            ),
                            "{body}"
                        );
                        actix_web::rt::time::sleep(Duration::from_millis(250)).await;
                    }
                    other => panic!("unexpected {other}: {body}"),
                }
            }
        }
    });
    let statuses = join_all(buyers).await;
    let orders = statuses.iter().filter(|s| **s == 201).count();
    let sold_out = statuses.iter().filter(|s| **s == 409).count();
    assert_eq!((orders, sold_out), (150, 250), "{statuses:?}");
    let (total, available, leased, reserved, sold) = buckets(&a.db, "TWO-1").await;
    assert_eq!(
        (total, available, leased, reserved, sold),
        (150, 0, 0, 0, 150)
    );
    assert_stock_sound(&a.db).await;
    b.stop().await;
    a.stop().await;
}

#[actix_web::test]
async fn a_deep_shard_queue_sheds_with_429() {
    let mut commerce = test_commerce();
    commerce.shard_queue = 2;
    commerce.shards = 1;
    let app = TestApp::spawn(Options {
        seed_demo: false,
        commerce,
        ..Options::default()
    })
    .await;
    make_sku(&app, "SHED-1", 1000).await;
    let http = shared_client();
    let buyers = (0..300).map(|_| {
        let mut buyer = Buyer::new(&app.base, http.clone());
        async move { buyer.set("SHED-1", 1).await }
    });
    let results = join_all(buyers).await;
    let ok = results.iter().filter(|(s, _)| *s == 200).count();
    let shed: Vec<_> = results.iter().filter(|(s, _)| *s == 429).collect();
    assert_eq!(
        ok + shed.len(),
        results.len(),
        "only 200 or 429: {:?}",
        results.iter().map(|r| r.0).collect::<Vec<_>>()
    );
    assert!(!shed.is_empty(), "a queue deeper than 2 must shed");
    assert!(ok > 0);
    assert_eq!(error_code(&shed[0].1), "busy");
    let (_, _, _, reserved, _) = buckets(&app.db, "SHED-1").await;
    assert_eq!(
        reserved,
        i64::try_from(ok).expect("fits"),
        "shed requests reserved nothing"
    );
    assert_stock_sound(&app.db).await;
    app.stop().await;
}

#[actix_web::test]
async fn a_restock_sells_again_on_every_node() {
    let a = TestApp::empty().await;
    make_sku(&a, "RE-1", 2).await;
    let b = a.join().await;
    let http = shared_client();
    assert_eq!(
        Buyer::new(&a.base, http.clone()).set("RE-1", 2).await.0,
        200
    );
    // Both nodes now refuse from memory.
    let (status, body) = Buyer::new(&b.base, http.clone()).set("RE-1", 1).await;
    assert_eq!(
        (status, error_code(&body).as_str()),
        (409, "insufficient_stock")
    );
    let (status, _) = Buyer::new(&a.base, http.clone()).set("RE-1", 1).await;
    assert_eq!(status, 409);

    let (status, body) = a
        .admin_post(
            "/api/admin/inventory/RE-1/restock",
            Some(crate::common::ADMIN_TOKEN),
            &serde_json::json!({"quantity": 3}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        Buyer::new(&a.base, http.clone()).set("RE-1", 1).await.0,
        200,
        "at once on the restocking node"
    );
    let restocked = Instant::now();
    loop {
        let (status, _) = Buyer::new(&b.base, http.clone()).set("RE-1", 1).await;
        if status == 200 {
            break;
        }
        assert!(
            restocked.elapsed() < Duration::from_secs(2),
            "node B still refuses after a restock"
        );
        actix_web::rt::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(buckets(&a.db, "RE-1").await.0, 5);
    assert_stock_sound(&a.db).await;
    b.stop().await;
    a.stop().await;
}

#[actix_web::test]
async fn a_new_sessions_cart_made_on_two_nodes_at_once_ends_up_as_one() {
    let (a, b) = two_nodes_selling(&[("TWIN-1", 10), ("TWIN-2", 10)]).await;
    let http = shared_client();
    // The session is born on node A (no cart row yet)...
    let mut on_a = Buyer::new(&a.base, http.clone());
    assert_eq!(on_a.cart().await.0, 200);
    // ...its first line lands on node B, which makes the cart row...
    let mut on_b = Buyer::new(&b.base, http.clone());
    on_b.cookie = on_a.cookie.clone();
    assert_eq!(on_b.set("TWIN-1", 2).await.0, 200);
    // ...and node A, which still holds an unsaved empty cart, must adopt that row.
    let (status, cart) = on_a.set("TWIN-2", 1).await;
    assert_eq!(status, 200, "{cart}");
    let lines: Vec<&str> = cart["lines"]
        .as_array()
        .expect("lines")
        .iter()
        .filter_map(|l| l["sku"].as_str())
        .collect();
    assert_eq!(lines, vec!["TWIN-1", "TWIN-2"], "one cart with both lines");
    let carts: i64 =
        a.db.client()
            .await
            .query_one("SELECT count(*) FROM carts", &[])
            .await
            .expect("n")
            .get(0);
    assert_eq!(carts, 1);
    assert_stock_sound(&a.db).await;
    b.stop().await;
    a.stop().await;
}
