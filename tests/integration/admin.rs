//! Admin authentication, product upsert, restock, and bad input that changes nothing.

use serde_json::json;

use crate::common::{error_code, Options, TestApp, ADMIN_TOKEN};

fn product(slug: &str, stock: i64) -> serde_json::Value {
    json!({
        "slug": slug,
        "name": "Test Parka",
        "description": "Warm.",
        "variants": [
            {"sku": format!("{slug}-m"), "attributes": {"size": "M", "colour": "Red"}, "price_minor": 12900, "currency": "EUR", "stock": stock},
            {"sku": format!("{slug}-l"), "attributes": {"size": "L", "colour": "Red"}, "price_minor": 13900, "currency": "EUR", "stock": 0}
        ]
    })
}

/// Counts rows that every admin write touches, to prove a refused request changed nothing.
async fn fingerprint(app: &TestApp) -> (i64, i64, i64) {
    let row = app
        .db
        .client()
        .await
        .query_one(
            "SELECT (SELECT count(*) FROM products), (SELECT count(*) FROM variants),
                    (SELECT COALESCE(sum(total), 0)::bigint FROM inventory)",
            &[],
        )
        .await
        .expect("fingerprint");
    (row.get(0), row.get(1), row.get(2))
}

#[actix_web::test]
async fn token_missing_wrong_and_right() {
    let app = TestApp::empty().await;
    let before = fingerprint(&app).await;
    let (status, body) = app
        .admin_post("/api/admin/products", None, &product("parka", 5))
        .await;
    assert_eq!(status, 401);
    assert_eq!(error_code(&body), "unauthorized");
    let (status, body) = app
        .admin_post(
            "/api/admin/products",
            Some("wrong-token-wrong-token"),
            &product("parka", 5),
        )
        .await;
    assert_eq!(status, 403);
    assert_eq!(error_code(&body), "forbidden");
    let (status, _) = app
        .admin_post(
            "/api/admin/inventory/parka-m/restock",
            Some("x"),
            &json!({"quantity": 1}),
        )
        .await;
    assert_eq!(status, 403);
    assert_eq!(
        fingerprint(&app).await,
        before,
        "refused requests change nothing"
    );

    let (status, body) = app
        .admin_post(
            "/api/admin/products",
            Some(ADMIN_TOKEN),
            &product("parka", 5),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["available"], 5);
    // Visible in the catalog at once.
    let (status, body) = app.get_json("/api/products/parka").await;
    assert_eq!(status, 200);
    assert_eq!(body["variants"].as_array().expect("variants").len(), 2);
    assert_eq!(body["price_min_minor"], 12900);
    assert_eq!(body["price_max_minor"], 13900);
    app.stop().await;
}

#[actix_web::test]
async fn upsert_updates_and_retires_variants_and_restock_adds() {
    let app = TestApp::empty().await;
    let token = Some(ADMIN_TOKEN);
    assert_eq!(
        app.admin_post("/api/admin/products", token, &product("coat", 3))
            .await
            .0,
        201
    );
    let mut update = product("coat", 99);
    update["name"] = json!("Renamed Coat");
    update["variants"].as_array_mut().expect("variants").pop();
    let (status, body) = app.admin_post("/api/admin/products", token, &update).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["name"], "Renamed Coat");
    assert_eq!(
        body["variants"].as_array().expect("variants").len(),
        1,
        "coat-l retired"
    );
    assert_eq!(
        body["available"], 3,
        "stock of an existing SKU is not reset by an upsert"
    );

    let (status, body) = app
        .admin_post(
            "/api/admin/inventory/coat-m/restock",
            token,
            &json!({"quantity": 7}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["total"], 10);
    assert_eq!(body["available"], 10);
    let (_, coat) = app.get_json("/api/products/coat").await;
    assert_eq!(
        coat["variants"][0]["available"], 10,
        "the catalog shows the restock"
    );

    let (status, body) = app
        .admin_post(
            "/api/admin/inventory/NOPE-1/restock",
            token,
            &json!({"quantity": 1}),
        )
        .await;
    assert_eq!(status, 404);
    assert_eq!(error_code(&body), "not_found");

    // A SKU cannot move to another product.
    let mut thief = product("other", 1);
    thief["variants"][0]["sku"] = json!("coat-m");
    let (status, body) = app.admin_post("/api/admin/products", token, &thief).await;
    assert_eq!(status, 409);
    assert_eq!(error_code(&body), "sku_taken");
    let (status, _) = app.get_json("/api/products/other").await;
    assert_eq!(status, 404, "the refused product was rolled back");
    app.stop().await;
}

