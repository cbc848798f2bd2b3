//! Per-customer limits and bounded holds: one customer, however their address is
//! spelled and on however many sessions and nodes, orders at most the campaign's limit.

use futures_util::future::join_all;
use serde_json::json;
use surge_actors::cart_actor::now_ms;

use crate::common::{
    assert_stock_sound, buckets, error_code, make_sku, plan_joins_in_table_order, shared_client,
    wait_for_a_lock_wait, Buyer, Options, TestApp, TestDb,
};
use crate::orders::set_status;
use crate::{
    campaigns::{schedule, sleep_until_ms},
    common::two_nodes,
};

/// Guards against two nodes (or two batches) both letting one customer through: five
/// sessions on two nodes, one customer behind three spellings, checking out at once
/// with a limit of 2, order exactly 2 units; the others keep their reservations. And
/// against a cancelled order's units staying counted against its customer.
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

    // A cancelled order gives its units back to the customer's allowance, once.
    let placed_id = answers
        .iter()
        .find(|(s, _)| *s == 201)
        .and_then(|(_, o)| o["id"].as_str())
        .expect("a placed order")
        .to_owned();
    let (status, body) = set_status(&b, &placed_id, "cancelled").await;
    assert_eq!(status, 200, "{body}");
    let refused: Vec<usize> = (0..5).filter(|i| answers[*i].0 != 201).collect();
    let (status, body) = buyers[refused[0]].checkout_as("again-0", "a+9@x.io").await;
    assert_eq!(status, 201, "the cancelled unit is allowed again: {body}");
    let (status, body) = buyers[refused[1]].checkout_as("again-1", "a@x.io").await;
    assert_eq!(
        (status, error_code(&body)),
        (409, "limit_exceeded".to_owned()),
        "{body}"
    );
    b.stop().await;
    a.stop().await;
}

