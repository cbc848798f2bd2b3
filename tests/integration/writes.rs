//! The write path's shortcuts give the answers of the long way: a checkout that skips
//! its replay lookup still replays a key used elsewhere, and the Journal refuses an
//! order under a used key whatever the caller believed. And a batch takes its row locks
//! in the order every other writer takes them.

use surge::{
    config::CommerceArgs,
    store::{
        journal::{self, JournalConfig},
        Db,
    },
};
use surge_actors::{
    money::Currency,
    ports::{JournalError, OrderLine, PlaceOrder, SetLine, WriteOp, WriteOutcome},
    validated::SessionId,
};

use uuid::Uuid;

use crate::common::{
    assert_stock_sound, buckets, db_with_sku, db_with_skus, plan_joins_in_table_order,
    shared_client, two_nodes_selling, wait_for_a_lock_wait, Buyer,
};

/// Guards the checkout of an actor that started with its session, which writes without
/// looking its key up: the session moved to node B, which placed the order under the
/// key; the same key on node A (whose actor still holds the old copy of the cart) must
/// answer that order, not a second one nor an error.
#[actix_web::test]
async fn a_key_used_on_another_node_replays_on_the_node_that_skipped_the_lookup() {
    let (a, b) = two_nodes_selling(&[("REPLAY-1", 1000)]).await;
    let http = shared_client();
    let mut on_a = Buyer::new(&a.base, http.clone());
    assert_eq!(on_a.set("REPLAY-1", 1).await.0, 200, "a fresh session on A");
    let mut on_b = Buyer::new(&b.base, http.clone());
    on_b.cookie = on_a.cookie.clone();
    assert_eq!(on_b.set("REPLAY-1", 2).await.0, 200, "B claims the cart");
    let (status, first) = on_b.checkout("the-key").await;
    assert_eq!(status, 201, "{first}");
    let (status, again) = on_a.checkout("the-key").await;
    assert_eq!(status, 201, "{again}");
    assert_eq!(again["id"], first["id"], "the same order");
    let orders: i64 =
        a.db.client()
            .await
            .query_one("SELECT count(*) FROM orders", &[])
            .await
            .expect("count")
            .get(0);
    assert_eq!(orders, 1);
    assert_eq!(buckets(&a.db, "REPLAY-1").await.4, 2, "sold once");
    assert_stock_sound(&a.db).await;
    b.stop().await;
    a.stop().await;
}

/// Guards the Journal's own check of keys: an order at the cart's current version, of
/// exactly its reservations, under a key that already names an order, is stale and
/// writes nothing (the reservation stays, no order, no sale).
#[actix_web::test]
async fn the_journal_refuses_an_order_under_a_used_key() {
    let db = db_with_sku("USED-1", 10).await;
    let pool = Db::with_journal(&db.config(), 1).expect("pools");
    let cfg = JournalConfig::from_commerce(&surge::config::defaults::<CommerceArgs>().validate());
    let node = "used-key-node";
    let grant = WriteOp::Grant {
        sku: "USED-1".into(),
        want: 5,
    };
    let (results, _) = journal::commit(&pool.primary, node, &cfg, &[grant])
        .await
        .expect("grant");
    let epoch = match results.first() {
        Some(Ok(WriteOutcome::Granted(g))) => g.epoch,
        other => panic!("grant: {other:?}"),
    };
    let eur = Currency::parse("EUR").expect("valid");
    let (cart_id, session) = (Uuid::new_v4(), SessionId::random().into_string());
    let line = WriteOp::SetLine(SetLine {
        cart_id,
        version: 0,
        sku: "USED-1".into(),
        quantity: 1,
        prev_quantity: 0,
        lease_epoch: epoch,
        expires_at_ms: 4_102_444_800_000,
        unit_price_minor: 1000,
        currency: eur,
        create_for_session: Some(session.clone()),
    });
    let (results, _) = journal::commit(&pool.primary, node, &cfg, &[line])
        .await
        .expect("reserve");
    assert_eq!(results, vec![Ok(WriteOutcome::Done)]);
    let client = db.client().await;
    client
        .execute(
            "INSERT INTO idempotency_keys (session_id, key, order_id) VALUES ($1, 'used', $2)",
            &[&session, &Uuid::new_v4()],
        )
        .await
        .expect("an earlier order's key");
    let order = |key: &str| {
        WriteOp::PlaceOrder(PlaceOrder {
            order_id: Uuid::new_v4(),
            cart_id,
            version: 1,
            session_id: session.clone(),
            email: "a@example.com".into(),
            customer: "a@example.com".into(),
            idempotency_key: key.into(),
            lines: vec![OrderLine {
                sku: "USED-1".into(),
                quantity: 1,
                unit_price_minor: 1000,
            }],
            total_minor: 1000,
            currency: eur,
        })
    };
    let (results, _) = journal::commit(&pool.primary, node, &cfg, &[order("used")])
        .await
        .expect("batch commits");
    assert_eq!(results, vec![Err(JournalError::Stale)]);
    let count = |table: &'static str| {
        let client = &client;
        async move {
            client
                .query_one(&format!("SELECT count(*) FROM {table}"), &[])
                .await
                .expect("count")
                .get::<_, i64>(0)
        }
    };
    assert_eq!(count("orders").await, 0, "no second order");
    assert_eq!(count("reservations").await, 1, "the reservation stays");
    // The same order under a new key goes through: only the key made it stale.
    let (results, _) = journal::commit(&pool.primary, node, &cfg, &[order("new")])
        .await
        .expect("batch commits");
    assert_eq!(results, vec![Ok(WriteOutcome::Done)]);
    assert_eq!(count("orders").await, 1);
    assert_eq!(buckets(&db, "USED-1").await.4, 1);
    assert_stock_sound(&db).await;
}

