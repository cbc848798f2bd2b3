//! Route wiring: every documented operation is served at its path, which routes carry
//! a session, unknown paths, and a database that cannot be reached in time.

use std::time::{Duration, Instant};

use crate::common::{error_code, TestApp, ADMIN_TOKEN};

/// A documented path with its parameters filled in.
fn concrete(path: &str) -> String {
    path.split('/')
        .map(|seg| match seg {
            "{id}" => "00000000-0000-4000-8000-000000000000",
            "{sku}" => "A-1",
            "{slug}" => "a",
            other => other,
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// Sends a request without cookies; returns the status, whether it set a session
/// cookie, and the body.
async fn probe(
    app: &TestApp,
    method: &str,
    path: &str,
    cookie: Option<&str>,
) -> (u16, Option<String>, serde_json::Value) {
    let method = awc::http::Method::from_bytes(method.as_bytes()).expect("method");
    let mut req = app
        .http
        .request(method, app.url(path))
        .insert_header(("content-type", "application/json"));
    if let Some(c) = cookie {
        req = req.insert_header(("cookie", c));
    }
    let mut resp = req.send_body("{}").await.expect("request");
    let session = resp
        .headers()
        .get_all("set-cookie")
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with("surge_session="))
        .map(str::to_owned);
    let body = resp.body().await.unwrap_or_default();
    (
        resp.status().as_u16(),
        session,
        serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null),
    )
}

#[actix_web::test]
async fn every_session_route_gets_a_session_and_no_other_does() {
    let app = TestApp::empty().await;
    let (status, doc) = app.get_json("/openapi.json").await;
    assert_eq!(status, 200);
    let paths = doc["paths"].as_object().expect("paths");
    let mut shopper_routes = 0;
    for (path, item) in paths {
        for (method, op) in item.as_object().expect("path item") {
            let method = method.to_uppercase();
            let (status, session, body) = probe(&app, &method, &concrete(path), None).await;
            assert_ne!(status, 500, "{method} {path}: {body}");
            // Served where it is documented (a handler's own 404 names what is missing).
            let message = body["error"]["message"].as_str().unwrap_or_default();
            assert!(!message.starts_with("no route"), "{method} {path}: {body}");
            let tagged_cart = op["tags"]
                .as_array()
                .is_some_and(|tags| tags.iter().any(|t| t == "cart"));
            assert_eq!(
                session.is_some(),
                tagged_cart,
                "{method} {path} ({status}) sets a session cookie only on shopper routes"
            );
            shopper_routes += usize::from(tagged_cart);
        }
    }
    assert_eq!(
        shopper_routes, 7,
        "cart, line put/delete, checkout, order, queue join/standing"
    );

    // The socket has a session too (a plain GET is not an upgrade, but it is routed).
    let (_, session, _) = probe(&app, "GET", "/ws", None).await;
    assert!(session.is_some(), "/ws gets a session");
    for page in ["/", "/cart", "/products/a"] {
        let (status, session, _) = probe(&app, "GET", page, None).await;
        assert_eq!((status, session), (200, None), "{page}");
    }

    // A forged cookie: the API refuses and clears it, the socket starts afresh.
    let forged = "surge_session=0123456789abcdef0123456789abcdef.AAAA";
    let (status, cleared, body) = probe(&app, "GET", "/api/cart", Some(forged)).await;
    assert_eq!(
        (status, error_code(&body).as_str()),
        (400, "invalid_session")
    );
    assert!(
        cleared.is_some_and(|c| c.starts_with("surge_session=;")),
        "the cookie is removed"
    );
    // (Not an upgrade, so the handshake fails; but not for the cookie.)
    let (_, fresh, body) = probe(&app, "GET", "/ws", Some(forged)).await;
    assert_ne!(
        body["error"]["code"], "invalid_session",
        "a socket is not refused for a stale cookie"
    );
    assert!(
        fresh.is_some_and(|c| c.len() > "surge_session=".len() + 32),
        "a fresh session replaces it"
    );

    // Unknown paths, inside a shopper scope or not, are a JSON 404.
    for path in ["/api/cart/nope", "/api/orders", "/api/admin/nope", "/nope"] {
        let (status, _, body) = probe(&app, "GET", path, None).await;
        assert_eq!(
            (status, error_code(&body).as_str()),
            (404, "not_found"),
            "{path}"
        );
    }
    app.stop().await;
}

#[actix_web::test]
async fn a_pool_that_times_out_answers_503_not_500() {
    let app = TestApp::empty().await;
    let pool = app.state().db.primary.clone();
    // Hold every connection of the primary pool, so each request waits out its turn.
    let mut held = Vec::new();
    for _ in 0..pool.status().max_size {
        held.push(pool.get().await.expect("a connection"));
    }
    let order = "00000000-0000-4000-8000-000000000000";
    let auth = format!("Bearer {ADMIN_TOKEN}");
    let json = ("content-type", "application/json");
    let admin = [json, ("authorization", auth.as_str())];
    let product =
        r#"{"slug":"p","name":"P","variants":[{"sku":"P-1","price_minor":1,"currency":"EUR"}]}"#;
    let campaign = r#"{"name":"C","starts_at_ms":1,"ends_at_ms":2}"#;
    let started = Instant::now();
    let mut shopper = crate::common::Buyer::new(&app.base, app.http.clone());
    let (order_reply, replies) = futures_util::future::join(
        shopper.send("GET", &format!("/api/orders/{order}"), &[], ""),
        futures_util::future::join_all([
            app.send("POST", "/api/admin/products", &admin, product),
            app.send(
                "POST",
                "/api/admin/inventory/P-1/restock",
                &admin,
                r#"{"quantity":1}"#,
            ),
            app.send(
                "POST",
                &format!("/api/admin/orders/{order}/status"),
                &admin,
                r#"{"status":"paid"}"#,
            ),
            app.send("POST", "/api/admin/campaigns", &admin, campaign),
        ]),
    )
    .await;
    for (status, body) in std::iter::once(order_reply).chain(replies) {
        assert_eq!(
            (status, error_code(&body).as_str()),
            (503, "unavailable"),
            "{body}"
        );
    }
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "each waited once"
    );
    drop(held);
    let (status, body) = shopper
        .send("GET", &format!("/api/orders/{order}"), &[], "")
        .await;
    assert_eq!((status, error_code(&body).as_str()), (404, "not_found"));
    app.stop().await;
}
