//! Rate limits on a real server: per session and per client IP on cart and checkout
//! writes, new sessions per client IP, and which IP a request counts against.

use std::time::Duration;

use surge::{client_ip::TrustedProxies, rate_limit::Rate};

use crate::common::{error_code, make_sku, test_rate_limits, Options, TestApp};

/// Status, `Retry-After`, the session cookie set (if any) and the JSON body.
struct Answer {
    status: u16,
    retry_after: Option<u64>,
    cookie: Option<String>,
    body: serde_json::Value,
}

async fn call(
    app: &TestApp,
    method: &str,
    path: &str,
    cookie: Option<&str>,
    forwarded_for: Option<&str>,
    body: &str,
) -> Answer {
    let method = awc::http::Method::from_bytes(method.as_bytes()).expect("method");
    let mut req = app
        .http
        .request(method, app.url(path))
        .insert_header(("content-type", "application/json"))
        .insert_header(("idempotency-key", uuid::Uuid::new_v4().to_string()));
    if let Some(c) = cookie {
        req = req.insert_header(("cookie", c));
    }
    if let Some(f) = forwarded_for {
        req = req.insert_header(("x-forwarded-for", f));
    }
    let mut resp = req.send_body(body.to_owned()).await.expect("request");
    let header = |name: &str| {
        resp.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let retry_after = header("retry-after").map(|v| v.parse().expect("whole seconds"));
    let cookie = header("set-cookie")
        .and_then(|c| c.split(';').next().map(str::to_owned))
        .filter(|c| c.starts_with("surge_session=") && c.len() > "surge_session=".len());
    let bytes = resp.body().await.expect("body");
    Answer {
        status: resp.status().as_u16(),
        retry_after,
        cookie,
        body: serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null),
    }
}

async fn put(app: &TestApp, cookie: Option<&str>, sku: &str, quantity: i64) -> Answer {
    let body = format!("{{\"quantity\":{quantity}}}");
    call(
        app,
        "PUT",
        &format!("/api/cart/items/{sku}"),
        cookie,
        None,
        &body,
    )
    .await
}

/// A fresh session's cookie, made by reading its (empty) cart.
async fn new_session(app: &TestApp, forwarded_for: Option<&str>) -> Answer {
    call(app, "GET", "/api/cart", None, forwarded_for, "").await
}

fn assert_limited(a: &Answer, what: &str) {
    assert_eq!(a.status, 429, "{what}: {}", a.body);
    assert_eq!(error_code(&a.body), "rate_limited", "{what}");
    assert!(
        a.retry_after.is_some_and(|s| s >= 1),
        "{what}: 429 without Retry-After"
    );
}

async fn quantity(app: &TestApp, cookie: &str, sku: &str) -> i64 {
    let a = call(app, "GET", "/api/cart", Some(cookie), None, "").await;
    assert_eq!(a.status, 200, "{}", a.body);
    a.body["lines"]
        .as_array()
        .and_then(|lines| lines.iter().find(|l| l["sku"] == sku))
        .and_then(|l| l["quantity"].as_i64())
        .unwrap_or(0)
}

/// Limits with `f` applied to the defaults, which never get in a test's way.
async fn app_with(f: impl FnOnce(&mut surge::rate_limit::RateLimitConfig)) -> TestApp {
    let mut rate_limits = test_rate_limits(true);
    f(&mut rate_limits);
    let app = TestApp::spawn(Options {
        seed_demo: false,
        rate_limits,
        ..Options::default()
    })
    .await;
    make_sku(&app, "RL-1", 100).await;
    app
}

/// Guards against a session hammering the cart past its limit, and against a refused
/// write being applied anyway or the refusal never lifting.
#[actix_web::test]
async fn writes_over_the_session_rate_get_429_and_change_nothing_until_retry_after() {
    // A token every 4 s: within the test only the burst of 3 is there.
    let app = app_with(|c| {
        c.session_writes = Rate {
            per_second: 0.25,
            burst: 3,
        }
    })
    .await;
    let cookie = new_session(&app, None)
        .await
        .cookie
        .expect("session cookie");
    for q in 1..=3 {
        let a = put(&app, Some(&cookie), "RL-1", q).await;
        assert_eq!(a.status, 200, "write {q} is within the burst: {}", a.body);
    }
    assert_limited(&put(&app, Some(&cookie), "RL-1", 7).await, "PUT");
    let delete = call(
        &app,
        "DELETE",
        "/api/cart/items/RL-1",
        Some(&cookie),
        None,
        "",
    )
    .await;
    assert_limited(&delete, "DELETE");
    let checkout = call(
        &app,
        "POST",
        "/api/checkout",
        Some(&cookie),
        None,
        r#"{"email":"bot@example.com"}"#,
    )
    .await;
    assert_limited(&checkout, "checkout");
    assert_eq!(
        quantity(&app, &cookie, "RL-1").await,
        3,
        "reads pass, and no refused write changed the cart"
    );
    let wait = checkout.retry_after.expect("Retry-After");
    assert!(wait <= 4, "Retry-After {wait}s for a token every 4 s");
    actix_web::rt::time::sleep(Duration::from_secs(wait)).await;
    let a = put(&app, Some(&cookie), "RL-1", 5).await;
    assert_eq!(a.status, 200, "served again after Retry-After: {}", a.body);
    assert_eq!(quantity(&app, &cookie, "RL-1").await, 5);
    app.stop().await;
}

