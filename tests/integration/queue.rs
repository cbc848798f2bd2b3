//! The waiting room: one FIFO across nodes, admitted at the campaign's rate, stored in
//! PostgreSQL so that a second join or a node restart keeps every place.

use std::time::Duration;

use serde_json::json;
use surge_actors::cart_actor::now_ms;

use crate::common::{
    error_code, make_sku, shared_client, two_nodes, ws_connect, ws_next, Buyer, Options, TestApp,
    WsEvent, ADMIN_TOKEN,
};

/// Schedules a queued campaign of `sku` on `a` and waits until every node knows it.
async fn queued_campaign(
    a: &TestApp,
    others: &[&TestApp],
    sku: &str,
    starts: i64,
    rate: i64,
) -> String {
    let (status, created) = a
        .admin_post(
            "/api/admin/campaigns",
            Some(ADMIN_TOKEN),
            &json!({"name": "Queued", "skus": [sku], "starts_at_ms": starts,
                    "ends_at_ms": starts + 120_000, "queue": {"admit_per_second": rate}}),
        )
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

async fn join(buyer: &mut Buyer, id: &str) -> serde_json::Value {
    let (status, body) = buyer
        .send("POST", &format!("/api/campaigns/{id}/queue"), &[], "")
        .await;
    assert_eq!(status, 200, "{body}");
    body
}

async fn standing(buyer: &mut Buyer, id: &str) -> serde_json::Value {
    let (status, body) = buyer
        .send("GET", &format!("/api/campaigns/{id}/queue"), &[], "")
        .await;
    assert_eq!(status, 200, "{body}");
    body
}

/// The `queue` messages of one socket until `admitted: true`, or until `timeout`.
async fn queue_messages(
    mut ws: crate::common::WsConn,
    timeout: Duration,
) -> Vec<serde_json::Value> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match ws_next(&mut ws, left).await {
            Some(WsEvent::Json(v)) if v["type"] == "queue" => {
                let done = v["admitted"] == true;
                seen.push(v);
                if done {
                    return seen;
                }
            }
            Some(WsEvent::Json(_)) => {}
            _ => return seen,
        }
    }
}

