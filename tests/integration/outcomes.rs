//! Known commit outcomes: a Journal batch whose COMMIT goes unanswered is looked up in
//! PostgreSQL and answered with what really happened, so that a `200` is always in
//! PostgreSQL and a `503` never is, even while the node's database link keeps breaking.

use std::time::{Duration, Instant};

use futures_util::future::join_all;
use surge::store::{
    journal::{self, Outcome},
    Db,
};

use crate::{
    common::{assert_stock_sound, buckets, db_with_sku, shared_client, Buyer, Options, TestApp},
    proxy::Proxy,
};

/// The session id behind a buyer's cookie (`surge_session=<id>.<tag>`).
fn session_id(buyer: &Buyer) -> String {
    let cookie = buyer.cookie.as_deref().expect("the buyer has a session");
    let value = cookie.trim_start_matches("surge_session=");
    value.split('.').next().unwrap_or_default().to_owned()
}

/// Units of `sku` reserved in PostgreSQL by the buyer's session.
async fn reserved_by(client: &tokio_postgres::Client, buyer: &Buyer, sku: &str) -> i64 {
    client
        .query_one(
            "SELECT COALESCE(sum(r.quantity), 0)::bigint FROM reservations r
               JOIN carts c ON c.id = r.cart_id
              WHERE c.session_id = $1 AND r.sku = $2",
            &[&session_id(buyer), &sku],
        )
        .await
        .expect("reservations")
        .get(0)
}

/// A buyer that already has a session cookie (from an empty cart read), so that what
/// PostgreSQL holds for them can be looked up after any answer.
async fn buyer_with_session(base: &str, http: &awc::Client) -> Buyer {
    let mut buyer = Buyer::new(base, http.clone());
    let (status, body) = buyer.cart().await;
    assert_eq!(status, 200, "{body}");
    assert!(buyer.cookie.is_some(), "the cart read set a session");
    buyer
}

/// Guards against answering `503` ("nothing committed") for a batch whose COMMIT reached
/// PostgreSQL but whose answer was lost, which made the shard put the reserved units
/// back into a lease that PostgreSQL had already moved: memory and rows then disagree
/// (stranded units, or phantom ones every later write is refused for).
#[actix_web::test]
async fn a_commit_whose_answer_is_lost_is_answered_with_what_postgresql_did() {
    let db = db_with_sku("OUT-CUT", 20).await;
    let proxy = Proxy::for_pg(&db.url).await;
    let mut commerce = crate::common::test_commerce();
    // No idle lease return: the only Journal batches are the buyers'.
    commerce.lease_idle = Duration::from_secs(600);
    let app = TestApp::spawn(Options {
        seed_demo: false,
        database_url: Some(db.url.clone()),
        journal_via: Some(proxy.pg_url(&db.url)),
        commerce,
        ..Options::default()
    })
    .await;
    let direct = db.client().await;
    let http = shared_client();

    let mut first = buyer_with_session(&app.base, &http).await;
    let (status, body) = first.set("OUT-CUT", 1).await;
    assert_eq!(status, 200, "{body}");

    let mut cut = buyer_with_session(&app.base, &http).await;
    proxy.cut_after_next_commit();
    let (status, body) = cut.set("OUT-CUT", 2).await;
    assert_eq!(
        proxy.commit_cuts(),
        1,
        "this write's COMMIT was the one cut"
    );
    assert_eq!(status, 200, "the cut COMMIT had committed: {body}");
    assert_eq!(reserved_by(&direct, &cut, "OUT-CUT").await, 2);

    // Memory and the lease row agree: exactly the 17 units left sell, then 409.
    let mut sold = 3;
    loop {
        let mut buyer = buyer_with_session(&app.base, &http).await;
        let (status, body) = buyer.set("OUT-CUT", 1).await;
        match status {
            200 => sold += 1,
            409 => break,
            other => panic!("answer {other} after the cut: {body}"),
        }
        assert!(sold <= 20, "more sold than stocked");
    }
    assert_eq!(sold, 20, "no unit stranded by the cut");
    let (total, available, leased, reserved, sold_units) = buckets(&db, "OUT-CUT").await;
    assert_eq!((total, reserved, sold_units), (20, 20, 0));
    assert_eq!(available + leased, 0);
    assert_stock_sound(&db).await;
    drop(proxy);
    app.stop().await;
}

