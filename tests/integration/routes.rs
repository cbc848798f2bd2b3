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
    let campaign = r#"{"name":"C","skus":["P-1"],"starts_at_ms":1,"ends_at_ms":2}"#;
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

/// The headers worth comparing between a `GET` and its `HEAD` (not the date, the
/// request id, or a session cookie that differs per request).
fn stable_headers(resp: &awc::ClientResponse<impl futures_util::Stream>) -> Vec<(String, String)> {
    let mut headers: Vec<(String, String)> = resp
        .headers()
        .iter()
        .filter(|(name, _)| {
            !matches!(
                name.as_str(),
                "date" | "x-request-id" | "set-cookie" | "content-length"
            )
        })
        .map(|(n, v)| (n.to_string(), v.to_str().unwrap_or("?").to_owned()))
        .collect();
    headers.sort();
    headers
}

#[actix_web::test]
async fn head_mirrors_every_get_and_other_methods_get_405_with_allow() {
    // Guards against HEAD answering 404 (it used to), a HEAD with a body or other
    // headers than its GET, and an undeclared method on a known path answering 404
    // instead of 405, or 405 without the Allow that says what is served.
    let app = TestApp::spawn(crate::common::Options::default()).await;
    let (_, list) = app.get_json("/api/products?limit=1").await;
    let slug = list["items"][0]["slug"].as_str().expect("slug").to_owned();
    let (_, doc) = app.get_json("/openapi.json").await;
    let paths = doc["paths"].as_object().expect("paths");
    let all = ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"];
    let mut heads = 0;
    for (path, item) in paths {
        let documented: Vec<String> = item
            .as_object()
            .expect("path item")
            .keys()
            .map(|m| m.to_uppercase())
            .collect();
        // A product that exists, so its HEAD is a 200 with a body to leave out.
        let url = app.url(&concrete(path).replacen(
            "/api/products/a",
            &format!("/api/products/{slug}"),
            1,
        ));
        if documented.iter().any(|m| m == "GET") {
            // Uncompressed, so the client has no empty gzip stream to decode.
            let identity = ("accept-encoding", "identity");
            let mut get = app
                .http
                .get(&url)
                .insert_header(identity)
                .send()
                .await
                .expect("GET");
            let get_body = get.body().limit(1 << 22).await.expect("GET body");
            let mut head = app
                .http
                .head(&url)
                .insert_header(identity)
                .send()
                .await
                .expect("HEAD");
            assert_eq!(head.status(), get.status(), "HEAD {path}");
            assert_eq!(stable_headers(&head), stable_headers(&get), "HEAD {path}");
            let head_body = head.body().await.expect("HEAD body");
            assert!(head_body.is_empty(), "HEAD {path} has no body");
            // (/metrics grows between the two requests: the GET itself is counted.)
            if get.status().is_success() && path != "/metrics" {
                // The length the GET would have sent (compression aside).
                let length = head
                    .headers()
                    .get("content-length")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<usize>().ok());
                assert_eq!(length, Some(get_body.len()), "HEAD {path} length");
            }
            heads += 1;
        }
        let mut expected_allow: Vec<String> = documented.clone();
        if documented.iter().any(|m| m == "GET") {
            expected_allow.push("HEAD".into());
        }
        expected_allow.sort();
        for method in all
            .iter()
            .filter(|m| !expected_allow.iter().any(|d| d == *m))
        {
            let m = awc::http::Method::from_bytes(method.as_bytes()).expect("method");
            let mut resp = app
                .http
                .request(m, &url)
                .insert_header(("authorization", format!("Bearer {ADMIN_TOKEN}")))
                .send()
                .await
                .expect("request");
            assert_eq!(resp.status().as_u16(), 405, "{method} {path}");
            let mut allow: Vec<String> = resp
                .headers()
                .get("allow")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_else(|| panic!("{method} {path}: 405 without Allow"))
                .split(',')
                .map(|m| m.trim().to_owned())
                .collect();
            allow.sort();
            assert_eq!(allow, expected_allow, "{method} {path}");
            let body: serde_json::Value =
                serde_json::from_slice(&resp.body().await.unwrap_or_default()).unwrap_or_default();
            if *method != "HEAD" {
                assert_eq!(error_code(&body), "method_not_allowed", "{method} {path}");
            }
        }
    }
    assert!(
        heads >= 10,
        "every GET of the description was tried ({heads})"
    );
    // Paths nobody documents stay 404, whatever the method; under the product
    // route's literal prefix too, where the path is not one slug segment.
    for (method, path) in [
        ("POST", "/nope"),
        ("PATCH", "/api/cart/nope"),
        ("HEAD", "/nope"),
        ("GET", "/api/products/"),
        ("GET", &format!("/api/products/{slug}/x")),
        ("HEAD", &format!("/api/products/{slug}/")),
        ("DELETE", "/api/products/a/b"),
    ] {
        let m = awc::http::Method::from_bytes(method.as_bytes()).expect("method");
        let resp = app
            .http
            .request(m, app.url(path))
            .send()
            .await
            .expect("req");
        assert_eq!(resp.status().as_u16(), 404, "{method} {path}");
    }
    app.stop().await;
}