/// Guards against a waiting room that admits out of join order across nodes (one node
/// letting a later joiner in before an earlier one on the other), faster or slower than
/// its rate, or that never tells a socket its position falling.
#[actix_web::test]
async fn a_hundred_joiners_on_two_nodes_are_admitted_in_join_order_at_the_rate() {
    const SKU: &str = "QUEUE-1";
    const N: usize = 100;
    const RATE: i64 = 20;
    let (a, b) = two_nodes().await;
    make_sku(&a, SKU, 1_000).await;
    let starts = now_ms() + 6_000;
    let id = queued_campaign(&a, &[&b], SKU, starts, RATE).await;
    let nodes = [&a, &b];

    // Join one after another, alternating nodes: before the start each place is the
    // number of earlier joiners.
    let http = shared_client();
    let mut buyers: Vec<Buyer> = (0..N)
        .map(|i| Buyer::new(&nodes[i % 2].base, http.clone()))
        .collect();
    for (i, buyer) in buyers.iter_mut().enumerate() {
        let body = join(buyer, &id).await;
        assert_eq!(body["position"], i, "{body}");
        assert_eq!(body["admitted"], false, "{body}");
    }
    assert!(now_ms() < starts - 500, "joins took too long for the test");
    let (_, view) = b.get_json(&format!("/api/campaigns/{id}")).await;
    assert_eq!(view["queue"]["waiting"], N, "{view}");
    assert_eq!(view["queue"]["admitted"], 0, "{view}");

    // A PUT before its turn answers 429 queued (here before the start, the campaign's
    // own refusal comes first; just after the start the last joiner is still queued).
    let watched = [10usize, 41, 99];
    let sockets: Vec<_> = futures_util::future::join_all(watched.iter().map(|&i| {
        let cookie = buyers[i].cookie.clone().expect("cookie");
        // On the node the session did not join on: the order is not that node's.
        let base = nodes[(i + 1) % 2].base.clone();
        async move { ws_connect(&base, Some(&cookie)).await }
    }))
    .await;
    let collectors = futures_util::future::join_all(
        sockets
            .into_iter()
            .map(|ws| queue_messages(ws, Duration::from_secs(20))),
    );

    // From the start, every ~250 ms, ask every joiner where it stands, the latest
    // joiner first and each on the node it did not join on: once a joiner is seen
    // admitted, every earlier one asked after it must be admitted too.
    let window_ms = 120_000;
    let observe = async {
        tokio::time::sleep(Duration::from_millis(
            u64::try_from(starts + 30 - now_ms()).unwrap_or(0),
        ))
        .await;
        let (status, refused) = buyers[N - 1].set(SKU, 1).await;
        assert_eq!(status, 429, "{refused}");
        assert_eq!(error_code(&refused), "queued");
        assert!(refused["error"]["position"]
            .as_i64()
            .is_some_and(|p| p > 90));
        assert!(refused["error"]["retry_after_ms"]
            .as_i64()
            .is_some_and(|r| r > 4_000));
        let (status, cart) = buyers[0].set(SKU, 1).await;
        assert_eq!(status, 200, "the first joiner buys at the start: {cart}");

        let mut asked: Vec<Buyer> = (0..N)
            .map(|i| {
                let mut other = Buyer::new(&nodes[(i + 1) % 2].base, http.clone());
                other.cookie.clone_from(&buyers[i].cookie);
                other
            })
            .collect();
        let mut first_seen: Vec<Option<i64>> = vec![None; N];
        let mut admitted_at: Vec<i64> = vec![0; N];
        let mut rounds = 0;
        while first_seen.iter().any(Option::is_none) {
            assert!(now_ms() < starts + 20_000, "not everyone admitted");
            let mut later_admitted: Option<usize> = None;
            for i in (0..N).rev() {
                let body = standing(&mut asked[i], &id).await;
                admitted_at[i] = body["expires_at_ms"].as_i64().expect("expiry") - window_ms;
                if body["admitted"] == true {
                    first_seen[i].get_or_insert(now_ms());
                    later_admitted.get_or_insert(i);
                } else if let Some(later) = later_admitted {
                    panic!("joiner {later} admitted before earlier joiner {i}: {body}");
                } else {
                    assert!(body["position"].as_i64().is_some_and(|p| p <= i as i64));
                }
            }
            rounds += 1;
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        (admitted_at, first_seen, rounds)
    };
    let (messages, (admitted_at, first_seen, rounds)) = futures_util::join!(collectors, observe);

    // Every node gives the same schedule: one admission each 1/RATE s from the start.
    for (i, at) in admitted_at.iter().enumerate() {
        let expected = starts + (i as i64 * 1000).div_euclid(RATE);
        assert_eq!(*at, expected, "joiner {i}");
    }
    // And the observed admissions follow it: joiners 10 to 90 are first seen about
    // 80 / RATE seconds apart. Each is first seen within one polling round of its
    // admission, so the span is known to within one round either way; on a loaded
    // machine a round is slower, and the tolerance is that round, not a guess.
    let seen = |i: usize| first_seen[i].expect("seen admitted");
    let span = seen(90) - seen(10);
    let polling_ms = (seen(N - 1) - starts).max(1) / i64::from(rounds.max(1));
    let expected_ms = 80 * 1000 / RATE;
    eprintln!("queue: joiners 10..90 admitted over {span} ms (expected {expected_ms} ms), {rounds} rounds of ~{polling_ms} ms");
    assert!(
        (span - expected_ms).abs() <= polling_ms + 250,
        "admitted over {span} ms, not about {expected_ms} ms (polling every ~{polling_ms} ms)"
    );

    // Each watched socket saw its position fall, then its admission.
    for (msgs, &i) in messages.iter().zip(&watched) {
        let positions: Vec<i64> = msgs
            .iter()
            .filter(|m| m["admitted"] == false)
            .map(|m| m["position"].as_i64().expect("position"))
            .collect();
        assert!(positions.len() >= 2, "joiner {i} saw {msgs:?}");
        assert!(
            positions.windows(2).all(|w| w[0] > w[1]),
            "joiner {i}: positions {positions:?}"
        );
        assert!(positions[0] <= i as i64);
        let last = msgs.last().expect("a message");
        assert_eq!(last["admitted"], true, "joiner {i}: {msgs:?}");
        assert_eq!(last["position"], 0);
        assert_eq!(last["campaign_id"], id.as_str());
    }

    // Admitted, the last joiner buys.
    let (status, cart) = buyers[N - 1].set(SKU, 1).await;
    assert_eq!(status, 200, "{cart}");
    b.stop().await;
    a.stop().await;
}

/// Guards against a second join moving a session to the back (or the front), and
/// against a node restart losing or reordering the queue: the order lives in
/// PostgreSQL, not in any node's memory.
#[actix_web::test]
async fn joining_twice_keeps_the_first_place_and_a_restart_keeps_the_order() {
    const SKU: &str = "QUEUE-2";
    let (a, b) = two_nodes().await;
    make_sku(&a, SKU, 10).await;
    let id = queued_campaign(&a, &[&b], SKU, now_ms() + 600_000, 20).await;
    let http = shared_client();
    let nodes = [&a, &b];
    let mut buyers: Vec<Buyer> = (0..6)
        .map(|i| Buyer::new(&nodes[i % 2].base, http.clone()))
        .collect();
    for (i, buyer) in buyers.iter_mut().enumerate().take(5) {
        assert_eq!(join(buyer, &id).await["position"], i);
    }
    // Again, on the other node: the first place stays.
    let mut again = Buyer::new(&b.base, http.clone());
    again.cookie.clone_from(&buyers[0].cookie);
    assert_eq!(join(&mut again, &id).await["position"], 0);
    assert_eq!(join(&mut buyers[3], &id).await["position"], 3);
    // A PUT of the SKU is a join too, and keeps the place as well.
    let (status, body) = buyers[2].set(SKU, 1).await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(error_code(&body), "campaign_not_started");
    assert_eq!(standing(&mut buyers[2], &id).await["position"], 2);
    // A session that never joined has no place.
    let mut stranger = Buyer::new(&a.base, http.clone());
    let (status, _) = stranger
        .send("GET", &format!("/api/campaigns/{id}/queue"), &[], "")
        .await;
    assert_eq!(status, 404);

    // Restart node b: a fresh node on the same database answers the same places.
    b.stop().await;
    let b = a.join().await;
    for (i, buyer) in buyers.iter_mut().enumerate().take(5) {
        let mut on_b = Buyer::new(&b.base, http.clone());
        on_b.cookie.clone_from(&buyer.cookie);
        assert_eq!(standing(&mut on_b, &id).await["position"], i, "joiner {i}");
    }
    // The sixth joiner, on the new node, goes behind them.
    let mut sixth = Buyer::new(&b.base, http.clone());
    assert_eq!(join(&mut sixth, &id).await["position"], 5);
    let (_, view) = a.get_json(&format!("/api/campaigns/{id}")).await;
    assert_eq!(view["queue"]["waiting"], 6, "{view}");
    b.stop().await;
    a.stop().await;
}

/// Guards against an admitted session holding its turn forever: past its window its
/// PUTs are refused, while a session still within its window buys.
#[actix_web::test]
async fn an_unused_turn_lapses_after_its_window() {
    const SKU: &str = "QUEUE-3";
    let mut commerce = crate::common::test_commerce();
    commerce.queue_window = Duration::from_secs(1);
    let app = TestApp::spawn(Options {
        seed_demo: false,
        commerce,
        ..Options::default()
    })
    .await;
    make_sku(&app, SKU, 10).await;
    let starts = now_ms() + 1_500;
    let id = queued_campaign(&app, &[], SKU, starts, 1).await;
    let http = shared_client();
    let mut first = Buyer::new(&app.base, http.clone());
    let mut second = Buyer::new(&app.base, http.clone());
    assert_eq!(join(&mut first, &id).await["expires_at_ms"], starts + 1_000);
    assert_eq!(
        join(&mut second, &id).await["expires_at_ms"],
        starts + 2_000
    );
    tokio::time::sleep(Duration::from_millis(
        u64::try_from(starts + 1_200 - now_ms()).unwrap_or(0),
    ))
    .await;
    let (status, body) = first.set(SKU, 1).await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(error_code(&body), "queue_lapsed");
    let (status, body) = second.set(SKU, 1).await;
    assert_eq!(status, 200, "{body}");
    app.stop().await;
}

/// Guards against batched joins handing two sessions one slot, leaving a hole in the
/// order, or moving a session that joined already: 300 joins at once on two nodes
/// take exactly the slots 0..300, and joining again changes none of them.
#[actix_web::test]
async fn a_crowd_joining_at_once_on_two_nodes_takes_dense_distinct_places() {
    const SKU: &str = "QUEUE-4";
    const N: usize = 300;
    let (a, b) = two_nodes().await;
    make_sku(&a, SKU, 10).await;
    let id = queued_campaign(&a, &[&b], SKU, now_ms() + 600_000, 20).await;
    let http = shared_client();
    let nodes = [&a, &b];
    let mut buyers: Vec<Buyer> = (0..N)
        .map(|i| Buyer::new(&nodes[i % 2].base, http.clone()))
        .collect();
    let places = |bodies: Vec<serde_json::Value>| -> Vec<i64> {
        bodies
            .iter()
            .map(|b| b["position"].as_i64().expect("position"))
            .collect()
    };
    let first =
        places(futures_util::future::join_all(buyers.iter_mut().map(|b| join(b, &id))).await);
    let mut sorted = first.clone();
    sorted.sort_unstable();
    assert_eq!(
        sorted,
        (0..N as i64).collect::<Vec<_>>(),
        "places not dense"
    );
    let again =
        places(futures_util::future::join_all(buyers.iter_mut().map(|b| join(b, &id))).await);
    assert_eq!(first, again, "a second join moved a session");
    let (_, view) = a.get_json(&format!("/api/campaigns/{id}")).await;
    assert_eq!(view["queue"]["waiting"], N, "{view}");
    b.stop().await;
    a.stop().await;
}

/// Guards against a socket opened after its session's turn came never hearing it: the
/// node told the session once, on a socket that has since closed.
#[actix_web::test]
async fn a_socket_opened_after_the_turn_hears_it() {
    const SKU: &str = "QUEUE-5";
    let app = TestApp::spawn(Options {
        seed_demo: false,
        ..Options::default()
    })
    .await;
    make_sku(&app, SKU, 10).await;
    let starts = now_ms() + 1_000;
    let id = queued_campaign(&app, &[], SKU, starts, 50).await;
    let mut buyer = Buyer::new(&app.base, shared_client());
    join(&mut buyer, &id).await;
    let cookie = buyer.cookie.clone().expect("cookie");
    let early = ws_connect(&app.base, Some(&cookie)).await;
    let heard = queue_messages(early, Duration::from_secs(10)).await;
    assert_eq!(
        heard.last().map(|m| m["admitted"] == true),
        Some(true),
        "{heard:?}"
    );
    // The turn has come and been pushed; a new socket of the session hears it too.
    let late = ws_connect(&app.base, Some(&cookie)).await;
    let heard = queue_messages(late, Duration::from_secs(5)).await;
    assert_eq!(
        heard.last().map(|m| m["admitted"] == true),
        Some(true),
        "{heard:?}"
    );
    app.stop().await;
}
