//! Campaign reports: refusals counted per node in memory and summed in PostgreSQL,
//! sales of the campaign's window, the waiting room's statistics, the admin gate, and
//! the live monitor over the socket.

use std::time::Duration;

use serde_json::{json, Value};
use surge_actors::cart_actor::now_ms;

use crate::common::{
    error_code, make_sku, shared_client, two_nodes, ws_connect, ws_send, ws_wait, Buyer, Options,
    TestApp, ADMIN_TOKEN,
};

/// Schedules a campaign on `a` and waits until every node in `others` knows it.
async fn campaign(a: &TestApp, others: &[&TestApp], body: Value) -> String {
    let (status, created) = a
        .admin_post("/api/admin/campaigns", Some(ADMIN_TOKEN), &body)
        .await;
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_str().expect("id").to_owned();
    for node in others {
        let deadline = now_ms() + 10_000;
        while node.get_json(&format!("/api/campaigns/{id}")).await.0 != 200 {
            assert!(now_ms() < deadline, "a node never heard of the campaign");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    id
}

async fn report(app: &TestApp, id: &str) -> Value {
    let auth = format!("Bearer {ADMIN_TOKEN}");
    let (status, body) = app
        .send(
            "GET",
            &format!("/api/admin/campaigns/{id}/report"),
            &[("authorization", &auth)],
            "",
        )
        .await;
    assert_eq!(status, 200, "{body}");
    body
}

/// The report once `done` holds of it, or the last one after `within` (refusal counts
/// reach PostgreSQL on each node's next flush, about a second later).
async fn report_when(
    app: &TestApp,
    id: &str,
    within: Duration,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let body = report(app, id).await;
        if done(&body) || tokio::time::Instant::now() >= deadline {
            return body;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn sleep_until(at_ms: i64) {
    let wait = u64::try_from(at_ms - now_ms()).unwrap_or(0);
    tokio::time::sleep(Duration::from_millis(wait)).await;
}

/// Guards against refusals counted only on the node that answered (or counted twice
/// across flushes), a campaign-less SKU's refusals landing on a campaign, sockets
/// counted on the answering node alone, and an admin route open without the token or
/// answering 500 for an unknown id.
#[actix_web::test]
async fn refusals_on_two_nodes_are_summed_and_the_route_needs_the_token() {
    const SKU: &str = "REPORT-1";
    let (a, b) = two_nodes().await;
    make_sku(&a, SKU, 10).await;
    make_sku(&a, "REPORT-PLAIN", 10).await;
    let starts = now_ms() + 600_000;
    let id = campaign(
        &a,
        &[&b],
        json!({"name": "Later", "skus": [SKU], "starts_at_ms": starts, "ends_at_ms": starts + 60_000}),
    )
    .await;
    // A socket on B alone: A's report counts it from B's heartbeat.
    let _socket = ws_connect(&b.base, None).await;
    let http = shared_client();
    for (node, times) in [(&a, 3), (&b, 2)] {
        let mut buyer = Buyer::new(&node.base, http.clone());
        for _ in 0..times {
            let (status, body) = buyer.set(SKU, 1).await;
            assert_eq!(status, 409, "{body}");
            assert_eq!(error_code(&body), "campaign_not_started");
        }
        // Not a campaign SKU: sold, and counted against nothing.
        assert_eq!(buyer.set("REPORT-PLAIN", 1).await.0, 200);
    }
    let body = report_when(&b, &id, Duration::from_secs(10), |r| {
        r["refusals"]["campaign_not_started"] == 5
    })
    .await;
    assert_eq!(
        body["refusals"],
        json!({"campaign_not_started": 5}),
        "{body}"
    );
    assert_eq!(body["state"], "scheduled");
    assert_eq!(body["units_left"], 10);
    assert_eq!(body["units_sold"], 0);
    assert_eq!(body["sold_out_at_ms"], Value::Null);
    assert_eq!(body["queue"], Value::Null);
    // Later flushes add nothing: each delta is written once.
    let body = report_when(&a, &id, Duration::from_secs(5), |r| r["sockets"] == 1).await;
    assert_eq!(body["sockets"], 1, "B's socket, from its heartbeat: {body}");
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert_eq!(report(&a, &id).await["refusals"]["campaign_not_started"], 5);

    let path = format!("/api/admin/campaigns/{id}/report");
    let (status, body) = a.get_json(&path).await;
    assert_eq!((status, error_code(&body).as_str()), (401, "unauthorized"));
    let (status, _) = a
        .send("GET", &path, &[("authorization", "Bearer wrong")], "")
        .await;
    assert_eq!(status, 403);
    let auth = format!("Bearer {ADMIN_TOKEN}");
    for missing in ["00000000-0000-0000-0000-000000000001", "not-a-uuid"] {
        let (status, body) = a
            .send(
                "GET",
                &format!("/api/admin/campaigns/{missing}/report"),
                &[("authorization", &auth)],
                "",
            )
            .await;
        assert_eq!(
            (status, error_code(&body).as_str()),
            (404, "not_found"),
            "{missing}"
        );
    }
    a.stop().await;
    b.stop().await;
}

/// Guards against sales counted outside the campaign's lines or at the regular price,
/// a sold-out time missing once nothing is left, and a refusal at checkout-time stock
/// (`insufficient_stock`) not counted.
#[actix_web::test]
async fn sales_revenue_and_sold_out_time_follow_an_order() {
    const SKU: &str = "REPORT-2";
    let app = TestApp::spawn(Options {
        seed_demo: false,
        ..Options::default()
    })
    .await;
    make_sku(&app, SKU, 2).await;
    let starts = now_ms() - 1_000;
    let id = campaign(
        &app,
        &[],
        json!({"name": "Now", "skus": [SKU], "starts_at_ms": starts, "ends_at_ms": starts + 600_000,
               "sale_price_minor": {SKU: 700}}),
    )
    .await;
    let http = shared_client();
    let mut buyer = Buyer::new(&app.base, http.clone());
    assert_eq!(buyer.set(SKU, 2).await.0, 200);
    let before = now_ms();
    let (status, order) = buyer.checkout("report-order").await;
    assert_eq!(status, 201, "{order}");
    let after = now_ms();
    let mut late = Buyer::new(&app.base, http);
    let (status, body) = late.set(SKU, 1).await;
    assert_eq!(
        (status, error_code(&body).as_str()),
        (409, "insufficient_stock")
    );

    let body = report_when(&app, &id, Duration::from_secs(10), |r| {
        r["refusals"]["insufficient_stock"] == 1
    })
    .await;
    assert_eq!(body["units_sold"], 2, "{body}");
    assert_eq!(body["orders"], 1);
    assert_eq!(body["revenue_minor"], 1_400, "charged the sale price");
    assert_eq!(body["currency"], "EUR");
    assert_eq!(body["units_left"], 0);
    assert_eq!(body["state"], "live");
    assert_eq!(body["refusals"], json!({"insufficient_stock": 1}));
    let sold_out = body["sold_out_at_ms"].as_i64().expect("sold out");
    assert!(
        (before - 50..=after + 50).contains(&sold_out),
        "{sold_out} not in {before}..{after}"
    );
    app.stop().await;
}

/// Guards against queue statistics that count a waiting joiner as admitted, measure
/// waits from the wrong end, or call a joiner who ordered abandoned.
#[actix_web::test]
async fn queue_statistics_follow_joins_admissions_and_lapsed_turns() {
    const SKU: &str = "REPORT-3";
    let mut commerce = crate::common::test_commerce();
    commerce.queue_window = Duration::from_secs(1);
    let app = TestApp::spawn(Options {
        seed_demo: false,
        commerce,
        ..Options::default()
    })
    .await;
    make_sku(&app, SKU, 10).await;
    let starts = now_ms() + 2_500;
    let id = campaign(
        &app,
        &[],
        json!({"name": "Queued", "skus": [SKU], "starts_at_ms": starts, "ends_at_ms": starts + 600_000,
               "queue": {"admit_per_second": 2}}),
    )
    .await;
    let http = shared_client();
    let mut buyers: Vec<Buyer> = (0..3)
        .map(|_| Buyer::new(&app.base, http.clone()))
        .collect();
    for buyer in &mut buyers {
        let (status, body) = buyer
            .send("POST", &format!("/api/campaigns/{id}/queue"), &[], "")
            .await;
        assert_eq!(status, 200, "{body}");
    }
    let joined_by = now_ms();
    assert!(joined_by < starts, "joins took too long for the test");
    let body = report(&app, &id).await;
    assert_eq!(
        body["queue"],
        json!({"joined": 3, "admitted": 0, "waiting": 3, "abandoned": 0,
               "wait_p50_ms": null, "wait_p99_ms": null}),
        "{body}"
    );

    // The first buys in its turn (admitted at the start); the others never do.
    sleep_until(starts + 100).await;
    assert_eq!(buyers[0].set(SKU, 1).await.0, 200);
    assert_eq!(buyers[0].checkout("queued-order").await.0, 201);
    // Every turn (start, +500 ms, +1 s, each 1 s long) has lapsed by start + 2.2 s.
    sleep_until(starts + 2_200).await;
    let body = report(&app, &id).await;
    let q = &body["queue"];
    assert_eq!(
        (q["joined"].as_i64(), q["admitted"].as_i64()),
        (Some(3), Some(3)),
        "{body}"
    );
    assert_eq!(q["waiting"], 0);
    assert_eq!(q["abandoned"], 2, "the two who never ordered");
    let (p50, p99) = (
        q["wait_p50_ms"].as_i64().expect("p50"),
        q["wait_p99_ms"].as_i64().expect("p99"),
    );
    // Joined before `joined_by`, admitted at start + 0 / 500 / 1000 ms.
    assert!(p50 >= starts + 500 - joined_by, "p50 {p50}");
    assert!(p99 >= p50 && p99 <= 2_500 + 1_000 + 200, "p99 {p99}");
    assert_eq!(body["units_sold"], 1);
    app.stop().await;
}

/// Guards against a monitor that opens without the right token, a wrong token closing
/// the socket, and one report per socket (rather than per campaign) per tick.
#[actix_web::test]
async fn the_monitor_op_streams_reports_once_per_campaign() {
    const SKU: &str = "REPORT-4";
    let app = TestApp::spawn(Options {
        seed_demo: false,
        ..Options::default()
    })
    .await;
    make_sku(&app, SKU, 5).await;
    let starts = now_ms() - 1_000;
    let id = campaign(
        &app,
        &[],
        json!({"name": "Watched", "skus": [SKU], "starts_at_ms": starts, "ends_at_ms": starts + 600_000}),
    )
    .await;
    let is_report = |v: &Value| v["type"] == "campaign_report";
    let mut first = ws_connect(&app.base, None).await;
    ws_send(
        &mut first,
        &json!({"op": "monitor", "campaign_id": id, "token": "wrong"}).to_string(),
    )
    .await;
    let err = ws_wait(&mut first, Duration::from_secs(3), |v| v["type"] == "error")
        .await
        .expect("an error answer");
    assert_eq!(err["code"], "unauthorized");
    ws_send(
        &mut first,
        &json!({"op": "monitor", "campaign_id": id, "token": ADMIN_TOKEN}).to_string(),
    )
    .await;
    let msg = ws_wait(&mut first, Duration::from_secs(5), is_report)
        .await
        .expect("a report on the socket that was refused once");
    assert_eq!(msg["report"]["campaign_id"], id.as_str());
    assert_eq!(msg["report"]["units_left"], 5);
    assert!(msg["report"]["sockets"].as_i64().unwrap_or(0) >= 1, "{msg}");

    let mut second = ws_connect(&app.base, None).await;
    ws_send(
        &mut second,
        &json!({"op": "monitor", "campaign_id": id, "token": ADMIN_TOKEN}).to_string(),
    )
    .await;
    assert!(ws_wait(&mut second, Duration::from_secs(5), is_report)
        .await
        .is_some());
    let reports = &app.state().reports;
    assert_eq!(reports.watched(), 1, "two sockets, one campaign");
    assert_eq!(
        reports.push_reports().await,
        1,
        "one report for both sockets"
    );

    // A sale shows in the next report.
    let mut buyer = Buyer::new(&app.base, shared_client());
    assert_eq!(buyer.set(SKU, 1).await.0, 200);
    assert_eq!(buyer.checkout("watched-order").await.0, 201);
    let sold = ws_wait(&mut second, Duration::from_secs(5), |v| {
        is_report(v) && v["report"]["units_sold"] == 1
    })
    .await
    .expect("the sale in a report");
    assert_eq!(sold["report"]["orders"], 1);

    drop(first);
    drop(second);
    let deadline = now_ms() + 5_000;
    while reports.watched() > 0 {
        assert!(now_ms() < deadline, "closed sockets still watched");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(reports.push_reports().await, 0, "nobody watches: no report");
    app.stop().await;
}