/// Guards against one cart reserving more of a campaign than one customer may buy:
/// the PUT is refused with what remains, counting the cart's other campaign lines,
/// and nothing more is reserved.
#[actix_web::test]
async fn a_put_above_the_limit_is_refused_with_what_remains() {
    let (a, b) = two_nodes().await;
    make_sku(&a, "LIMIT-A", 50).await;
    make_sku(&a, "LIMIT-B", 50).await;
    let starts = now_ms() + 1_000;
    let (status, created) = schedule(
        &a,
        &json!({"name": "Limited", "skus": ["LIMIT-A", "LIMIT-B"], "starts_at_ms": starts,
                "ends_at_ms": starts + 600_000, "per_customer_limit": 2}),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    sleep_until_ms(starts + 50).await;
    let mut buyer = Buyer::new(&b.base, shared_client());
    let (status, body) = buyer.set("LIMIT-A", 3).await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(error_code(&body), "limit_exceeded");
    assert_eq!(body["error"]["remaining"], 2);
    assert_eq!(body["error"]["campaign_id"], created["id"]);
    let (status, body) = buyer.set("LIMIT-A", 2).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = buyer.set("LIMIT-B", 1).await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"]["remaining"], 0);
    assert_eq!(buckets(&a.db, "LIMIT-A").await.3, 2);
    assert_eq!(buckets(&a.db, "LIMIT-B").await.3, 0, "nothing reserved");
    b.stop().await;
    a.stop().await;
}

/// Guards against endless holds: setting a campaign line again (same or another
/// quantity) leaves its expiry at the first reservation plus the campaign's hold, and
/// the line lapses then.
#[actix_web::test]
async fn re_putting_a_campaign_line_does_not_extend_its_hold() {
    const SKU: &str = "HOLD-1";
    let (a, b) = two_nodes().await;
    make_sku(&a, SKU, 50).await;
    let starts = now_ms() + 1_000;
    let (status, created) = schedule(
        &a,
        &json!({"name": "Held", "skus": [SKU], "starts_at_ms": starts,
                "ends_at_ms": starts + 600_000, "hold_secs": 4}),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["hold_secs"], 4);
    sleep_until_ms(starts + 50).await;
    let mut buyer = Buyer::new(&a.base, shared_client());
    let first = now_ms();
    let (status, cart) = buyer.set(SKU, 1).await;
    assert_eq!(status, 200, "{cart}");
    let expires = cart["lines"][0]["expires_at_ms"].as_i64().expect("expiry");
    assert!(
        (first + 4_000..=now_ms() + 4_000).contains(&expires),
        "hold of 4 s from the first reservation: {expires} vs {first}"
    );
    for quantity in [1, 2, 2] {
        tokio::time::sleep(std::time::Duration::from_millis(400)).await;
        assert!(
            now_ms() + 500 < expires,
            "the re-PUTs must land within the hold for this test to mean anything"
        );
        let (status, cart) = buyer.set(SKU, quantity).await;
        assert_eq!(status, 200, "{cart}");
        assert_eq!(cart["lines"][0]["expires_at_ms"], expires, "hold extended");
    }
    sleep_until_ms(expires + 1_500).await;
    let (_, cart) = buyer.cart().await;
    assert_eq!(cart["lines"].as_array().map(Vec::len), Some(0), "{cart}");
    assert_eq!(buckets(&a.db, SKU).await.3, 0, "the hold lapsed");
    b.stop().await;
    a.stop().await;
}

/// Guards against a cancellation deadlocking with a checkout of the same customer: a
/// batch locks its customers' `campaign_customers` rows in key order, and the
/// cancellation gave an order's units back with an `UPDATE ... FROM` that locked them
/// in whatever order its join ran (here, the table's: the higher key first). A
/// transaction that holds the lower key and then takes the higher one, as a batch
/// does, must find the cancellation waiting for the lower key without the higher.
#[actix_web::test]
async fn a_cancellation_and_a_checkout_take_customer_rows_in_one_order() {
    let db = TestDb::create().await;
    // A join that visits the rows in the table's order, as the lease UPDATE's did under
    // load: the order the cancellation locks in must not depend on the plan.
    plan_joins_in_table_order(&db).await;
    let app = TestApp::spawn(Options {
        seed_demo: false,
        database_url: Some(db.url.clone()),
        ..Options::default()
    })
    .await;
    let starts = now_ms() + 1_000;
    for sku in ["ORDER-1", "ORDER-2"] {
        make_sku(&app, sku, 10).await;
        let (status, created) = schedule(
            &app,
            &json!({"name": format!("Limited {sku}"), "skus": [sku], "starts_at_ms": starts,
                    "ends_at_ms": starts + 600_000, "per_customer_limit": 5}),
        )
        .await;
        assert_eq!(status, 201, "{created}");
    }
    sleep_until_ms(starts + 50).await;
    let mut buyer = Buyer::new(&app.base, shared_client());
    for sku in ["ORDER-1", "ORDER-2"] {
        let (status, body) = buyer.set(sku, 1).await;
        assert_eq!(status, 200, "{body}");
    }
    let (status, order) = buyer.checkout_as("one-order", "c@x.io").await;
    assert_eq!(status, 201, "{order}");
    let order_id = order["id"].as_str().expect("order id").to_owned();

    let client = db.client().await;
    let keys: Vec<uuid::Uuid> = column(
        &client,
        "SELECT campaign_id FROM campaign_customers ORDER BY campaign_id",
    )
    .await;
    assert_eq!(keys.len(), 2, "one row per campaign");
    // The lower key's row written again goes to the table's end, after the higher one.
    client
        .execute(
            "UPDATE campaign_customers SET units = units WHERE campaign_id = $1",
            &[&keys[0]],
        )
        .await
        .expect("rewrite");

    let mut batch = db.client().await;
    let checkout = batch.transaction().await.expect("begin");
    let take = "SELECT 1 FROM campaign_customers WHERE campaign_id = $1 FOR UPDATE";
    checkout
        .execute(take, &[&keys[0]])
        .await
        .expect("lower key");
    let checkout_takes_the_higher_key = async {
        wait_for_a_lock_wait(&db, "the cancellation, for the lower key,").await;
        checkout
            .execute(take, &[&keys[1]])
            .await
            .expect("the higher key is free while the cancellation waits: no deadlock");
        checkout.commit().await.expect("the checkout's locks go");
    };
    let ((status, body), ()) = futures_util::join!(
        set_status(&app, &order_id, "cancelled"),
        checkout_takes_the_higher_key
    );
    assert_eq!(status, 200, "{body}");
    let units: Vec<i64> = column(
        &client,
        "SELECT units::bigint FROM campaign_customers ORDER BY campaign_id",
    )
    .await;
    assert_eq!(units, vec![0, 0], "both allowances given back");
    assert_eq!(buckets(&db, "ORDER-1").await.4, 0, "unit back on sale");
    assert_stock_sound(&db).await;
    app.stop().await;
}

/// The first column of every row `sql` answers.
async fn column<T>(client: &tokio_postgres::Client, sql: &str) -> Vec<T>
where
    T: for<'a> tokio_postgres::types::FromSql<'a>,
{
    client
        .query(sql, &[])
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .iter()
        .map(|r| r.get(0))
        .collect()
}
