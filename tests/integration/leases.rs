//! The lease protocol across nodes sharing one database and one Redis: no false
//! sold-out while units remain anywhere, grants bounded by demand, recalls, and
//! fencing of a lease the reaper took from a live node.

use std::time::Duration;

use futures_util::future::join_all;
use surge::store::leases::{self, Scope};

use crate::common::{
    assert_stock_sound, buckets, make_sku, redis_url, shared_client, test_live, Buyer, Options,
    TestApp,
};

/// `n` nodes on one database and one bus (Redis, with a prefix of this test's own).
async fn cluster(n: usize) -> Vec<TestApp> {
    let live = test_live();
    let first = TestApp::spawn(Options {
        seed_demo: false,
        redis_url: Some(redis_url()),
        live: live.clone(),
        ..Options::default()
    })
    .await;
    let mut nodes = vec![];
    for _ in 1..n {
        nodes.push(
            TestApp::spawn(Options {
                seed_demo: false,
                database_url: Some(first.db.url.clone()),
                redis_url: Some(redis_url()),
                live: live.clone(),
                ..Options::default()
            })
            .await,
        );
    }
    nodes.insert(0, first);
    nodes
}

/// One buyer per entry of `bases`, all at once: PUT one unit, then check out.
/// Returns each buyer's (PUT status, checkout status, PUT body).
async fn wave(bases: &[&str], sku: &str, tag: &str) -> Vec<(u16, u16, serde_json::Value)> {
    let http = shared_client();
    let buyers = bases.iter().enumerate().map(|(i, base)| {
        let mut buyer = Buyer::new(base, http.clone());
        let key = format!("{tag}-{i}");
        async move {
            let (put, body) = buyer.set(sku, 1).await;
            let out = if put == 200 {
                buyer.checkout(&key).await.0
            } else {
                0
            };
            (put, out, body)
        }
    });
    join_all(buyers).await
}

fn refused(results: &[(u16, u16, serde_json::Value)]) -> Vec<String> {
    results
        .iter()
        .filter(|(put, out, _)| *put != 200 || *out != 201)
        .map(|(put, out, body)| format!("{put}/{out} {body}"))
        .collect()
}

/// Guards against the false sold-out: parallel grants let one node take the whole
/// chunk and the others answered 409 with most of the stock unsold.
#[actix_web::test]
async fn waves_on_three_nodes_all_get_an_order_while_units_remain() {
    let nodes = cluster(3).await;
    let sku = "WAVE-1";
    make_sku(&nodes[0], sku, 300).await;
    let (a, b, c) = (
        nodes[0].base.as_str(),
        nodes[1].base.as_str(),
        nodes[2].base.as_str(),
    );
    let started = std::time::Instant::now();
    let mut all = Vec::new();
    all.extend(wave(&[a; 100], sku, "a").await);
    all.extend(wave(&[b; 40], sku, "b").await);
    all.extend(wave(&[c; 40], sku, "c").await);
    let spread: Vec<&str> = (0..100).map(|i| [a, b, c][i % 3]).collect();
    all.extend(wave(&spread, sku, "all").await);
    eprintln!(
        "280 buyers on three nodes served in {:?}",
        started.elapsed()
    );
    let refused = refused(&all);
    assert!(
        refused.is_empty(),
        "{} of 280 buyers refused with units left: {:?}",
        refused.len(),
        &refused[..refused.len().min(5)]
    );
    let (total, available, leased, reserved, sold) = buckets(&nodes[0].db, sku).await;
    assert_eq!((total, sold, reserved), (300, 280, 0));
    assert_eq!(available + leased, 20);
    assert_stock_sound(&nodes[0].db).await;
    for node in nodes.into_iter().rev() {
        node.stop().await;
    }
}

