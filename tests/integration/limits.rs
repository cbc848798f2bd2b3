//! Per-customer limits and bounded holds: one customer, however their address is
//! spelled and on however many sessions and nodes, orders at most the campaign's limit.

use futures_util::future::join_all;
use serde_json::json;
use surge_actors::cart_actor::now_ms;

use crate::campaigns::{schedule, sleep_until_ms, two_nodes};
use crate::common::{buckets, error_code, make_sku, shared_client, Buyer};

/// Guards against two nodes (or two batches) both letting one customer through: five
/// sessions on two nodes, one customer behind three spellings, checking out at once
/// with a limit of 2, order exactly 2 units; the others keep their reservations.
#[actix_web::test]
async fn one_customer_on_five_sessions_and_two_nodes_orders_only_the_limit() {
    const SKU: &str = "LIMIT-1";
    let (a, b) = two_nodes().await;
    make_sku(&a, SKU, 100).await;
    let starts = now_ms() + 1_500;
    let (status, created) = schedule(
        &a,
        &json!({"name": "Limited", "skus": [SKU], "starts_at_ms": starts,
                "ends_at_ms": starts + 600_000, "per_customer_limit": 2}),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    sleep_until_ms(starts + 50).await;
    let http = shared_client();
    let mut buyers: Vec<Buyer> = (0..5)
        .map(|i| Buyer::new(if i % 2 == 0 { &a.base } else { &b.base }, http.clone()))
        .collect();
    for buyer in &mut buyers {
        let (status, body) = buyer.set(SKU, 1).await;
        assert_eq!(status, 200, "{body}");
    }
    let emails = ["A@x.io", "a@x.io", "a+1@x.io", " a@X.io ", "A+sale@x.io"];
    let answers = join_all(buyers.iter_mut().zip(emails).enumerate().map(
        |(i, (buyer, email))| async move { buyer.checkout_as(&format!("k{i}"), email).await },
    ))
    .await;
    let placed = answers.iter().filter(|(s, _)| *s == 201).count();
    assert_eq!(placed, 2, "{answers:?}");
    for (status, body) in answers.iter().filter(|(s, _)| *s != 201) {
        assert_eq!(*status, 409, "{body}");
        assert_eq!(error_code(body), "limit_exceeded", "{body}");
        assert_eq!(body["error"]["remaining"], 0, "{body}");
    }
    let (_, _, _, reserved, sold) = buckets(&a.db, SKU).await;
    assert_eq!(
        (reserved, sold),
        (3, 2),
        "refused carts keep their reservations"
    );
    b.stop().await;
    a.stop().await;
}