/// Guards against a bot escaping the limit by spreading its writes over many sessions.
#[actix_web::test]
async fn the_per_ip_write_limit_spans_every_session_of_the_ip() {
    let app = app_with(|c| {
        c.ip_writes = Rate {
            per_second: 0.25,
            burst: 4,
        }
    })
    .await;
    let mut cookies = Vec::new();
    for i in 0..4 {
        let a = put(&app, None, "RL-1", 1).await;
        assert_eq!(
            a.status, 200,
            "session {i} within the IP's burst: {}",
            a.body
        );
        cookies.push(a.cookie.expect("fresh session"));
    }
    let fifth = new_session(&app, None).await.cookie.expect("fifth session");
    assert_limited(&put(&app, Some(&fifth), "RL-1", 1).await, "a fifth session");
    assert_limited(
        &put(&app, Some(&cookies[0]), "RL-1", 2).await,
        "a session with writes left of its own",
    );
    assert_eq!(quantity(&app, &fifth, "RL-1").await, 0);
    assert_eq!(quantity(&app, &cookies[0], "RL-1").await, 1);
    app.stop().await;
}

/// Guards against one IP minting sessions without end (each a fresh bucket of writes),
/// while its existing sessions go on being served.
#[actix_web::test]
async fn new_sessions_per_ip_per_minute_are_limited() {
    let app = app_with(|c| c.new_sessions = Rate::per_minute(3)).await;
    let mut cookies = Vec::new();
    for i in 0..3 {
        let a = new_session(&app, None).await;
        assert_eq!(a.status, 200, "session {i}: {}", a.body);
        cookies.push(a.cookie.expect("cookie"));
    }
    let refused = new_session(&app, None).await;
    assert_limited(&refused, "a fourth session within the minute");
    assert!(refused.cookie.is_none(), "a refused session gets no cookie");
    assert!(
        refused.retry_after.is_some_and(|s| s <= 20),
        "one token every 20 s"
    );
    // A socket without a cookie would make a session: its upgrade is refused.
    match awc::Client::new().ws(app.url("/ws")).connect().await {
        Err(awc::error::WsClientError::InvalidResponseStatus(status)) => {
            assert_eq!(status.as_u16(), 429, "a cookieless socket");
        }
        Err(e) => panic!("a cookieless socket: {e}"),
        Ok(_) => panic!("a cookieless socket got a session past the limit"),
    }
    // A write without a cookie would make a session: refused the same way.
    assert_limited(&put(&app, None, "RL-1", 1).await, "a cookieless write");
    let a = put(&app, Some(&cookies[0]), "RL-1", 1).await;
    assert_eq!(a.status, 200, "existing sessions are served: {}", a.body);
    let text = app
        .http
        .get(app.url("/metrics"))
        .send()
        .await
        .expect("metrics")
        .body()
        .await
        .expect("body");
    assert!(
        String::from_utf8_lossy(&text).contains("rate_limited_total{limit=\"new_sessions\"}"),
        "refusals are counted by limit"
    );
    app.stop().await;
}

/// Guards against a trusted proxy's clients sharing one limit (the proxy's address),
/// and against a client behind it forging its way out by prepending addresses.
#[actix_web::test]
async fn behind_a_trusted_proxy_each_forwarded_client_has_its_own_limit() {
    let app = app_with(|c| {
        c.new_sessions = Rate::per_minute(2);
        c.trusted_proxies = TrustedProxies::parse("127.0.0.1/32, ::1").expect("valid");
    })
    .await;
    let a = Some("203.0.113.1");
    for _ in 0..2 {
        assert_eq!(new_session(&app, a).await.status, 200);
    }
    assert_limited(&new_session(&app, a).await, "client A's third session");
    // The proxy appends the real client; the forged entry to its left proves nothing.
    assert_limited(
        &new_session(&app, Some("198.51.100.77, 203.0.113.1")).await,
        "client A forging an earlier hop",
    );
    let b = new_session(&app, Some("203.0.113.2")).await;
    assert_eq!(b.status, 200, "client B has its own limit: {}", b.body);
    app.stop().await;
}

/// Guards against a client escaping its limit by sending `X-Forwarded-For` straight to
/// a node that trusts no proxy.
#[actix_web::test]
async fn a_forged_forwarded_for_from_an_untrusted_peer_does_not_escape_the_limit() {
    let app = app_with(|c| c.new_sessions = Rate::per_minute(2)).await;
    for i in 1..=2 {
        let forged = format!("198.51.100.{i}");
        assert_eq!(new_session(&app, Some(&forged)).await.status, 200);
    }
    assert_limited(
        &new_session(&app, Some("198.51.100.3")).await,
        "a third session under a new forged address",
    );
    app.stop().await;
}