/// Guards against a write that failed before its COMMIT being answered anything but
/// `503`, or leaving anything behind in PostgreSQL.
#[actix_web::test]
async fn a_batch_cut_before_commit_is_503_and_leaves_nothing() {
    let db = db_with_sku("OUT-PRE", 10).await;
    let proxy = Proxy::for_pg(&db.url).await;
    let app = TestApp::spawn(Options {
        seed_demo: false,
        database_url: Some(db.url.clone()),
        journal_via: Some(proxy.pg_url(&db.url)),
        ..Options::default()
    })
    .await;
    let direct = db.client().await;
    let http = shared_client();
    let mut buyer = buyer_with_session(&app.base, &http).await;
    proxy.cut();
    let (status, body) = buyer.set("OUT-PRE", 1).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(reserved_by(&direct, &buyer, "OUT-PRE").await, 0);
    proxy.restore();
    let (status, body) = buyer.set("OUT-PRE", 1).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(reserved_by(&direct, &buyer, "OUT-PRE").await, 1);
    assert_stock_sound(&db).await;
    drop(proxy);
    app.stop().await;
}

/// Guards against a batch stuck behind another session's lock (a frozen node's) holding
/// the Journal past its deadline, and against a deadline that passes before COMMIT being
/// answered anything but "not committed".
#[actix_web::test]
async fn a_batch_past_its_deadline_before_commit_is_not_committed() {
    let db = db_with_sku("OUT-LATE", 10).await;
    let mut cfg = db.config();
    cfg.session.lock_timeout = Duration::ZERO;
    let pools = Db::new(&cfg).expect("pools");
    let mut journal_cfg = surge::store::journal::JournalConfig::from_commerce(
        &surge::config::defaults::<surge::config::CommerceArgs>().validate(),
    );
    journal_cfg.commit_timeout = Duration::from_millis(300);
    let grant = || {
        vec![surge_actors::ports::WriteOp::Grant {
            sku: "OUT-LATE".into(),
            want: 4,
        }]
    };
    let mut holder = db.client().await;
    let tx = holder.transaction().await.expect("begin");
    tx.execute(
        "SELECT 1 FROM inventory WHERE sku = 'OUT-LATE' FOR UPDATE",
        &[],
    )
    .await
    .expect("lock the row");
    let asked = Instant::now();
    let outcome = journal::commit(&pools.journal, "late-node", &journal_cfg, &grant()).await;
    assert!(
        matches!(outcome, Err(journal::CommitError::NotCommitted(_))),
        "{outcome:?}"
    );
    assert!(
        asked.elapsed() < Duration::from_secs(2),
        "the deadline held"
    );
    tx.rollback().await.expect("release the row");
    let (results, _) = journal::commit(&pools.journal, "late-node", &journal_cfg, &grant())
        .await
        .expect("commits once the row is free");
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    let (_, available, leased, _, _) = buckets(&db, "OUT-LATE").await;
    assert_eq!(available + leased, 10);
    assert!(leased > 0, "only the second grant moved stock");
    assert_stock_sound(&db).await;
    pools.close();
}

