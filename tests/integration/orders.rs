//! An order's lifecycle through the admin API: only the allowed moves happen, and a
//! cancellation puts the order's units back on sale in the same commit.

use std::time::Duration;

use crate::common::{
    assert_stock_sound, buckets, error_code, make_sku, shared_client, ws_connect, ws_send, ws_wait,
    Buyer, Options, TestApp, ADMIN_TOKEN,
};

const WAIT: Duration = Duration::from_secs(3);

pub(crate) async fn set_status(
    app: &TestApp,
    order: &str,
    status: &str,
) -> (u16, serde_json::Value) {
    app.admin_post(
        &format!("/api/admin/orders/{order}/status"),
        Some(ADMIN_TOKEN),
        &serde_json::json!({ "status": status }),
    )
    .await
}

/// A buyer's order of `quantity` units of `sku`; returns its id.
async fn order(buyer: &mut Buyer, sku: &str, quantity: i64, key: &str) -> String {
    let (status, cart) = buyer.set(sku, quantity).await;
    assert_eq!(status, 200, "{cart}");
    let (status, order) = buyer.checkout(key).await;
    assert_eq!(status, 201, "{order}");
    order["id"].as_str().expect("order id").to_owned()
}

/// Guards against a cancelled order's units staying sold forever, against a status
/// that jumps anywhere (shipped before paid, a delivered order cancelled), and against
/// a refused move changing anything.
#[actix_web::test]
async fn a_cancellation_puts_the_units_back_and_only_allowed_moves_happen() {
    let app = TestApp::spawn(Options {
        seed_demo: false,
        ..Options::default()
    })
    .await;
    make_sku(&app, "CAN-1", 5).await;
    let mut buyer = Buyer::new(&app.base, shared_client());
    assert_eq!(buyer.cart().await.0, 200);
    let cookie = buyer.cookie.clone().expect("session");
    let mut tab = ws_connect(&app.base, Some(&cookie)).await;
    ws_send(&mut tab, r#"{"op":"subscribe","skus":["CAN-1"]}"#).await;
    actix_web::rt::time::sleep(Duration::from_millis(100)).await;

    let id = order(&mut buyer, "CAN-1", 2, "can-1").await;
    assert_eq!(buckets(&app.db, "CAN-1").await.4, 2, "two sold");

    // A refused move: 409 with the current status, and nothing changes.
    let before = buckets(&app.db, "CAN-1").await;
    let (status, body) = set_status(&app, &id, "shipped").await;
    assert_eq!(
        (status, error_code(&body).as_str()),
        (409, "invalid_transition"),
        "{body}"
    );
    assert_eq!(body["error"]["status"], "placed", "{body}");
    assert_eq!(buckets(&app.db, "CAN-1").await, before);
    let (_, shown) = buyer
        .send("GET", &format!("/api/orders/{id}"), &[], "")
        .await;
    assert_eq!(
        shown["status"], "placed",
        "the refused move changed nothing"
    );

    let (status, body) = set_status(&app, &id, "paid").await;
    assert_eq!(
        (status, body["status"].as_str()),
        (200, Some("paid")),
        "{body}"
    );
    let (status, body) = set_status(&app, &id, "cancelled").await;
    assert_eq!(
        (status, body["status"].as_str()),
        (200, Some("cancelled")),
        "{body}"
    );
    let (total, available, leased, reserved, sold) = buckets(&app.db, "CAN-1").await;
    assert_eq!(
        (total, available, sold),
        (5, before.1 + 2, 0),
        "the units went from sold back to available"
    );
    assert_eq!((leased, reserved), (before.2, before.3));
    assert_stock_sound(&app.db).await;
    let msg = ws_wait(&mut tab, WAIT, |v| {
        v["type"] == "order" && v["order"]["status"] == "cancelled"
    })
    .await
    .expect("the shopper's socket hears of the cancellation");
    assert_eq!(msg["order"]["id"], id.as_str());
    ws_wait(&mut tab, WAIT, |v| {
        v["type"] == "stock" && v["sku"] == "CAN-1" && v["available"] == 5
    })
    .await
    .expect("every screen sees the units back on sale");

    // A cancelled order stays cancelled: its units cannot go back twice.
    for next in ["cancelled", "paid", "placed"] {
        let (status, body) = set_status(&app, &id, next).await;
        assert_eq!(
            (status, error_code(&body).as_str()),
            (409, "invalid_transition")
        );
        assert_eq!(body["error"]["status"], "cancelled");
    }
    // Compared as free units (available + leased) and sold: the node's idle lease
    // return may move units from leased to available meanwhile, which is no return.
    let (_, available_now, leased_now, _, sold_now) = buckets(&app.db, "CAN-1").await;
    assert_eq!(
        (available_now + leased_now, sold_now),
        (available + leased, sold),
        "returned once"
    );

    // The returned units sell again: all five.
    let mut other = Buyer::new(&app.base, shared_client());
    let (status, cart) = other.set("CAN-1", 5).await;
    assert_eq!(status, 200, "{cart}");
    let second = order(&mut other, "CAN-1", 5, "can-2").await;

    // A delivered order cannot be cancelled.
    for next in ["paid", "shipped", "delivered"] {
        let (status, body) = set_status(&app, &second, next).await;
        assert_eq!(status, 200, "{next}: {body}");
    }
    let (status, body) = set_status(&app, &second, "cancelled").await;
    assert_eq!(
        (status, error_code(&body).as_str()),
        (409, "invalid_transition")
    );
    assert_eq!(body["error"]["status"], "delivered");
    assert_eq!(buckets(&app.db, "CAN-1").await, (5, 0, 0, 0, 5));
    assert_stock_sound(&app.db).await;

    let (status, _) = set_status(&app, "00000000-0000-0000-0000-000000000000", "paid").await;
    assert_eq!(status, 404);
    app.stop().await;
}