#[actix_web::test]
async fn bad_admin_input_is_4xx_and_changes_nothing() {
    let app = TestApp::spawn(Options {
        seed_demo: false,
        body_limit: 4096,
        ..Options::default()
    })
    .await;
    let token = Some(ADMIN_TOKEN);
    assert_eq!(
        app.admin_post("/api/admin/products", token, &product("base", 4))
            .await
            .0,
        201
    );
    let before = fingerprint(&app).await;
    let auth = format!("Bearer {ADMIN_TOKEN}");
    let json_headers = [
        ("content-type", "application/json"),
        ("authorization", auth.as_str()),
    ];

    let (status, body) = app
        .send("POST", "/api/admin/products", &json_headers, "{\"slug\": ")
        .await;
    assert_eq!((status, error_code(&body).as_str()), (400, "invalid_json"));

    let big = json!({"slug": "big", "name": "x".repeat(8000), "variants": []}).to_string();
    let (status, body) = app
        .send("POST", "/api/admin/products", &json_headers, big)
        .await;
    assert_eq!(
        (status, error_code(&body).as_str()),
        (413, "payload_too_large")
    );

    // 400 for a field that breaks its schema; 422 for valid fields that contradict
    // each other (no schema can state that).
    let mut invalid_cases = Vec::new();
    let mut contradictions = Vec::new();
    let mut bad = product("Bad Slug", 1);
    invalid_cases.push(bad.clone());
    bad = product("neg", 1);
    bad["variants"][0]["price_minor"] = json!(-1);
    invalid_cases.push(bad.clone());
    bad = product("float", 1);
    bad["variants"][0]["price_minor"] = json!(12.5);
    invalid_cases.push(bad.clone());
    bad = product("cur", 1);
    bad["variants"][1]["currency"] = json!("USD");
    contradictions.push(bad.clone());
    bad = product("dupe", 1);
    bad["variants"][1]["sku"] = bad["variants"][0]["sku"].clone();
    contradictions.push(bad.clone());
    bad = product("blank", 1);
    bad["name"] = json!("   ");
    invalid_cases.push(bad.clone());
    bad = product("nul", 1);
    bad["description"] = json!("a\0b");
    invalid_cases.push(bad.clone());
    bad = product("novariants", 1);
    bad["variants"] = json!([]);
    invalid_cases.push(bad.clone());
    bad = product("extra", 1);
    bad["unexpected"] = json!(true);
    invalid_cases.push(bad.clone());
    for case in &invalid_cases {
        let (status, body) = app.admin_post("/api/admin/products", token, case).await;
        assert_eq!(status, 400, "{case} -> {body}");
        error_code(&body);
    }
    for case in &contradictions {
        let (status, body) = app.admin_post("/api/admin/products", token, case).await;
        assert_eq!(
            (status, error_code(&body).as_str()),
            (422, "invalid_product"),
            "{case} -> {body}"
        );
    }

    for quantity in [
        json!(0),
        json!(-3),
        json!(1.5),
        json!("7"),
        json!(2_000_000),
    ] {
        let (status, body) = app
            .admin_post(
                "/api/admin/inventory/base-m/restock",
                token,
                &json!({"quantity": quantity}),
            )
            .await;
        assert_eq!(status, 400, "quantity {quantity} -> {body}");
        error_code(&body);
    }
    let (status, _) = app
        .send(
            "POST",
            "/api/admin/inventory/base-m/restock",
            &[("authorization", auth.as_str())],
            "{\"quantity\":1}",
        )
        .await;
    assert_eq!(status, 400, "no content type");
    assert_eq!(fingerprint(&app).await, before, "bad input changed nothing");
    app.stop().await;
}

#[actix_web::test]
async fn admin_api_is_off_without_a_token() {
    let app = TestApp::spawn(Options {
        admin_token: None,
        seed_demo: false,
        ..Options::default()
    })
    .await;
    for token in [None, Some(ADMIN_TOKEN), Some("")] {
        let (status, body) = app
            .admin_post("/api/admin/products", token, &product("off", 1))
            .await;
        assert_eq!(status, 404, "token {token:?}");
        assert_eq!(error_code(&body), "not_found");
    }
    let (status, _) = app
        .admin_post(
            "/api/admin/inventory/off-m/restock",
            Some(ADMIN_TOKEN),
            &json!({"quantity": 1}),
        )
        .await;
    assert_eq!(status, 404);
    assert_eq!(fingerprint(&app).await, (0, 0, 0));
    app.stop().await;
}