/// Guards against one node leasing everything: 100 concurrent buyers used to send 100
/// grants, and the node held all 300 units.
#[actix_web::test]
async fn one_nodes_lease_is_bounded_by_its_demand() {
    let app = TestApp::spawn(Options {
        seed_demo: false,
        ..Options::default()
    })
    .await;
    let sku = "BOUND-1";
    make_sku(&app, sku, 300).await;
    let results = wave(&[app.base.as_str(); 100], sku, "bound").await;
    assert!(refused(&results).is_empty(), "{:?}", refused(&results));
    let (_, available, leased, _, sold) = buckets(&app.db, sku).await;
    assert_eq!(sold, 100);
    // What left PostgreSQL is what was sold plus what the lease still holds (or
    // returned already, after the idle return).
    let taken = 300 - available;
    eprintln!("100 buyers of 300 units: {taken} units left PostgreSQL, {leased} still leased");
    assert!(
        taken <= 100 + 64,
        "the node took {taken} units for a demand of 100 (leased now: {leased})"
    );
    assert_stock_sound(&app.db).await;
    app.stop().await;
}

/// Guards against the second node's shopper hearing "sold out" while the first node
/// holds the rest of a small SKU: the recall brings the units over.
#[actix_web::test]
async fn a_second_node_sells_what_the_first_one_leased() {
    let nodes = cluster(2).await;
    let sku = "TWO-1";
    make_sku(&nodes[0], sku, 64).await;
    let mut first = Buyer::new(&nodes[0].base, shared_client());
    assert_eq!(first.set(sku, 1).await.0, 200);
    let mut second = Buyer::new(&nodes[1].base, shared_client());
    let (status, body) = second.set(sku, 1).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(second.checkout("two-b").await.0, 201);
    assert_stock_sound(&nodes[0].db).await;
    for node in nodes.into_iter().rev() {
        node.stop().await;
    }
}

/// Guards against a node selling from a lease the reaper took while it was frozen:
/// its next reserve names the old epoch, is refused, and it sells from a fresh grant.
#[actix_web::test]
async fn a_live_node_whose_lease_was_reaped_sells_from_a_fresh_grant() {
    let mut commerce = crate::common::test_commerce();
    // No idle return or heartbeat fencing during the test: the refusal must do it.
    commerce.lease_idle = Duration::from_secs(3600);
    commerce.lease_ttl = Duration::from_secs(60);
    let app = TestApp::spawn(Options {
        seed_demo: false,
        commerce,
        ..Options::default()
    })
    .await;
    let sku = "FENCE-1";
    make_sku(&app, sku, 100).await;
    let mut first = Buyer::new(&app.base, shared_client());
    assert_eq!(first.set(sku, 1).await.0, 200);
    let node = app.state().node_id.clone();
    let client = app.db.client().await;
    let old: i64 = client
        .query_one(
            "SELECT epoch FROM stock_leases WHERE node_id = $1 AND sku = $2",
            &[&node, &sku],
        )
        .await
        .expect("a lease row")
        .get(0);
    // What the reaper does to a node it believes dead.
    let mut reaper = app.db.client().await;
    let reaped = leases::reap(&mut reaper, Scope::Own(&node))
        .await
        .expect("reap");
    assert_eq!(reaped.lease_units, 63);

    let mut next = Buyer::new(&app.base, shared_client());
    let (status, body) = next.set(sku, 2).await;
    assert_eq!(status, 200, "{body}");
    let (quantity, epoch): (i64, i64) = client
        .query_one(
            "SELECT quantity, epoch FROM stock_leases WHERE node_id = $1 AND sku = $2",
            &[&node, &sku],
        )
        .await
        .map(|r| (r.get(0), r.get(1)))
        .expect("a fresh lease row");
    assert_ne!(epoch, old, "the fresh grant made a new row");
    let (_, available, leased, reserved, _) = buckets(&app.db, sku).await;
    assert_eq!(reserved, 3);
    assert_eq!(leased, quantity);
    assert_eq!(available + leased, 97, "nothing was sold twice");
    assert_eq!(
        app.state().shards.for_sku(sku).lease(sku).await,
        quantity,
        "memory holds what the new row holds"
    );
    assert_stock_sound(&app.db).await;
    app.stop().await;
}