#[actix_web::test]
async fn the_description_states_the_enforced_limits() {
    // Guards against a limit the server enforces that the description does not state
    // (schema-valid requests then fail), or a constraint that lost its target.
    let app = TestApp::empty().await;
    let (_, doc) = app.get_json("/openapi.json").await;
    let schemas = &doc["components"]["schemas"];
    let quantity = &schemas["QuantityBody"]["properties"]["quantity"];
    assert_eq!(
        (quantity["minimum"].as_i64(), quantity["maximum"].as_i64()),
        (Some(1), Some(app.state().limits.max_line_quantity))
    );
    assert_eq!(
        schemas["VariantUpsert"]["properties"]["sku"]["pattern"],
        surge::ws::protocol::SKU_PATTERN
    );
    let param = |path: &str, method: &str, name: &str| {
        doc["paths"][path][method]["parameters"]
            .as_array()
            .and_then(|ps| ps.iter().find(|p| p["name"] == name))
            .cloned()
            .unwrap_or_else(|| panic!("{method} {path} has no parameter {name}"))
    };
    let key = param("/api/checkout", "post", "Idempotency-Key");
    assert_eq!(
        (key["in"].as_str(), key["required"].as_bool()),
        (Some("header"), Some(true))
    );
    assert_eq!(
        param("/api/orders/{id}", "get", "id")["schema"]["format"],
        "uuid"
    );
    let limit = param("/api/products", "get", "limit")["schema"].clone();
    assert_eq!(
        (limit["type"].as_str(), limit["maximum"].as_i64()),
        (Some("integer"), Some(100))
    );
    assert!(doc["components"]["securitySchemes"]["admin_token"].is_object());
    assert_eq!(
        doc["components"]["securitySchemes"]["session_cookie"]["in"],
        "cookie"
    );
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for (method, op) in item.as_object().expect("item") {
            if path.starts_with("/api/admin/") {
                assert_eq!(
                    op["security"],
                    serde_json::json!([{"admin_token": []}]),
                    "{method} {path}"
                );
                for status in ["401", "403", "404", "503"] {
                    assert!(
                        op["responses"][status].is_object(),
                        "{method} {path} documents {status}"
                    );
                }
            }
            if op["requestBody"].is_object() {
                assert!(
                    op["responses"]["413"].is_object(),
                    "{method} {path} documents 413"
                );
            }
        }
    }
    let links = &doc["paths"]["/api/checkout"]["post"]["responses"]["201"]["links"];
    assert_eq!(links["GetOrder"]["operationId"], "get_order");
    app.stop().await;
}