/// Guards against the outcome lookup answering before PostgreSQL knows: a transaction
/// still in progress is waited out, then reported as it ended.
#[actix_web::test]
async fn the_outcome_lookup_reports_commits_aborts_and_waits_out_open_transactions() {
    let db = crate::common::TestDb::create().await;
    let pools = Db::new(&db.config()).expect("pools");
    let mut client = db.client().await;
    client
        .batch_execute("CREATE TABLE t (x int)")
        .await
        .expect("table");
    async fn xid(tx: &tokio_postgres::Transaction<'_>) -> String {
        tx.query_one("SELECT pg_current_xact_id()::text", &[])
            .await
            .expect("xid")
            .get(0)
    }

    let tx = client.transaction().await.expect("begin");
    let aborted = xid(&tx).await;
    tx.rollback().await.expect("rollback");
    assert_eq!(
        journal::resolve(&pools.journal, &aborted).await,
        Some(Outcome::Aborted)
    );

    let tx = client.transaction().await.expect("begin");
    let open = xid(&tx).await;
    tx.execute("INSERT INTO t VALUES (1)", &[])
        .await
        .expect("insert");
    let lookup = actix_web::rt::spawn({
        let pool = pools.journal.clone();
        async move { journal::resolve(&pool, &open).await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!lookup.is_finished(), "an open transaction has no outcome");
    tx.commit().await.expect("commit");
    let outcome = tokio::time::timeout(Duration::from_secs(5), lookup)
        .await
        .expect("resolved soon after the commit")
        .expect("task");
    assert_eq!(outcome, Some(Outcome::Committed));
    pools.close();
}

/// Guards against a node that loses its PostgreSQL connections again and again during a
/// sale: answering `200` for a write that is not in PostgreSQL or `503` for one that is,
/// drifting memory that later refuses buyers while units remain, or a node that has to
/// be restarted. A `503` means nothing was committed, so buyers retry after one; a `409`
/// would be final and must not happen while units remain.
#[actix_web::test]
async fn repeated_connection_cuts_during_a_sale_keep_every_answer_true() {
    const UNITS: i64 = 200;
    const BUYERS: usize = 150;
    let db = db_with_sku("OUT-FLAKY", UNITS).await;
    let proxy = Proxy::for_pg(&db.url).await;
    let app = TestApp::spawn(Options {
        seed_demo: false,
        database_url: Some(db.url.clone()),
        connect_via: Some(proxy.pg_url(&db.url)),
        ..Options::default()
    })
    .await;
    let http = shared_client();
    let mut buyers = Vec::new();
    for _ in 0..BUYERS {
        buyers.push(buyer_with_session(&app.base, &http).await);
    }

    // Ten cuts, 300 ms apart, each closing every connection and refusing new ones for
    // 100 ms: batches in flight lose their connection, anywhere from BEGIN to COMMIT.
    let cutter = async {
        for _ in 0..10 {
            tokio::time::sleep(Duration::from_millis(200)).await;
            proxy.cut();
            tokio::time::sleep(Duration::from_millis(100)).await;
            proxy.restore();
        }
    };
    let direct = db.client().await;
    let started = Instant::now();
    let sale = join_all(buyers.into_iter().enumerate().map(|(i, mut buyer)| {
        let direct = &direct;
        async move {
            // Spread the buyers over the cutting window.
            tokio::time::sleep(Duration::from_millis(20 * i as u64)).await;
            let mut unavailable = 0;
            loop {
                let (status, body) = buyer.set("OUT-FLAKY", 1).await;
                let held = reserved_by(direct, &buyer, "OUT-FLAKY").await;
                match status {
                    200 => {
                        assert_eq!(held, 1, "a 200 is in PostgreSQL");
                        return unavailable;
                    }
                    503 => {
                        assert_eq!(held, 0, "a 503 left nothing in PostgreSQL: {body}");
                        unavailable += 1;
                        assert!(unavailable < 200, "never served: {body}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    other => panic!("answer {other} while units remain: {body}"),
                }
            }
        }
    }));
    let (retries, ()) = futures_util::join!(sale, cutter);
    assert!(proxy.cuts() > 0, "the proxy cut connections");
    let retried: usize = retries.iter().sum();
    assert!(retried > 0, "some writes met a cut");
    tracing::info!(
        retried,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "sale through cuts"
    );
    let (_, _, _, reserved, _) = buckets(&db, "OUT-FLAKY").await;
    assert_eq!(reserved, BUYERS as i64, "every buyer served once");
    // The node never restarted and still sells the rest.
    let mut late = buyer_with_session(&app.base, &http).await;
    let (status, body) = late.set("OUT-FLAKY", 1).await;
    assert_eq!(status, 200, "{body}");
    assert_stock_sound(&db).await;
    drop(proxy);
    app.stop().await;
}
