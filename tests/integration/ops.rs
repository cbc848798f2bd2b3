//! Health, readiness and draining, metrics, the OpenAPI document, and SIGTERM.

use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use crate::common::{Options, TestApp, TestDb};

#[actix_web::test]
async fn readyz_turns_503_while_draining() {
    let mut app = TestApp::spawn(Options {
        seed_demo: false,
        drain_delay: Duration::from_secs(1),
        ..Options::default()
    })
    .await;
    let (status, body) = app.get_json("/readyz").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["ready"], true);
    let server = app.server.take().expect("server");
    server.begin_drain();
    let (status, body) = app.get_json("/readyz").await;
    assert_eq!(status, 503);
    assert_eq!(body["draining"], true);
    let (status, _) = app.get_json("/healthz").await;
    assert_eq!(status, 200, "still alive and serving while draining");
    let (status, _) = app.get_json("/api/products").await;
    assert_eq!(
        status, 200,
        "in-flight traffic is still served during the drain delay"
    );
    server.shutdown(surge::server::Drain::Graceful).await;
    let refused = app.http.get(app.url("/healthz")).send().await;
    assert!(refused.is_err(), "the listener is closed after shutdown");
}

/// Guards against the keep-alive race that nginx answers with `502`: a node that closes
/// an idle connection after a few seconds (actix-web's own default is 5 s) while the
/// proxy, which keeps upstream connections for 60 s, sends the next request down it.
#[actix_web::test]
async fn an_idle_keep_alive_connection_stays_open_past_a_few_seconds() {
    let app = TestApp::spawn(Options {
        seed_demo: false,
        ..Options::default()
    })
    .await;
    let port = app.port();
    let mut conn = crate::bounded::RawHttp::connect(port).await;
    let (status, _) = conn.send("GET", "/healthz", "", "").await;
    assert_eq!(status, 200);
    actix_web::rt::time::sleep(Duration::from_secs(6)).await;
    // `send` fails with "the server closed the connection" if the node let it go.
    let (status, _) = conn.send("GET", "/healthz", "", "").await;
    assert_eq!(status, 200, "the idle connection is still served after 6 s");
    app.stop().await;
}

#[actix_web::test]
async fn metrics_openapi_and_request_ids() {
    let app = TestApp::spawn(Options::default()).await;
    let (_, list) = app.get_json("/api/products?limit=1").await;
    let slug = list["items"][0]["slug"].as_str().expect("slug").to_owned();
    let _ = app.get_json(&format!("/api/products/{slug}")).await;
    let _ = app.get_json("/api/products/not-there").await;

    let mut resp = app
        .http
        .get(app.url("/metrics"))
        .send()
        .await
        .expect("metrics");
    assert_eq!(resp.status().as_u16(), 200);
    let text = String::from_utf8(resp.body().await.expect("body").to_vec()).expect("utf8");
    assert!(text.contains("http_requests_total{"), "{text}");
    assert!(
        text.lines().any(|l| l.starts_with("http_requests_total")
            && l.contains("route=\"/api/products/{slug}\"")
            && l.contains("status=\"404\"")),
        "requests are labelled by route pattern and status"
    );
    assert!(
        text.contains("http_request_duration_seconds_bucket"),
        "latency histogram"
    );
    assert!(
        text.contains("db_pool_connections{pool=\"primary\"}"),
        "pool statistics"
    );

    let (status, doc) = app.get_json("/openapi.json").await;
    assert_eq!(status, 200);
    assert!(doc["openapi"].as_str().expect("version").starts_with("3."));
    for path in [
        "/api/products",
        "/api/products/{slug}",
        "/api/admin/products",
        "/readyz",
    ] {
        assert!(doc["paths"][path].is_object(), "{path} documented");
    }

    let resp = app
        .http
        .get(app.url("/healthz"))
        .send()
        .await
        .expect("healthz");
    let id = resp
        .headers()
        .get("x-request-id")
        .expect("request id header");
    assert!(!id.is_empty());
    app.stop().await;
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

#[actix_web::test]
async fn sigterm_drains_then_exits_cleanly() {
    let db = TestDb::create().await;
    let port = free_port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_surge"))
        .arg("serve")
        .env("DATABASE_URL", &db.url)
        .env("SURGE_BIND", format!("127.0.0.1:{port}"))
        .env("SURGE_DRAIN_DELAY_SECS", "2")
        .env("SURGE_SHUTDOWN_GRACE_SECS", "5")
        .env_remove("SURGE_ADMIN_TOKEN")
        .env_remove("REDIS_URL")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start surge");
    let http = awc::Client::default();
    let url = format!("http://127.0.0.1:{port}/readyz");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(resp) = http.get(&url).send().await {
            if resp.status().as_u16() == 200 {
                break;
            }
        }
        assert!(Instant::now() < deadline, "surge never became ready");
        actix_web::rt::time::sleep(Duration::from_millis(100)).await;
    }
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    actix_web::rt::time::sleep(Duration::from_millis(500)).await;
    let resp = http
        .get(&url)
        .send()
        .await
        .expect("still listening while draining");
    assert_eq!(resp.status().as_u16(), 503, "readiness goes first");

    let deadline = Instant::now() + Duration::from_secs(15);
    let exit = loop {
        if let Some(exit) = child.try_wait().expect("wait") {
            break exit;
        }
        assert!(
            Instant::now() < deadline,
            "surge did not exit after SIGTERM"
        );
        actix_web::rt::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(exit.success(), "clean exit: {exit:?}");
}
