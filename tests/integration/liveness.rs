//! Liveness: a node frozen (SIGSTOP) in the middle of a Journal batch holds row locks
//! on a SKU every node sells; PostgreSQL's session limits must free them within seconds
//! so that the other nodes keep selling.

use std::{
    rc::Rc,
    sync::atomic::{AtomicBool, AtomicUsize, Ordering},
    time::{Duration, Instant},
};

use crate::{
    common::{assert_stock_sound, db_with_sku, shared_client, Buyer},
    nodes::Node,
};

/// Inventory row locks held by the sessions of one application name.
async fn inventory_locks(client: &tokio_postgres::Client, app: &str) -> i64 {
    client
        .query_one(
            "SELECT count(*) FROM pg_locks l
               JOIN pg_stat_activity a ON a.pid = l.pid
               JOIN pg_class c ON c.oid = l.relation
              WHERE a.application_name = $1 AND c.relname = 'inventory' AND l.granted",
            &[&app],
        )
        .await
        .expect("pg_locks")
        .get(0)
}

fn url_as(db_url: &str, app: &str) -> String {
    format!("{db_url}?application_name={app}")
}

/// Guards against a frozen node stalling the cluster: without `lock_timeout`,
/// `idle_in_transaction_session_timeout` and keepalives, node B's shoppers waited for as
/// long as node A was frozen mid-batch (its open transaction holding the SKU's row) and B
/// sold nothing until A woke.
#[actix_web::test]
async fn a_node_frozen_mid_batch_loses_its_locks_and_the_other_keeps_selling() {
    const SKU: &str = "FRZ-1";
    let db = db_with_sku(SKU, 100_000).await;
    let direct = db.client().await;
    let a = Node::start(&url_as(&db.url, "surge-frz-a"), "frz-a", &[]).await;
    let b = Node::start(&url_as(&db.url, "surge-frz-b"), "frz-b", &[]).await;
    let http = shared_client();

    // A stream of PUTs on A, so that A's Journal is in a batch much of the time.
    let stop = Rc::new(AtomicBool::new(false));
    let on_a = Rc::new(AtomicUsize::new(0));
    let mut stream = Vec::new();
    for _ in 0..16 {
        let (stop, on_a, http, base) = (
            Rc::clone(&stop),
            Rc::clone(&on_a),
            http.clone(),
            a.base.clone(),
        );
        stream.push(actix_web::rt::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                let (status, _) = Buyer::new(&base, http.clone()).set(SKU, 1).await;
                if status == 200 {
                    on_a.fetch_add(1, Ordering::SeqCst);
                }
            }
        }));
    }
    let warm = Instant::now();
    while on_a.load(Ordering::SeqCst) < 20 {
        assert!(warm.elapsed() < Duration::from_secs(30), "A never sold");
        actix_web::rt::time::sleep(Duration::from_millis(20)).await;
    }

    // Freeze A until the freeze lands inside a batch (A's session holds the row).
    let mut landed = false;
    for attempt in 0..200_u64 {
        actix_web::rt::time::sleep(Duration::from_millis(7 + attempt % 13)).await;
        a.signal("STOP");
        if inventory_locks(&direct, "surge-frz-a").await > 0 {
            landed = true;
            break;
        }
        a.signal("CONT");
    }
    assert!(landed, "never froze A inside a batch");
    let frozen = Instant::now();

    // B sells the same SKU: every answer within 5 s, and sales within seconds.
    let mut b_sold = 0;
    while b_sold < 5 {
        assert!(
            frozen.elapsed() < Duration::from_secs(20),
            "B did not sell while A was frozen"
        );
        let asked = Instant::now();
        let (status, body) = Buyer::new(&b.base, http.clone()).set(SKU, 1).await;
        let took = asked.elapsed();
        assert!(took < Duration::from_secs(5), "B answered after {took:?}");
        match status {
            200 => b_sold += 1,
            503 => actix_web::rt::time::sleep(Duration::from_millis(100)).await,
            other => panic!("B answered {other}: {body}"),
        }
    }
    assert_eq!(
        inventory_locks(&direct, "surge-frz-a").await,
        0,
        "the frozen node's locks are gone"
    );
    tracing::info!(
        after_ms = frozen.elapsed().as_millis() as u64,
        "B sold while A was frozen"
    );

    a.signal("CONT");
    // A wakes and sells again.
    let before = on_a.load(Ordering::SeqCst);
    let woke = Instant::now();
    while on_a.load(Ordering::SeqCst) < before + 5 {
        assert!(
            woke.elapsed() < Duration::from_secs(30),
            "A never sold again"
        );
        actix_web::rt::time::sleep(Duration::from_millis(50)).await;
    }
    stop.store(true, Ordering::SeqCst);
    for task in stream {
        let _ = task.await;
    }
    assert_stock_sound(&db).await;
    drop((a, b));
}

/// Guards against the heartbeat waiting behind a busy request pool: with every request
/// connection taken, three heartbeats that each wait 5 s for one outlast the lease TTL,
/// and the reaper takes a live node's leases while it keeps selling from memory.
#[actix_web::test]
async fn the_heartbeat_beats_while_the_request_pool_is_exhausted() {
    let app = crate::common::TestApp::spawn(crate::common::Options {
        seed_demo: false,
        ..crate::common::Options::default()
    })
    .await;
    let node = app.state().node_id.clone();
    let pool = app.state().db.primary.clone();
    let mut held = Vec::new();
    for _ in 0..pool.status().max_size {
        held.push(pool.get().await.expect("a request connection"));
    }
    let direct = app.db.client().await;
    let beat = || async {
        direct
            .query_one(
                "SELECT heartbeat_at FROM nodes WHERE node_id = $1",
                &[&node],
            )
            .await
            .expect("the node's row")
            .get::<_, std::time::SystemTime>(0)
    };
    let before = beat().await;
    // The test lease TTL is 3 s: a beat every second.
    actix_web::rt::time::sleep(Duration::from_millis(2500)).await;
    assert!(
        beat().await > before,
        "the heartbeat ran with no request connection free"
    );
    drop(held);
    app.stop().await;
}