/// Guards against a `503` for a whole batch from a deadlock with the heartbeat. The
/// heartbeat renews this node's lease rows locked in SKU order, without the inventory
/// locks; a batch that moved two leases locked their rows in whatever order its join ran
/// (here, the order the rows were made: B, then A). A transaction that holds A and then
/// takes B, as the heartbeat does, must find the batch waiting for A without B.
#[actix_web::test]
async fn a_batch_and_the_heartbeat_take_lease_rows_in_one_order() {
    let db = db_with_skus(&[("LOCK-A", 10), ("LOCK-B", 10)]).await;
    // The plan a loaded node's statistics gave the lease UPDATE (it deadlocked under
    // `make bench-writes`).
    plan_joins_in_table_order(&db).await;
    let pool = Db::with_journal(&db.config(), 1).expect("pools");
    let cfg = JournalConfig::from_commerce(&surge::config::defaults::<CommerceArgs>().validate());
    let node = "lock-order-node";
    let mut epochs = std::collections::HashMap::new();
    for sku in ["LOCK-B", "LOCK-A"] {
        let grant = WriteOp::Grant {
            sku: sku.into(),
            want: 5,
        };
        let (results, _) = journal::commit(&pool.primary, node, &cfg, &[grant])
            .await
            .expect("grant");
        match results.first() {
            Some(Ok(WriteOutcome::Granted(g))) => epochs.insert(sku, g.epoch),
            other => panic!("grant of {sku}: {other:?}"),
        };
    }
    let eur = Currency::parse("EUR").expect("valid");
    let lines: Vec<WriteOp> = ["LOCK-A", "LOCK-B"]
        .into_iter()
        .map(|sku| {
            WriteOp::SetLine(SetLine {
                cart_id: Uuid::new_v4(),
                version: 0,
                sku: sku.into(),
                quantity: 1,
                prev_quantity: 0,
                lease_epoch: epochs[sku],
                expires_at_ms: 4_102_444_800_000,
                unit_price_minor: 1000,
                currency: eur,
                create_for_session: Some(SessionId::random().into_string()),
            })
        })
        .collect();

    let mut heartbeat = db.client().await;
    let renewal = heartbeat.transaction().await.expect("begin");
    let take = "SELECT 1 FROM stock_leases WHERE node_id = $1 AND sku = $2 FOR UPDATE";
    renewal.execute(take, &[&node, &"LOCK-A"]).await.expect("A");
    let batch = {
        let (pool, cfg) = (pool.primary.clone(), cfg.clone());
        actix_web::rt::spawn(async move { journal::commit(&pool, node, &cfg, &lines).await })
    };
    wait_for_a_lock_wait(&db, "the batch, for A,").await;
    renewal
        .execute(take, &[&node, &"LOCK-B"])
        .await
        .expect("B is free while the batch waits for A: no deadlock");
    renewal.commit().await.expect("the renewal commits");
    let (results, _) = batch
        .await
        .expect("batch task")
        .expect("the batch commits once A is free");
    assert_eq!(
        results,
        vec![Ok(WriteOutcome::Done), Ok(WriteOutcome::Done)]
    );
    assert_eq!(buckets(&db, "LOCK-A").await.3, 1, "A reserved");
    assert_eq!(buckets(&db, "LOCK-B").await.3, 1, "B reserved");
    assert_stock_sound(&db).await;
}