/// The status of `/metrics` at `base`.
async fn metrics_status(http: &awc::Client, base: &str) -> (u16, String) {
    let mut resp = http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .expect("metrics");
    let body = resp.body().await.unwrap_or_default();
    (
        resp.status().as_u16(),
        String::from_utf8_lossy(&body).into_owned(),
    )
}

#[actix_web::test]
async fn metrics_move_to_their_own_listener_when_asked() {
    // Guards against /metrics staying public once SURGE_METRICS_BIND is set, and
    // against the private listener not serving them.
    let public = TestApp::empty().await;
    let (status, text) = metrics_status(&public.http, &public.base).await;
    assert_eq!(status, 200, "unset: /metrics on the public listener");
    assert!(text.contains("http_requests_total"), "{text}");
    assert!(public
        .server
        .as_ref()
        .expect("server")
        .metrics_addr()
        .is_none());
    public.stop().await;

    let app = TestApp::spawn(crate::common::Options {
        seed_demo: false,
        metrics_bind: Some("127.0.0.1:0".parse().expect("addr")),
        ..crate::common::Options::default()
    })
    .await;
    let (status, body) = metrics_status(&app.http, &app.base).await;
    assert_eq!(status, 404, "set: not on the public listener: {body}");
    let private = app
        .server
        .as_ref()
        .and_then(|s| s.metrics_addr())
        .expect("bound");
    let private = format!("http://{private}");
    let (status, text) = metrics_status(&app.http, &private).await;
    assert_eq!(status, 200);
    assert!(
        text.contains("http_requests_total"),
        "the same registry: {text}"
    );
    let resp = app
        .http
        .get(format!("{private}/api/products"))
        .send()
        .await
        .expect("req");
    assert_eq!(
        resp.status().as_u16(),
        404,
        "the private listener serves /metrics only"
    );
    let (status, _) = app.get_json("/healthz").await;
    assert_eq!(status, 200, "the public listener serves the rest");
    let http = app.http.clone();
    app.stop().await;
    assert!(
        http.get(format!("{private}/metrics")).send().await.is_err(),
        "the private listener stops with the node"
    );
}

/// The status of a WebSocket handshake with these headers.
async fn handshake(base: &str, origin: Option<&str>) -> u16 {
    let url = format!("{}/ws", base.replacen("http://", "ws://", 1));
    let mut req = awc::Client::new().ws(url);
    if let Some(o) = origin {
        req = req.origin(o);
    }
    match req.connect().await {
        Ok((resp, _)) => resp.status().as_u16(),
        Err(awc::error::WsClientError::InvalidResponseStatus(status)) => status.as_u16(),
        Err(e) => panic!("handshake failed: {e}"),
    }
}

#[actix_web::test]
async fn sockets_open_from_the_pages_own_origin_only() {
    // Guards against another site's page opening a socket with the shopper's cookie
    // (the default used to allow any Origin), against refusing the store's own pages,
    // and against refusing clients that send no Origin (load tests, native apps).
    let app = TestApp::empty().await;
    let own = app.base.clone();
    assert_eq!(handshake(&app.base, Some(&own)).await, 101, "same origin");
    assert_eq!(handshake(&app.base, Some("http://evil.example")).await, 403);
    let port = app.server.as_ref().expect("server").port();
    assert_eq!(
        handshake(&app.base, Some(&format!("http://localhost:{port}"))).await,
        403,
        "another host name of the same node is another origin"
    );
    assert_eq!(
        handshake(&app.base, None).await,
        101,
        "no Origin: not a browser"
    );
    app.stop().await;

    let mut live = crate::common::test_live();
    live.limits.allowed_origins = vec!["https://shop.example.com".into()];
    let app = TestApp::spawn(crate::common::Options {
        seed_demo: false,
        live,
        ..crate::common::Options::default()
    })
    .await;
    let own = app.base.clone();
    assert_eq!(
        handshake(&app.base, Some("https://shop.example.com")).await,
        101
    );
    assert_eq!(
        handshake(&app.base, Some(&own)).await,
        403,
        "the list replaces the default"
    );
    app.stop().await;
}
