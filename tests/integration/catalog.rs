//! Catalog listing, search, pagination and their error cases.

use std::collections::HashSet;

use crate::common::{error_code, Options, TestApp};

#[actix_web::test]
async fn listing_paginates_through_every_product_once() {
    let app = TestApp::spawn(Options::default()).await;
    let (status, first) = app.get_json("/api/products").await;
    assert_eq!(status, 200);
    assert_eq!(
        first["items"].as_array().expect("items").len(),
        24,
        "default limit"
    );
    let item = &first["items"][0];
    for field in [
        "slug",
        "name",
        "currency",
        "price_min_minor",
        "price_max_minor",
        "available",
    ] {
        assert!(!item[field].is_null(), "missing {field}: {item}");
    }
    let variant = &item["variants"][0];
    assert!(
        variant["sku"].is_string()
            && variant["available"].is_i64()
            && variant["attributes"].is_object()
    );

    let mut seen = HashSet::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let path = match &cursor {
            Some(c) => format!("/api/products?limit=100&cursor={c}"),
            None => "/api/products?limit=100".to_owned(),
        };
        let (status, page) = app.get_json(&path).await;
        assert_eq!(status, 200, "{page}");
        for item in page["items"].as_array().expect("items") {
            assert!(
                seen.insert(item["slug"].as_str().expect("slug").to_owned()),
                "duplicate {item}"
            );
        }
        pages += 1;
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    assert_eq!(seen.len(), 210, "every demo product exactly once");
    assert_eq!(pages, 3);
    app.stop().await;
}

#[actix_web::test]
async fn search_matches_every_word_case_insensitively() {
    let app = TestApp::spawn(Options::default()).await;
    let (status, page) = app
        .get_json("/api/products?q=LINEN%20shirt&limit=100")
        .await;
    assert_eq!(status, 200);
    let items = page["items"].as_array().expect("items");
    assert!(!items.is_empty());
    for item in items {
        let name = item["name"].as_str().expect("name").to_lowercase();
        assert!(name.contains("linen") && name.contains("shirt"), "{name}");
    }
    let (status, page) = app.get_json("/api/products?q=nosuchthing").await;
    assert_eq!(status, 200);
    assert_eq!(page["items"].as_array().expect("items").len(), 0);
    assert!(page["next_cursor"].is_null());
    app.stop().await;
}

#[actix_web::test]
async fn product_detail_and_unknown_slug() {
    let app = TestApp::spawn(Options::default()).await;
    let (_, list) = app.get_json("/api/products?limit=1").await;
    let slug = list["items"][0]["slug"].as_str().expect("slug").to_owned();
    let (status, product) = app.get_json(&format!("/api/products/{slug}")).await;
    assert_eq!(status, 200);
    assert_eq!(product["slug"], slug.as_str());
    let variants = product["variants"].as_array().expect("variants");
    assert!(!variants.is_empty());
    let sum: i64 = variants
        .iter()
        .map(|v| v["available"].as_i64().expect("available"))
        .sum();
    assert_eq!(product["available"].as_i64(), Some(sum));

    // The number shown is PostgreSQL's.
    let sku = variants[0]["sku"].as_str().expect("sku");
    let db_available: i64 = app
        .db
        .client()
        .await
        .query_one("SELECT available FROM inventory WHERE sku = $1", &[&sku])
        .await
        .expect("row")
        .get(0);
    assert_eq!(variants[0]["available"].as_i64(), Some(db_available));

    let (status, body) = app.get_json("/api/products/no-such-product").await;
    assert_eq!(status, 404);
    assert_eq!(error_code(&body), "not_found");
    let (status, body) = app.get_json("/api/nothing/here").await;
    assert_eq!(status, 404);
    assert_eq!(error_code(&body), "not_found");
    app.stop().await;
}

#[actix_web::test]
async fn bad_listing_parameters_are_400() {
    let app = TestApp::spawn(Options::default()).await;
    let long_q = "x".repeat(101);
    let cases = [
        ("/api/products?limit=0", "invalid_limit"),
        ("/api/products?limit=101", "invalid_limit"),
        ("/api/products?limit=-5", "invalid_limit"),
        ("/api/products?limit=ten", "invalid_limit"),
        ("/api/products?limit=2.5", "invalid_limit"),
        ("/api/products?cursor=!!!", "invalid_cursor"),
        ("/api/products?cursor=QUJD", "invalid_cursor"),
        (
            &format!("/api/products?q={long_q}") as &str,
            "invalid_query",
        ),
    ];
    for (path, code) in cases {
        let (status, body) = app.get_json(path).await;
        assert_eq!(status, 400, "{path}: {body}");
        assert_eq!(error_code(&body), code, "{path}");
    }
    app.stop().await;
}
